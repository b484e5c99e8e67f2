"""How much memory predicting a case will take, from its header alone, and a clear refusal when it cannot fit.

A whole-body CT with hundreds of classes predicted by an ensemble can need more memory than the
machine has; finding that out an hour into a folder, as a killed process, helps nobody. So
:func:`check_memory` reads each case's header (no pixels), applies the memory model of
documentation/inference.md ("Memory") and refuses, before any case is predicted, a case that
needs more than the machine's physical memory (or, for an accumulator memory-mapped onto disk,
more than the scratch folder's free space), saying how much it needs and what would lower it.
The model is an upper bound: it ignores the crop to the image's nonzero box.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from autoseg.dataset.imageio import ImageReadError
from autoseg.errors import UserError

if TYPE_CHECKING:
    from autoseg.inference.cases import InputCase
    from autoseg.inference.predictor import Predictor

GB = 1 << 30
# the interpreter, torch and the network's own buffers
_RUNTIME_BYTES = 600 << 20


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a case needs in memory and, for a memory-mapped accumulator, on the scratch disk."""

    ram: int
    disk: int
    streamed: bool


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): not checked
        return None


def _grid(predictor: Predictor, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
    from autoseg.preprocessing.pipeline import target_spacing_for
    from autoseg.preprocessing.resampling import compute_new_shape

    return tuple(compute_new_shape(shape, spacing, target_spacing_for(predictor.config, spacing)))


def _forward_bytes(predictor: Predictor) -> int:
    """One forward pass: its logits and softmax (~3 copies) and about ten full-resolution feature maps."""
    from autoseg.inference import sliding_window

    patch = math.prod(int(p) for p in predictor.config.inference_patch)
    axes = predictor.mirror_axes if predictor.mirror_axes is not None else range(predictor.config.dim)
    batch = 2 ** len(axes) if predictor.tta else 1
    logits = min(batch * predictor.plans.num_classes * patch * 4, sliding_window.TILE_OUTPUT_BYTES)
    return 3 * logits + 10 * batch * patch * predictor.config.network.features_per_stage[0] * 4


def estimate(predictors: Sequence[Predictor], shape: Sequence[int], spacing: Sequence[float],
             probabilities: bool = False, entropy: bool = False) -> MemoryNeed:
    """Peak bytes of predicting one ``(Z, Y, X)`` image of ``spacing`` mm with ``predictors``.

    ``probabilities``: they are wanted (a file or the API), which rules out streaming.
    """
    from autoseg.inference import predictor as predictor_module
    from autoseg.inference import sliding_window

    k = predictors[0].plans.num_classes
    channels = predictors[0].num_channels
    v0 = math.prod(int(s) for s in shape)
    label = 2 if max(predictors[0].label_values) > 255 else 1
    grids = [_grid(p, shape, spacing) for p in predictors]
    common = _RUNTIME_BYTES + channels * v0 * 4 + v0 * label + (v0 * 4 if entropy else 0)
    forward = max(_forward_bytes(p) for p in predictors)
    one = grids[0]
    if (len(predictors) == 1 and not probabilities and predictor_module.RowExport.supports(predictors[0].config)
            and k * math.prod(one) * 4 > predictor_module.STREAM_BYTES):
        patch = predictors[0].config.inference_patch
        depth = min(one[0], 2 * int(patch[0])) if predictors[0].config.dim == 3 else min(one[0], 16)
        ring = k * depth * one[1] * one[2] * 4
        if ring > sliding_window.FLOAT16_ACCUMULATOR_BYTES:
            ring //= 2
        ram = common + channels * math.prod(one) * 4 + ring + k * one[1] * one[2] * 4 + forward
        return MemoryNeed(ram, 0, True)
    ram, disk = common + forward, 0
    for grid in grids:
        v = math.prod(grid)
        acc = k * v * 4
        ram += channels * v * 4 + v * 4
        if acc <= sliding_window.FLOAT16_ACCUMULATOR_BYTES:
            ram += acc + k * v * 2  # and its float16 copy that waits for export
        elif acc // 2 > sliding_window.disk_threshold():
            disk += acc // 2
        else:
            ram += acc // 2
    ram += 3 * v0 * 4 + v0 * 5  # export: one class being resampled, the running argmax
    if probabilities:
        ram += v0 * 4  # a class's slab on its way to the file (the API's in-memory array is its caller's)
    return MemoryNeed(ram, disk, False)


def _case_shape(case: InputCase) -> tuple[tuple[int, ...], tuple[float, ...]]:
    from autoseg.dataset.imageio import read_header

    _, size, spacing, _, _, _ = read_header(case.files[0])
    shape, spacing = tuple(reversed(size)), tuple(reversed(spacing))
    if case.dicom is not None:  # one file per slice
        shape = (len(case.dicom.files),) + shape[-2:]
        spacing = (spacing[0] if len(spacing) == 3 else 1.0,) + spacing[-2:]
    if len(shape) == 2:
        shape, spacing = (1,) + shape, (1.0,) + spacing
    return shape, spacing


def check_memory(predictors: Sequence[Predictor], cases: Sequence[InputCase], probabilities: bool = False,
                 entropy: bool = False, scratch_dir: str | os.PathLike | None = None,
                 memory_bytes: int | None = None) -> None:
    """Refuse, naming the largest such case, cases that need more memory (or scratch disk) than there is."""
    have = physical_memory() if memory_bytes is None else memory_bytes
    if have is None or not cases:
        return
    worst = None
    for case in cases:
        try:
            shape, spacing = _case_shape(case)
        except (ImageReadError, OSError, ValueError):  # the reader reports it later, with its own message
            continue
        need = estimate(predictors, shape, spacing, probabilities, entropy)
        if worst is None or need.ram > worst[1].ram:
            worst = (case, need, shape)
        if need.disk:
            folder = scratch_dir or tempfile.gettempdir()
            free = shutil.disk_usage(folder).free
            if need.disk > free:
                raise UserError(f"{case.files[0]}: its {predictors[0].plans.num_classes}-class accumulator needs "
                                f"{need.disk / GB:.1f} GB on the scratch disk ({folder}: {free / GB:.1f} GB free); "
                                f"choose a larger folder with --scratch-dir")
    case, need, shape = worst
    if need.ram <= have:
        return
    k = predictors[0].plans.num_classes
    hints = []
    if not need.streamed:
        if len(predictors) > 1:
            hints.append("predict with one configuration (-c) instead of the ensemble")
        if probabilities:
            hints.append("leave out --save-probabilities")
        hints.append("one configuration without saved probabilities is streamed row by row and needs far less")
    raise UserError(f"{case.files[0]}: predicting this {'x'.join(map(str, shape))} image with {k} classes needs about "
                    f"{need.ram / GB:.1f} GB of memory; this machine has {have / GB:.1f} GB"
                    + (f" ({'; '.join(hints)})" if hints else ""))
