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


def class_sums(probs: torch.Tensor, target: torch.Tensor, batch: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class: ``Σ p·g`` (the intersection), ``Σ p`` and ``Σ g`` (the voxel count), without a one-hot target.

    ``probs`` (B, K, *spatial), ``target`` (B, 1, *spatial) class indices. A one-hot target would
    be a second (B, K, *spatial) float tensor: with a hundred classes it outweighs the network's
    activations. The intersection gathers each voxel's probability of its own class and adds it
    into its class's bin instead. Shapes (K,) when ``batch`` (sums over the batch too), else (B, K).
    """
    b, k = probs.shape[:2]
    p = probs.reshape(b, k, -1)
    t = target.reshape(b, 1, -1).long()
    p_true = p.gather(1, t).squeeze(1)  # (B, N): each voxel's probability of its true class
    bins = t.squeeze(1)
    inter = p.new_zeros(b, k).scatter_add(1, bins, p_true)
    count = p.new_zeros(b, k).scatter_add(1, bins, torch.ones_like(p_true))
    total = p.sum(2)
    if batch:
        return inter.sum(0), total.sum(0), count.sum(0)
    return inter, total, count


class SoftDiceLoss(nn.Module):
    """``1 - mean foreground soft Dice`` of softmax probabilities."""

    def __init__(self, batch_dice: bool = True, include_background: bool = False, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice = batch_dice
        self.include_background = include_background
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        tp, p_sum, g_sum = class_sums(probs, target, self.batch_dice)
        if not self.include_background and probs.shape[1] > 1:
            tp, p_sum, g_sum = tp[..., 1:], p_sum[..., 1:], g_sum[..., 1:]
        # 2tp + fp + fn = Σp + Σg
        dice = (2 * tp + self.smooth) / (p_sum + g_sum + self.smooth).clamp_min(1e-8)
        return 1 - dice.mean()


class SquaredDiceLoss(nn.Module):
    """``1 - mean foreground Dice`` with V-Net's squared denominator ``Σ p² + Σ g²``."""

    def __init__(self, batch_dice: bool = True, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        inter, _, g_sum = class_sums(probs, target, self.batch_dice)  # g² = g for a one-hot target
        axes = [0] + list(range(2, probs.ndim)) if self.batch_dice else list(range(2, probs.ndim))
        p_sq = probs.pow(2).sum(axes)
        if probs.shape[1] > 1:
            inter, g_sum, p_sq = inter[..., 1:], g_sum[..., 1:], p_sq[..., 1:]
        return 1 - ((2 * inter + self.smooth) / (p_sq + g_sum + self.smooth)).mean()


class OneHotMSELoss(nn.Module):
    """Mean squared error between softmax probabilities and the one-hot target, over all classes.

    ``Σ (p - g)² = Σ p² - 2 Σ p_true + N`` per voxel, so no one-hot tensor is built.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        p_true = probs.gather(1, target.long())
        voxels = p_true.numel()
        return (probs.pow(2).sum() - 2 * p_true.sum() + voxels) / (voxels * probs.shape[1])


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
