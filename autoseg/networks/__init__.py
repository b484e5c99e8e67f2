"""Networks: dimension-agnostic U-Nets built from a plans configuration.

``build_network(plans, config)`` is the one way the trainers and the inference code build a
network: ``config.architecture`` names it, either a key of :data:`ARCHITECTURES` (a new
architecture plugs in with one line there) or a user's ``module:Class`` / ``file.py:Class``.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from autoseg.errors import PluginNotFound
from autoseg.networks.context_unet import ContextSliceUNet, ContextSliceUNet5
from autoseg.networks.fct import FCT
from autoseg.networks.hybrid_unet import HybridUNet, HybridUNetNo3d
from autoseg.networks.monai_nets import UNETR, SwinUNETR
from autoseg.networks.resenc_unet import ResEncUNet
from autoseg.networks.resunet_aniso import ResUNetAniso
from autoseg.networks.unet import UNet, total_stride
from autoseg.networks.vnet import VNet
from autoseg.plugins import load_plugin

if TYPE_CHECKING:
    from torch import nn

    from autoseg.planners.plans import ConfigurationPlan, NetworkTopology, Plans

# every class takes (in_channels, num_classes, topology, dim, deep_supervision), and patch_size
# where its constructor declares it
ARCHITECTURES: dict[str, type] = {
    "unet": UNet,
    "resenc_unet": ResEncUNet,
    "hybrid": HybridUNet,
    "hybrid_no3d": HybridUNetNo3d,
    "unet_2p5d": ContextSliceUNet,
    "unet_2p5d_k5": ContextSliceUNet5,
    "resunet_aniso": ResUNetAniso,
    "fct": FCT,
    "vnet": VNet,
    "swin_unetr": SwinUNETR,
    "unetr": UNETR,
}


def build_network(plans: "Plans", config: "ConfigurationPlan", deep_supervision: bool = True) -> "nn.Module":
    """The network ``config.architecture`` names, sized by the plans (channels, classes, topology)."""
    from torch import nn

    try:
        cls = load_plugin(config.architecture, "architecture", nn.Module, ARCHITECTURES)
    except PluginNotFound as e:
        raise type(e)(f"configuration '{config.name}': {e}") from None
    kwargs = {}
    # networks with a fixed input grid (a ViT's patch embedding) also get the planned patch size
    if "patch_size" in inspect.signature(cls).parameters:
        kwargs["patch_size"] = list(config.patch_size)
    return cls(
        in_channels=len(plans.channel_names),
        num_classes=plans.num_classes,
        topology=config.network,
        dim=config.dim,
        deep_supervision=deep_supervision,
        **kwargs,
    )


def deep_supervision_scales(topology: "NetworkTopology") -> list[list[float]]:
    """Downsampling factor (>= 1, per axis) of each deep-supervision output, full resolution first.

    Output ``d`` comes from decoder stage ``d``, whose resolution is the input's divided by the
    product of ``strides[0..d]``; the bottleneck has no head, so there are ``n_stages - 1``.
    """
    scales = []
    factor = [1.0] * len(topology.strides[0])
    for st in topology.strides[:-1]:
        factor = [a * b for a, b in zip(factor, st)]
        scales.append(list(factor))
    return scales


__all__ = ["ARCHITECTURES", "UNet", "ResEncUNet", "build_network", "deep_supervision_scales", "total_stride"]
