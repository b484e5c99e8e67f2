"""Killed with SIGKILL part-way, a command rerun the same way finishes with exactly what an
uninterrupted run writes, and leaves no half-written file (train and run: tests/trainers/
test_resume.py, tests/commands/test_run.py)."""
from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.synthetic import make_dataset
from tests.inference.models import make_model, tiny_plans


def run(*argv: str) -> None:
    r = subprocess.run([sys.executable, "-m", "autoseg", *argv], capture_output=True, text=True, encoding="utf-8",
                       errors="replace", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def kill_when(argv: list[str], ready, timeout_s: float = 120) -> None:
    """Start ``autoseg argv`` and SIGKILL it as soon as ``ready()`` holds (it must not have finished)."""
    proc = subprocess.Popen([sys.executable, "-m", "autoseg", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            assert proc.poll() is None, "the command finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def partials(folder: Path) -> list[Path]:
    return list(folder.rglob(".partial*"))


def test_plan_and_preprocess_killed_mid_dataset_reruns_to_the_same_files(tmp_path):
    raw = make_dataset(tmp_path / "raw" / "Kill", num_cases=12, shape=(24, 32, 32), seed=0)
    argv = lambda ws: ["plan-and-preprocess", str(raw), "--workspace", str(ws), "-c", "3d_fullres", "-np", "1"]  # noqa: E731
    run(*argv(tmp_path / "a"))
    killed = tmp_path / "b" / "Kill" / "preprocessed"
    kill_when(argv(tmp_path / "b"), lambda: len(list(killed.rglob("*.json"))) >= 2)
    run(*argv(tmp_path / "b"))
    a, b = tmp_path / "a" / "Kill" / "preprocessed", killed
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and files
    for f in files:
        if f.suffix == ".npy":
            np.testing.assert_array_equal(np.load(a / f), np.load(b / f), err_msg=str(f))
    assert not partials(tmp_path / "b")


def test_predict_killed_mid_folder_reruns_to_the_same_outputs(tmp_path):
    raw = make_dataset(tmp_path / "raw", num_cases=8, shape=(20, 24, 24), spacing=(2.0, 1.0, 1.0), seed=3)
    ws = tmp_path / "ws" / "Tiny"
    plans = tiny_plans()
    plans.save(ws / "plans.json")
    make_model(ws / "results", plans, "3d_fullres", folds=(0,))
    argv = lambda out: ["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "Tiny", "-c", "3d_fullres",  # noqa: E731
                        "-f", "0", "--save-probabilities", "--workspace", str(tmp_path / "ws"), "--device", "cpu"]
    run(*argv(tmp_path / "a"))
    b = tmp_path / "b"
    kill_when(argv(b), lambda: len(list(b.glob("*.nii.gz"))) >= 2)
    assert len(list(b.glob("*.nii.gz"))) < 8
    run(*argv(b))
    a = tmp_path / "a"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".partial"))
    for name in names:
        if name.endswith(".nii.gz"):
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / name))),
                                          sitk.GetArrayFromImage(sitk.ReadImage(str(b / name))), err_msg=name)
        elif name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=name)
        else:
            assert filecmp.cmp(a / name, b / name, shallow=False), name
    assert not partials(b)


def test_find_best_killed_before_it_finishes_reruns_to_the_same_selection(tmp_path):
    import json

    from tests.postprocessing.test_find_best import make_workspace, one_voxel_missing, split_and_island

    results = {}
    for name in ("a", "b"):
        ws = make_workspace(tmp_path / name, split_and_island, one_voxel_missing)
        argv = ["find-best-configuration", ws.name, "--workspace", str(ws.root.parent)]
        if name == "b":
            # the report and its pictures come first; best_configuration.json, which says find-best
            # finished, is written last, so a kill in between leaves no selection to trust
            kill_when(argv, lambda: any((ws.root / "find_best_previews").glob("*.png")))
            assert not ws.best_configuration_file.exists()
        run(*argv)
        results[name] = json.loads(ws.best_configuration_file.read_text()), (ws.root / "find_best_report.md").read_text()
        assert not partials(ws.root)
    assert results["a"] == results["b"]
