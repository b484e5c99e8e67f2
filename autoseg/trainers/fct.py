"""The FCT trainer: the shared loop with :class:`autoseg.networks.fct.FCT`.

Fully Convolutional Transformer (Tragakis, Kaul, Murray-Smith, Husmeier, "The Fully
Convolutional Transformer for Medical Image Segmentation", WACV 2023). 2D as published; on 3D
configurations the FCT blocks run slice by slice with z-mixing where the plan convolves along z
(see the network's module docstring).
"""
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("fct")
class FCTTrainer(Trainer):
    """FCT: convolutional-attention transformer blocks in every level of a U-shaped network."""

    architecture = "fct"
