"""Advisory file locks that keep two processes off the same work, and name the one in the way.

A lock is ``flock`` on a small file; the holder writes who it is into it (pid, host, since when,
its command line). The operating system releases the lock when the holder's process ends, however
it ends, so a lock file left behind by a killed process is not held: nothing has to clean it up
and the next run simply takes it (a stale lock needs no detection beyond that).

``flock`` locks belong to an open file description: a second ``open`` of the same file in the
same process conflicts with the first, so one process must take each lock once.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process per workspace is then the user's rule
    fcntl = None  # type: ignore[assignment]

# the lock files of a dataset's workspace, beside what they guard
PREPROCESS_LOCK = ".preprocess.lock"  # <dataset>/: plan-and-preprocess writing plans and data
STUDY_LOCK = ".study.lock"  # <dataset>/: an 'autoseg run' study

# a probe (lock_holder) holds a lock for microseconds: a non-waiting taker retries this long
# before it calls the lock busy, so a probe is never mistaken for a holder
_NOWAIT_RETRY_S = 0.25
_COMMAND_CHARS = 200


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def holder_line() -> str:
    """Who this process is, as written into the locks it takes: pid, host, start of the hold, command."""
    host = os.uname().nodename if hasattr(os, "uname") else "this machine"
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {host} since {since}: {_command_line()}"


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0]).name
    if program == "__main__.py":  # python -m autoseg
        program = f"python -m {Path(argv[0]).parent.name}"
    line = " ".join([program, *(shlex.quote(a) for a in argv[1:])]).replace("\n", " ")
    return line if len(line) <= _COMMAND_CHARS else line[:_COMMAND_CHARS - 3] + "..."


def _read_holder(f) -> str:
    f.seek(0)
    return f.read().strip().replace("\n", " ") or "another process"


def _try_lock(f, flags: int, retry_s: float) -> bool:
    """Take ``flags`` on ``f`` without blocking, retrying for ``retry_s``; False while it stays busy."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            fcntl.flock(f, flags | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def fold_lock_path(fold_dir: Path) -> Path:
    """The lock of the fold trained into ``fold_dir`` (``autoseg run``'s jobs and ``autoseg train``)."""
    fold_dir = Path(fold_dir)
    return fold_dir.parent / f".{fold_dir.name}.lock"


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock on ``path``, released when the block ends or the holder dies.

    Busy: with ``wait``, call ``on_wait(holder)`` and block until it is free; else raise
    :class:`LockBusy`. Where locks are unavailable (Windows, some network file systems) the
    block runs unlocked: a missing lock must not stop the work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        locked = fcntl is not None
        if locked:
            try:
                if not _try_lock(f, fcntl.LOCK_EX, 0.0 if wait else _NOWAIT_RETRY_S):
                    holder = _read_holder(f)
                    if not wait:
                        raise LockBusy(holder)
                    if on_wait is not None:
                        on_wait(holder)
                    fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:  # e.g. ENOLCK on a network file system without lock support
                locked = False
        if locked:
            f.seek(0)
            f.truncate()
            f.write(holder_line() + "\n")
            f.flush()
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)


def lock_holder(path: Path) -> str | None:
    """Who holds the lock on ``path`` now, or None when nobody does; creates nothing.

    A lock file whose writer has died is not held (None): its text is only a leftover.
    """
    if fcntl is None:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            if _try_lock(f, fcntl.LOCK_SH, 0.0):
                fcntl.flock(f, fcntl.LOCK_UN)
                return None
            return _read_holder(f)
    except OSError:  # absent (never taken), unreadable or without lock support: nobody can be named
        return None
