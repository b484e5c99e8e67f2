"""U-Net with a residual encoder (ResEnc): deeper encoder stages at little extra cost.

Each encoder stage is a stack of basic residual blocks (two convs + identity skip); the
first block of a stage carries the stride, and its skip becomes avg-pool + 1x1 conv + norm
when the stride or channel count changes (a strided 1x1 conv would drop most voxels).
Deeper stages get more blocks, where the feature maps are small and blocks are cheap.
The decoder is the plain U-Net decoder.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autoseg.networks.layers import ConvNormAct, avg_pool, conv, init_weights, norm
from autoseg.networks.unet import EncoderDecoder, UNetDecoder
from autoseg.planners.plans import NetworkTopology

DEFAULT_BLOCKS = (1, 2, 2, 3, 3, 3, 3, 3)


class BasicBlock(nn.Module):
    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(dim, in_channels, out_channels, kernel_size, stride)
        self.conv2 = ConvNormAct(dim, out_channels, out_channels, kernel_size, act=False)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        needs_pool = any(s != 1 for s in stride)
        if needs_pool or in_channels != out_channels:
            layers: list[nn.Module] = []
            if needs_pool:
                layers.append(avg_pool(dim)(kernel_size=tuple(stride), stride=tuple(stride)))
            layers += [conv(dim)(in_channels, out_channels, kernel_size=1, bias=False),
                       norm(dim)(out_channels, eps=1e-5, affine=True)]
            self.skip: nn.Module = nn.Sequential(*layers)
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class ResEncUNet(EncoderDecoder):
    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int,
                 deep_supervision: bool = True, blocks_per_stage: Sequence[int] | None = None) -> None:
        super().__init__(topology, dim, deep_supervision)
        n = topology.n_stages
        if blocks_per_stage is None:
            blocks_per_stage = [DEFAULT_BLOCKS[min(s, len(DEFAULT_BLOCKS) - 1)] for s in range(n)]
        if len(blocks_per_stage) != n:
            raise ValueError(f"blocks_per_stage has {len(blocks_per_stage)} entries, topology has {n} stages")
        f = topology.features_per_stage
        # a stem lifts the input to the first stage's width so every block's identity skip works
        self.stem = ConvNormAct(dim, in_channels, f[0], topology.kernel_sizes[0])
        self.encoder = nn.ModuleList()
        prev = f[0]
        for s in range(n):
            blocks = [BasicBlock(dim, prev, f[s], topology.kernel_sizes[s], topology.strides[s])]
            blocks += [BasicBlock(dim, f[s], f[s], topology.kernel_sizes[s], [1] * dim)
                       for _ in range(blocks_per_stage[s] - 1)]
            self.encoder.append(nn.Sequential(*blocks))
            prev = f[s]
        self.decoder = UNetDecoder(num_classes, topology, dim, topology.n_conv_per_stage)
        self.apply(init_weights)
