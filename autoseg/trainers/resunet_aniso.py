"""The anisotropic residual U-Net trainer: the shared loop with
:class:`autoseg.networks.resunet_aniso.ResUNetAniso` (Lee et al., "Superhuman Accuracy on the
SNEMI3D Connectomics Challenge", arXiv 2017; Res-UNet-R, Li et al., ISBI 2022). Augmentation
already rotates in-plane only when the configuration is ``anisotropic``.
"""
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("resunet_aniso")
class ResUNetAnisoTrainer(Trainer):
    """Residual symmetric U-Net with in-plane-first stages for thick-slice volumes (Lee et al. 2017)."""

    architecture = "resunet_aniso"
