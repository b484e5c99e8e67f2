"""Verify a dataset before any long work, reporting every problem at once.

A bad case found an hour into preprocessing or training wastes that hour; a bad case never
found silently damages the model. So every case is read once, up front, and checked for
what would break or mislead later stages: missing, unreadable or truncated files, image and
label grids that disagree, channel counts, 4D files where 3D is meant, undeclared, negative or
non-integer label values, NaN/Inf voxels, constant images, 2D/3D mixes, and label maps that are
background in every case. Structural problems that :func:`~autoseg.dataset.layout.load_dataset`
already found (extra files, duplicate ids, paths escaping the folder, no cases) come first.

Nothing here raises on a bad case: everything becomes a :class:`Problem`;
:func:`check_or_raise` turns a non-empty list into one :class:`DatasetError`. What is odd but
trainable (a declared label that no case holds) is a warning, printed as ``warning: ...`` on
stderr, and does not stop the run.
See ``documentation/integrity.md`` for every check with an example message.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from autoseg.dataset.imageio import (
    Geometry,
    ImageReadError,
    count_nonfinite_nifti,
    fmt,
    read_image_with_header,
)
from autoseg.dataset.layout import Case, DatasetSpec
from autoseg.errors import DatasetError, Problem

# Above this many distinct non-negative integer values a bincount table would be wasteful.
_BINCOUNT_LIMIT = 1 << 20


@dataclass(frozen=True)
class _Settings:
    """What every case is checked against; small, so it pickles cheaply to workers."""

    root: Path
    layout: str
    channel_names: tuple[str, ...]
    label_values: frozenset[int]
    tolerance: float


@dataclass
class CaseReport:
    """Problems of one case plus what the cross-case checks need."""

    case_id: str
    problems: list[Problem] = field(default_factory=list)
    num_channels: int | None = None  # None when the image could not be read
    file_ndim: int | None = None
    label_values: frozenset[int] | None = None  # values present in the label map; None if unread


def verify_dataset(spec: DatasetSpec, num_workers: int = 1, tolerance: float = 1e-3,
                   warnings: list[Problem] | None = None) -> list[Problem]:
    """Every problem of ``spec`` (empty list: clean), reading each file once.

    ``tolerance`` is relative for spacing, a fraction of a voxel for origin and absolute for
    direction cosines. Cases are checked in ``num_workers`` processes when above 1. Warnings
    go to ``warnings`` when given, else to stderr as ``warning: ...``.
    """
    from tqdm import tqdm

    settings = _Settings(Path(spec.root), spec.layout, tuple(spec.channel_names),
                         frozenset(spec.labels), float(tolerance))
    check = partial(check_case, settings=settings)
    cases = list(spec.cases)
    reports: list[CaseReport | None] = [None] * len(cases)
    bar = tqdm(total=len(cases), desc="verifying dataset", unit="case", leave=False, disable=not cases)
    try:
        if num_workers > 1 and len(cases) > 1:
            try:
                with ProcessPoolExecutor(min(num_workers, len(cases)), mp_context=_mp_context()) as pool:
                    chunk = max(1, len(cases) // (num_workers * 8))
                    for i, report in enumerate(pool.map(check, cases, chunksize=chunk)):
                        reports[i] = report
                        bar.update()
            except BrokenProcessPool:
                pass  # a worker died (e.g. a crash inside ITK); the loop below redoes the rest here
        for i, case in enumerate(cases):
            if reports[i] is None:
                reports[i] = check(case)
                bar.update()
    finally:
        bar.close()
    problems = list(spec.problems)
    for report in reports:
        problems.extend(report.problems)
    problems.extend(_cross_case_problems(reports, spec))
    found = _label_warnings(reports, spec)
    if warnings is not None:
        warnings.extend(found)
    else:
        for w in found:
            print(f"warning: {w}", file=sys.stderr)
    return problems


def check_or_raise(spec: DatasetSpec, num_workers: int = 1) -> None:
    """Raise :class:`DatasetError` listing every problem, if there is any."""
    problems = verify_dataset(spec, num_workers)
    if problems:
        raise DatasetError(problems, spec.root)


def _mp_context():
    # fork starts workers in milliseconds with SimpleITK already imported; spawn costs ~1 s
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def check_case(case: Case, settings: _Settings) -> CaseReport:
    """Check one case; never raises (an unexpected error becomes a problem)."""
    report = CaseReport(case.case_id)
    try:
        _check_case(case, settings, report)
    except Exception as e:  # noqa: BLE001 - one odd file must not hide the other cases' problems
        report.problems.append(Problem(f"could not be checked ({type(e).__name__}: {e})", case.case_id, None))
    return report


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _read(path: Path, what: str, case_id: str, settings: _Settings, problems: list[Problem]):
    """Read a file, or record why not; returns ``(array, geometry, header)`` or ``None``."""
    rel = _rel(path, settings.root)
    if not path.exists():
        if not path.is_symlink():  # a broken link is reported by load_dataset
            problems.append(Problem(f"{what} file is missing", case_id, rel))
        return None
    try:
        return read_image_with_header(path)
    except ImageReadError as e:
        message = str(e)
        if message.startswith(f"{path}: "):
            message = message[len(str(path)) + 2:]  # the Problem names the file already
        problems.append(Problem(message, case_id, rel))
        return None


def _check_case(case: Case, s: _Settings, report: CaseReport) -> None:
    cid, problems = case.case_id, report.problems
    images = []  # (path, array, geometry, header) of every readable image file
    for path in case.image_files:
        got = _read(Path(path), "image", cid, s, problems)
        if got is not None:
            images.append((Path(path), *got))
    label = None
    if case.label_file is not None:  # a missing 'label' entry is reported by load_dataset
        label = _read(Path(case.label_file), "label", cid, s, problems)

    for path, arr, _, _ in images:
        _check_finite(path, arr, cid, _rel(path, s.root), "image", problems)
        _check_constant(arr, cid, _rel(path, s.root), problems)

    ref = None  # (path, array, geometry) that the label and other channels must match
    if images and len(images) == len(case.image_files):
        ref = images[0]
        n_channels = _check_channels(images, cid, s, problems)
        report.num_channels = n_channels
        report.file_ndim = ref[2].file_ndim
    if label is None:
        return
    lab_arr, lab_geo, lab_header = label
    lab_rel = _rel(Path(case.label_file), s.root)
    if lab_arr.shape[0] != 1:
        if lab_header.ndim == 4:
            problems.append(Problem(f"label file is 4D with {lab_arr.shape[0]} volumes along its 4th axis; "
                                    "a label map must be one 3D volume", cid, lab_rel))
        else:
            problems.append(Problem(
                f"label file has {lab_arr.shape[0]} channels; a label map must be single-channel", cid, lab_rel))
        return
    _check_finite(Path(case.label_file), lab_arr, cid, lab_rel, "label", problems)
    report.label_values = _check_label_values(lab_arr[0], cid, lab_rel, s, problems)
    if ref is not None:
        _compare_grids(ref[1].shape[1:], ref[2], "image", lab_arr.shape[1:], lab_geo, "label",
                       cid, lab_rel, s.tolerance, problems)


def _check_channels(images, cid: str, s: _Settings, problems: list[Problem]) -> int:
    """Channel count against dataset.json; nnU-Net v2 channel files must also share one grid."""
    declared = len(s.channel_names)
    names = ", ".join(s.channel_names)
    if s.layout == "nnunetv2":
        ref_path, ref_arr, ref_geo, _ = images[0]
        for path, arr, geo, header in images:
            rel = _rel(path, s.root)
            if arr.shape[0] != 1 and header.ndim == 4:
                problems.append(Problem(
                    f"channel file is 4D with {arr.shape[0]} volumes along its 4th axis; the nnU-Net v2 layout "
                    "needs one 3D file per channel", cid, rel))
            elif arr.shape[0] != 1:
                problems.append(Problem(
                    f"channel file has {arr.shape[0]} channels; the nnU-Net v2 layout needs one "
                    f"single-channel file per channel", cid, rel))
            if path is not ref_path:
                _compare_grids(ref_arr.shape[1:], ref_geo, f"channel 0 ({ref_path.name})", arr.shape[1:], geo,
                               "channel file", cid, rel, s.tolerance, problems)
        return sum(arr.shape[0] for _, arr, _, _ in images)
    path, arr, _, header = images[0]
    if declared and arr.shape[0] != declared and header.ndim == 4:
        problems.append(Problem(
            f"image is 4D with {arr.shape[0]} volumes along its 4th axis (time points or channels) but "
            f"dataset.json 'modality' declares {declared} channel(s) ({names})", cid, _rel(path, s.root)))
    elif declared and arr.shape[0] != declared:
        problems.append(Problem(
            f"image has {arr.shape[0]} channel(s) but dataset.json 'modality' declares {declared} ({names})",
            cid, _rel(path, s.root)))
    return arr.shape[0]


def _nonfinite(path: Path, arr: np.ndarray) -> tuple[int, int]:
    """NaN and infinite voxel counts of a float image as stored in its file."""
    if not np.issubdtype(arr.dtype, np.floating):
        return 0, 0
    # ITK turns a NIfTI file's NaN/Inf into 0 when reading, so the array alone would hide them
    stored = count_nonfinite_nifti(path)
    if stored is not None:
        return stored
    if np.isfinite(arr).all():
        return 0, 0
    return int(np.isnan(arr).sum()), int(np.isinf(arr).sum())


def _check_finite(path: Path, arr: np.ndarray, cid: str, rel: str, what: str, problems: list[Problem]) -> None:
    n_nan, n_inf = _nonfinite(path, arr)
    if n_nan or n_inf:
        problems.append(Problem(f"{what} has {n_nan} NaN and {n_inf} infinite voxel(s) of {arr.size}", cid, rel))


def _check_constant(arr: np.ndarray, cid: str, rel: str, problems: list[Problem]) -> None:
    """A channel whose voxels are all equal: an empty or failed export, nothing to learn from."""
    for c in range(arr.shape[0]):
        flat = arr[c].ravel()
        if flat.size < 2:
            continue
        sample = flat[:: max(1, flat.size // 4096)]  # almost every real image differs within a sample
        if sample.min() != sample.max() or flat.min() != flat.max():
            continue
        value = flat[0]
        which = f"channel {c} of the image" if arr.shape[0] > 1 else "image"
        if value == 0 and not np.issubdtype(arr.dtype, np.floating):
            what = f"{which} is all zeros ({arr.dtype})"
        else:
            what = f"{which} is constant: every voxel is {float(value):g}"
        problems.append(Problem(f"{what}; an empty or failed export holds nothing to learn from", cid, rel))


def _check_label_values(lab: np.ndarray, cid: str, rel: str, s: _Settings,
                        problems: list[Problem]) -> frozenset[int]:
    """Report label values that are not integers, negative or undeclared; return those present."""
    if np.issubdtype(lab.dtype, np.floating):
        finite = np.isfinite(lab)
        if not finite.all():  # already reported by _check_finite
            lab = lab[finite]
        fractional = lab != np.rint(lab)
        if fractional.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(lab[fractional])[:5])
            problems.append(Problem(
                f"label has non-integer values ({examples}) in {int(fractional.sum())} voxel(s); "
                "a label map must hold integer label values", cid, rel))
            lab = lab[~fractional]
        lab = lab.astype(np.int64)
    elif lab.dtype == np.bool_:
        lab = lab.view(np.uint8)
    values, counts = _value_counts(lab)
    negative = [(int(v), int(c)) for v, c in zip(values, counts) if v < 0]
    if negative:
        listed = ", ".join(f"{v} ({c} voxels)" for v, c in negative[:10])
        problems.append(Problem(f"label has negative values: {listed}; label values must be 0 or positive",
                                cid, rel))
    undeclared = [(int(v), int(c)) for v, c in zip(values, counts) if v >= 0 and int(v) not in s.label_values]
    if undeclared:
        listed = ", ".join(f"{v} ({c} voxels)" for v, c in undeclared[:10])
        more = f" and {len(undeclared) - 10} more" if len(undeclared) > 10 else ""
        declared = ", ".join(str(v) for v in sorted(s.label_values))
        problems.append(Problem(
            f"label values not declared in dataset.json 'labels': {listed}{more}; declared: {declared}", cid, rel))
    return frozenset(int(v) for v in values)


def _value_counts(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct integer values and their voxel counts; bincount is O(n), unique sorts."""
    if lab.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat = lab.ravel()
    lo, hi = int(flat.min()), int(flat.max())
    if lo >= 0 and hi < _BINCOUNT_LIMIT:
        counts = np.bincount(flat if flat.dtype.itemsize < 8 or flat.dtype == np.int64 else flat.astype(np.int64))
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(flat, return_counts=True)


def _compare_grids(ref_shape, ref_geo: Geometry, ref_name: str, shape, geo: Geometry, name: str,
                   cid: str, rel: str, tol: float, problems: list[Problem]) -> None:
    """Shape, dimensionality, spacing, origin and direction of ``name`` against ``ref_name``."""
    ref_shape, shape = tuple(int(v) for v in ref_shape), tuple(int(v) for v in shape)
    if ref_shape != shape:
        problems.append(Problem(f"{ref_name} shape {ref_shape} differs from {name} shape {shape}", cid, rel))
    if ref_geo.file_ndim != geo.file_ndim:
        problems.append(Problem(f"{ref_name} file is {ref_geo.file_ndim}D but {name} file is {geo.file_ndim}D",
                                cid, rel))
        return  # origin/direction have different lengths; comparing them says nothing more
    a, b = np.asarray(ref_geo.spacing, float), np.asarray(geo.spacing, float)
    if np.any(np.abs(a - b) > tol * np.maximum(np.abs(a), np.abs(b))):
        problems.append(Problem(f"{ref_name} spacing {fmt(a)} differs from {name} spacing {fmt(b)} (z, y, x)",
                                cid, rel))
    a, b = np.asarray(ref_geo.origin, float), np.asarray(geo.origin, float)
    # a shift of `tol` voxels is rounding (NIfTI stores origins as float32), more is a real offset
    if a.shape != b.shape or np.any(np.abs(a - b) > tol * max(max(ref_geo.spacing), 1e-6)):
        problems.append(Problem(f"{ref_name} origin {fmt(a)} differs from {name} origin {fmt(b)} (x, y, z mm)",
                                cid, rel))
    a, b = np.asarray(ref_geo.direction, float), np.asarray(geo.direction, float)
    if a.shape != b.shape or np.any(np.abs(a - b) > tol):
        problems.append(Problem(f"{ref_name} direction {fmt(a)} differs from {name} direction {fmt(b)}",
                                cid, rel))


def _cross_case_problems(reports: list[CaseReport], spec: DatasetSpec) -> list[Problem]:
    """What no single case shows: channel counts or dimensionality that vary between cases, and
    label maps that are all background."""
    problems = []
    for attr, what in (("num_channels", "channel count"), ("file_ndim", "image dimensionality")):
        groups: dict[int, list[str]] = defaultdict(list)
        for r in reports:
            value = getattr(r, attr)
            if value is not None:
                groups[value].append(r.case_id)
        if len(groups) > 1:
            unit = " channel(s)" if attr == "num_channels" else "D"
            parts = []
            for value, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                parts.append(f"{value}{unit} in {len(ids)} case(s) ({shown})")
            problems.append(Problem(f"{what} differs between cases: " + "; ".join(parts), None, None))
    return problems + _background_only(reports, spec)


def _background_only(reports: list[CaseReport], spec: DatasetSpec) -> list[Problem]:
    """Label maps that hold nothing but background in every case: there is nothing to learn."""
    if not reports or any(r.label_values is None for r in reports):
        return []  # an unread label map might hold the foreground; its problem is reported
    if any(v != 0 for r in reports for v in r.label_values):
        return []
    folders = [str(Path(c.label_file).parent) for c in spec.cases if c.label_file is not None]
    folder = _rel(Path(os.path.commonpath(folders)), Path(spec.root)) if folders else None
    return [Problem(f"every label map holds only background (0), in all {len(reports)} case(s): there is "
                    "nothing to learn", None, folder)]


def _label_warnings(reports: list[CaseReport], spec: DatasetSpec) -> list[Problem]:
    """Declared foreground labels that no case holds: trainable, but that class is never learnt."""
    if not reports or any(r.label_values is None for r in reports):
        return []
    present = frozenset().union(*(r.label_values for r in reports))
    if not present - {0}:
        return []  # reported as a problem by _background_only
    return [Problem(f"label {v} ('{spec.labels[v]}') is declared in 'labels' but appears in none of the "
                    f"{len(reports)} label maps; the network will never learn to predict it", None, "dataset.json")
            for v in sorted(set(spec.labels) - present - {0})]
