"""Sliding-window prediction of one preprocessed case.

The image is covered by overlapping patches (tiles); each tile's softmax is weighted by a
gaussian that trusts the patch centre more than its border, and the weighted sums are
divided by the summed weights. Memory stays at one float32 ``(K, Z, Y, X)`` accumulator
plus one ``(Z, Y, X)`` weight map shared by all classes, whatever the number of folds.

Speed: the mirrored copies of a tile (test-time augmentation) go through the network as
one batch instead of one by one, several networks (folds) share one pass over the tiles,
and the gaussian is computed once per patch size.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn


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


def _forward_mirrored(network: nn.Module, x: torch.Tensor, flips: list[tuple[int, ...]]) -> torch.Tensor:
    """Logits of ``x`` averaged over mirrored copies, all copies in one forward pass."""
    b = x.shape[0]
    batch = torch.cat([x.flip(f) if f else x for f in flips]) if len(flips) > 1 else x
    out = network(batch)
    if isinstance(out, (list, tuple)):  # deep supervision left on: the full resolution comes first
        out = out[0]
    out = out.float()
    if len(flips) == 1:
        return out
    total = None
    for i, f in enumerate(flips):
        part = out[i * b:(i + 1) * b]
        part = part.flip(f) if f else part
        total = part if total is None else total + part
    return total / len(flips)


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
) -> torch.Tensor:
    """Softmax probabilities ``(K, Z, Y, X)`` float32 (on CPU) for a preprocessed ``(C, Z, Y, X)`` case.

    ``network`` may be a list (e.g. the folds of one configuration): their per-tile
    probabilities are averaged in one pass. ``dim == 2`` predicts slice by slice with
    ``(Y, X)`` tiles; tiles of different slices share a batch. ``mirror_axes`` indexes the
    network's spatial axes (0..dim-1); default all. ``tile_batch_size`` tiles go through the
    network at once (times the number of mirrorings with ``tta``).
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

    # Pad (centred) where the image is smaller than the patch; cropped off again at the end.
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

    if tile_batch_size is None:
        # CPU convolutions gain little from big batches; mirrored copies already give 4-8.
        tile_batch_size = (1 if dim == 3 else 4) if tta else (4 if dim == 3 else 16)
        if device.type == "cuda":
            tile_batch_size *= 4
    spatial_net_axes = list(range(2, 2 + dim))
    if mirror_axes is not None:
        spatial_net_axes = [2 + a for a in mirror_axes]
    flips = mirror_combinations(spatial_net_axes) if tta else [()]

    gauss = gaussian_importance_map(patch_size).to(device)
    gauss_z = gauss[None] if dim == 2 else gauss  # (1, py, px) for 2D, as placed in (Z, Y, X)

    try:
        acc = torch.zeros((num_classes,) + padded, dtype=torch.float32, device=device)
        weight = torch.zeros(padded, dtype=torch.float32, device=device)
    except torch.OutOfMemoryError:
        # A whole large volume may not fit beside the network on a GPU: accumulate on CPU.
        acc = torch.zeros((num_classes,) + padded, dtype=torch.float32)
        weight = torch.zeros(padded, dtype=torch.float32)
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

    starts = [list(range(padded[0])) if dim == 2 else tile_starts(padded[0], full_patch[0], overlap)]
    starts += [tile_starts(padded[a], full_patch[a], overlap) for a in (1, 2)]
    tiles = [tuple(slice(s, s + p) for s, p in zip(pos, full_patch)) for pos in itertools.product(*starts)]

    for n in networks:
        n.eval()
    batches = range(0, len(tiles), tile_batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="tiles", leave=False)
    autocast = torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with torch.inference_mode(), autocast:
        for b0 in batches:
            chunk = tiles[b0:b0 + tile_batch_size]
            if half:  # tile t covers slice z; in the edge-padded volume its neighbours are z .. z + 2 * half
                inp = torch.stack([x_dev[:, t[0].start:t[0].start + context, t[1], t[2]].flatten(0, 1) for t in chunk])
            else:
                inp = torch.stack([x_dev[(slice(None),) + t] for t in chunk])  # (B, C, pz, py, px)
                if dim == 2:
                    inp = inp[:, :, 0]
            probs = None
            for n in networks:
                logits = _forward_mirrored(n, inp, flips)
                p = torch.softmax(logits, dim=1)
                probs = p if probs is None else probs + p
            if len(networks) > 1:
                probs /= len(networks)
            if dim == 2:
                probs = probs[:, :, None]
            probs = (probs * gauss_z).to(acc_device)
            for t, p in zip(chunk, probs):
                acc[(slice(None),) + t] += p
                weight[t] += gauss_acc

    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    acc = acc[(slice(None),) + crop]
    weight = weight[crop]
    acc /= weight  # in place: no second (K, Z, Y, X) array
    acc = acc.cpu()
    return acc.contiguous() if not acc.is_contiguous() else acc
