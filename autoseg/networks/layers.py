"""Dimension-agnostic layer factories: one network class serves 2D and 3D.

A network asks for ``conv(dim)`` instead of naming ``nn.Conv3d``, so the same code builds
the 2D configuration (two spatial axes) and the 3D ones (three).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _check(dim: int) -> None:
    if dim not in (2, 3):
        raise ValueError(f"networks support 2 or 3 spatial dimensions, got {dim}")


def conv(dim: int) -> type[nn.Module]:
    _check(dim)
    return _CONV[dim]


def conv_transpose(dim: int) -> type[nn.Module]:
    _check(dim)
    return _CONV_T[dim]


class InstanceNorm(nn.GroupNorm):
    """Instance norm (affine), computed as group norm with one channel per group.

    The same function as ``nn.InstanceNorm2d/3d(affine=True)`` and the same parameters
    (``weight``, ``bias``), but PyTorch's CPU group-norm kernel works on the tensor as it is,
    where instance norm reshapes it into a batch norm and copies: training steps measured 1-5%
    faster on 2 CPU cores (documentation/networks.md).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, num_channels, eps=eps, affine=affine)


def norm(dim: int) -> type[nn.Module]:
    _check(dim)
    return InstanceNorm


def same_padding(kernel_size: Sequence[int]) -> tuple[int, ...]:
    """Per-axis padding that keeps the size for odd kernels (a kernel of 1 gets no padding)."""
    return tuple(k // 2 for k in kernel_size)


def leaky_relu() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


class ConvNormAct(nn.Sequential):
    """conv -> instance norm (affine) -> activation (LeakyReLU(0.01) unless ``activation`` makes
    another): the unit every U-Net stage stacks.

    The conv has a bias only when no norm follows it; instance norm would subtract it anyway.
    """

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] | int = 1, act: bool = True,
                 activation: Callable[[], nn.Module] = leaky_relu) -> None:
        layers: list[nn.Module] = [
            conv(dim)(in_channels, out_channels, tuple(kernel_size), stride=stride,
                      padding=same_padding(kernel_size), bias=False),
            norm(dim)(out_channels, eps=1e-5, affine=True),
        ]
        if act:
            layers.append(activation())
        super().__init__(*layers)


def avg_pool(dim: int) -> type[nn.Module]:
    _check(dim)
    return {2: nn.AvgPool2d, 3: nn.AvgPool3d}[dim]


def init_weights(module: nn.Module) -> None:
    """He init for LeakyReLU(0.01) networks (what plain U-Nets train well with); zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def cpu_bf16_training(x: torch.Tensor) -> bool:
    """Whether ``x`` goes through a forward pass that will be backpropagated under CPU bf16 autocast.

    torch 2.13's CPU bf16 Conv3d backward returns garbage (inf, NaN, or finite values 1e20-1e36
    off, varying from run to run) when the input's first spatial axis is shorter than the
    kernel along it: z of 2 under a 3-kernel (documentation/training.md, "Non-finite steps"),
    z of 4 under a 5-kernel. Networks whose maps can get that thin run those layers in fp32
    when this holds; prediction has no backward pass and keeps bf16.
    """
    return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def forward_in_fp32(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward(x)`` with autocast switched off on ``x``'s device and ``x`` in fp32."""
    with torch.autocast(x.device.type, enabled=False):
        return forward(x.float())
