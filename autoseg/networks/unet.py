"""Plain convolutional U-Net for 2D and 3D, shaped entirely by a :class:`NetworkTopology`.

Encoder stage ``s``: ``n_conv_per_stage`` x (conv, instance norm, LeakyReLU); the first conv
of the stage carries ``strides[s]`` (strided-conv downsampling, ``strides[0]`` is all ones).
Decoder: transposed conv (kernel = stride) up to the next finer stage, concatenation with
that stage's skip, ``n_conv_per_stage`` convs, and a 1x1 segmentation head. While training
with deep supervision every decoder resolution produces logits (full resolution first);
otherwise only the full-resolution head runs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from autoseg.networks.layers import ConvNormAct, conv, conv_transpose, init_weights
from autoseg.planners.plans import NetworkTopology


def check_topology(topology: NetworkTopology, dim: int) -> None:
    """Raise ValueError naming what is inconsistent; plans are user-editable JSON."""
    n = topology.n_stages
    if n < 2:
        raise ValueError(f"a U-Net needs at least 2 stages, topology has {n}")
    if len(topology.kernel_sizes) != n or len(topology.strides) != n:
        raise ValueError(f"topology has {n} stages but {len(topology.kernel_sizes)} kernel sizes "
                         f"and {len(topology.strides)} strides")
    for name, lists in (("kernel_sizes", topology.kernel_sizes), ("strides", topology.strides)):
        for s, entry in enumerate(lists):
            if len(entry) != dim:
                raise ValueError(f"topology {name}[{s}] = {entry} has {len(entry)} axes, the network has {dim}")
    if any(st != 1 for st in topology.strides[0]):
        raise ValueError(f"strides[0] must be all ones, got {topology.strides[0]}")


def total_stride(topology: NetworkTopology) -> list[int]:
    """Per-axis product of all strides: input sizes must be divisible by it."""
    out = [1] * len(topology.strides[0])
    for st in topology.strides:
        out = [a * b for a, b in zip(out, st)]
    return out


def stack(dim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
          first_stride: Sequence[int], n: int) -> nn.Sequential:
    layers = [ConvNormAct(dim, in_channels, out_channels, kernel_size, first_stride)]
    layers += [ConvNormAct(dim, out_channels, out_channels, kernel_size) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class UNetDecoder(nn.Module):
    """Decoder shared by every encoder variant: upsample, join the skip, the stage's block, heads.

    ``join``: ``"concat"`` (U-Net: the block takes ``2 * features``) or ``"add"`` (residual
    symmetric U-Nets: the skip is added). ``block(stage, in_channels, out_channels)`` builds a
    stage's block; by default ``n_conv_per_stage`` conv-norm-activation units.
    """

    def __init__(self, num_classes: int, topology: NetworkTopology, dim: int, n_conv_per_stage: int,
                 block: Callable[[int, int, int], nn.Module] | None = None, join: str = "concat") -> None:
        super().__init__()
        if join not in ("concat", "add"):
            raise ValueError(f"join must be 'concat' or 'add', got {join!r}")
        if block is None:
            def block(s: int, cin: int, cout: int) -> nn.Module:
                return stack(dim, cin, cout, topology.kernel_sizes[s], [1] * dim, n_conv_per_stage)
        self.join = join
        f = topology.features_per_stage
        self.up = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        # index d walks from the stage just above the bottleneck up to full resolution
        for s in range(topology.n_stages - 2, -1, -1):
            st = tuple(topology.strides[s + 1])
            self.up.append(conv_transpose(dim)(f[s + 1], f[s], kernel_size=st, stride=st, bias=False))
            self.blocks.append(block(s, 2 * f[s] if join == "concat" else f[s], f[s]))
            self.heads.append(conv(dim)(f[s], num_classes, kernel_size=1, bias=True))

    def forward(self, skips: list[torch.Tensor], all_heads: bool) -> list[torch.Tensor] | torch.Tensor:
        x = skips[-1]
        outputs = []
        n = len(self.blocks)
        for d in range(n):
            x, skip = self.up[d](x), skips[-(d + 2)]
            x = self.blocks[d](torch.cat((x, skip), dim=1) if self.join == "concat" else x + skip)
            if all_heads:
                outputs.append(self.heads[d](x))
            elif d == n - 1:
                return self.heads[d](x)
        return outputs[::-1]


class EncoderDecoder(nn.Module):
    """What every U-Net variant shares: an optional stem, encoder stages whose outputs are the
    skips, and :class:`UNetDecoder`. Subclasses build ``stem``, ``encoder`` and ``decoder``."""

    def __init__(self, topology: NetworkTopology, dim: int, deep_supervision: bool) -> None:
        super().__init__()
        check_topology(topology, dim)
        self.dim = dim
        self.deep_supervision = deep_supervision
        self.total_stride = total_stride(topology)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        check_input(x, self.dim, self.total_stride)
        return self.decoder(self.encode(x), all_heads=self.training and self.deep_supervision)


class UNet(EncoderDecoder):
    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int,
                 deep_supervision: bool = True) -> None:
        super().__init__(topology, dim, deep_supervision)
        f = topology.features_per_stage
        self.encoder = nn.ModuleList()
        prev = in_channels
        for s in range(topology.n_stages):
            self.encoder.append(stack(dim, prev, f[s], topology.kernel_sizes[s], topology.strides[s],
                                      topology.n_conv_per_stage))
            prev = f[s]
        self.stem = nn.Identity()  # the first encoder stage takes the input channels itself
        self.decoder = UNetDecoder(num_classes, topology, dim, topology.n_conv_per_stage)
        self.apply(init_weights)


def check_input(x: torch.Tensor, dim: int, stride: list[int]) -> None:
    if x.ndim != dim + 2:
        raise ValueError(f"expected a (N, C, {dim} spatial axes) tensor, got shape {tuple(x.shape)}")
    spatial = x.shape[2:]
    if any(s % t for s, t in zip(spatial, stride)):
        raise ValueError(f"input spatial shape {tuple(spatial)} is not divisible by the network's "
                         f"total stride {stride}; pad the input or choose a patch size that is")
