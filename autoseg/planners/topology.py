"""U-Net topology from a patch size and spacing, and what a topology costs to train.

Pure functions, shared by every planner:

* :func:`plan_topology`: stages, per-axis pooling strides and kernel sizes for a patch.
* :func:`fit_patch`: grow a patch until every axis divides by the network's total stride.
* :func:`training_flops` / :func:`training_memory_bytes`: rough cost of one training
  iteration, which planners compare against a compute or memory budget; the memory counts the
  network's K output channels, so a hundred-class plan gets a smaller patch or batch.
"""
from __future__ import annotations

import math
from typing import Sequence

from autoseg.planners.plans import NetworkTopology

# An axis pools only while it is at least this long (so its feature map stays >= 4).
MIN_SIZE_TO_POOL = 8
# Axes coarser than this multiple of the finest axis neither pool nor convolve (kernel 1)
# until pooling of the fine axes has caught up with them.
ANISOTROPY_FACTOR = 2.0
MAX_STAGES = 8
# The hybrid U-Net's 3D skip modules sit on this stage and deeper (autoseg.networks.hybrid_unet);
# shared so the planner's cost model counts the modules the network builds.
HYBRID_FIRST_SKIP_STAGE = 2


def features_per_stage(n_stages: int, base: int, cap: int) -> list[int]:
    """``base`` doubling per stage, capped at ``cap``."""
    return [min(base * 2 ** s, cap) for s in range(n_stages)]


def plan_topology(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    base_features: int,
    max_features: int,
    frozen_axes: Sequence[int] = (),
    n_conv_per_stage: int = 2,
    max_stages: int = MAX_STAGES,
) -> NetworkTopology:
    """Stages, strides and kernels for ``patch_size`` at ``spacing`` (both per network axis).

    An axis pools (stride 2) in a stage while its feature map is at least
    :data:`MIN_SIZE_TO_POOL` and its current spacing is not more than
    :data:`ANISOTROPY_FACTOR` times the finest; its kernel is 1 while it is that much
    coarser, so thick slices are not convolved across until in-plane pooling catches up
    (from then on it keeps kernel 3).
    ``frozen_axes`` never pool and always take kernel 1 (the hybrid configuration's slice axis).
    """
    dim = len(patch_size)
    if len(spacing) != dim:
        raise ValueError(f"patch_size {list(patch_size)} and spacing {list(spacing)} differ in length")
    frozen = set(frozen_axes)
    size = [int(s) for s in patch_size]
    current = [float(s) for s in spacing]

    caught_up = [False] * dim  # once an axis convolves (kernel 3), it keeps convolving

    def kernels() -> list[int]:
        finest = min(current[a] for a in range(dim) if a not in frozen) if len(frozen) < dim else 1.0
        for a in range(dim):
            caught_up[a] = caught_up[a] or (a not in frozen and current[a] <= ANISOTROPY_FACTOR * finest)
        return [3 if caught_up[a] else 1 for a in range(dim)]

    strides = [[1] * dim]
    kernel_sizes = [kernels()]
    while len(strides) < max_stages:
        free = [a for a in range(dim) if a not in frozen]
        if not free:
            break
        finest = min(current[a] for a in free)
        stride = [2 if a not in frozen and size[a] >= MIN_SIZE_TO_POOL and current[a] <= ANISOTROPY_FACTOR * finest else 1
                  for a in range(dim)]
        if all(s == 1 for s in stride):
            break
        size = [sz // st for sz, st in zip(size, stride)]
        current = [sp * st for sp, st in zip(current, stride)]
        strides.append(stride)
        kernel_sizes.append(kernels())
    return NetworkTopology(
        features_per_stage=features_per_stage(len(strides), base_features, max_features),
        kernel_sizes=kernel_sizes,
        strides=strides,
        n_conv_per_stage=n_conv_per_stage,
    )


def total_stride(topology: NetworkTopology) -> list[int]:
    """Product of the strides per axis: every patch axis must divide by it."""
    out = [1] * len(topology.strides[0])
    for st in topology.strides:
        out = [o * s for o, s in zip(out, st)]
    return out


def fit_patch(patch_size: Sequence[int], spacing: Sequence[float], **topology_kwargs) -> tuple[list[int], NetworkTopology]:
    """Round ``patch_size`` up until it divides by its own topology's total stride."""
    patch = [max(1, int(p)) for p in patch_size]
    for _ in range(16):
        topology = plan_topology(patch, spacing, **topology_kwargs)
        stride = total_stride(topology)
        rounded = [int(math.ceil(p / s) * s) for p, s in zip(patch, stride)]
        if rounded == patch:
            return patch, topology
        patch = rounded
    raise RuntimeError(f"patch size did not settle: {patch}")  # cannot happen: each round only grows


def _stage_voxels(topology: NetworkTopology, patch_size: Sequence[int]) -> list[int]:
    voxels, size = [], [int(p) for p in patch_size]
    for st in topology.strides:
        size = [max(1, s // t) for s, t in zip(size, st)]
        voxels.append(math.prod(size))
    return voxels


def training_flops(topology: NetworkTopology, patch_size: Sequence[int], batch_size: int,
                   in_channels: int, num_classes: int) -> float:
    """Floating-point operations of one training iteration (forward + backward ~ 3x forward).

    Counts the convolutions of a plain U-Net with strided-conv downsampling and
    transposed-conv upsampling (what :mod:`autoseg.networks.unet` builds); norms,
    activations and the loss are small next to them.
    """
    f = topology.features_per_stage
    voxels = _stage_voxels(topology, patch_size)
    macs = 0.0
    prev = in_channels
    for s in range(topology.n_stages):
        k = math.prod(topology.kernel_sizes[s])
        macs += voxels[s] * k * prev * f[s]  # first conv (strided)
        macs += voxels[s] * k * f[s] * f[s] * (topology.n_conv_per_stage - 1)
        prev = f[s]
    for s in range(topology.n_stages - 2, -1, -1):
        k = math.prod(topology.kernel_sizes[s])
        macs += voxels[s] * f[s + 1] * f[s]  # transposed conv, kernel == stride: one MAC per output voxel
        macs += voxels[s] * k * 2 * f[s] * f[s]  # first decoder conv on [upsampled, skip]
        macs += voxels[s] * k * f[s] * f[s] * (topology.n_conv_per_stage - 1)
    macs += voxels[0] * f[0] * num_classes
    return 2.0 * 3.0 * macs * batch_size


# Bytes kept per activation element during training: the conv, norm and nonlinearity outputs
# kept for backward, their gradients, mixed-precision copies. Calibrated so that nnU-Net's
# usual 8 GB plan (128^3 patch, batch 2, 32-320 features) just fits.
BYTES_PER_ACTIVATION = 9.0
RESERVED_BYTES = 1.0e9  # CUDA context, cuDNN workspace, weights and optimizer state
# Per class and output voxel: the logits and their gradient in half precision (2 + 2 bytes), the
# loss's float32 softmax and log-softmax (4 + 4). The target stays one integer map, never one-hot
# (autoseg.trainers.losses), so it does not grow with the classes.
BYTES_PER_OUTPUT_ELEMENT = 12.0


def activation_memory_bytes(topology: NetworkTopology, patch_size: Sequence[int], batch_size: int) -> float:
    """Activations of every conv, encoder and decoder, kept for one training iteration's backward."""
    f = topology.features_per_stage
    voxels = _stage_voxels(topology, patch_size)
    elements = 0.0
    for s in range(topology.n_stages):
        sides = 1 if s == topology.n_stages - 1 else 2  # the bottleneck has no decoder stage
        elements += voxels[s] * f[s] * topology.n_conv_per_stage * sides
    return elements * batch_size * BYTES_PER_ACTIVATION


def output_memory_bytes(topology: NetworkTopology, patch_size: Sequence[int], batch_size: int,
                        num_classes: int) -> float:
    """The K-channel outputs of one training iteration: full resolution and every deep-supervision
    output (one per decoder stage), :data:`BYTES_PER_OUTPUT_ELEMENT` per class and voxel."""
    voxels = _stage_voxels(topology, patch_size)
    heads = voxels[:-1] or voxels  # the bottleneck has no head; a one-stage network has one output
    return float(sum(heads)) * num_classes * batch_size * BYTES_PER_OUTPUT_ELEMENT


def training_memory_bytes(topology: NetworkTopology, patch_size: Sequence[int], batch_size: int,
                          num_classes: int) -> float:
    """Rough GPU memory of one training iteration: activations, the ``num_classes`` outputs
    (label values, background included), and what CUDA reserves."""
    return (activation_memory_bytes(topology, patch_size, batch_size)
            + output_memory_bytes(topology, patch_size, batch_size, num_classes) + RESERVED_BYTES)
