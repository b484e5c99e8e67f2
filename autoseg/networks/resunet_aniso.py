"""Anisotropic residual symmetric U-Net for thick-slice volumes (and its 2D form).

After Lee, Zung, Li, Jain and Seung, "Superhuman Accuracy on the SNEMI3D Connectomics
Challenge" (arXiv:1706.00120, 2017), whose residual symmetric U-Net builds every stage from an
in-plane 1x3x3 convolution followed by a residual pair of 3x3x3 convolutions, and the
Res-UNet-R / Res-UNet-H networks that won the MitoEM challenge (Li et al., "Advanced Deep
Networks for 3D Mitochondria Instance Segmentation", ISBI 2022, built on PyTorch
Connectomics, Lin et al. 2021), which add a 1x5x5 input embedding in front of the same stages.

Stage ``s`` (encoder and decoder alike, hence "symmetric"):

* an in-plane convolution, k x k within the slice (k = 5 at stage 0, the Res-UNet-R embedding,
  3 after) and 1 across slices, then instance norm and ELU. In the encoder it carries the
  topology's stride ``strides[s]`` (strided-conv downsampling). A stage that also pools across
  slices takes the topology's kernel there instead of 1: a strided kernel-1 conv would simply
  drop every other slice, and the planner only pools an axis it already convolves across.
* a residual pair: conv, norm, ELU, conv, norm, plus the identity of the pair's input, then ELU.
  Its kernel is the topology's ``kernel_sizes[s]`` on every axis, so it is 3 across slices
  only at stages where the plan's spacing allows it (the planner writes 1 on a thick-slice axis
  until in-plane pooling has caught up) and 3x3x3 deeper: a 1x3x3/3x3x3 schedule that follows
  the data's spacing rather than a fixed depth as in the papers.

The 1-across-slices in-plane conv is taken on the slice axis, which the topology names: the
axis whose kernel is 1 at the most stages (numpy axis 0, z, when the plan is isotropic). No
conv ever has a kernel above 1 on an axis where the topology's kernel is 1.

Decoder: transposed conv (kernel = stride) up to the next finer stage, skip **added** to it,
then the stage block. Summation is the join of both papers (Lee et al. chose it over
concatenation; Res-UNet-R adds encoder features into the up-sampled path); with residual stages
it keeps an additive path from every encoder stage to the output, and it keeps the decoder at
``features_per_stage[s]`` channels rather than twice that, which halves the first decoder conv.

ELU is the activation both papers use; it is kept to match them (LeakyReLU would serve too), and
its smooth negative branch keeps activations nearer zero mean. The norm is autoseg's instance
norm: the papers' batch norm needs larger batches than autoseg's 3D patches allow.

Heads: a 1x1 conv on every decoder stage, all of them while training with deep supervision
(full resolution first), only the full-resolution one otherwise. ``n_conv_per_stage`` is not
used: the paper fixes the stage shape (one in-plane conv + one residual pair).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autoseg.networks.layers import ConvNormAct, init_weights
from autoseg.networks.unet import EncoderDecoder, UNetDecoder
from autoseg.planners.plans import NetworkTopology

EMBEDDING_KERNEL = 5
INPLANE_KERNEL = 3


def slice_axis(topology: NetworkTopology) -> int | None:
    """The axis the in-plane convs never cross: None in 2D, else the one with the most kernel-1 stages."""
    dim = len(topology.kernel_sizes[0])
    if dim == 2:
        return None
    ones = [sum(1 for k in topology.kernel_sizes if k[a] == 1) for a in range(dim)]
    return max(range(dim), key=lambda a: (ones[a], -a))  # ties: the earliest axis (z first)


def inplane_kernel(topology_kernel: Sequence[int], stride: Sequence[int], size: int,
                   axis: int | None) -> list[int]:
    """Kernel of a stage's in-plane conv: ``size`` within the slice, 1 across it and wherever the
    topology has 1; the topology's kernel across slices where the stage pools along them."""
    out = []
    for a, (k, st) in enumerate(zip(topology_kernel, stride)):
        if k == 1:
            out.append(1)
        elif a == axis:
            out.append(k if st > 1 else 1)
        else:
            out.append(size)
    return out


def _elu() -> nn.Module:
    return nn.ELU(inplace=True)


class ConvNormELU(ConvNormAct):
    """conv-norm-ELU, the unit of both papers' stages."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] | int = 1, act: bool = True) -> None:
        super().__init__(dim, in_channels, out_channels, kernel_size, stride, act, activation=_elu)


class ResidualPair(nn.Module):
    """conv-norm-ELU, conv-norm, + identity, ELU (the SNEMI3D / Res-UNet residual module)."""

    def __init__(self, dim: int, channels: int, kernel_size: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = ConvNormELU(dim, channels, channels, kernel_size)
        self.conv2 = ConvNormELU(dim, channels, channels, kernel_size, act=False)
        self.act = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + x)


class AnisoResStage(nn.Sequential):
    """In-plane conv (carrying the stage's stride and channel change), then a residual pair."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, topology_kernel: Sequence[int],
                 stride: Sequence[int], inplane_size: int, axis: int | None) -> None:
        super().__init__(
            ConvNormELU(dim, in_channels, out_channels,
                        inplane_kernel(topology_kernel, stride, inplane_size, axis), stride),
            ResidualPair(dim, out_channels, topology_kernel),
        )


class ResUNetAniso(EncoderDecoder):
    """Anisotropic residual symmetric U-Net (Lee et al. 2017; Res-UNet-R, Li et al. 2022)."""

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int,
                 deep_supervision: bool = True) -> None:
        super().__init__(topology, dim, deep_supervision)
        f = topology.features_per_stage
        self.slice_axis = slice_axis(topology)
        self.stem = nn.Identity()  # stage 0's 5x5 in-plane conv is the embedding
        self.encoder = nn.ModuleList()
        prev = in_channels
        for s in range(topology.n_stages):
            size = EMBEDDING_KERNEL if s == 0 else INPLANE_KERNEL
            self.encoder.append(AnisoResStage(dim, prev, f[s], topology.kernel_sizes[s], topology.strides[s],
                                              size, self.slice_axis))
            prev = f[s]
        # skips added, not concatenated (module docstring); every decoder stage is the stage block
        self.decoder = UNetDecoder(
            num_classes, topology, dim, topology.n_conv_per_stage, join="add",
            block=lambda s, cin, cout: AnisoResStage(dim, cin, cout, topology.kernel_sizes[s], [1] * dim,
                                                     INPLANE_KERNEL, self.slice_axis))
        self.apply(init_weights)
