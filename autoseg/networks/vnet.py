"""V-Net (Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural Networks for
Volumetric Medical Image Segmentation", 3DV 2016), shaped by a :class:`NetworkTopology`.

What the paper's network is made of, and how it is kept here:

* **Residual stages of large kernels.** Every stage is a few 5x5x5 convolutions whose output
  is added to the stage's input. Encoder stages hold 1, 2, 3, 3, 3 convolutions from full
  resolution down (3 for any deeper stage a plan adds); the decoder stage of each resolution
  holds as many as the encoder stage of that resolution, which gives the paper's 3, 3, 2, 1
  from the bottleneck up. The topology's ``n_conv_per_stage`` is the U-Net's and is not used.
  The kernel is 5 along an axis where the plan's kernel is larger than 1, and 1 where it is 1:
  anisotropic plans give thick-slice axes kernel 1 in their first stages, and a 5-wide kernel
  there would mix slices the plan keeps apart (its padding is 0 on that axis too).
* **Strided convolutions instead of pooling.** Stage ``s`` starts with a convolution whose
  kernel equals its stride ``strides[s]`` (2x2x2 in the paper, 1x2x2 where a plan pools
  in-plane only), into ``features_per_stage[s]`` channels; its output is the stage's residual
  input. Stage 0 has no such convolution: its residual input is the image itself, its channels
  repeated up to the stage's width as in the paper (a 1x1 convolution when the width is not a
  multiple of the input channels).
* **Fine-grained features forwarded.** A decoder stage upsamples with a transposed
  convolution (kernel = stride) into ``features_per_stage[s]`` channels and concatenates the
  encoder stage's output of the same resolution, so it works on ``2 * features_per_stage[s]``
  channels, the paper's widths (256, 128, 64, 32 for 16-256 features); the concatenation is
  its residual input. A 1x1 convolution gives the logits.
* **PReLU** (one slope per channel) after every convolution.

Where this departs from the paper:

* Each convolution is followed by autoseg's instance norm. The paper has no normalisation;
  it trained with batches of 2 volumes, and autoseg's plans train with batches of 2 (3D GPU)
  to 16, where batch norm's statistics are noise but instance norm's (one volume, one channel)
  are not. It also keeps the sums of deep residual stacks at a steady scale, which matters
  with autoseg's widths (up to 320 channels) and nnU-Net's SGD learning rate of 1e-2, far
  above the paper's 1e-4.
* Inside a stage the last convolution's output is normalised but not activated before the
  sum, and PReLU follows the sum (the residual form of He et al., CVPR 2016): the paper's
  figure leaves this order open, and a rectified residual could only ever add.
* Deep supervision: while training with ``deep_supervision=True`` every decoder stage has a
  1x1 head (full resolution first), as in autoseg's U-Net decoder; the paper trained only
  the full-resolution output. The Dice loss of the paper is the ``dice_squared`` loss of
  :mod:`autoseg.trainers.losses`.

Weights are He-initialised for PReLU's initial slope (0.25).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autoseg.networks.layers import conv, conv_transpose, cpu_bf16_training, forward_in_fp32, norm, same_padding
from autoseg.networks.unet import EncoderDecoder
from autoseg.planners.plans import NetworkTopology

KERNEL = 5  # the paper's kernel, along every axis the plan convolves
PRELU_INIT = 0.25  # nn.PReLU's initial slope, also what the He init assumes
PAPER_CONVS = (1, 2, 3, 3, 3)  # convolutions per encoder stage, full resolution first


def vnet_kernel(topology_kernel: Sequence[int]) -> tuple[int, ...]:
    """The paper's 5 along every axis the plan convolves, 1 along the axes it does not."""
    return tuple(1 if k == 1 else KERNEL for k in topology_kernel)


def default_convs_per_stage(n_stages: int) -> list[int]:
    """The paper's 1, 2, 3, 3, 3 convolutions per stage, 3 for any deeper stage."""
    return [PAPER_CONVS[min(s, len(PAPER_CONVS) - 1)] for s in range(n_stages)]


class ConvNormPReLU(nn.Sequential):
    """conv (no bias: the norm removes it) -> instance norm -> optional per-channel PReLU.

    Training on a CPU under bf16 autocast, a 3D conv whose input is shorter along z than its
    kernel runs in float32 (:func:`~autoseg.networks.layers.cpu_bf16_training`; measured for this
    network: z of 4 under a 5-kernel, which planned 3D V-Nets meet wherever a stage's map is 4
    voxels long in z, went wrong, z of 5 or more, 4-voxel y and x axes and Conv2d did not); such
    maps are the deepest and smallest, so this costs little.
    """

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] | int = 1, padding: Sequence[int] | int | None = None,
                 act: bool = True, transposed: bool = False) -> None:
        if padding is None:
            padding = same_padding(kernel_size)
        layer = conv_transpose(dim) if transposed else conv(dim)
        layers: list[nn.Module] = [
            layer(in_channels, out_channels, tuple(kernel_size), stride=stride, padding=padding, bias=False),
            norm(dim)(out_channels, eps=1e-5, affine=True),
        ]
        if act:
            layers.append(nn.PReLU(out_channels, init=PRELU_INIT))
        super().__init__(*layers)
        self.z_kernel = int(kernel_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5 and x.shape[2] < self.z_kernel and cpu_bf16_training(x):
            return forward_in_fp32(super().forward, x)
        return super().forward(x)


class ResidualConvs(nn.Module):
    """``n`` same-size convolutions whose output is added to their input, then PReLU."""

    def __init__(self, dim: int, channels: int, kernel_size: Sequence[int], n: int) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"a V-Net stage needs at least one convolution, got {n}")
        layers = [ConvNormPReLU(dim, channels, channels, kernel_size) for _ in range(n - 1)]
        layers.append(ConvNormPReLU(dim, channels, channels, kernel_size, act=False))
        self.convs = nn.Sequential(*layers)
        self.act = nn.PReLU(channels, init=PRELU_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + x)


class InputStage(nn.Module):
    """Full-resolution stage: convolutions on the image, plus the image itself as identity.

    Its first convolution changes the channel count, so it cannot be part of
    :class:`ResidualConvs`; the identity is the image repeated across channels.
    """

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int], n: int) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"a V-Net stage needs at least one convolution, got {n}")
        layers = [ConvNormPReLU(dim, in_channels, out_channels, kernel_size, act=n > 1)]
        layers += [ConvNormPReLU(dim, out_channels, out_channels, kernel_size, act=i < n - 2) for i in range(n - 1)]
        self.convs = nn.Sequential(*layers)
        self.repeats = out_channels // in_channels if out_channels % in_channels == 0 else 0
        # no exact repeat: a learned 1x1 map is the closest thing to an identity
        self.project = None if self.repeats else conv(dim)(in_channels, out_channels, kernel_size=1, bias=False)
        self.act = nn.PReLU(out_channels, init=PRELU_INIT)

    def identity(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            return self.project(x)
        return x.repeat(1, self.repeats, *([1] * (x.ndim - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.identity(x))


class DownStage(nn.Module):
    """Strided convolution (kernel = stride) into the stage's width, then residual convolutions."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int], n: int) -> None:
        super().__init__()
        self.down = ConvNormPReLU(dim, in_channels, out_channels, stride, stride=tuple(stride), padding=0)
        self.residual = ResidualConvs(dim, out_channels, kernel_size, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.down(x))


class UpStage(nn.Module):
    """Transposed convolution up to the skip's resolution, concatenation, residual convolutions."""

    def __init__(self, dim: int, in_channels: int, skip_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int], n: int) -> None:
        super().__init__()
        self.up = ConvNormPReLU(dim, in_channels, skip_channels, stride, stride=tuple(stride), padding=0,
                                transposed=True)
        self.residual = ResidualConvs(dim, 2 * skip_channels, kernel_size, n)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.residual(torch.cat((self.up(x), skip), dim=1))


class VNetDecoder(nn.Module):
    """Up stages from the bottleneck to full resolution, a 1x1 head on each."""

    def __init__(self, num_classes: int, topology: NetworkTopology, dim: int, convs_per_stage: Sequence[int]) -> None:
        super().__init__()
        f = topology.features_per_stage
        self.stages = nn.ModuleList()
        self.heads = nn.ModuleList()
        prev = f[-1]
        for s in range(topology.n_stages - 2, -1, -1):
            self.stages.append(UpStage(dim, prev, f[s], vnet_kernel(topology.kernel_sizes[s]),
                                       topology.strides[s + 1], convs_per_stage[s]))
            self.heads.append(conv(dim)(2 * f[s], num_classes, kernel_size=1, bias=True))
            prev = 2 * f[s]

    def forward(self, skips: list[torch.Tensor], all_heads: bool) -> list[torch.Tensor] | torch.Tensor:
        x = skips[-1]
        outputs = []
        n = len(self.stages)
        for d in range(n):
            x = self.stages[d](x, skips[-(d + 2)])
            if all_heads:
                outputs.append(self.heads[d](x))
            elif d == n - 1:
                return self.heads[d](x)
        return outputs[::-1]


def init_vnet_weights(module: nn.Module) -> None:
    """He init for PReLU at its initial slope; zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=PRELU_INIT)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VNet(EncoderDecoder):
    """V-Net for 2D and 3D configurations; see the module docstring.

    ``convs_per_stage``: convolutions per resolution stage, full resolution first, used by the
    encoder stage and the decoder stage of that resolution (the bottleneck has no decoder
    stage); default the paper's 1, 2, 3, 3, 3.
    """

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int,
                 deep_supervision: bool = True, convs_per_stage: Sequence[int] | None = None) -> None:
        super().__init__(topology, dim, deep_supervision)
        n = topology.n_stages
        convs = list(convs_per_stage) if convs_per_stage is not None else default_convs_per_stage(n)
        if len(convs) != n:
            raise ValueError(f"convs_per_stage has {len(convs)} entries, topology has {n} stages")
        f = topology.features_per_stage
        self.stem = nn.Identity()  # the input stage takes the image channels itself
        self.encoder = nn.ModuleList([InputStage(dim, in_channels, f[0], vnet_kernel(topology.kernel_sizes[0]), convs[0])])
        for s in range(1, n):
            self.encoder.append(DownStage(dim, f[s - 1], f[s], vnet_kernel(topology.kernel_sizes[s]),
                                          topology.strides[s], convs[s]))
        self.decoder = VNetDecoder(num_classes, topology, dim, convs)
        self.apply(init_vnet_weights)
