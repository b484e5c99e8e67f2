"""``autoseg run``: killed mid-way and rerun, it skips the finished fold and resumes the other;
its options fail with one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg.synthetic import make_dataset

FAST = ["-c", "3d_fullres", "--folds", "0", "1", "--iters-per-epoch", "1", "--val-iters", "1",
        "--device", "cpu", "-np", "1", "--profile", "cpu"]


def _autoseg(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "autoseg", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env, **kw)


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"autoseg run ended ({process.returncode}) before {path} appeared:\n"
                                 + process.communicate()[1][-3000:])
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout_s} s")
        time.sleep(0.05)


def test_killed_run_resumes_and_skips_the_finished_fold(tmp_path):
    raw = make_dataset(tmp_path / "raw" / "Tiny", num_cases=5, shape=(16, 20, 20), seed=0)
    ws = tmp_path / "ws"
    argv = ["run", str(raw), "--workspace", str(ws), "--epochs", "3", *FAST]
    fold0 = ws / "Tiny" / "results" / "unet__3d_fullres" / "fold_0"
    fold1 = fold0.parent / "fold_1"

    first = _autoseg(*argv)
    # sequential: fold 0 has finished once fold 1 has written its first checkpoint
    _wait_for(fold1 / "checkpoint_latest.pt", first)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert (fold0 / "done.json").is_file() and not (fold1 / "done.json").exists()
    status = json.loads((ws / "Tiny" / "study_status.json").read_text())
    assert [j["state"] for j in status["jobs"]] == ["done", "running"]  # as the kill left it
    done_stamp = (fold0 / "done.json").stat().st_mtime_ns

    second = _autoseg(*argv)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err[-3000:]
    assert "skipping unet__3d_fullres fold 0: already trained" in out
    assert "done     unet__3d_fullres fold 1" in out and "resumed from its checkpoint" in out
    assert (fold0 / "done.json").stat().st_mtime_ns == done_stamp
    assert (fold1 / "done.json").is_file() and (ws / "Tiny" / "best_configuration.json").is_file()
    assert "resuming fold_1 from checkpoint_" in (ws / "Tiny" / "study_logs" / "unet__3d_fullres__fold_1.log").read_text()
    summary = json.loads((ws / "Tiny" / "study_summary.json").read_text())
    assert summary["status"] == "finished" and summary["jobs"]["skipped"] == 1 and summary["jobs"]["done"] == 1
    assert summary["selected"] == "unet__3d_fullres"


@pytest.mark.parametrize("extra, message", [
    (["--executor", "slurm", "--parallel", "2"], "--parallel is for --executor local"),
    (["--slurm-partition", "gpu"], "--slurm-partition: only for --executor slurm"),
    (["--executor", "submitit-local", "--slurm-time", "0"], "--slurm-time must be positive"),
    (["--time-budget", "2h", "--fold-minutes", "5"], "--time-budget and --fold-minutes: give one"),
    (["--folds", "5"], "--folds: folds are 0-4"),
    (["--time-budget", "2h", "--trainers", "fct"], "with --trainers give --fold-minutes instead"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, message):
    from autoseg.cli import main

    assert main(["run", str(tmp_path / "raw"), "--workspace", str(tmp_path / "ws"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoseg run: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "ws").exists()


def test_a_bad_slurm_profile_names_its_keys(tmp_path, capsys):
    pytest.importorskip("submitit")  # the [slurm] extra
    from autoseg.cli import main

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"partition": "gpu", "gpu": 1}))
    assert main(["run", "Tiny", "--workspace", str(tmp_path / "ws"), "--executor", "submitit-debug",
                 "--slurm-profile", str(profile)]) == 2
    assert "profile.json: unknown key(s) gpu" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    from autoseg.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--configurations", "--trainers", "--folds", "--executor", "--parallel", "--slurm-partition",
                   "--slurm-gpus", "--slurm-time", "--slurm-array-parallelism", "--slurm-profile", "--time-budget",
                   "--epochs", "--iters-per-epoch", "--val-iters", "--device", "--precision", "--seed", "--predict",
                   "-np", "submitit-local", "documentation/study.md"):
        assert option in out
