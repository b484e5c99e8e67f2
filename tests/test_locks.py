"""File locks: a live holder refuses (or delays) a second one and is named; a killed holder's lock
file is not held."""
from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg.locks import LockBusy, file_lock, holder_line, lock_holder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from autoseg.locks import file_lock
with file_lock(Path(sys.argv[1]), wait=False):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(path: Path, seconds: float = 60) -> subprocess.Popen:
    """A process holding the lock on ``path`` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds), "--some-flag"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    return proc


def test_a_live_holder_refuses_a_second_and_is_named(tmp_path):
    path = tmp_path / "work" / ".x.lock"
    proc = hold(path)
    try:
        with pytest.raises(LockBusy) as e, file_lock(path, wait=False):
            pytest.fail("two holders at once")
        assert e.value.holder.startswith(f"pid {proc.pid} on ")
        assert "--some-flag" in e.value.holder  # its command line
        assert lock_holder(path) == e.value.holder
    finally:
        proc.kill()
        proc.wait(10)


def test_a_killed_holders_lock_file_is_not_held(tmp_path):
    path = tmp_path / ".x.lock"
    proc = hold(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert f"pid {proc.pid} " in path.read_text(encoding="utf-8")  # left behind, stale
    assert lock_holder(path) is None
    with file_lock(path, wait=False):
        assert path.read_text(encoding="utf-8").startswith(f"pid {os.getpid()} ")
        assert lock_holder(path) is not None  # another descriptor: held, even within this process


def test_waiting_takes_the_lock_once_the_holder_ends(tmp_path):
    path = tmp_path / ".x.lock"
    proc = hold(path, seconds=1.0)
    seen = []
    started = time.monotonic()
    with file_lock(path, wait=True, on_wait=seen.append):
        assert time.monotonic() - started > 0.5  # blocked until the holder let go
    assert len(seen) == 1 and seen[0].startswith(f"pid {proc.pid} ")
    proc.wait(10)


def test_holder_line_says_pid_host_since_and_command():
    line = holder_line()
    m = re.fullmatch(r"pid (\d+) on (\S+) since (\S+): (.+)", line)
    assert m, line
    assert int(m.group(1)) == os.getpid()
    since = datetime.datetime.fromisoformat(m.group(3))
    assert since.tzinfo is not None
    assert abs((datetime.datetime.now(since.tzinfo) - since).total_seconds()) < 60
    assert "\n" not in line


def test_never_taken_lock_has_no_holder_and_probing_creates_nothing(tmp_path):
    assert lock_holder(tmp_path / "none" / ".x.lock") is None
    assert not (tmp_path / "none").exists()


PROBE = """
import sys, time
from pathlib import Path
from autoseg.locks import lock_holder
print("probing", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    lock_holder(Path(sys.argv[1]))
"""


def test_probing_never_makes_a_non_waiting_taker_fail(tmp_path):
    # another process asking who holds the lock holds it for microseconds: never a refusal
    path = tmp_path / ".x.lock"
    path.touch()
    proc = subprocess.Popen([sys.executable, "-c", PROBE, str(path), "30"], stdout=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace", cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "probing"
        for _ in range(2000):
            with file_lock(path, wait=False):
                pass
    finally:
        proc.kill()
        proc.wait(10)
