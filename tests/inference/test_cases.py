"""Which files of an input folder make a case, and a part of a folder (predict --part)."""
from pathlib import Path

import pytest

from autoseg.errors import UserError
from autoseg.inference.cases import find_input_cases




def test_find_input_cases_both_layouts(tmp_path):
    for n in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "single").mkdir(exist_ok=True)
        (tmp_path / "single" / n).touch()
    cases = find_input_cases(tmp_path / "single", 1)
    assert [(c.case_id, c.ending) for c in cases] == [("a", ".nii.gz"), ("b", ".nii.gz")]
    (tmp_path / "nn").mkdir()
    for n in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", ".partial-x-c_0000.nii.gz"):
        (tmp_path / "nn" / n).touch()
    cases = find_input_cases(tmp_path / "nn", 2)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [f.name for f in cases[1].files] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    (tmp_path / "nn" / "b_0001.nii.gz").unlink()
    with pytest.raises(UserError, match="b_0001"):
        find_input_cases(tmp_path / "nn", 2)


def test_folder_parts_cover_the_folder_once(tmp_path):
    from autoseg.inference.cases import FolderPart

    for n in ("e", "b", "d", "a", "c"):
        (tmp_path / f"{n}_0000.nii.gz").touch()
    parts = [FolderPart(tmp_path, k, 2) for k in range(2)]
    chosen = [[c.case_id for c in find_input_cases(p, 1)] for p in parts]
    assert chosen == [["a", "c", "e"], ["b", "d"]]  # every second case of the sorted list
    assert [c.case_id for c in find_input_cases(FolderPart(tmp_path, 0, 1), 1)] == ["a", "b", "c", "d", "e"]
    assert [c.case_id for c in find_input_cases(FolderPart(tmp_path, 5, 7), 1)] == []  # more parts than cases
    assert Path(parts[1]) == tmp_path  # a folder wherever one is expected
    assert [p.volumes_name for p in parts] == ["volumes_part0of2.csv", "volumes_part1of2.csv"]
    assert FolderPart(tmp_path).volumes_name == "volumes.csv"


@pytest.mark.parametrize("part,num_parts,message", [(2, 2, "--part must be 0 to 1"), (-1, 3, "--part must be 0 to 2"),
                                                    (0, 0, "--num-parts must be at least 1")])
def test_folder_part_rejects_bad_numbers(tmp_path, part, num_parts, message):
    from autoseg.inference.cases import FolderPart

    with pytest.raises(UserError, match=message):
        FolderPart(tmp_path, part, num_parts)


def test_predict_parts_write_every_case_once_and_merge(setup, tmp_path, capsys):
    import csv

    from autoseg.cli import main

    raw, ws, model = setup
    out = tmp_path / "out"
    base = ["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "Tiny", "-c", "3d_fullres", "-f", "0",
            "--workspace", str(ws.root.parent), "--device", "cpu", "--precision", "fp32", "--no-tta"]
    tables = {}
    for k in range(2):
        assert main(base + ["--part", str(k), "--num-parts", "2"]) == 0
        assert f"predicted {2 - k} case(s)" in capsys.readouterr().out
        tables[k] = [r["case_id"] for r in csv.DictReader(open(out / f"volumes_part{k}of2.csv"))]
    assert tables == {0: ["case_000", "case_002"], 1: ["case_001"]}
    assert sorted(p.name for p in out.glob("case_*.nii.gz")) == ["case_000.nii.gz", "case_001.nii.gz", "case_002.nii.gz"]
    assert not (out / "volumes.csv").exists()
    # the merge: a run over the whole folder predicts nothing and tables every case
    assert main(base) == 0
    assert "predicted 0 case(s)" in capsys.readouterr().out
    assert [r["case_id"] for r in csv.DictReader(open(out / "volumes.csv"))] == ["case_000", "case_001", "case_002"]


@pytest.mark.parametrize("extra,message", [(["--part", "2", "--num-parts", "2"], "--part must be 0 to 1"),
                                           (["--part", "1"], "go together"), (["--num-parts", "2"], "go together")])
def test_predict_rejects_bad_parts_before_loading_a_model(tmp_path, capsys, extra, message):
    from autoseg.cli import main

    assert main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-d", "Missing",
                 "--workspace", str(tmp_path / "ws")] + extra) == 2
    assert message in capsys.readouterr().err
