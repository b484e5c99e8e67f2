"""SwinUNETR and UNETR, MONAI's implementations, sized from a plan (needs the ``monai`` extra).

Both are wrapped, not rewritten: MONAI's ``monai.networks.nets.SwinUNETR`` (Hatamizadeh et al.,
"Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI Images",
BrainLes 2021) and ``monai.networks.nets.UNETR`` (Hatamizadeh et al., "UNETR: Transformers for
3D Medical Image Segmentation", WACV 2022), built with ``spatial_dims`` = the configuration's
``dim``, so the 2D and the 3D configurations both train them. MONAI (and einops, which its
attention blocks use) is imported only when one is built: without it the constructor raises
:class:`~autoseg.errors.UserError` saying what to install.

Sizing from the plan's topology (``f0`` = ``features_per_stage[0]``, 32 in GPU plans, 16 in
CPU plans); nothing else of the topology shapes these networks:

* SwinUNETR: ``feature_size = max(12, 12 * round(1.5 * f0 / 12))`` (MONAI needs a multiple of
  12), so GPU plans get the paper's 48 and CPU plans 24; MONAI's defaults otherwise (patch 2,
  window 7, depths 2-2-2-2, heads 3-6-12-24; v1 blocks, no gradient checkpointing).
* UNETR: ``f0 >= 32`` gives the paper's ViT-B/16 (hidden size 768, 12 heads, MLP 3072,
  decoder ``feature_size`` 16); ``f0 < 32`` a ViT half as wide (hidden 384, 6 heads, MLP 1536,
  ``feature_size`` = f0), which CPUs can train.

Input sizes: SwinUNETR's five 2x reductions need every axis divisible by 32, and UNETR's 16^dim
ViT patches need 16 (its position embedding also fixes the input size at construction). Planned
patches are neither, so ``forward`` zero-pads the input at the end of each axis (SwinUNETR: to
the next multiple of 32; UNETR: to ``img_size``, the planned patch rounded up to multiples of
16, which is why UNETR takes ``patch_size``) and crops the logits back. The plan's per-axis
kernel sizes and strides are not followed: on an anisotropic 3D patch (10 x 80 x 96, padded to
32 x 96 x 96 for SwinUNETR or 16 x 80 x 96 for UNETR) the patch embedding and the merging layers
mix thick slices as they do on isotropic data; that is how MONAI's networks work.

Neither has deep supervision: every mode returns the full-resolution logits as one tensor, and
the loss then uses the full-resolution target only.

Training on a CPU under bf16 autocast, a 3D network whose padded depth leaves a 2-slice feature
map under its 3x3x3 convs (SwinUNETR: padded z of 32 or 64; UNETR: 16) runs in float32: torch's
CPU bf16 Conv3d backward returns garbage, at times inf/NaN, when the first spatial axis is 2
voxels long (documentation/training.md, "Non-finite steps"; measured here as well at 24-48
channels with 3-12 voxels in-plane; 1 or 4 slices, or 2 voxels along y or x, were correct). The
planner never makes such maps for the U-Nets; padding thin patches for these networks does.
Prediction, which has no backward pass, keeps bf16.
"""
from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.errors import UserError
from autoseg.networks.layers import cpu_bf16_training, forward_in_fp32
from autoseg.networks.unet import check_input, check_topology
from autoseg.planners.plans import NetworkTopology

SWIN_MULTIPLE = 32  # MONAI's patch_size (2) ** 5
VIT_PATCH = 16


def _monai_nets(trainer: str) -> Any:
    """``monai.networks.nets``, or a UserError naming ``trainer`` and what to install."""
    try:
        import einops  # noqa: F401  (MONAI's attention blocks need it at construction)
        from monai.networks import nets
    except ImportError as e:
        raise UserError(
            f"the {trainer} trainer needs MONAI (and einops), which could not be imported ({e}); "
            'install them with pip install -e ".[monai]" (or pip install monai einops)'
        ) from e
    return nets


def swin_feature_size(f0: int) -> int:
    """SwinUNETR's ``feature_size`` for a plan whose first stage has ``f0`` features."""
    return max(12, 12 * round(1.5 * f0 / 12))


def unetr_size(f0: int) -> dict[str, int]:
    """UNETR's ViT and decoder widths for a plan whose first stage has ``f0`` features."""
    if f0 >= 32:
        return {"hidden_size": 768, "num_heads": 12, "mlp_dim": 3072, "feature_size": 16}
    return {"hidden_size": 384, "num_heads": 6, "mlp_dim": 1536, "feature_size": f0}


def _round_up(n: int, multiple: int) -> int:
    return multiple * math.ceil(n / multiple)


def _pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    spatial = x.shape[2:]
    if tuple(spatial) == tuple(size):
        return x
    pads: list[int] = []
    for s, t in zip(reversed(spatial), reversed(list(size))):  # F.pad lists the last axis first
        pads += [0, t - s]
    return F.pad(x, pads)


def _crop(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]


def bf16_conv3d_hazard(depth: int, levels: int) -> bool:
    """Whether a 3D input ``depth`` deep, halved ``levels - 1`` times, has a 2-slice map on the way."""
    return any(depth // 2 ** k == 2 for k in range(levels))


def _run(net: nn.Module, x: torch.Tensor, hazard: bool) -> torch.Tensor:
    if hazard and cpu_bf16_training(x):
        return forward_in_fp32(net, x)
    return net(x)


class SwinUNETR(nn.Module):
    """MONAI's SwinUNETR on any input size (padded to multiples of 32); one tensor of logits."""

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int,
                 deep_supervision: bool = True) -> None:
        super().__init__()
        check_topology(topology, dim)
        nets = _monai_nets("swin_unetr")
        self.dim = dim
        self.deep_supervision = deep_supervision  # accepted for the common signature; no side outputs
        self.feature_size = swin_feature_size(topology.features_per_stage[0])
        kwargs: dict[str, Any] = {"in_channels": in_channels, "out_channels": num_classes,
                                  "feature_size": self.feature_size, "spatial_dims": dim}
        if "img_size" in inspect.signature(nets.SwinUNETR).parameters:
            # MONAI < 1.5 requires img_size but only checks it is divisible by 32 (and warns
            # that it is deprecated); inputs are checked in forward instead
            kwargs["img_size"] = (SWIN_MULTIPLE,) * dim
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.net = nets.SwinUNETR(**kwargs)
        else:
            self.net = nets.SwinUNETR(**kwargs)

    def padded_size(self, spatial: Sequence[int]) -> list[int]:
        """The size ``forward`` pads an input of ``spatial`` to."""
        size = [_round_up(s, SWIN_MULTIPLE) for s in spatial]
        if all(s == SWIN_MULTIPLE for s in size):
            # the bottleneck would be one voxel, which instance norm cannot normalise in training
            size[-1] += SWIN_MULTIPLE
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, [1] * self.dim)
        spatial = x.shape[2:]
        size = self.padded_size(spatial)
        # convs at full resolution and after each of the 5 reductions
        hazard = self.dim == 3 and bf16_conv3d_hazard(size[0], 6)
        return _crop(_run(self.net, _pad_to(x, size), hazard), spatial)


class UNETR(nn.Module):
    """MONAI's UNETR for the planned patch (padded to multiples of 16); one tensor of logits."""

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int,
                 deep_supervision: bool = True, patch_size: Sequence[int] | None = None) -> None:
        super().__init__()
        check_topology(topology, dim)
        if patch_size is None or len(patch_size) != dim:
            raise ValueError(f"UNETR's position embedding is sized for the training patch: it needs the "
                             f"configuration's patch_size ({dim} axes), got {patch_size}")
        nets = _monai_nets("unetr")
        self.dim = dim
        self.deep_supervision = deep_supervision  # accepted for the common signature; no side outputs
        self.img_size = [_round_up(int(s), VIT_PATCH) for s in patch_size]
        self.sizes = unetr_size(topology.features_per_stage[0])
        self.net = nets.UNETR(in_channels=in_channels, out_channels=num_classes, img_size=tuple(self.img_size),
                              spatial_dims=dim, **self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, [1] * self.dim)
        spatial = x.shape[2:]
        if any(s > t for s, t in zip(spatial, self.img_size)):
            raise ValueError(f"UNETR was built for inputs up to {self.img_size} (the planned patch, padded); "
                             f"got {tuple(spatial)}. Predict with a sliding window no larger than the "
                             "training patch (inference_patch_size in the plans)")
        # the decoder's 3x3x3 convs run at 1/8 of the input and finer (1/16 is the ViT's token grid)
        hazard = self.dim == 3 and bf16_conv3d_hazard(self.img_size[0], 4)
        return _crop(_run(self.net, _pad_to(x, self.img_size), hazard), spatial)
