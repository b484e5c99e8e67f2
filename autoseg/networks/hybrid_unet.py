"""Hybrid 2D/3D U-Net for thick-slice (anisotropic) volumes.

Thick-slice scans (cardiac cine at ~1.5x1.5x10 mm, spine MRI at ~0.5x0.5x4 mm) hold dense
information in-plane and sparse information between slices. A plain 3D U-Net spends most of
its FLOPs on 3x3x3 kernels over slices that barely correlate, and pools the thin axis early;
a 2D U-Net never sees the neighbouring slices. This network keeps the U-Net's encoder and
decoder 2D (``1 x k x k`` kernels, in-plane pooling only) and puts the inter-slice modelling
on the skip connections, where each resolution's features are handed to the decoder::

    input (N, C, Z, Y, X)
      |
    [enc 0: 1x3x3 convs] --skip (identity, see below) ------------------------------> [dec 0] -> head (full res)
      | in-plane stride 1x2x2                                                         ^ 1x2x2 transposed conv
    [enc 1: 1x3x3 convs] --skip (identity) -----------------------------------------> [dec 1] -> head (DS)
      |                                                                               ^
    [enc 2: 1x3x3 convs] --skip--> [3D res block 3x3x3] -> [neighbourhood agg.] --> [dec 2] -> head (DS)
      |                                                                               ^
     ...                                                                             ...
    [bottleneck: 1x3x3] ---------> [3D res block 3x3x3] -> [neighbourhood agg.] ------+

The skips at full and half in-plane resolution stay plain by default (``first_skip_stage=2``):
there the 3D modules cost more than the whole 2D network (memory-bound pooling and 1x1x1 convs
on the largest maps), and the decoder's upper stages receive inter-slice context through the
stages below. Measured on ACDC fold 0 in 20 CPU minutes: 0.783 mean Dice from stage 2 against
0.778 from stage 1, with 1.3x the iterations (documentation/hybrid.md). Skip module of a stage with ``f`` features:

* a 3D residual block (bottleneck: 1x1x1 to f/2, 3x3x3, 1x1x1 back to f; instance norm,
  LeakyReLU, identity shortcut; the last norm's scale starts at 0);
* a neighbourhood-aggregation block: a 1x1x1 conv to ``f/4`` channels, then mean- and
  max-pooling over ``n x 3 x 3`` neighbourhoods (stride 1, same padding) of increasing
  thickness ``n = 1, 3, 5`` slices, the six pooled maps concatenated (``1.5f`` channels), then
  an inverted bottleneck: 1x1x1 conv to ``2f``, instance norm, LeakyReLU, 1x1x1 conv back to
  ``f``, instance norm whose scale starts at 0 (the block starts as the identity), added to
  its input. Pooling all ``f`` channels (``6f`` concatenated) made the ACDC training step ~1.2x
  slower (documentation/hybrid.md, "Skip-module cost").

Convolutions are ``nn.Conv3d`` with ``(1, k, k)`` kernels rather than folding Z into the
batch for ``nn.Conv2d``: measured on the shared 2-core CPU (bf16, forward + backward, 32
channels, 4x10x96x128) both take ~0.33-0.35 s, so the simpler form wins and the instance
norms stay per volume (per-slice statistics would differ between apex and base slices).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from autoseg.networks.layers import ConvNormAct, conv, init_weights, norm
from autoseg.networks.unet import UNetDecoder, check_input, check_topology, stack, total_stride
from autoseg.planners.plans import NetworkTopology
from autoseg.planners.topology import HYBRID_FIRST_SKIP_STAGE

NEIGHBOURHOOD_THICKNESSES = (1, 3, 5)
# hidden width of the aggregation's inverted bottleneck, in multiples of the block's channels;
# 2 rather than the usual 4: the 1x1x1 convs dominate the block's CPU cost
EXPANSION = 2
# the aggregation pools channels // REDUCTION features: stride-1 pooling and the concatenation
# of its six maps are memory-bound, and on all f channels they were most of the hybrid's
# extra step time (documentation/hybrid.md, "Skip-module cost")
REDUCTION = 4


def in_plane_topology(topology: NetworkTopology) -> NetworkTopology:
    """The same topology with kernel 1 along z at every stage: encoder and decoder never mix slices."""
    t = copy.deepcopy(topology)
    t.kernel_sizes = [[1] + list(k[1:]) for k in t.kernel_sizes]
    return t


class ResidualBlock3d(nn.Module):
    """Bottleneck residual block whose middle conv is 3x3x3: the skip module that sees neighbouring slices.

    1x1x1 (f -> f/2), 3x3x3 (f/2 -> f/2), 1x1x1 (f/2 -> f), each with instance norm, identity
    shortcut. A plain two-conv 3x3x3 block costs 54 f^2 MACs per voxel, more than the 2D
    stage it serves (~45 f^2); this one costs ~8 f^2. :class:`HybridUNet` sets the last norm's
    scale to 0, so the block starts as the identity (up to the LeakyReLU after the sum).
    """

    def __init__(self, channels: int, kernel_size: Sequence[int] = (3, 3, 3)) -> None:
        super().__init__()
        mid = max(1, channels // 2)
        self.reduce = ConvNormAct(3, channels, mid, (1, 1, 1))
        self.conv = ConvNormAct(3, mid, mid, kernel_size)
        self.restore = ConvNormAct(3, mid, channels, (1, 1, 1), act=False)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.restore(self.conv(self.reduce(x))) + x)


def _shift(x: torch.Tensor, axis: int, offset: int, fill: float) -> torch.Tensor:
    """``x`` moved by ``offset`` along ``axis`` (out[i] = x[i + offset]), vacated positions = ``fill``."""
    if offset == 0:
        return x
    n = x.shape[axis]
    if abs(offset) >= n:
        return x.new_full(x.shape, fill)
    pad_shape = list(x.shape)
    pad_shape[axis] = abs(offset)
    pad = x.new_full(pad_shape, fill)
    if offset > 0:
        return torch.cat([x.narrow(axis, offset, n - offset), pad], dim=axis)
    return torch.cat([pad, x.narrow(axis, 0, n + offset)], dim=axis)


def _window3(x: torch.Tensor, axis: int, op: str) -> torch.Tensor:
    """Sum or max over the 3-voxel window centred on each voxel along ``axis`` (outside = ignored)."""
    if op == "max":
        return torch.maximum(torch.maximum(_shift(x, axis, -1, float("-inf")), x), _shift(x, axis, 1, float("-inf")))
    return _shift(x, axis, -1, 0.0) + x + _shift(x, axis, 1, 0.0)


def _window_counts(n: int, half: int, like: torch.Tensor) -> torch.Tensor:
    """How many positions of a ``2*half+1`` window centred on each of ``n`` positions lie inside."""
    idx = torch.arange(n, device=like.device)
    return (torch.clamp(idx + half, max=n - 1) - torch.clamp(idx - half, min=0) + 1).to(like.dtype)


def neighbourhood_pool(x: torch.Tensor, thicknesses: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean and max of ``x`` (N, C, Z, Y, X) over ``n x 3 x 3`` neighbourhoods, for each ``n``.

    Equal to ``avg_pool3d(count_include_pad=False)`` and ``max_pool3d`` with stride 1 and same
    padding, computed separably from shifted copies: the 3x3 in-plane window once, then
    growing z windows from the previous one (a window of n+2 slices is the union of the n-slice
    windows one slice either side). On a CPU torch's stride-1 3D pools, and above all their
    backward passes, were the hybrid network's slowest part; shifts and elementwise max/add
    vectorise and their gradients are cheap.
    """
    z, y, xx = x.shape[2:]
    plane_max = _window3(_window3(x, 3, "max"), 4, "max")
    plane_sum = _window3(_window3(x, 3, "sum"), 4, "sum")
    plane_count = _window_counts(y, 1, x)[:, None] * _window_counts(xx, 1, x)[None, :]
    pooled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    cur_max, cur_sum, half = plane_max, plane_sum, 0
    for n in sorted(set(thicknesses)):
        while half < n // 2:
            # union of the windows one slice either side; sums add the two new edge slices
            grown_max = torch.maximum(_shift(cur_max, 2, -1, float("-inf")), _shift(cur_max, 2, 1, float("-inf")))
            cur_max = torch.maximum(grown_max, cur_max)
            cur_sum = cur_sum + _shift(plane_sum, 2, -(half + 1), 0.0) + _shift(plane_sum, 2, half + 1, 0.0)
            half += 1
        count = _window_counts(z, half, x)[:, None, None] * plane_count
        pooled[n] = (cur_sum / count, cur_max)
    return [pooled[n][0] for n in thicknesses], [pooled[n][1] for n in thicknesses]


class NeighbourhoodAggregation(nn.Module):
    """Reduce, mean and max over ``n x 3 x 3`` neighbourhoods (n = 1, 3, 5 slices), inverted bottleneck, residual.

    Output has the input's shape. Pooling is stride 1 with same padding (mean over the voxels
    inside the volume only), so a slice's output depends on up to ``max(n) // 2`` slices either side.
    A patch with fewer slices than ``n`` pools over the slices it has. The pooled features are
    a 1x1x1 projection to ``channels // reduction`` (``reduction=1`` pools the input itself).
    """

    def __init__(self, channels: int, thicknesses: Sequence[int] = NEIGHBOURHOOD_THICKNESSES,
                 expansion: int = EXPANSION, reduction: int = REDUCTION) -> None:
        super().__init__()
        if any(n < 1 or n % 2 == 0 for n in thicknesses):
            raise ValueError(f"neighbourhood thicknesses must be odd and >= 1, got {list(thicknesses)}")
        if len(set(thicknesses)) != len(thicknesses):
            raise ValueError(f"neighbourhood thicknesses must be distinct, got {list(thicknesses)}")
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        self.thicknesses = tuple(int(n) for n in thicknesses)
        pooled = max(1, channels // reduction)
        self.reduce = ConvNormAct(3, channels, pooled, (1, 1, 1)) if reduction > 1 else nn.Identity()
        hidden = expansion * channels
        self.expand = ConvNormAct(3, 2 * len(self.thicknesses) * pooled, hidden, (1, 1, 1))
        self.project = ConvNormAct(3, hidden, channels, (1, 1, 1), act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled_mean, pooled_max = neighbourhood_pool(self.reduce(x), self.thicknesses)
        return x + self.project(self.expand(torch.cat(pooled_mean + pooled_max, dim=1)))


class LargeKernelBlock(nn.Module):
    """In-plane depthwise 7x7 conv, norm, pointwise MLP (x2), residual: cheap large receptive field."""

    def __init__(self, channels: int, kernel: int = 7) -> None:
        super().__init__()
        self.dw = nn.Conv3d(channels, channels, (1, kernel, kernel), padding=(0, kernel // 2, kernel // 2),
                            groups=channels, bias=False)
        self.norm = norm(3)(channels, eps=1e-5, affine=True)
        self.pw1 = conv(3)(channels, 2 * channels, 1)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.pw2 = conv(3)(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))


class SkipModule(nn.Sequential):
    def __init__(self, channels: int, aggregation_reduction: int = REDUCTION) -> None:
        super().__init__(ResidualBlock3d(channels), NeighbourhoodAggregation(channels, reduction=aggregation_reduction))


class HybridUNet(nn.Module):
    """2D encoder/decoder stages, 3D modules on the skips; same interface as :class:`~autoseg.networks.unet.UNet`.

    ``skip_modules=False`` is the ablation: a U-Net of in-plane convolutions only (every slice
    predicted on its own). Skip modules sit on stages ``first_skip_stage`` and deeper (default 2:
    from a quarter of the in-plane resolution down; a topology with fewer stages keeps one on its
    deepest stage). ``large_kernel=True`` appends a depthwise 7x7 block to every encoder
    stage. ``aggregation_reduction`` divides the channels the aggregation pools (1: all of
    them). ``topology`` comes from the ``3d_hybrid`` configuration (in-plane strides); kernels
    along z are forced to 1 whatever the topology says, strides are used as planned.
    """

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int = 3,
                 deep_supervision: bool = True, skip_modules: bool = True, large_kernel: bool = False,
                 first_skip_stage: int = HYBRID_FIRST_SKIP_STAGE, aggregation_reduction: int = REDUCTION) -> None:
        super().__init__()
        if dim != 3:
            raise ValueError(f"the hybrid U-Net needs 3 spatial axes (a stack of slices), got dim={dim}")
        check_topology(topology, dim)
        self.dim = dim
        self.deep_supervision = deep_supervision
        self.total_stride = total_stride(topology)
        topo = in_plane_topology(topology)
        f = topo.features_per_stage
        self.encoder = nn.ModuleList()
        prev = in_channels
        for s in range(topo.n_stages):
            stage = stack(dim, prev, f[s], topo.kernel_sizes[s], topo.strides[s], topo.n_conv_per_stage)
            if large_kernel:
                stage.append(LargeKernelBlock(f[s]))
            self.encoder.append(stage)
            prev = f[s]
        # The largest maps get no 3D module: there it would cost more than the rest of the network
        # (stride-1 pooling and 1x1x1 convs are memory-bound on a CPU), while the decoder's upper
        # stages still receive inter-slice context from the stages below.
        first = min(first_skip_stage, topo.n_stages - 1)
        self.skips = nn.ModuleList(SkipModule(c, aggregation_reduction) if skip_modules and s >= first else nn.Identity()
                                   for s, c in enumerate(f))
        self.decoder = UNetDecoder(num_classes, topo, dim, topo.n_conv_per_stage)
        self.apply(init_weights)
        for m in self.modules():
            # Both skip blocks start as the identity (their last norm's scale is 0): the network
            # starts as its 2D ablation and the 3D paths grow in as training finds them useful,
            # instead of adding random inter-slice mixing to every skip from the first step.
            if isinstance(m, NeighbourhoodAggregation):
                nn.init.zeros_(m.project[1].weight)
            elif isinstance(m, ResidualBlock3d):
                nn.init.zeros_(m.restore[1].weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        check_input(x, self.dim, self.total_stride)
        skips = []
        for stage, skip in zip(self.encoder, self.skips):
            x = stage(x)
            skips.append(skip(x))
            # the next stage pools the un-mixed features; the 3D modules feed the decoder only
        return self.decoder(skips, all_heads=self.training and self.deep_supervision)


class HybridUNetNo3d(HybridUNet):
    """Ablation: the hybrid U-Net without its 3D skip modules (slices never exchange information)."""

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int = 3,
                 deep_supervision: bool = True) -> None:
        super().__init__(in_channels, num_classes, topology, dim, deep_supervision, skip_modules=False)
