"""From the preprocessed grid back to the input image's grid, and onto disk.

Probabilities are resampled back to the cropped shape at the original spacing (linear,
one class at a time) and placed into the original-size grid; outside the crop box the
background has probability 1. Results are written with exactly the input's spacing, origin
and direction, in the input's file format (2D in, 2D out).

:func:`export_case` is what every prediction runs: it streams the classes, so that memory
holds a few volumes of the original grid whatever the number of classes (see "Memory" in
documentation/inference.md). Only a caller that asks for the probabilities gets them, written
class by class into a ``.npy`` file or, for the Python API, as a ``(K, Z0, Y0, X0)`` array in
memory. :func:`to_original_geometry` builds that whole array for one configuration.

:class:`RowExport` goes further for one configuration's large case: it takes the preprocessed
grid's rows as the sliding window finishes them and turns them into label-map rows straight
away, so not even the preprocessed grid's ``(K, Z, Y, X)`` array exists.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from autoseg.dataset.imageio import Geometry, write_image
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.postprocessing.ensemble import ClassFileWriter, RunningArgmax, label_dtype
from autoseg.preprocessing.resampling import _along_axis, _nearest_indices, _source_coordinates, resample


def _config(plans: Plans, config: ConfigurationPlan | str) -> ConfigurationPlan:
    return plans.configuration(config) if isinstance(config, str) else config


def _as_numpy(probabilities: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().cpu().numpy()
    if probabilities.ndim != 4:
        raise ValueError(f"expected (K, Z, Y, X) probabilities, got shape {probabilities.shape}")
    return probabilities


class ExportMember:
    """One configuration's preprocessed-grid probabilities of a case, resampled back one class at a time."""

    def __init__(self, probabilities: np.ndarray | torch.Tensor, properties: dict[str, Any],
                 config: ConfigurationPlan) -> None:
        from autoseg.preprocessing.pipeline import separate_axis_for

        self.probabilities = _as_numpy(probabilities)
        self.config = config
        self.original_shape = tuple(int(s) for s in properties["original_shape"])
        self.crop_shape = tuple(int(s) for s in properties["shape_after_crop"])
        self.box = tuple((int(lo), int(hi)) for lo, hi in properties["crop_bbox"])
        if "separate_axis" in properties:
            self.axis = properties["separate_axis"]
        else:
            self.axis = separate_axis_for(config, properties["original_spacing"], properties["target_spacing"])

    @property
    def num_classes(self) -> int:
        return self.probabilities.shape[0]

    def crop_class(self, c: int) -> np.ndarray:
        """Class ``c`` on the crop box of the original grid, float32 (may share the input's memory)."""
        # linear for probabilities: a cubic spline would overshoot outside [0, 1]
        return resample(self.probabilities[c].astype(np.float32, copy=False), self.crop_shape, order=1,
                        separate_axis=self.axis, separate_axis_order=self.config.resampling.separate_axis_order)


def to_original_geometry(
    probabilities: np.ndarray | torch.Tensor,
    properties: dict[str, Any],
    plans: Plans,
    config: ConfigurationPlan | str,
) -> np.ndarray:
    """``(K, z, y, x)`` probabilities on the preprocessed grid -> ``(K, Z0, Y0, X0)`` float32.

    The whole array: ``K`` original-grid volumes. Prediction itself never builds it
    (:func:`export_case`); this is for callers that want the array.
    """
    member = ExportMember(probabilities, properties, _config(plans, config))
    inside = tuple(slice(lo, hi) for lo, hi in member.box)
    out = np.zeros((member.num_classes,) + member.original_shape, dtype=np.float32)
    out[0] = 1.0  # outside the crop box there was no image: background
    for c in range(member.num_classes):
        out[(c,) + inside] = member.crop_class(c)
    return out


@dataclass
class ExportedCase:
    """What :func:`export_case` returns; the probabilities only when asked for in memory."""

    segmentation: np.ndarray  # (Z0, Y0, X0) label values (before postprocessing)
    probabilities: np.ndarray | None = None  # (K, Z0, Y0, X0) float32, only with keep_probabilities
    entropy: np.ndarray | None = None  # (Z0, Y0, X0) float32 nats, only with entropy


def _union_box(members: Sequence[ExportMember]) -> tuple[tuple[int, int], ...]:
    return tuple((min(m.box[a][0] for m in members), max(m.box[a][1] for m in members)) for a in range(3))


def mean_classes(members: Sequence[ExportMember]) -> Iterator[tuple[int, np.ndarray]]:
    """``(c, class c averaged over the members)`` for every class, on the union of their crop boxes.

    Outside a member's crop box its probabilities are background's (1 for class 0, else 0), as in
    :func:`to_original_geometry`, and the sum runs in the order and precision of
    :func:`autoseg.postprocessing.ensemble.average_probabilities`, so each value is bit for bit the
    one the whole-array path gives. Only the running sum and one member's class exist at once.
    """
    union = _union_box(members)
    ushape = tuple(hi - lo for lo, hi in union)
    n = len(members)
    for c in range(members[0].num_classes):
        background = 1.0 if c == 0 else 0.0
        total = None
        for m in members:
            vol = m.crop_class(c)
            if m.box != union:
                part = np.full(ushape, background, dtype=np.float32)
                part[tuple(slice(lo - u, hi - u) for (lo, hi), (u, _) in zip(m.box, union))] = vol
                vol = part
            if total is None:
                # summed into below: never into the caller's own array
                total = vol.copy() if n > 1 and np.may_share_memory(vol, m.probabilities) else vol
            else:
                total += vol
        if n > 1:
            total /= n
        yield c, total


def export_case(
    members: Sequence[ExportMember],
    label_values: Sequence[int],
    probabilities_file: str | os.PathLike | None = None,
    keep_probabilities: bool = False,
    entropy: bool = False,
    progress: bool | None = None,
) -> ExportedCase:
    """The members' probabilities averaged in the original grid, as a label map, one class at a time.

    Memory: one class of the union of the crop boxes (float32, plus the resampling's
    temporaries), the running maximum (float32) and the winning index (uint8, uint16 above 256
    classes), then the label map; never a ``(K, Z0, Y0, X0)`` array unless ``keep_probabilities``.
    The label map equals the argmax of the whole averaged array (ties: lowest class index).
    ``probabilities_file``: the averaged probabilities written there as float16 ``(K, Z0, Y0, X0)``
    ``.npy``, class by class, atomically. ``entropy``: also the per-voxel entropy (nats, float32),
    accumulated class by class. ``progress``: a bar over the classes (default: with 32 or more).
    """
    from tqdm import tqdm

    if not members:
        raise ValueError("nothing to export")
    k = members[0].num_classes
    shape = members[0].original_shape
    for m in members[1:]:
        if m.num_classes != k or m.original_shape != shape:
            raise ValueError(f"ensemble members disagree: {k} classes on {shape} vs {m.num_classes} "
                             f"on {m.original_shape}")
    if k != len(label_values):
        raise ValueError(f"{k} classes but {len(label_values)} label values")
    union = tuple(slice(lo, hi) for lo, hi in _union_box(members))
    ushape = tuple(s.stop - s.start for s in union)
    argmax = RunningArgmax(ushape, k)
    ent = torch.zeros(ushape, dtype=torch.float32) if entropy else None
    kept = None
    if keep_probabilities:
        kept = np.zeros((k,) + shape, dtype=np.float32)
        kept[0] = 1.0  # outside every crop box: background
    writer = ClassFileWriter(probabilities_file, k, shape) if probabilities_file is not None else None
    with writer if writer is not None else contextlib.nullcontext():
        classes = mean_classes(members)
        if progress or (progress is None and k >= 32):
            classes = tqdm(classes, total=k, desc="export classes", leave=False, disable=None)
        for c, mean in classes:
            argmax.update(mean)
            if ent is not None:
                p = torch.from_numpy(mean)
                ent -= torch.xlogy(p, p)  # outside the boxes p is 0 or 1: no entropy
            if writer is not None:
                writer.write_box(mean, union, 1.0 if c == 0 else 0.0)
            if kept is not None:
                kept[(c,) + union] = mean
            del mean
    # outside the union of the crop boxes class 0 has probability 1: it wins, and there is no entropy
    whole = ushape == shape
    segmentation = argmax.labels(label_values)
    del argmax
    if not whole:
        labels, segmentation = segmentation, np.full(shape, label_values[0], dtype=segmentation.dtype)
        segmentation[union] = labels
        del labels
    entropy_map_ = None
    if ent is not None:
        entropy_map_ = ent.clamp_(min=0).numpy()
        if not whole:
            inner, entropy_map_ = entropy_map_, np.zeros(shape, dtype=np.float32)
            entropy_map_[union] = inner
    return ExportedCase(segmentation, kept, entropy_map_)


def _crop_steps(pre_shape: Sequence[int], crop_shape: Sequence[int], axis: int | None,
                separate_axis_order: int) -> list[tuple[int, int, int]]:
    """``(axis, size, order)`` one-axis passes that :meth:`ExportMember.crop_class` makes, in its order.

    Every pass of a linear or nearest resampling touches one axis only, so a run of z rows can
    be resampled on its own and gives exactly the values of the whole volume's pass.
    """
    if tuple(pre_shape) == tuple(crop_shape):
        return []
    if axis is None:
        return [(a, int(crop_shape[a]), 1) for a in range(3) if pre_shape[a] != crop_shape[a]]
    others = [a for a in range(3) if a != axis]
    steps = [(a, int(crop_shape[a]), 1) for a in others if pre_shape[a] != crop_shape[a]]
    if pre_shape[axis] != crop_shape[axis]:
        steps.append((axis, int(crop_shape[axis]), int(separate_axis_order)))
    return steps


class RowExport:
    """One configuration's preprocessed-grid rows, as the sliding window finishes them, into the label map.

    Called as the sliding window's ``on_rows`` consumer: for each run of final rows it resamples
    every class's rows (plus one row kept from the run before, which linear interpolation along z
    needs) to the crop box of the original grid, takes the running argmax over the classes and
    writes the finished label-map rows. The label map, its entropy, ``to_original_geometry``'s
    argmax: the same values, bit for bit, as :func:`export_case` on the whole array.
    Memory: a run of rows of one class at a time, one carried row per class, and the label map.
    """

    def __init__(self, properties: dict[str, Any], config: ConfigurationPlan, label_values: Sequence[int],
                 entropy: bool = False) -> None:
        member = ExportMember(np.zeros((1, 1, 1, 1), np.float32), properties, config)
        self.original_shape = member.original_shape
        self.box = member.box
        self.label_values = list(label_values)
        self.num_classes = len(self.label_values)
        pre = [int(s) for s in properties["shape_after_resampling"]]
        self.pre_rows = pre[0]
        self.steps = _crop_steps(pre, member.crop_shape, member.axis, config.resampling.separate_axis_order)
        z_orders = [order for a, _, order in self.steps if a == 0]
        self.z_order = z_orders[0] if z_orders else None
        n_out = member.crop_shape[0]
        if self.z_order is None:
            lo = hi = np.arange(n_out)
        elif self.z_order == 0:
            lo = hi = _nearest_indices(self.pre_rows, n_out)
        else:
            src = np.clip(_source_coordinates(self.pre_rows, n_out), 0, self.pre_rows - 1)
            lo = np.floor(src).astype(np.intp)
            hi = np.minimum(lo + 1, self.pre_rows - 1)
        self.first_needed, self.last_needed = lo, hi  # input rows each output row reads
        self.done = 0  # output rows written
        self.carry: list[np.ndarray | None] = [None] * self.num_classes
        self.segmentation = np.full(self.original_shape, self.label_values[0], dtype=label_dtype(self.label_values))
        self.entropy = np.zeros(self.original_shape, dtype=np.float32) if entropy else None

    @staticmethod
    def supports(config: ConfigurationPlan) -> bool:
        """Streaming needs passes that are local along z: linear or nearest (every plan autoseg makes)."""
        return config.resampling.separate_axis_order in (0, 1)

    def _resample_rows(self, rows: np.ndarray, first: int, j0: int, j1: int) -> np.ndarray:
        """Output rows ``[j0, j1)`` of one class from input rows ``first ..`` of the preprocessed grid."""
        x = rows
        for axis, size, order in self.steps:
            if axis == 0:
                if order == 0:
                    x = np.take(x, self.first_needed[j0:j1] - first, axis=0)
                else:
                    src = np.clip(_source_coordinates(self.pre_rows, size)[j0:j1], 0, self.pre_rows - 1)
                    lo = self.first_needed[j0:j1] - first
                    hi = self.last_needed[j0:j1] - first
                    w = (src - np.floor(src)).astype(np.float32).reshape(-1, 1, 1)
                    x = np.take(x, lo, axis=0) * (1 - w) + np.take(x, hi, axis=0) * w
            else:
                x = _along_axis(x, axis, size, order)
        if self.z_order is None:
            x = x[j0 - first:j1 - first]
        return x.astype(np.float32, copy=False)

    def __call__(self, r0: int, r1: int, rows: Callable[[int], np.ndarray]) -> None:
        """Take preprocessed rows ``[r0, r1)``; ``rows(c)`` gives class ``c``'s ``(r1 - r0, Y, X)``."""
        n_out = len(self.first_needed)
        j0 = self.done
        j1 = n_out if r1 >= self.pre_rows else int(np.searchsorted(self.last_needed, r1, side="left"))
        argmax = ent = None
        if j1 > j0:
            first = int(self.first_needed[j0])
            block = (j1 - j0,) + tuple(hi - lo for lo, hi in self.box[1:])
            argmax = RunningArgmax(block, self.num_classes)
            ent = torch.zeros(block, dtype=torch.float32) if self.entropy is not None else None
        for c in range(self.num_classes):
            new = rows(c)
            if argmax is not None:
                if first < r0 - 1 or (first < r0 and self.carry[c] is None):
                    raise RuntimeError(f"row {first} is needed but rows before {r0} are gone")
                have = new if first >= r0 else np.concatenate([self.carry[c], new])
                start = r0 if have is new else r0 - 1
                part = have[first - start:int(self.last_needed[j1 - 1]) + 1 - start]
                mean = self._resample_rows(part, first, j0, j1)
                argmax.update(mean)
                if ent is not None:
                    p = torch.from_numpy(mean)
                    ent -= torch.xlogy(p, p)
                del mean
            self.carry[c] = new[-1:].copy()  # the next run's first output row may read it
        if argmax is None:
            return
        z0 = self.box[0][0]
        where = (slice(z0 + j0, z0 + j1),) + tuple(slice(lo, hi) for lo, hi in self.box[1:])
        self.segmentation[where] = argmax.labels(self.label_values)
        if ent is not None:
            self.entropy[where] = ent.clamp_(min=0).numpy()
        self.done = j1

    def result(self) -> ExportedCase:
        if self.done != len(self.first_needed):
            raise RuntimeError(f"streamed export ended after {self.done} of {len(self.first_needed)} rows")
        return ExportedCase(self.segmentation, None, self.entropy)


def entropy_map(probabilities: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-voxel entropy ``-sum_k p log p`` (nats) of ``(K, Z, Y, X)`` probabilities, float32."""
    probs = torch.as_tensor(probabilities)
    out = torch.zeros(tuple(probs.shape[1:]), dtype=torch.float32)
    for c in range(probs.shape[0]):  # one class at a time: no (K, Z, Y, X) temporary
        p = probs[c].float()
        out -= torch.xlogy(p, p)
    return out.clamp_(min=0).numpy()


def label_volumes_ml(seg: np.ndarray, spacing: Sequence[float], label_values: Sequence[int]) -> dict[int, float]:
    """Volume of each label value in millilitres: voxel count x voxel volume (mm^3) / 1000."""
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    counts = np.bincount(np.searchsorted(np.asarray(sorted(label_values)), seg.ravel()), minlength=len(label_values))
    by_value = dict(zip(sorted(label_values), counts.tolist()))
    return {int(v): by_value[v] * voxel_mm3 / 1000.0 for v in label_values}


def write_prediction(seg: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` map with the input's exact geometry, atomically; the ending picks the format."""
    write_image(seg, geometry, Path(path))
