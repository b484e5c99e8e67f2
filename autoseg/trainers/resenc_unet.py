"""The residual-encoder U-Net trainer: the shared loop with ``autoseg.networks.ResEncUNet``."""
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("resenc_unet")
class ResEncUNetTrainer(Trainer):
    architecture = "resenc_unet"
