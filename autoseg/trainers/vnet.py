"""The V-Net trainer (Milletari et al., 3DV 2016): the shared loop with ``autoseg.networks.vnet.VNet``.

The paper trained with its squared-denominator Dice loss; that loss is ``--loss dice_squared``
(:mod:`autoseg.trainers.losses`). Without it the trainer uses the loop's default loss, so
V-Net compares with the other architectures under one recipe.
"""
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("vnet")
class VNetTrainer(Trainer):
    architecture = "vnet"
