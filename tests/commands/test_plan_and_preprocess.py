"""The preprocessing runner (resume, crash clean-up) and the ``autoseg plan-and-preprocess`` command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.atomic import read_json
from autoseg.dataset.layout import load_dataset
from autoseg.planners.plans import ChannelNormalization, Plans
from autoseg.preprocessing.runner import SETTINGS_FILE, preprocess_dataset
from autoseg.synthetic import make_dataset
from autoseg.workspace import DatasetWorkspace

from tests.preprocessing.test_pipeline import make_plans

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw") / "Synth", num_cases=4, shape=(10, 14, 14), spacing=(2.0, 1.0, 1.0), seed=0)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_runner_writes_resumes_and_cleans_up(dataset, tmp_path):
    spec = load_dataset(dataset)
    plans, config = make_plans([1.0, 1.0, 1.0])
    ws = DatasetWorkspace(tmp_path / "Synth")
    counts = preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, progress=False)
    folder = ws.preprocessed_dir(config.data_identifier)
    assert counts == {config.data_identifier: 4}
    for case in spec.cases:
        data = np.load(folder / f"{case.case_id}.npy", mmap_mode="r")
        seg = np.load(folder / f"{case.case_id}_seg.npy", mmap_mode="r")
        props = read_json(folder / f"{case.case_id}.json")
        assert data.dtype == np.float32 and seg.dtype == np.int16
        assert data.shape[1:] == seg.shape == tuple(props["shape_after_resampling"])
        assert props["target_spacing"] == [1.0, 1.0, 1.0] and props["original_spacing"] == [2.0, 1.0, 1.0]
        assert data.shape[1] == 2 * props["shape_after_crop"][0]
        assert set(props["class_locations"]) == {"1", "2"}
    assert (folder / SETTINGS_FILE).is_file()

    # a rerun touches nothing
    before = _mtimes(folder)
    assert preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, progress=False) == {config.data_identifier: 0}
    assert _mtimes(folder) == before

    # simulated crash: a half-written file, and a case whose arrays exist but whose JSON does not
    (folder / ".partial-deadbeef-case_001.npy").write_bytes(b"junk")
    victim = spec.cases[1].case_id
    (folder / f"{victim}.json").unlink()
    counts = preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, progress=False)
    assert counts == {config.data_identifier: 1}
    assert not list(folder.glob(".partial-*"))
    after = _mtimes(folder)
    assert (folder / f"{victim}.json").is_file()
    assert after[f"{victim}.npy"] != before[f"{victim}.npy"]
    others = [c.case_id for c in spec.cases if c.case_id != victim]
    assert all(after[f"{c}.npy"] == before[f"{c}.npy"] for c in others)

    # new settings (another normalization) make the old files stale: everything is redone
    plans.normalization = [ChannelNormalization("none")]
    counts = preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, progress=False)
    assert counts == {config.data_identifier: 4}
    data = np.load(folder / f"{spec.cases[0].case_id}.npy")
    assert data.max() > 50  # un-normalized synthetic intensities (~100)


def test_runner_parallel_matches_serial(dataset, tmp_path):
    spec = load_dataset(dataset)
    plans, config = make_plans([1.5, 1.0, 1.0])
    serial, parallel = DatasetWorkspace(tmp_path / "a"), DatasetWorkspace(tmp_path / "b")
    preprocess_dataset(spec, plans, [config.name], serial, num_workers=1, progress=False)
    preprocess_dataset(spec, plans, [config.name], parallel, num_workers=2, progress=False)
    for case in spec.cases:
        for suffix in (".npy", "_seg.npy"):
            a = np.load(serial.preprocessed_dir(config.data_identifier) / f"{case.case_id}{suffix}")
            b = np.load(parallel.preprocessed_dir(config.data_identifier) / f"{case.case_id}{suffix}")
            np.testing.assert_array_equal(a, b)


def test_runner_names_the_failing_case(dataset, tmp_path):
    spec = load_dataset(dataset)
    plans, config = make_plans([1.0, 1.0, 1.0], label_values=(0, 1))  # label 2 is undeclared
    with pytest.raises(RuntimeError, match="case_000"):
        preprocess_dataset(spec, plans, [config.name], DatasetWorkspace(tmp_path / "w"), num_workers=1, progress=False)


# --- the command ---

def _need_pipeline():
    pytest.importorskip("autoseg.dataset.integrity")
    pytest.importorskip("autoseg.fingerprint.fingerprint")
    pytest.importorskip("autoseg.planners")


def test_cli_end_to_end(dataset, tmp_path, capsys):
    _need_pipeline()
    from autoseg.cli import main

    ws = tmp_path / "ws"
    assert main(["plan-and-preprocess", str(dataset), "--workspace", str(ws), "-np", "2", "--profile", "cpu"]) == 0
    root = ws / "Synth"
    assert read_json(root / "dataset_source.json") == {"raw_path": str(dataset.resolve()), "layout": "msd"}
    assert (root / "fingerprint.json").is_file()
    plans = Plans.load(root / "plans.json")
    assert plans.label_values == [0, 1, 2]
    for config in plans.configurations.values():
        folder = root / "preprocessed" / config.data_identifier
        assert len(list(folder.glob("*_seg.npy"))) == 4 and len(list(folder.glob("case_*.json"))) == 4
        props = read_json(folder / "case_000.json")
        if config.dim == 3:
            assert props["target_spacing"] == pytest.approx(config.spacing)
    out = capsys.readouterr().out
    assert "3d_fullres" in out and "preprocessed 4 case(s)" in out

    # rerun: resumes, nothing to do
    assert main(["plan-and-preprocess", str(dataset), "--workspace", str(ws), "-np", "1", "--profile", "cpu"]) == 0
    assert "already done" in capsys.readouterr().out


def test_cli_verify_only_and_plan_only(dataset, tmp_path, capsys):
    _need_pipeline()
    from autoseg.cli import main

    ws = tmp_path / "ws"
    assert main(["plan-and-preprocess", str(dataset), "--workspace", str(ws), "--verify-only", "-np", "1"]) == 0
    assert "dataset OK: 4 cases" in capsys.readouterr().out
    assert not ws.exists()
    assert main(["plan-and-preprocess", str(dataset), "--workspace", str(ws), "--plan-only", "-np", "1", "--profile", "cpu"]) == 0
    assert (ws / "Synth" / "plans.json").is_file() and not (ws / "Synth" / "preprocessed").exists()
    assert main(["plan-and-preprocess", str(dataset), "--workspace", str(ws), "-np", "1", "--profile", "cpu",
                 "-c", "3d_nonsense"]) == 2
    assert "3d_nonsense" in capsys.readouterr().err


def test_cli_broken_dataset_writes_nothing(tmp_path, capsys):
    _need_pipeline()
    from autoseg.cli import main

    raw = make_dataset(tmp_path / "Broken", num_cases=3, shape=(8, 10, 10), seed=1)
    (raw / "labelsTr" / "case_001.nii.gz").unlink()
    ws = tmp_path / "ws"
    assert main(["plan-and-preprocess", str(raw), "--workspace", str(ws), "--verify-only", "-np", "1"]) == 2
    assert "case_001" in capsys.readouterr().err
    assert main(["plan-and-preprocess", str(raw), "--workspace", str(ws), "-np", "1"]) == 2
    assert "case_001" in capsys.readouterr().err
    assert not ws.exists()


def test_cli_help_lists_options(capsys):
    from autoseg.cli import main

    with pytest.raises(SystemExit):
        main(["plan-and-preprocess", "--help"])
    out = capsys.readouterr().out
    for option in ("--workspace", "-np", "--planner", "--gpu-memory", "--profile", "--verify-only", "--plan-only", "--n4", "--name"):
        assert option in out


@pytest.mark.skipif(not (DATA / "Task04_Hippocampus").is_dir(), reason="shared Hippocampus data not present")
def test_real_hippocampus_needs_no_resampling(tmp_path):
    # Hippocampus is at 1 mm already: preprocessed shapes equal the cropped shapes
    import shutil

    src = DATA / "Task04_Hippocampus"
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = meta["training"][:3]
    meta["numTraining"] = 3
    raw = tmp_path / "Hippo"
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    for entry in meta["training"]:
        for key in ("image", "label"):
            shutil.copy(src / entry[key], raw / entry[key])
    (raw / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(raw)
    plans, config = make_plans([1.0, 1.0, 1.0])
    ws = DatasetWorkspace(tmp_path / "ws")
    preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, progress=False)
    for case in spec.cases:
        props = read_json(ws.preprocessed_dir(config.data_identifier) / f"{case.case_id}.json")
        assert props["shape_after_resampling"] == props["shape_after_crop"]


def test_runner_n4_changes_data_and_is_recorded(dataset, tmp_path):
    spec = load_dataset(dataset)
    plans, config = make_plans([2.0, 1.0, 1.0])
    ws = DatasetWorkspace(tmp_path / "w")
    folder = ws.preprocessed_dir(config.data_identifier)
    preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, progress=False)
    plain = np.load(folder / "case_000.npy")
    # toggling --n4 invalidates the folder: all cases are recomputed with the correction
    assert preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, n4=True, progress=False) == {config.data_identifier: 4}
    assert read_json(folder / SETTINGS_FILE)["n4"] is True
    corrected = np.load(folder / "case_000.npy")
    assert corrected.shape == plain.shape and not np.allclose(corrected, plain)


def test_inference_preprocessing_applies_the_planned_n4(dataset, tmp_path):
    """A model trained on N4-corrected data sees N4-corrected scans at inference too."""
    from autoseg.preprocessing.pipeline import preprocess_case
    from autoseg.dataset.imageio import read_channels

    spec = load_dataset(dataset)
    plans, config = make_plans([2.0, 1.0, 1.0])
    plans.n4_bias_correction = True
    ws = DatasetWorkspace(tmp_path / "w")
    preprocess_dataset(spec, plans, [config.name], ws, num_workers=1, n4=True, progress=False)
    trained_on = np.load(ws.preprocessed_dir(config.data_identifier) / "case_000.npy")
    image, geometry = read_channels(spec.cases[0].image_files)
    at_inference, _, _ = preprocess_case(image, None, geometry, plans, config)
    np.testing.assert_allclose(at_inference, trained_on, atol=1e-5)
    plans.n4_bias_correction = False
    uncorrected, _, _ = preprocess_case(image, None, geometry, plans, config)
    assert not np.allclose(uncorrected, trained_on)
