"""Sliding-window prediction of one preprocessed case.

The image is covered by overlapping patches (tiles); each tile's softmax is weighted by a
gaussian that trusts the patch centre more than its border, and the weighted sums are
divided by the summed weights. Memory stays at one ``(K, Z, Y, X)`` accumulator plus one
float32 ``(Z, Y, X)`` weight map shared by all classes, whatever the number of folds.

The accumulator is float32 while it is at most :data:`FLOAT16_ACCUMULATOR_BYTES` in float32
(results unchanged for ordinary cases), else float16, half the memory: a whole-body CT with
hundreds of classes. A float16 sum of gaussian-weighted probabilities would lose the tile
corners (a large patch's corner weights, 1e-10 and less, are below float16's smallest number),
so the float16 accumulator holds the running weighted *mean* instead, always in [0, 1]: each
tile moves it towards the tile's probabilities by ``weight / summed weight``, in float32.
Beyond :func:`disk_threshold` (half the machine's memory by default) a float16 accumulator in
main memory is a memory-mapped temporary file instead (``scratch_dir``), which the system can
write out rather than run out of memory.
With hundreds of classes one forward pass's logits (tiles x mirrorings x classes x patch) would
take gigabytes too: beyond :data:`TILE_OUTPUT_BYTES` the default tile batch shrinks and a tile's
mirrored copies go through the network in several passes.

Speed: the mirrored copies of a tile (test-time augmentation) go through the network as
one batch instead of one by one, several networks (folds) share one pass over the tiles,
and the gaussian is computed once per patch size.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import tempfile
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

# float32 accumulator bytes above which the accumulator is float16 (a module setting; tests lower it)
FLOAT16_ACCUMULATOR_BYTES = 1 << 30
# float16 accumulator bytes above which it is a memory-mapped temporary file; None: half the memory
DISK_ACCUMULATOR_BYTES: int | None = None
# float32 bytes of the network output of one forward pass beyond which the default tile batch
# shrinks and then the mirrored copies of a tile take several passes (many classes, large patches)
TILE_OUTPUT_BYTES = 2 << 30


def disk_threshold() -> int:
    """Accumulator bytes beyond which it goes to a temporary file (:data:`DISK_ACCUMULATOR_BYTES`)."""
    if DISK_ACCUMULATOR_BYTES is not None:
        return int(DISK_ACCUMULATOR_BYTES)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): never
        return 1 << 62


def accumulator_dtype(num_classes: int, shape: Sequence[int]) -> torch.dtype:
    """float32, or float16 when a float32 ``(K, *shape)`` would exceed :data:`FLOAT16_ACCUMULATOR_BYTES`."""
    size = int(num_classes) * math.prod(int(s) for s in shape)
    return torch.float16 if size * 4 > FLOAT16_ACCUMULATOR_BYTES else torch.float32


def _disk_accumulator(shape: tuple[int, ...], scratch_dir: str | os.PathLike | None) -> torch.Tensor:
    """A zeroed float16 tensor backed by an already unlinked temporary file: removed with the tensor."""
    if scratch_dir is not None:
        os.makedirs(scratch_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=scratch_dir, prefix="autoseg-accumulator-") as f:
        # the mapping keeps the file's space until the tensor is freed; the file reads as zeros
        array = np.memmap(f, dtype=np.float16, mode="w+", shape=shape)
    return torch.from_numpy(array)


@functools.lru_cache(maxsize=16)
def _gaussian_cached(patch_size: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    coords = [torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in patch_size]
    grids = torch.meshgrid(*coords, indexing="ij")
    exponent = sum((g / (p * sigma_scale)) ** 2 for g, p in zip(grids, patch_size))
    gauss = torch.exp(-0.5 * exponent)
    gauss /= gauss.max()
    # The corners of a large patch underflow towards 0; a zero weight would make voxels that
    # only a corner covers divide 0 by 0.
    gauss = torch.clamp(gauss, min=float(gauss[gauss > 0].min()))
    return gauss.float()


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """Weights for one patch: 1 in the centre, a gaussian with sigma = ``sigma_scale`` x patch.

    Cached per patch size: predicting many cases does not recompute it.
    """
    return _gaussian_cached(tuple(int(p) for p in patch_size), float(sigma_scale))


def tile_starts(image_size: int, patch_size: int, overlap: float) -> list[int]:
    """Start indices of tiles along one axis: evenly spread, at most ``patch * (1 - overlap)`` apart."""
    if image_size <= patch_size:
        return [0]
    target_step = max(1.0, patch_size * (1.0 - overlap))
    num_steps = int(math.ceil((image_size - patch_size) / target_step)) + 1
    step = (image_size - patch_size) / (num_steps - 1)
    return [int(round(step * i)) for i in range(num_steps)]


def mirror_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the axes to flip, the empty one (no flip) first: 8 for 3D, 4 for 2D."""
    axes = list(spatial_axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _forward_mirrored(network: nn.Module, x: torch.Tensor, flips: list[tuple[int, ...]],
                      flips_per_pass: int | None = None) -> torch.Tensor:
    """Logits of ``x`` averaged over mirrored copies, ``flips_per_pass`` copies per forward pass
    (default all in one)."""
    b = x.shape[0]
    group = len(flips) if flips_per_pass is None else max(1, int(flips_per_pass))
    total = None
    for g0 in range(0, len(flips), group):
        chunk = flips[g0:g0 + group]
        batch = torch.cat([x.flip(f) if f else x for f in chunk]) if len(chunk) > 1 else (
            x.flip(chunk[0]) if chunk[0] else x)
        out = network(batch)
        if isinstance(out, (list, tuple)):  # deep supervision left on: the full resolution comes first
            out = out[0]
        out = out.float()
        if len(flips) == 1:
            return out
        for i, f in enumerate(chunk):
            part = out[i * b:(i + 1) * b]
            part = part.flip(f) if f else part
            if total is None:
                total = part.clone()  # summed into below; frees this pass's output
            else:
                total += part
        del out
    total /= len(flips)
    return total


def _output_bytes(batch: int, num_classes: int, patch: Sequence[int]) -> int:
    """Bytes of a float32 network output of ``batch`` patches."""
    return int(batch) * int(num_classes) * math.prod(int(p) for p in patch) * 4


def predict_sliding_window(
    network: nn.Module | Sequence[nn.Module],
    data: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    dim: int,
    num_classes: int,
    overlap: float = 0.5,
    tta: bool = True,
    tile_batch_size: int | None = None,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    mirror_axes: Sequence[int] | None = None,
    progress: bool = False,
    scratch_dir: str | os.PathLike | None = None,
    on_rows: RowsConsumer | None = None,
) -> torch.Tensor | None:
    """Softmax probabilities ``(K, Z, Y, X)`` (on CPU) for a preprocessed ``(C, Z, Y, X)`` case.

    float32, or float16 for a case whose float32 accumulator would exceed
    :data:`FLOAT16_ACCUMULATOR_BYTES` (then memory-mapped from a temporary file in ``scratch_dir``
    beyond :func:`disk_threshold`).

    ``network`` may be a list (e.g. the folds of one configuration): their per-tile
    probabilities are averaged in one pass. ``dim == 2`` predicts slice by slice with
    ``(Y, X)`` tiles; tiles of different slices share a batch. ``mirror_axes`` indexes the
    network's spatial axes (0..dim-1); default all. ``tile_batch_size`` tiles go through the
    network at once (times the number of mirrorings with ``tta``).

    ``on_rows``: stream instead of returning. The accumulator then spans only the z rows that
    tiles still reach (a ring of about two patch depths), and each time the tiles move past some
    rows those rows are final: ``on_rows(r0, r1, rows)`` gets them, ``rows(c)`` being class ``c``'s
    float32 ``(r1 - r0, Y, X)`` probabilities, the values the whole accumulator would have held.
    Returns None then.
    """
    networks = list(network) if isinstance(network, (list, tuple)) else [network]
    device = torch.device(device)
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) != dim:
        raise ValueError(f"patch size {patch_size} does not have {dim} axes")
    x = torch.as_tensor(data)
    if x.ndim != 4:
        raise ValueError(f"expected a (C, Z, Y, X) array, got shape {tuple(x.shape)}")
    x = x.float()
    spatial = tuple(x.shape[1:])
    # 2D networks see one slice at a time: a 1-voxel "patch" along z.
    full_patch = [1] + patch_size if dim == 2 else patch_size

    # Pad (centred) where the image is smaller than the patch; tiles are cut back to the image below.
    pads = [max(0, p - s) for p, s in zip(full_patch, spatial)]
    if any(pads):
        before = [p // 2 for p in pads]
        pad_arg = []
        for p, b in zip(reversed(pads), reversed(before)):
            pad_arg += [b, p - b]
        x = torch.nn.functional.pad(x, pad_arg, mode="constant", value=0.0)
    else:
        before = [0, 0, 0]
    padded = tuple(x.shape[1:])

    spatial_net_axes = list(range(2, 2 + dim))
    if mirror_axes is not None:
        spatial_net_axes = [2 + a for a in mirror_axes]
    flips = mirror_combinations(spatial_net_axes) if tta else [()]
    if tile_batch_size is None:
        # CPU convolutions gain little from big batches; mirrored copies already give 4-8.
        tile_batch_size = (1 if dim == 3 else 4) if tta else (4 if dim == 3 else 16)
        if device.type == "cuda":
            tile_batch_size *= 4
        # with hundreds of classes one pass's logits alone would take gigabytes: fewer tiles per pass
        while tile_batch_size > 1 and _output_bytes(tile_batch_size * len(flips), num_classes,
                                                    patch_size) > TILE_OUTPUT_BYTES:
            tile_batch_size //= 2
    # and if one tile's mirrored copies are still too many, they take several passes
    per_copy = _output_bytes(tile_batch_size, num_classes, patch_size)
    flips_per_pass = None if per_copy * len(flips) <= TILE_OUTPUT_BYTES else max(1, TILE_OUTPUT_BYTES // per_copy)

    gauss = gaussian_importance_map(patch_size).to(device)
    gauss_z = gauss[None] if dim == 2 else gauss  # (1, py, px) for 2D, as placed in (Z, Y, X)

    starts = [list(range(padded[0])) if dim == 2 else tile_starts(padded[0], full_patch[0], overlap)]
    starts += [tile_starts(padded[a], full_patch[a], overlap) for a in (1, 2)]
    tiles = [tuple(slice(s, s + p) for s, p in zip(pos, full_patch)) for pos in itertools.product(*starts)]
    batch_starts = list(range(0, len(tiles), tile_batch_size))

    # Accumulated on the image's own extent: tiles reaching into the padding are cut, so no
    # second (K, Z, Y, X) array is needed to crop the padding off at the end. Row z lives at
    # z % depth: the whole extent, or a ring of the rows tiles still reach when streaming.
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    final = [_final_rows(tiles, b0, before[0], spatial[0]) for b0 in batch_starts]  # before each batch
    depth = spatial[0] if on_rows is None else _ring_depth(tiles, batch_starts, final, tile_batch_size, before[0],
                                                           spatial[0])
    window = (depth,) + spatial[1:]
    dtype = accumulator_dtype(num_classes, window)
    running_mean = dtype == torch.float16
    acc = weight = None
    if device.type != "cpu":
        try:
            acc = torch.zeros((num_classes,) + window, dtype=dtype, device=device)
            weight = torch.zeros(window, dtype=torch.float32, device=device)
        except torch.OutOfMemoryError:
            # A whole large volume may not fit beside the network on a GPU: accumulate on CPU.
            acc = weight = None
    if acc is None:
        if running_mean and num_classes * math.prod(window) * 2 > disk_threshold():
            acc = _disk_accumulator((num_classes,) + window, scratch_dir)
        else:
            acc = torch.zeros((num_classes,) + window, dtype=dtype)
        weight = torch.zeros(window, dtype=torch.float32)
    acc_device = acc.device
    x_dev = x.to(device) if device.type != "cpu" else x
    # 2.5D networks (attribute context_slices = K) see each slice with its K // 2 neighbours either
    # side as extra channels, channel-major; beyond the volume the edge slice repeats (as in training)
    contexts = {int(getattr(n, "context_slices", 1)) for n in networks}
    if len(contexts) > 1:
        raise ValueError(f"networks predicted together disagree on context_slices: {sorted(contexts)}")
    context = contexts.pop()
    if context > 1 and dim != 2:
        raise ValueError(f"context_slices={context} needs a 2D network, got dim={dim}")
    half = context // 2
    if half:
        x_dev = torch.cat([x_dev[:, :1]] * half + [x_dev] + [x_dev[:, -1:]] * half, dim=1)
    gauss_acc = gauss_z.to(acc_device)


    for n in networks:
        n.eval()
    batches = enumerate(batch_starts)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=len(batch_starts), desc="tiles", leave=False)
    autocast = torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with torch.inference_mode(), autocast:
        done = 0  # rows before this are final (streamed already)
        for i, b0 in batches:
            chunk = tiles[b0:b0 + tile_batch_size]
            if half:  # tile t covers slice z; in the edge-padded volume its neighbours are z .. z + 2 * half
                inp = torch.stack([x_dev[:, t[0].start:t[0].start + context, t[1], t[2]].flatten(0, 1) for t in chunk])
            else:
                inp = torch.stack([x_dev[(slice(None),) + t] for t in chunk])  # (B, C, pz, py, px)
                if dim == 2:
                    inp = inp[:, :, 0]
            probs = None
            for n in networks:
                # the logits go as soon as their softmax exists; folds summed in place
                p = torch.softmax(_forward_mirrored(n, inp, flips, flips_per_pass), dim=1)
                if probs is None:
                    probs = p
                else:
                    probs += p
                del p
            if len(networks) > 1:
                probs /= len(networks)
            if dim == 2:
                probs = probs[:, :, None]
            if running_mean:
                probs = probs.to(acc_device)
                for t, p in zip(chunk, probs):
                    dst, src = _clip_tile(t, crop)
                    for ring, part in _ring_pieces(dst, src, depth):
                        g = gauss_acc[part]
                        w = weight[ring] + g
                        target = (slice(None),) + ring
                        mean = acc[target].float()
                        step = p[(slice(None),) + part] - mean
                        step *= g / w
                        mean += step
                        acc[target] = mean  # cast into the float16 accumulator
                        weight[ring] = w
            else:
                probs = probs.mul_(gauss_z).to(acc_device)
                for t, p in zip(chunk, probs):
                    dst, src = _clip_tile(t, crop)
                    for ring, part in _ring_pieces(dst, src, depth):
                        acc[(slice(None),) + ring] += p[(slice(None),) + part]
                        weight[ring] += gauss_acc[part]
            if on_rows is not None:
                upto = final[i + 1] if i + 1 < len(final) else spatial[0]
                if upto > done:
                    _emit(on_rows, acc, weight, done, upto, depth, running_mean)
                    done = upto

    if on_rows is not None:
        return None
    if not running_mean:
        acc /= weight  # in place, the weight broadcast over the classes: no second (K, Z, Y, X) array
    del weight
    return acc.cpu()


RowsConsumer = Callable[[int, int, Callable[[int], np.ndarray]], None]


def _final_rows(tiles: list[tuple[slice, ...]], b0: int, before_z: int, depth_z: int) -> int:
    """Image rows below which no tile from ``tiles[b0]`` on reaches: final before batch ``b0``."""
    if b0 >= len(tiles):
        return depth_z
    # tiles are z-major: no later tile starts lower
    return min(max(tiles[b0][0].start - before_z, 0), depth_z)


def _ring_depth(tiles: list[tuple[slice, ...]], batch_starts: list[int], final: list[int], batch: int,
                before_z: int, depth_z: int) -> int:
    """Rows the streaming accumulator needs: from the first unfinished row to the deepest a batch reaches."""
    need = 1
    for b0, lowest in zip(batch_starts, final):
        reach = max(min(t[0].stop - before_z, depth_z) for t in tiles[b0:b0 + batch])
        need = max(need, reach - lowest)
    return min(need, depth_z)


def _ring_pieces(dst: tuple[slice, ...], src: tuple[slice, ...], depth: int) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """A tile's rows ``dst[0]`` in a ring of ``depth`` rows: one or two (ring slice, tile slice) pieces."""
    z0, z1 = dst[0].start, dst[0].stop
    r0 = z0 % depth
    if r0 + (z1 - z0) <= depth:
        return [((slice(r0, r0 + z1 - z0),) + dst[1:], src)]
    first = depth - r0
    s0 = src[0].start
    return [((slice(r0, depth),) + dst[1:], (slice(s0, s0 + first),) + src[1:]),
            ((slice(0, z1 - z0 - first),) + dst[1:], (slice(s0 + first, src[0].stop),) + src[1:])]


def _emit(on_rows: RowsConsumer, acc: torch.Tensor, weight: torch.Tensor, r0: int, r1: int, depth: int,
          running_mean: bool) -> None:
    """Hand rows ``[r0, r1)`` to the consumer class by class, then clear them in the ring for reuse."""
    full = (slice(None), slice(None))
    pieces = [p[0][0] for p in _ring_pieces((slice(r0, r1),) + full, (slice(0, r1 - r0),) + full, depth)]

    def rows(c: int) -> np.ndarray:
        parts = [acc[c, p].float() if running_mean else acc[c, p] / weight[p] for p in pieces]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.cpu().numpy()

    on_rows(r0, r1, rows)
    for p in pieces:
        acc[:, p] = 0
        weight[p] = 0


def _clip_tile(tile: tuple[slice, ...], crop: tuple[slice, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of a tile (in padded coordinates) inside the image: (where in the image, where in the tile)."""
    dst, src = [], []
    for t, c in zip(tile, crop):
        lo, hi = max(t.start, c.start), min(t.stop, c.stop)
        dst.append(slice(lo - c.start, hi - c.start))
        src.append(slice(lo - t.start, hi - t.start))
    return tuple(dst), tuple(src)
