"""Atomic writes on a full, read-only or forbidden disk: a clear error naming the file, the earlier
file intact, no temporary left behind."""
from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import numpy as np
import pytest

from autoseg import atomic
from autoseg.atomic import atomic_path, read_json, save_npy, write_json
from autoseg.errors import OutputError, UserError


def failing_open(monkeypatch, target: Path, code: int) -> None:
    """Writes into ``target``'s folder raise ``OSError(code)`` part-way, as a disk that fills up does."""
    real_open = builtins.open

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: max(1, len(data) // 2)])  # some bytes land, then the disk is full
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wa") and Path(file).parent == target.parent:
            return Failing(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".partial"))


@pytest.mark.parametrize("code, why", [(errno.ENOSPC, r"no space left on the device \(\d+ MB free\)"),
                                       (errno.EROFS, "read-only file system"),
                                       (errno.EACCES, "permission denied")])
def test_failed_json_write_names_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch, code, why):
    path = tmp_path / "plans.json"
    write_json(path, {"version": 1})
    failing_open(monkeypatch, path, code)
    with pytest.raises(OutputError, match=rf"^cannot write {path}: {why}$") as e:
        write_json(path, {"version": 2, "big": list(range(1000))})
    monkeypatch.undo()
    assert read_json(path) == {"version": 1}
    assert leftovers(tmp_path) == []
    assert isinstance(e.value, UserError) and isinstance(e.value, OSError)  # cli prints it; OSError handlers still catch it
    assert e.value.errno == code and e.value.filename == str(path)


def test_full_disk_while_saving_an_array_keeps_the_earlier_array(tmp_path, monkeypatch):
    path = tmp_path / "case.npy"
    save_npy(path, np.zeros((4, 4), np.float32))
    failing_open(monkeypatch, path, errno.ENOSPC)
    with pytest.raises(OutputError, match="no space left on the device"):
        save_npy(path, np.ones((64, 64), np.float32))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(path), np.zeros((4, 4), np.float32))
    assert leftovers(tmp_path) == []


def test_a_writer_that_wraps_the_disk_error_is_still_named(tmp_path, monkeypatch):
    # torch.save and SimpleITK report a full disk as RuntimeError: the disk itself says why
    path = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(atomic, "_free_mb", lambda folder: 0)
    full = rf"^cannot write {path}: no space left on the device \(0 MB free\)$"
    with pytest.raises(OutputError, match=full), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert not path.exists() and leftovers(tmp_path) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(RuntimeError, match="not the disk"), atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("not the disk")
    with pytest.raises(TypeError):
        write_json(path, {"not json": object()})
    assert not path.exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    write_json(folder / "a.json", {"v": 1})
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=rf"^cannot write {folder / 'a.json'}: permission denied$"):
            write_json(folder / "a.json", {"v": 2})
        with pytest.raises(OutputError, match=rf"^cannot write {folder / 'sub' / 'b.npy'}: permission denied$"):
            save_npy(folder / "sub" / "b.npy", np.zeros(3))
    finally:
        folder.chmod(0o755)
    assert read_json(folder / "a.json") == {"v": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["a.json"]


def test_a_writer_that_only_prints_a_short_write_does_not_replace_the_file(tmp_path, monkeypatch):
    # SimpleITK's NIfTI writer reports a full disk on stderr and returns: the disk's state decides
    path = tmp_path / "seg.nii"
    path.write_bytes(b"the good one")
    monkeypatch.setattr(atomic, "_free_mb", lambda folder: 0)
    with pytest.raises(OutputError, match="no space left on the device"), atomic_path(path) as tmp:
        tmp.write_bytes(b"cut sh")
    assert path.read_bytes() == b"the good one" and leftovers(tmp_path) == []


def test_numpys_short_write_without_errno_is_named_as_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "case.npy"
    save_npy(path, np.zeros(3))
    monkeypatch.setattr(atomic, "_free_mb", lambda folder: 0)

    def short_write(f, array, allow_pickle=False):
        f.write(b"\x93NUMPY")
        raise OSError("200000 requested and 32240 written")  # numpy's message, errno None

    monkeypatch.setattr(np, "save", short_write)
    with pytest.raises(OutputError, match=rf"^cannot write {path}: no space left on the device \(0 MB free\)$"):
        save_npy(path, np.ones(10))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(path), np.zeros(3))
    assert leftovers(tmp_path) == []
