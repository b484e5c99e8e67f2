"""2.5D U-Net: a 2D U-Net fed ``K`` adjacent slices as channels, predicting the centre slice.

Input ``(N, C * K, Y, X)``, channel order channel-major: ``[c0 z-h .. c0 z+h, c1 z-h .. c1 z+h, ...]``
with ``h = K // 2`` (what ``autoseg.trainers.patch_sampler.ContextSlicePatchSampler`` and
``autoseg.inference.sliding_window`` build). The attribute :attr:`context_slices` tells the
sliding window to stack each slice with its neighbours; slices beyond the volume repeat the
edge slice.
"""
from __future__ import annotations

from autoseg.networks.unet import UNet
from autoseg.planners.plans import NetworkTopology

DEFAULT_CONTEXT_SLICES = 3


class ContextSliceUNet(UNet):
    """:class:`UNet` (2D) whose input holds ``context_slices`` neighbouring slices of each channel."""

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int = 2,
                 deep_supervision: bool = True, context_slices: int = DEFAULT_CONTEXT_SLICES) -> None:
        if dim != 2:
            raise ValueError(f"the 2.5D U-Net is a 2D network (the '2d' configuration), got dim={dim}")
        if context_slices < 1 or context_slices % 2 == 0:
            raise ValueError(f"context_slices must be odd and >= 1 (a centre slice), got {context_slices}")
        super().__init__(in_channels * context_slices, num_classes, topology, dim, deep_supervision)
        self.context_slices = int(context_slices)
        self.image_channels = int(in_channels)


class ContextSliceUNet5(ContextSliceUNet):
    """Five slices of context (``unet_2p5d_k5``)."""

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int = 2,
                 deep_supervision: bool = True) -> None:
        super().__init__(in_channels, num_classes, topology, dim, deep_supervision, context_slices=5)
