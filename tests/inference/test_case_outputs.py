"""predict's extra outputs per case: previews, meshes, per-structure statistics (DICOM-SEG:
tests/commands/test_predict_dicom.py). Each is written before the label map, and a rerun that asks
for an output fills it in for cases predicted earlier."""
import json

import pytest

from autoseg.cli import main
from autoseg.inference.case_outputs import MeshOutput, PreviewOutput, StructureStatsOutput
from autoseg.inference.folder import predict_folder
from autoseg.inference.predictor import Predictor


def test_previews_meshes_and_statistics_through_the_cli(setup, tmp_path):
    raw, ws, model = setup
    workspace = str(ws.root.parent)
    out = tmp_path / "out"
    args = ["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "Tiny", "-c", "3d_fullres", "-f", "0",
            "--no-tta", "--workspace", workspace]
    assert main(args) == 0
    cases = sorted(p.name[:-len(".nii.gz")] for p in out.glob("*.nii.gz"))
    assert len(cases) == 3 and not (out / "previews").exists()
    # a rerun asking for more outputs fills them in for the cases predicted before
    assert main(args + ["--preview", "--meshes", "vtk", "--structure-stats"]) == 0
    for c in cases:
        assert (out / "previews" / f"{c}.png").stat().st_size > 2000
        index = json.loads((out / "meshes" / f"{c}_meshes.json").read_text())
        for mesh in index["meshes"]:
            assert (out / "meshes" / mesh["file"]).is_file() and mesh["file"].endswith(".vtk")
    rows = json.loads((out / "structures.json").read_text())["structures"]
    assert {r["case_id"] for r in rows} == set(cases)
    assert (out / "structures.csv").read_text().splitlines()[0].startswith("case_id,")


def test_a_deleted_output_is_redone_and_others_are_kept(setup, tmp_path):
    raw, ws, model = setup
    predictor = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=False, precision="fp32")
    out = tmp_path / "out"
    outputs = [PreviewOutput(predictor.plans), StructureStatsOutput(predictor.plans)]
    done = predict_folder([predictor], raw / "imagesTr", out, outputs=outputs)
    (out / "previews" / f"{done[0]}.png").unlink()
    assert predict_folder([predictor], raw / "imagesTr", out, outputs=outputs) == [done[0]]
    assert predict_folder([predictor], raw / "imagesTr", out) == []


def test_bad_mesh_options_fail_before_any_work(setup, tmp_path, capsys):
    raw, ws, model = setup
    args = ["predict", "-i", str(raw / "imagesTr"), "-o", str(tmp_path / "out"), "-d", "Tiny", "-c", "3d_fullres",
            "-f", "0", "--workspace", str(ws.root.parent)]
    assert main(args + ["--mesh-smooth", "1"]) == 2
    assert "--mesh-smooth and --mesh-decimate go with --meshes" in capsys.readouterr().err
    assert main(args + ["--meshes", "--mesh-smooth", "-1"]) == 2
    assert not list((tmp_path / "out").glob("*.nii.gz"))
    with pytest.raises(Exception):
        MeshOutput(Predictor.from_model_folder(model, folds=(0,), device="cpu").plans, fmt="ply")
