"""Ensembling: average the softmax probabilities of several models, then take the argmax.

:func:`average_probabilities` and :func:`segmentation_from_probabilities` are what every
prediction ends with (one model or several); :func:`ensemble_folders` applies them to
probabilities saved on disk.

Each member folder holds, per case, ``CASE_probabilities.npy`` (float16 ``(K, Z, Y, X)`` in the
original image grid, class index ``i`` = label value ``label_values[i]``) next to the member's
segmentation ``CASE<ending>``, whose geometry the ensembled segmentation is written with.
Folders come from training's fold validation or ``autoseg predict --save-probabilities``.

The label values come from the caller, else from ``probabilities.json`` (``{"label_values": [...]}``)
or a ``plans.json`` in the folder or up to three folders above it (a fold's ``validation/``
folder finds the ``plans.json`` copy of its results folder).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from autoseg.atomic import read_json, save_npy, write_json
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
        probs = []
        for f, cases in zip(folders, members):
            p = np.load(cases[case])
            if p.shape[1:] != ref_seg.shape:
                raise UserError(f"{cases[case]}: probabilities of shape {p.shape} do not fit the segmentation "
                                f"{seg_file} of shape {ref_seg.shape}")
            probs.append(p)
        mean = average_probabilities(probs)
        seg = segmentation_from_probabilities(mean, label_values)
        if postprocessing:
            seg = apply_postprocessing(seg, postprocessing, label_values)
        ending = seg_file.name[len(case):]
        write_image(seg, geometry, out_folder / f"{case}{ending}")
        if save_probabilities:
            save_npy(out_folder / f"{case}{PROBABILITIES_SUFFIX}", mean.astype(np.float16))
    if save_probabilities:
        write_json(out_folder / "probabilities.json", {"label_values": label_values})
    return all_cases
