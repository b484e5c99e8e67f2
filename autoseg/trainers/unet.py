"""The plain U-Net trainer: the shared loop with ``autoseg.networks.UNet``."""
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("unet")
class UNetTrainer(Trainer):
    architecture = "unet"
