"""``autoseg mesh`` on a tiny synthetic dataset: meshes, statistics, resume, and its refusals."""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg import cli
from autoseg.atomic import write_json
from autoseg.commands import mesh
from autoseg.dataset.imageio import Geometry, read_label, write_image
from autoseg.errors import UserError
from autoseg.evaluation.structure_stats import StructureReport
from autoseg.inference.meshes import MeshIndex
from autoseg.synthetic import make_dataset
from autoseg.workspace import DatasetWorkspace

from tests.inference.models import tiny_plans


def run_mesh(argv: list[str]) -> int:
    """The subcommand as the CLI runs it (before cli.py lists it, through its own parser)."""
    parser = argparse.ArgumentParser(prog="autoseg")
    mesh.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mesh"] + [str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw") / "Synth", num_cases=2, shape=(10, 14, 14),
                        spacing=(2.0, 1.0, 1.0), seed=0)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_meshes_and_statistics_of_a_folder(raw, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_mesh([raw / "labelsTr", "-o", out, "--labels-json", raw / "dataset.json",
                     "--images", raw / "imagesTr"]) == 0
    names = {1: "inner", 2: "outer"}  # make_dataset's dataset.json
    for case in ("case_000", "case_001"):
        index = MeshIndex.load(out / f"{case}_meshes.json")
        seg, _ = read_label(raw / "labelsTr" / f"{case}.nii.gz")
        present = sorted(set(np.unique(seg).tolist()) - {0})
        assert [m.label for m in index.meshes] == present
        for m in index.meshes:
            assert m.file == f"{case}_{m.label}_{names[m.label]}.stl" and (out / m.file).is_file()
    rows = list(csv.DictReader((out / "structures.csv").open()))
    assert len(rows) == sum(len(MeshIndex.load(f).meshes) for f in out.glob("*_meshes.json"))
    assert all(r["intensity_mean_0"] != "" and float(r["volume_ml"]) > 0 for r in rows)
    assert len(StructureReport.load(out / "structures.json").structures) == len(rows)
    assert "wrote" in capsys.readouterr().out

    # a rerun with the same settings rewrites no mesh; --overwrite does
    before = _mtimes(out)
    run_mesh([raw / "labelsTr", "-o", out, "--labels-json", raw / "dataset.json"])
    assert {k: v for k, v in _mtimes(out).items() if k.endswith((".stl", "_meshes.json"))} == \
        {k: v for k, v in before.items() if k.endswith((".stl", "_meshes.json"))}
    run_mesh([raw / "labelsTr", "-o", out, "--labels-json", raw / "dataset.json", "--overwrite"])
    assert _mtimes(out)["case_000_meshes.json"] != before["case_000_meshes.json"]


def test_one_file_chosen_labels_format_and_plans_names(raw, tmp_path):
    ws = DatasetWorkspace(tmp_path / "ws" / "Tiny")
    tiny_plans().save(ws.plans_file)  # label names label0, label1, label2
    out = tmp_path / "out"
    run_mesh([raw / "labelsTr" / "case_000.nii.gz", "-o", out, "--labels", "2", "--format", "obj",
              "-d", "Tiny", "--workspace", tmp_path / "ws", "--stats"])
    assert sorted(p.name for p in out.iterdir()) == ["case_000_2_label2.obj", "case_000_meshes.json",
                                                     "structures.csv", "structures.json"]
    rows = list(csv.DictReader((out / "structures.csv").open()))
    assert [(r["label"], r["name"]) for r in rows] == [("2", "label2")] and "intensity_mean_0" not in rows[0]


def test_float_maps_in_the_folder_are_skipped(raw, tmp_path, capsys):
    labels = tmp_path / "labels"
    shutil.copytree(raw / "labelsTr", labels)
    seg, g = read_label(labels / "case_000.nii.gz")
    write_image(seg.astype(np.float32) * 0.3, g, labels / "case_000_entropy.nii.gz")  # predict --uncertainty
    write_image(seg.astype(np.float32) * 0.3, g, labels / "other.nii.gz")
    run_mesh([labels, "-o", tmp_path / "out"])
    assert "skipping" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").glob("*_meshes.json")) == ["case_000_meshes.json",
                                                                                "case_001_meshes.json"]
    # an entropy map needs no image of its own
    (labels / "other.nii.gz").unlink()
    run_mesh([labels, "-o", tmp_path / "out2", "--images", raw / "imagesTr"])
    assert len(list(csv.DictReader((tmp_path / "out2" / "structures.csv").open()))) >= 2


def test_2d_label_maps_get_statistics_not_meshes(tmp_path, capsys):
    labels = tmp_path / "labels"
    seg = np.zeros((1, 8, 9), np.uint8)
    seg[0, 2:5, 3:7] = 1
    write_image(seg, Geometry((1.0, 0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2), labels / "img.png")
    with pytest.raises(UserError, match="3D only"):
        run_mesh([labels, "-o", tmp_path / "out"])
    run_mesh([labels, "-o", tmp_path / "out", "--stats"])
    (row,) = list(csv.DictReader((tmp_path / "out" / "structures.csv").open()))
    assert float(row["area_mm2"]) == pytest.approx(12 * 0.25) and row["volume_ml"] == ""
    assert "3D only" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--labels", "7"], r"value\(s\) 7 occur in none"),
    (["--labels", "0"], "0 is background"),
    (["--decimate", "1.5"], "--decimate"),
    (["--smooth", "-2"], "--smooth"),
    (["--labels-json", "missing.json"], "does not exist"),
    (["-d", "NoSuchDataset", "--workspace", "ws"], "no plans"),
])
def test_bad_options_are_refused_before_any_work(raw, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        run_mesh([raw / "labelsTr", "-o", tmp_path / "out"] + extra)
    assert not (tmp_path / "out").exists()


def test_bad_folders_are_refused(raw, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no labels here")
    with pytest.raises(UserError, match="holds no label files"):
        run_mesh([tmp_path / "empty", "-o", tmp_path / "out"])
    with pytest.raises(UserError, match="no such file or folder"):
        run_mesh([tmp_path / "nowhere", "-o", tmp_path / "out"])
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(raw / "imagesTr" / "case_000.nii.gz", images / "case_000_0000.nii.gz")
    with pytest.raises(UserError, match="no image for 1 case"):
        run_mesh([raw / "labelsTr", "-o", tmp_path / "out", "--images", images])
    img, g = read_label(raw / "imagesTr" / "case_001.nii.gz")
    write_image(img[:, :-1], g, images / "case_001.nii.gz")
    with pytest.raises(UserError, match="differs from its label map"):
        run_mesh([raw / "labelsTr", "-o", tmp_path / "out", "--images", images])
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([4, 4], sitk.sitkVectorUInt8, 3), str(rgb / "photo.png"))
    with pytest.raises(UserError, match="has 3 channels"):
        run_mesh([rgb, "-o", tmp_path / "out", "--stats"])
    bad = tmp_path / "bad.json"
    write_json(bad, {"labels": []})
    with pytest.raises(UserError, match="no 'labels'"):
        run_mesh([raw / "labelsTr", "-o", tmp_path / "out", "--labels-json", bad])


def test_label_names_from_both_dataset_json_layouts(tmp_path):
    msd, v2 = tmp_path / "msd.json", tmp_path / "v2.json"
    write_json(msd, {"labels": {"0": "background", "1": "liver", "2": "tumour"}})
    write_json(v2, {"labels": {"background": 0, "liver": 1, "both": [1, 2], "tumour": 2}})
    assert mesh.label_names_from_dataset_json(msd) == {0: "background", 1: "liver", 2: "tumour"}
    assert mesh.label_names_from_dataset_json(v2) == {0: "background", 1: "liver", 2: "tumour"}


@pytest.mark.skipif("mesh" not in cli.COMMAND_MODULES, reason="autoseg/cli.py does not list the mesh command yet")
def test_the_cli_prints_a_user_error_and_exits_2(tmp_path, capsys):
    assert cli.main(["mesh", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")]) == 2
    assert "autoseg mesh: error:" in capsys.readouterr().err
