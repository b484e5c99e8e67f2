"""``autoseg demo``: the whole pipeline on its synthetic dataset, and a second run in the same workspace."""
from __future__ import annotations

import json
import subprocess
import sys


def main(argv: list[str]) -> int:
    # a child process, as a user runs it: the demo trains in bf16 on every core, and run inside
    # the test process it left torch's CPU state such that a later bf16 test of the suite
    # (test_networks) saw non-finite gradients in about half of the runs
    return subprocess.run([sys.executable, "-m", "autoseg", *argv], capture_output=True).returncode


def test_demo_runs_end_to_end_and_again_in_the_same_workspace(tmp_path):
    argv = ["demo", "--workspace", str(tmp_path), "--num-cases", "6", "--num-test-cases", "2",
            "--epochs", "1", "--iters-per-epoch", "2", "--folds", "0"]
    assert main(argv) == 0
    summary = tmp_path / "demo_data" / "predictions" / "summary.json"
    assert json.loads(summary.read_text())["num_cases"] == 2
    checkpoint = tmp_path / "AutosegDemo" / "results" / "unet__3d_fullres" / "fold_0" / "checkpoint_final.pt"
    trained = checkpoint.stat().st_mtime_ns
    # a second demo finds fold 0's checkpoint and keeps it instead of stopping at it
    assert main(argv) == 0
    assert checkpoint.stat().st_mtime_ns == trained
    assert json.loads(summary.read_text())["num_cases"] == 2
