"""Transformer U-Net trainers on MONAI's networks (the ``monai`` extra).

``swin_unetr`` trains :class:`autoseg.networks.monai_nets.SwinUNETR` (Hatamizadeh et al.,
"Swin UNETR", BrainLes 2021) and ``unetr`` :class:`autoseg.networks.monai_nets.UNETR`
(Hatamizadeh et al., "UNETR", WACV 2022), with the shared loop, loss and augmentation.
Without MONAI, building the network raises a UserError that says what to install.
"""
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("swin_unetr")
class SwinUNETRTrainer(Trainer):
    """SwinUNETR: a Swin transformer encoder with a convolutional U-Net decoder."""

    architecture = "swin_unetr"


@register_trainer("unetr")
class UNETRTrainer(Trainer):
    """UNETR: a ViT encoder whose token maps feed a convolutional U-Net decoder."""

    architecture = "unetr"
