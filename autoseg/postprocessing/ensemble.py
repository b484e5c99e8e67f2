"""Ensembling: average the softmax probabilities of several models, then take the argmax.

:func:`average_probabilities` and :func:`segmentation_from_probabilities` work on whole
``(K, Z, Y, X)`` arrays. Predictions with many classes go one class at a time instead, so that
memory holds a few volumes whatever ``K`` is: :class:`RunningArgmax` takes the argmax of classes
fed in order, :class:`ClassFileWriter` writes a probabilities file class by class and
:class:`ProbabilityFile` reads one back class by class. :func:`ensemble_folders` and
:func:`segmentation_from_probability_files` ensemble saved probabilities that way.

Each member folder holds, per case, ``CASE_probabilities.npy`` (float16 ``(K, Z, Y, X)`` in the
original image grid, class index ``i`` = label value ``label_values[i]``) next to the member's
segmentation ``CASE<ending>``, whose geometry the ensembled segmentation is written with.
Folders come from training's fold validation or ``autoseg predict --save-probabilities``.

The label values come from the caller, else from ``probabilities.json`` (``{"label_values": [...]}``)
or a ``plans.json`` in the folder or up to three folders above it (a fold's ``validation/``
folder finds the ``plans.json`` copy of its results folder).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from autoseg.atomic import atomic_path, read_json, write_json
from autoseg.errors import UserError

PROBABILITIES_SUFFIX = "_probabilities.npy"
# argmax in slabs along z: a full int64 index volume of a large CT would cost 8 bytes per voxel
_ARGMAX_SLAB_VOXELS = 16 * 1024 * 1024


def average_probabilities(probabilities: Iterable[np.ndarray]) -> np.ndarray:
    """Mean of same-shaped probability arrays in float32 (float16 sums would lose precision).

    Summed as the arrays arrive, so an ensemble's members can be computed one at a time: only
    the running sum and the current member exist at once. A float32 first array is summed into
    in place (callers hand over arrays they own).
    """
    total, n = None, 0
    for p in probabilities:
        if total is None:
            total = p if p.dtype == np.float32 else p.astype(np.float32)
        elif p.shape != total.shape:
            raise ValueError(f"probability arrays differ in shape: {total.shape} vs {p.shape}")
        else:
            total += p
        n += 1
    if total is None:
        raise ValueError("nothing to average")
    if n > 1:
        total /= n
    return total


def label_dtype(label_values: Sequence[int]) -> np.dtype:
    """The smallest integer type that holds every label value."""
    lo, hi = min(label_values), max(label_values)
    for dt in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def segmentation_from_probabilities(probabilities: np.ndarray | torch.Tensor, label_values: Sequence[int]) -> np.ndarray:
    """Argmax over classes, class index ``i`` -> ``label_values[i]``, smallest sufficient dtype."""
    probs = torch.as_tensor(probabilities)
    if probs.ndim != 4:
        raise ValueError(f"expected (K, Z, Y, X) probabilities, got shape {tuple(probs.shape)}")
    if probs.shape[0] != len(label_values):
        raise ValueError(f"{probs.shape[0]} classes but {len(label_values)} label values")
    dtype = label_dtype(label_values)
    lut = torch.as_tensor(np.asarray(label_values, dtype=np.int64))
    seg = np.empty(tuple(probs.shape[1:]), dtype=dtype)
    slab = max(1, _ARGMAX_SLAB_VOXELS // max(1, int(np.prod(probs.shape[2:]))))
    for z in range(0, probs.shape[1], slab):
        idx = torch.argmax(probs[:, z:z + slab], dim=0)
        seg[z:z + slab] = lut[idx].numpy().astype(dtype, copy=False)
    return seg


def index_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned type that holds class indices ``0 .. num_classes - 1``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


class RunningArgmax:
    """Argmax over classes that arrive one at a time (class 0 first), as ``np.argmax`` gives it.

    Holds a float32 running maximum and the smallest index type: five or six bytes per voxel,
    whatever the number of classes. A class replaces the current winner only where it is strictly
    larger, so at exact ties the lowest class index wins, as with ``np.argmax`` / ``torch.argmax``.
    """

    def __init__(self, shape: Sequence[int], num_classes: int) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = int(num_classes)
        self.index = np.zeros(self.shape, dtype=index_dtype(self.num_classes))
        self.best: np.ndarray | None = None
        self.seen = 0

    def update(self, values: np.ndarray) -> None:
        """Feed the next class's values (any float dtype, ``shape``)."""
        if values.shape != self.shape:
            raise ValueError(f"class {self.seen}: shape {values.shape}, expected {self.shape}")
        if self.seen >= self.num_classes:
            raise ValueError(f"more than {self.num_classes} classes fed")
        if self.best is None:
            self.best = np.array(values, dtype=np.float32, copy=True)
        else:
            np.putmask(self.index, values > self.best, self.seen)
            np.maximum(self.best, values, out=self.best)  # where it is larger: the same as copying it there
        self.seen += 1

    def labels(self, label_values: Sequence[int]) -> np.ndarray:
        """The winning class of each voxel as its label value, in :func:`label_dtype`."""
        if self.seen != self.num_classes:
            raise ValueError(f"{self.seen} of {self.num_classes} classes fed")
        if len(label_values) != self.num_classes:
            raise ValueError(f"{self.num_classes} classes but {len(label_values)} label values")
        lut = np.asarray(label_values).astype(label_dtype(label_values))
        return lut[self.index]


def _slab_rows(shape: Sequence[int]) -> int:
    """Rows along the first axis that make about ``_ARGMAX_SLAB_VOXELS`` voxels."""
    return max(1, _ARGMAX_SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))


class ClassFileWriter:
    """Writes a ``(K, *shape)`` ``.npy`` one class after another, atomically (a context manager).

    The file is byte for byte what ``np.save`` writes for the whole array, but only one slab of
    one class is ever in memory, and the bytes go through ordinary writes: the page cache may
    drop them once on disk, whereas pages of a memory-mapped file stay counted in the process's
    resident memory while mapped. The file appears under its name only when all ``K`` classes
    have been written.
    """

    def __init__(self, path: str | os.PathLike, num_classes: int, shape: Sequence[int],
                 dtype: Any = np.float16) -> None:
        self.path = Path(path)
        self.num_classes = int(num_classes)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
        self.written = 0
        self._atomic = None
        self._file = None

    def __enter__(self) -> "ClassFileWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._file = open(tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.num_classes,) + self.shape}
        np.lib.format.write_array_header_1_0(self._file, header)
        return self

    def write(self, volume: np.ndarray) -> None:
        """The next class, a whole ``shape`` volume."""
        self.write_box(volume, tuple(slice(0, s) for s in self.shape), 0.0)

    def write_box(self, values: np.ndarray, box: Sequence[slice], background: float) -> None:
        """The next class: ``values`` inside ``box`` (half-open slices of ``shape``), ``background`` elsewhere."""
        if self.written >= self.num_classes:
            raise ValueError(f"{self.path}: more than {self.num_classes} classes written")
        box = tuple(slice(*b.indices(s)[:2]) for b, s in zip(box, self.shape))
        if values.shape != tuple(b.stop - b.start for b in box):
            raise ValueError(f"{self.path}: values of shape {values.shape} do not fill the box {box}")
        whole = all(b.start == 0 and b.stop == s for b, s in zip(box, self.shape))
        rows = _slab_rows(self.shape)
        for z0 in range(0, self.shape[0], rows):
            z1 = min(z0 + rows, self.shape[0])
            if whole:
                slab = np.ascontiguousarray(values[z0:z1], dtype=self.dtype)
            else:
                slab = np.full((z1 - z0,) + self.shape[1:], background, dtype=self.dtype)
                lo, hi = max(z0, box[0].start), min(z1, box[0].stop)
                if lo < hi:
                    slab[(slice(lo - z0, hi - z0),) + box[1:]] = values[lo - box[0].start:hi - box[0].start]
            self._file.write(slab.data)
        self.written += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._file.close()
        if exc_type is None and self.written != self.num_classes:
            exc = ValueError(f"{self.path}: {self.written} of {self.num_classes} classes written")
            self._atomic.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._atomic.__exit__(exc_type, exc, tb))


class ProbabilityFile:
    """A saved ``(K, Z, Y, X)`` probabilities ``.npy``, read one class at a time with plain reads.

    Reading through ``np.load(mmap_mode="r")`` would leave every page read counted in the
    process's resident memory; this keeps only the class asked for.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise UserError(f"{self.path}: not a readable .npy file ({e})") from None
        if len(shape) != 4 or fortran_order or dtype.hasobject:
            raise UserError(f"{self.path}: expected a C-ordered (K, Z, Y, X) array, got shape {shape}"
                            + (" in Fortran order" if fortran_order else ""))
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        expected = self.offset + int(np.prod(self.shape)) * dtype.itemsize
        if self.path.stat().st_size < expected:
            raise UserError(f"{self.path}: truncated ({self.path.stat().st_size} of {expected} bytes)")

    @property
    def num_classes(self) -> int:
        return self.shape[0]

    def read_class(self, c: int) -> np.ndarray:
        """Class ``c`` as a ``(Z, Y, X)`` array of the file's dtype."""
        n = int(np.prod(self.shape[1:]))
        with open(self.path, "rb") as f:
            f.seek(self.offset + c * n * self.dtype.itemsize)
            return np.fromfile(f, dtype=self.dtype, count=n).reshape(self.shape[1:])


def mean_class(members: Sequence[ProbabilityFile], c: int) -> np.ndarray:
    """Class ``c`` averaged over ``members`` in float32, with :func:`average_probabilities`' arithmetic."""
    return average_probabilities(m.read_class(c) for m in members)


def segmentation_from_probability_files(files: Sequence[str | os.PathLike], label_values: Sequence[int],
                                        save_mean: str | os.PathLike | None = None) -> np.ndarray:
    """The argmax (as label values) of the mean of saved probabilities, one class at a time.

    Equal to ``segmentation_from_probabilities(average_probabilities([np.load(f) ...]))`` but
    holding a few volumes instead of every member's ``(K, Z, Y, X)``. ``save_mean``: also write
    the mean (float16) there.
    """
    members = [ProbabilityFile(f) for f in files]
    shape = members[0].shape
    for m in members[1:]:
        if m.shape != shape:
            raise UserError(f"{m.path}: probabilities of shape {m.shape} differ from {members[0].path}'s {shape}")
    if shape[0] != len(label_values):
        raise UserError(f"{members[0].path}: {shape[0]} classes but {len(label_values)} label values")
    argmax = RunningArgmax(shape[1:], shape[0])
    writer = ClassFileWriter(save_mean, shape[0], shape[1:]) if save_mean is not None else None
    with writer if writer is not None else contextlib.nullcontext():
        for c in range(shape[0]):
            mean = mean_class(members, c)
            argmax.update(mean)
            if writer is not None:
                writer.write(mean)
    return argmax.labels(label_values)


def probability_cases(folder: str | os.PathLike) -> dict[str, Path]:
    """``{case_id: probabilities file}`` in ``folder``."""
    return {f.name[: -len(PROBABILITIES_SUFFIX)]: f for f in sorted(Path(folder).glob(f"*{PROBABILITIES_SUFFIX}"))
            if not f.name.startswith(".")}


def segmentation_file(folder: str | os.PathLike, case_id: str) -> Path:
    """The member's segmentation of ``case_id`` (any supported image ending)."""
    from autoseg.evaluation.evaluate import list_label_files

    files = list_label_files(folder)
    if case_id not in files:
        raise UserError(f"{folder}: no segmentation file for case {case_id} next to its {case_id}{PROBABILITIES_SUFFIX}")
    return files[case_id]


def find_label_values(folder: str | os.PathLike) -> list[int] | None:
    """Label values from ``probabilities.json`` or the nearest ``plans.json`` (see module docstring)."""
    folder = Path(folder).resolve()
    for candidate in [folder, *list(folder.parents)[:3]]:
        for name in ("probabilities.json", "plans.json"):
            f = candidate / name
            if f.is_file():
                data = read_json(f)
                if isinstance(data, dict) and "label_values" in data:
                    return [int(v) for v in data["label_values"]]
    return None


def ensemble_folders(
    folders: Sequence[str | os.PathLike],
    out_folder: str | os.PathLike,
    label_values: Sequence[int] | None = None,
    save_probabilities: bool = False,
    postprocessing: dict | None = None,
    progress: bool = True,
) -> list[str]:
    """Average every case's probabilities over ``folders``; write segmentations to ``out_folder``.

    Every folder must hold the same cases. ``postprocessing`` (a spec, see
    :mod:`autoseg.postprocessing.connected_components`) is applied to each result.
    Returns the case ids written.
    """
    from tqdm import tqdm

    from autoseg.dataset.imageio import read_label, write_image
    from autoseg.postprocessing.connected_components import apply_postprocessing

    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise UserError("an ensemble needs at least two folders")
    members = []
    for f in folders:
        if not f.is_dir():
            raise UserError(f"{f}: folder does not exist")
        cases = probability_cases(f)
        if not cases:
            raise UserError(f"{f}: holds no CASE{PROBABILITIES_SUFFIX} files (predict with --save-probabilities)")
        members.append(cases)
    all_cases = sorted(set().union(*members))
    for f, cases in zip(folders, members):
        missing = [c for c in all_cases if c not in cases]
        if missing:
            raise UserError(f"{f}: no probabilities for case(s) {', '.join(missing[:10])} that other members have")
    if label_values is None:
        found = [find_label_values(f) for f in folders]
        known = [v for v in found if v is not None]
        if not known:
            raise UserError(f"{folders[0]}: cannot tell the label values (no probabilities.json or plans.json); pass them explicitly")
        if any(v != known[0] for v in known):
            raise UserError(f"ensemble members disagree on label values: {known}")
        label_values = known[0]
    label_values = [int(v) for v in label_values]
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    for case in tqdm(all_cases, desc="ensemble", disable=not progress):
        seg_file = segmentation_file(folders[0], case)
        ref_seg, geometry = read_label(seg_file)
        files = [cases[case] for cases in members]
        for f in files:
            shape = ProbabilityFile(f).shape
            if shape[1:] != ref_seg.shape:
                raise UserError(f"{f}: probabilities of shape {shape} do not fit the segmentation "
                                f"{seg_file} of shape {ref_seg.shape}")
        del ref_seg
        # class by class: a member's (K, Z, Y, X) never has to fit in memory
        seg = segmentation_from_probability_files(
            files, label_values, out_folder / f"{case}{PROBABILITIES_SUFFIX}" if save_probabilities else None)
        if postprocessing:
            seg = apply_postprocessing(seg, postprocessing, label_values)
        ending = seg_file.name[len(case):]
        write_image(seg, geometry, out_folder / f"{case}{ending}")
    if save_probabilities:
        write_json(out_folder / "probabilities.json", {"label_values": label_values})
    return all_cases
