"""Training losses, chosen by name (``autoseg train --loss``), summed over deep-supervision outputs.

* ``dice_ce`` (default): soft Dice + cross-entropy, nnU-Net's loss.
* ``dice_squared``: soft Dice alone with the squared denominator of V-Net (Milletari et al.,
  3DV 2016), ``2 Σ p g / (Σ p² + Σ g²)``.
* ``mse``: mean squared error between the softmax and the one-hot target, the loss of the hybrid
  2D/3D spine study.
* ``focal_dice``: focal loss (Lin et al., ICCV 2017; gamma 2) + soft Dice, for tiny structures
  whose voxels cross-entropy drowns in background.

Dice is computed over foreground classes only and as a *batch* Dice (true/false positives
summed over the whole batch before the ratio), which is stable when a patch holds little
or no foreground. Dice terms are ``1 - mean Dice`` so a perfect prediction scores ~0.
Every loss works on fp32 even under autocast: softmax sums over large patches lose precision
in bf16.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.errors import UserError


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Weights for outputs full resolution first: halving per scale, lowest scale 0, summing to 1.

    The lowest output is left out because it is too coarse to carry a useful signal
    (nnU-Net's observation); with a single output the weight is simply 1.
    """
    if n_outputs < 1:
        raise ValueError("need at least one output")
    weights = [0.5 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) int -> (B, K, *spatial) float."""
    t = target[:, 0].long()
    return F.one_hot(t, num_classes).movedim(-1, 1).to(torch.float32)


class SoftDiceLoss(nn.Module):
    """``1 - mean foreground soft Dice`` of softmax probabilities."""

    def __init__(self, batch_dice: bool = True, include_background: bool = False, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice = batch_dice
        self.include_background = include_background
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        onehot = _one_hot(target, probs.shape[1])
        if not self.include_background and probs.shape[1] > 1:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = [0] + list(range(2, probs.ndim)) if self.batch_dice else list(range(2, probs.ndim))
        tp = (probs * onehot).sum(axes)
        fp = (probs * (1 - onehot)).sum(axes)
        fn = ((1 - probs) * onehot).sum(axes)
        dice = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth).clamp_min(1e-8)
        return 1 - dice.mean()


class SquaredDiceLoss(nn.Module):
    """``1 - mean foreground Dice`` with V-Net's squared denominator ``Σ p² + Σ g²``."""

    def __init__(self, batch_dice: bool = True, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        onehot = _one_hot(target, probs.shape[1])
        if probs.shape[1] > 1:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = [0] + list(range(2, probs.ndim)) if self.batch_dice else list(range(2, probs.ndim))
        inter = (probs * onehot).sum(axes)
        denom = (probs * probs).sum(axes) + onehot.sum(axes)  # g² = g for a one-hot target
        return 1 - ((2 * inter + self.smooth) / (denom + self.smooth)).mean()


class OneHotMSELoss(nn.Module):
    """Mean squared error between softmax probabilities and the one-hot target, over all classes."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        return F.mse_loss(probs, _one_hot(target, probs.shape[1]))


class FocalLoss(nn.Module):
    """``mean (1 - p_t)^gamma * -log p_t``: cross-entropy with easy voxels down-weighted."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp_t = torch.log_softmax(logits.float(), dim=1).gather(1, target.long()).squeeze(1)
        return (-(1 - logp_t.exp()).pow(self.gamma) * logp_t).mean()


class FocalDiceLoss(nn.Module):
    """Focal loss plus soft Dice, both on one output."""

    def __init__(self, gamma: float = 2.0, batch_dice: bool = True):
        super().__init__()
        self.focal = FocalLoss(gamma)
        self.dice = SoftDiceLoss(batch_dice=batch_dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, target) + self.dice(logits, target)


class DiceCELoss(nn.Module):
    """Cross-entropy plus soft Dice, both on one output."""

    def __init__(self, weight_ce: float = 1.0, weight_dice: float = 1.0, batch_dice: bool = True):
        super().__init__()
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.dice = SoftDiceLoss(batch_dice=batch_dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Losses in fp32 even under autocast: softmax sums over large patches lose precision in bf16.
        ce = F.cross_entropy(logits.float(), target[:, 0].long())
        return self.weight_ce * ce + self.weight_dice * self.dice(logits, target)


LOSSES: dict[str, Callable[[], nn.Module]] = {
    "dice_ce": DiceCELoss,
    "dice_squared": SquaredDiceLoss,
    "mse": OneHotMSELoss,
    "focal_dice": FocalDiceLoss,
}
DEFAULT_LOSS = "dice_ce"


def make_loss(name: str) -> nn.Module:
    """The per-output loss registered as ``name`` (``(logits, int target) -> scalar``)."""
    if name not in LOSSES:
        raise UserError(f"unknown loss '{name}': choose one of {', '.join(LOSSES)}")
    return LOSSES[name]()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over outputs and targets at decreasing resolution (full first)."""

    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        self.loss = loss
        self.weights = list(weights)

    def forward(self, outputs: Sequence[torch.Tensor] | torch.Tensor, targets: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        if isinstance(targets, torch.Tensor):
            targets = [targets]
        if len(outputs) > len(targets):
            raise ValueError(f"{len(outputs)} network outputs but only {len(targets)} targets")
        weights = self.weights if len(self.weights) == len(outputs) else deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out, tgt in zip(weights, outputs, targets):
            if w:
                total = total + w * self.loss(out, tgt)
        return total
