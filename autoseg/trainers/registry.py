"""Find a trainer class by name, so users add trainers without editing autoseg.

``get_trainer`` accepts a registered name (``unet``, ``fct``, ...), an importable
``package.module:ClassName``, or a file ``path/to/my_trainer.py:ClassName``.
Built-in trainers are listed in :data:`BUILTIN_TRAINERS` with what ``autoseg train --help``
says about them, so listing them imports neither torch nor any network.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar

from autoseg.errors import TrainerNotFound
from autoseg.plugins import load_plugin

if TYPE_CHECKING:
    from autoseg.trainers.base import Trainer

T = TypeVar("T")


@dataclass(frozen=True)
class BuiltinTrainer:
    module: str  # imported when the trainer is first asked for; it registers the name
    summary: str  # the architecture and its paper
    dims: tuple[str, ...]  # dimensionality of the configurations it trains: "2d", "3d"


# Adding an architecture: its network file, its trainer file and one line here.
BUILTIN_TRAINERS: dict[str, BuiltinTrainer] = {
    "unet": BuiltinTrainer("autoseg.trainers.unet", "U-Net as nnU-Net plans it (Ronneberger et al., MICCAI 2015; Isensee et al., Nat. Methods 2021)", ("2d", "3d")),
    "resenc_unet": BuiltinTrainer("autoseg.trainers.resenc_unet", "U-Net with a residual encoder (nnU-Net ResEnc; Isensee et al., MICCAI 2024)", ("2d", "3d")),
    "hybrid": BuiltinTrainer("autoseg.trainers.hybrid", "hybrid 2D/3D U-Net for thick slices: 2D stages, 3D skip modules", ("3d",)),
    "hybrid_no3d": BuiltinTrainer("autoseg.trainers.hybrid", "the hybrid U-Net without its 3D modules (ablation)", ("3d",)),
    "unet_2p5d": BuiltinTrainer("autoseg.trainers.unet_2p5d", "2.5D U-Net: 2D with 3 neighbouring slices as channels", ("2d",)),
    "unet_2p5d_k5": BuiltinTrainer("autoseg.trainers.unet_2p5d", "2.5D U-Net with 5 neighbouring slices", ("2d",)),
    "resunet_aniso": BuiltinTrainer("autoseg.trainers.resunet_aniso", "residual U-Net, in-plane-first anisotropic stages (Lee et al., arXiv 2017; Res-UNet-R, Li et al., ISBI 2022)", ("2d", "3d")),
    "fct": BuiltinTrainer("autoseg.trainers.fct", "Fully Convolutional Transformer (Tragakis et al., WACV 2023); 3D: its blocks in-plane, slices mixed where the plan allows", ("2d", "3d")),
    "swin_unetr": BuiltinTrainer("autoseg.trainers.monai_transformers", "SwinUNETR: Swin transformer encoder, U-Net decoder (Hatamizadeh et al., BrainLes 2021); MONAI's, extra [monai]", ("2d", "3d")),
    "unetr": BuiltinTrainer("autoseg.trainers.monai_transformers", "UNETR: ViT encoder, U-Net decoder (Hatamizadeh et al., WACV 2022); MONAI's, extra [monai]", ("2d", "3d")),
    "vnet": BuiltinTrainer("autoseg.trainers.vnet", "V-Net: residual 5x5x5 stages, PReLU, strided-conv down-sampling (Milletari et al., 3DV 2016); its Dice: --loss dice_squared", ("2d", "3d")),
    "atlas_istn": BuiltinTrainer("autoseg.trainers.atlas_istn", "Atlas-ISTN: segmentation + atlas registration (Sinclair et al., MedIA 2022)", ("2d", "3d")),
}

_TRAINERS: dict[str, type] = {}


def register_trainer(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`~autoseg.trainers.base.Trainer` subclass available by ``name``."""

    def deco(cls: T) -> T:
        if name in _TRAINERS and _TRAINERS[name] is not cls:
            raise ValueError(f"trainer name '{name}' is already registered by {_TRAINERS[name].__module__}")
        _TRAINERS[name] = cls
        cls.trainer_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def available_trainers() -> list[str]:
    """Built-in and registered trainer names."""
    return sorted(set(BUILTIN_TRAINERS) | set(_TRAINERS))


def trainer_listing() -> str:
    """One line per built-in trainer: name, dimensions, architecture and paper."""
    width = max(map(len, BUILTIN_TRAINERS))
    return "\n".join(f"  {name:<{width}}  {'/'.join(t.dims):<5}  {t.summary}" for name, t in BUILTIN_TRAINERS.items())


def get_trainer(name: str) -> "type[Trainer]":
    """The trainer class for ``name`` (registered name, ``module:Class`` or ``file.py:Class``)."""
    from autoseg.trainers.base import Trainer

    if name in BUILTIN_TRAINERS and name not in _TRAINERS:
        importlib.import_module(BUILTIN_TRAINERS[name].module)
    return load_plugin(name, "trainer", Trainer, {n: _TRAINERS.get(n, n) for n in available_trainers()},
                       error=TrainerNotFound)
