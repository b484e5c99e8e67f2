"""Two processes on one workspace: the same fold trained twice, training while preprocessing, two
preprocessings. The second is refused at once, in one line naming the first (pid, host, command);
a killed first leaves a lock file that is not held, and the next run proceeds."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg.locks import PREPROCESS_LOCK, fold_lock_path, lock_holder
from autoseg.synthetic import make_dataset
from tests.trainers.test_base import make_workspace

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pathlib import Path
from autoseg.locks import file_lock
with file_lock(Path(sys.argv[1]), wait=False):
    print("locked", flush=True)
    time.sleep(120)
"""
TRAIN = ["--iters-per-epoch", "1", "--val-iters", "0", "--device", "cpu", "--num-workers", "0", "--no-validation"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def autoseg(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoseg", *argv], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=timeout, env=env(), cwd=REPO, check=False)


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autoseg", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env(), cwd=REPO)


def hold(path: Path) -> subprocess.Popen:
    """Another process holding the lock on ``path``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace", env=env(), cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(30)


def wait_until_held(path: Path, proc: subprocess.Popen, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        holder = lock_holder(path)
        if holder is not None and holder.startswith(f"pid {proc.pid} "):
            return holder
        assert proc.poll() is None, f"it ended ({proc.returncode}) before taking {path}:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{path} not taken in {timeout_s} s"
        time.sleep(0.05)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    return root / "ws", make_workspace(root, num_cases=5)


def test_the_same_fold_trained_twice_at_once_is_refused_naming_the_first(workspace):
    ws_root, ws = workspace
    lock = fold_lock_path(ws.fold_dir("unet", "3d_fullres", 0))
    first = start("train", "Tiny", "3d_fullres", "0", "--workspace", str(ws_root), "--epochs", "100000", *TRAIN)
    try:
        holder = wait_until_held(lock, first)
        assert "autoseg train Tiny 3d_fullres 0" in holder  # its command line
        line = one_line_error(autoseg("train", "Tiny", "3d_fullres", "0", "--workspace", str(ws_root), "--epochs", "1",
                                      *TRAIN))
        assert line.startswith("autoseg train: error: unet__3d_fullres fold 0 of ")
        assert f"is already being trained by pid {first.pid} on " in line and "since " in line
        assert first.poll() is None  # the first goes on
    finally:
        stop(first)
    # killed, it leaves its lock file behind, not held: the next run takes it (and starts afresh
    # here, where a resumed run would go on to the first one's 100000 epochs)
    assert lock.is_file() and lock_holder(lock) is None
    shutil.rmtree(ws.fold_dir("unet", "3d_fullres", 0))
    r = autoseg("train", "Tiny", "3d_fullres", "0", "--workspace", str(ws_root), "--epochs", "1", *TRAIN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert lock_holder(lock) is None  # released at the end


def test_another_fold_trains_while_one_is_locked(workspace):
    ws_root, ws = workspace
    holder = hold(fold_lock_path(ws.fold_dir("unet", "3d_fullres", 1)))
    try:
        r = autoseg("train", "Tiny", "3d_fullres", "2", "--workspace", str(ws_root), "--epochs", "1", *TRAIN)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        stop(holder)


def test_training_is_refused_while_the_dataset_is_preprocessed(workspace):
    ws_root, ws = workspace
    holder = hold(ws.root / PREPROCESS_LOCK)
    try:
        line = one_line_error(autoseg("train", "Tiny", "3d_fullres", "3", "--workspace", str(ws_root), "--epochs", "1",
                                      *TRAIN))
        assert f"plan-and-preprocess is running on {ws.root} (pid {holder.pid} on " in line
        assert "wait for it" in line
    finally:
        stop(holder)
    assert not ws.fold_dir("unet", "3d_fullres", 3).exists()  # refused before anything was written


def test_two_preprocessings_of_one_dataset_the_second_refused(tmp_path):
    raw = make_dataset(tmp_path / "raw" / "Two", num_cases=3, shape=(8, 10, 10), seed=2)
    ws = tmp_path / "ws"
    argv = ["plan-and-preprocess", str(raw), "--workspace", str(ws), "-np", "1", "--profile", "cpu", "-c", "3d_fullres"]
    holder = hold(ws / "Two" / PREPROCESS_LOCK)
    try:
        line = one_line_error(autoseg(*argv))
        assert line.startswith(f"autoseg plan-and-preprocess: error: plan-and-preprocess is already running on "
                               f"{ws / 'Two'} (pid {holder.pid} on ")
    finally:
        stop(holder)
    assert sorted(p.name for p in (ws / "Two").iterdir()) == [PREPROCESS_LOCK]  # nothing written
    r = autoseg(*argv)  # the killed holder's lock file is stale: this one runs
    assert r.returncode == 0, r.stderr[-3000:]
    assert (ws / "Two" / "plans.json").is_file() and lock_holder(ws / "Two" / PREPROCESS_LOCK) is None


def test_planning_again_is_refused_while_a_fold_trains(tmp_path):
    raw = make_dataset(tmp_path / "raw" / "Busy", num_cases=3, shape=(8, 10, 10), seed=2)
    ws = tmp_path / "ws"
    argv = ["plan-and-preprocess", str(raw), "--workspace", str(ws), "-np", "1", "--profile", "cpu", "--plan-only"]
    assert autoseg(*argv).returncode == 0
    plans = (ws / "Busy" / "plans.json").read_bytes()
    holder = hold(ws / "Busy" / "results" / "unet__3d_fullres" / ".fold_4.lock")
    try:
        line = one_line_error(autoseg(*argv))
        assert f"unet__3d_fullres fold_4 is training on {ws / 'Busy'} (pid {holder.pid} on " in line
    finally:
        stop(holder)
    assert (ws / "Busy" / "plans.json").read_bytes() == plans


def test_the_library_call_of_autoseg_run_takes_and_releases_its_own_lock(tmp_path):
    # 'autoseg run' preprocesses in its own process: one lock, taken once, gone when done
    from autoseg.preprocessing.plan_and_preprocess import plan_and_preprocess

    raw = make_dataset(tmp_path / "raw" / "Own", num_cases=3, shape=(8, 10, 10), seed=2)
    seen = []
    prepared = plan_and_preprocess(raw, tmp_path / "ws", profile="cpu", configurations=["3d_fullres"],
                                   progress=False, on_planned=lambda p: seen.append(lock_holder(p.workspace.root
                                                                                                / PREPROCESS_LOCK)))
    assert seen and seen[0].startswith(f"pid {os.getpid()} ")  # held while it works
    assert lock_holder(prepared.workspace.root / PREPROCESS_LOCK) is None
    again = plan_and_preprocess(raw, tmp_path / "ws", profile="cpu", configurations=["3d_fullres"], progress=False,
                                reuse_plans=True)  # a resumed study: the same process may take it again
    assert again.reused_plans
