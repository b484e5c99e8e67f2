"""A training run killed with SIGKILL mid-epoch resumes with --continue and finishes."""
import os
import signal
import subprocess
import sys
import time

import torch

from autoseg.atomic import read_json
from tests.trainers.test_base import make_workspace


def test_resume_after_sigkill(tmp_path):
    ws = make_workspace(tmp_path, num_cases=4)
    args = [sys.executable, "-m", "autoseg", "train", "Tiny", "3d_fullres", "0", "--workspace", str(tmp_path / "ws"),
            "--epochs", "4", "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu", "--num-workers", "0",
            "--no-validation"]
    fold = ws.fold_dir("unet", "3d_fullres", 0)
    log_file = tmp_path / "stderr.txt"
    with open(log_file, "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 60
            # wait for the first epoch's checkpoint, then for the next epoch to be under way
            while not (fold / "checkpoint_latest.pt").is_file():
                assert proc.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.3)
            assert proc.poll() is None, "run finished before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
    state = torch.load(fold / "checkpoint_latest.pt", weights_only=True)
    done = state["epoch"]
    assert 1 <= done < 4 and not (fold / "checkpoint_final.pt").exists()
    r = subprocess.run(args + ["--continue"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"epoch {done}, iteration {2 * done}/8" in r.stderr
    log = read_json(fold / "log.json")
    assert [e["epoch"] for e in log["epochs"]] == [0, 1, 2, 3]
    assert [e["iterations"] for e in log["epochs"]] == [2, 4, 6, 8]
    final = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert final["epoch"] == 4 and final["iteration"] == 8
    assert not (fold / "checkpoint_latest.pt").exists()
    assert not list(fold.glob(".partial-*"))
