"""Atomic file writing: a reader (or a killed run) never sees a half-written file.

Everything autoseg writes goes to a temporary name in the target's folder and is
renamed into place only once complete; ``os.replace`` is atomic on POSIX and Windows.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoseg.errors import OutputError, UserError

if TYPE_CHECKING:
    import numpy as np

# errno -> why a write failed, in the words the user sees; other errors are not the disk's
_WRITE_FAILURES = {
    code: why for code, why in (
        (errno.ENOSPC, "no space left on the device"),
        (getattr(errno, "EDQUOT", None), "disk quota exceeded"),  # not on every platform
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
    ) if code is not None
}
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def output_error(error: OSError, path: str | os.PathLike) -> OutputError | None:
    """``error`` raised writing ``path`` as an :class:`OutputError` naming the file and the cause
    (with the free space for a full disk); None when it is not a disk or permission problem."""
    why = _WRITE_FAILURES.get(error.errno)
    if why is None:
        return None
    path = Path(path)
    if error.errno in _FULL:
        free = _free_mb(path.parent)
        if free is not None:
            why += f" ({free} MB free)"
    return OutputError(f"cannot write {path}: {why}", path, error.errno)


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be written into ``folder`` now, if that is so: read-only, forbidden, full."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return _WRITE_FAILURES[errno.EROFS]
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        pass
    if not os.access(folder, os.W_OK):
        return _WRITE_FAILURES[errno.EACCES]
    free = _free_mb(folder)
    if free is not None and free < 1:
        return f"{_WRITE_FAILURES[errno.ENOSPC]} ({free} MB free)"
    return None


def _free_mb(folder: Path) -> int | None:
    for f in (folder, *folder.parents):
        if f.exists():
            try:
                return shutil.disk_usage(f).free // (1024 * 1024)
            except OSError:
                return None
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``, ``.npy``) because writers such as
    SimpleITK choose the format from the extension. A failed write removes the temporary and
    leaves an earlier ``path`` as it was; a full, read-only or forbidden disk raises
    :class:`~autoseg.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".partial-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        # some writers (SimpleITK's NIfTI) only print a short write; a full disk after the write
        # means the temporary may be cut short, so it must not replace a good file
        if _free_mb(path.parent) == 0:
            raise OutputError(f"cannot write {path}: {_WRITE_FAILURES[errno.ENOSPC]} (0 MB free)", path, errno.ENOSPC)
        os.replace(tmp, path)
    except OutputError:
        raise
    except Exception as e:
        clear = _write_error(e, path)
        if clear is None:
            raise
        raise clear from e
    finally:
        with contextlib.suppress(OSError):  # a read-only disk holds no temporary to remove
            tmp.unlink(missing_ok=True)


def _write_error(error: Exception, path: Path) -> OutputError | None:
    """``error`` met writing ``path`` as an :class:`OutputError` when the disk or the permissions
    are the cause (by errno, or by the folder's state for writers that wrap the disk's error:
    numpy's short write, torch.save's RuntimeError); None when they are not."""
    if isinstance(error, OSError):
        clear = output_error(error, path)
        if clear is not None:
            return clear
    why = None if isinstance(error, UserError) else _unwritable(path.parent)
    return None if why is None else OutputError(f"cannot write {path}: {why}", path)


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Prove that files can be written into ``folder`` (or, while it does not exist, into the
    nearest folder above it, where it would be made), before long work whose results go there;
    creates nothing. :class:`~autoseg.errors.OutputError` naming ``folder`` if not."""
    folder = Path(folder)
    existing = next(f for f in (folder, *folder.parents) if f.exists() or f == f.parent)
    if not existing.is_dir():
        raise OutputError(f"cannot write into {folder}: {existing} is a file, not a folder", folder, errno.ENOTDIR)
    probe = existing / f".partial-{uuid.uuid4().hex[:8]}-write-test"
    try:
        probe.write_bytes(b"autoseg")
    except OSError as e:
        raise output_error(e, folder) or OutputError(f"cannot write into {folder}: {e.strerror or e}",
                                                     folder, e.errno) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return folder


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` (never pickled), atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_partials(folder: str | os.PathLike) -> int:
    """Delete leftovers of writes that a killed run never finished; returns how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".partial*"):  # ".partial-*" files and ".partialdir-*" folders
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n
