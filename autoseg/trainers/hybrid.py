"""Hybrid 2D/3D U-Net trainers for thick-slice data (the ``3d_hybrid`` configuration).

``hybrid`` trains :class:`autoseg.networks.hybrid_unet.HybridUNet`; ``hybrid_no3d`` is the
ablation without the 3D skip modules. Augmentation already rotates in-plane only when the
configuration is ``anisotropic`` (and keeps z in the low-resolution simulation).
"""
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("hybrid")
class HybridTrainer(Trainer):
    architecture = "hybrid"


@register_trainer("hybrid_no3d")
class HybridNo3dTrainer(Trainer):
    architecture = "hybrid_no3d"
