"""Atlas-ISTN (Sinclair et al., Medical Image Analysis 2022): joint segmentation, registration
and atlas construction.

* ITN: the planned U-Net, trained with the shared Dice + CE loss (deep supervision), SGD.
* STN (:class:`autoseg.networks.stn.SpatialTransformer`): registers the atlas labelmap to the
  ITN's (detached) softmax; trained with Adam on
  ``La2s = Σ_j mean‖y_j − y^a_j ∘ Φ⁻¹‖²``, ``Ls2a = Σ_j mean‖y_j ∘ Φ − y^a_j‖²`` (j over
  foreground classes, y the ground-truth one-hot labels: the ITN's prediction only
  replaces them at test time, as in the paper) and ``Lreg`` (squared spatial gradients of the
  velocity, in voxels). The logged loss is ``Ls + ω (La2s + Ls2a + λ Lreg)``.
  Because the STN's input is detached and its losses touch only its own parameters, and Adam
  divides out any constant gradient scale, ω would have no effect on the STN's updates; the
  ramp is therefore applied to the STN's learning rate as well (``lr = stn_lr · ω``).
* Atlas: image and labelmap probabilities on a fixed grid, initialised to the mean of the
  training cases, updated after every epoch with ``z ← (1 − η) z + η · mean_i(z_i ∘ Φ_i)``
  over the (augmented) cases seen in the epoch.

The atlas grid: the median foreground bounding box of the training cases at the target
spacing, plus ``atlas_margin`` voxels on each side, rounded up to the network's total stride.
Cases go onto it by cutting a box of that size centred on the foreground centre of mass
(training: the label; inference: the ITN's sliding-window prediction), zero-padded where it
sticks out; back by pasting the box into the preprocessed volume (background elsewhere).
"""
from __future__ import annotations

import math
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoseg.errors import UserError
from autoseg.networks.stn import atlas_losses
from autoseg.preprocessing.atlas_grid import atlas_grid_from_labels, crop_to_box, foreground_center, grid_box
from autoseg.trainers.base import Trainer
from autoseg.trainers.patch_sampler import PatchLocation, PatchSampler
from autoseg.trainers.registry import register_trainer

def one_hot(seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *sp) integer -> (B, K, *sp) float."""
    return F.one_hot(seg[:, 0].long(), num_classes).movedim(-1, 1).float()


def sigmoid_rampup(progress: float, midpoint: float = 0.2, steepness: float = 12.0) -> float:
    """ω in (0, 1): a logistic curve of the training progress (0..1), half way at ``midpoint``."""
    return 1.0 / (1.0 + math.exp(-steepness * (progress - midpoint)))


def atlas_update(atlas: torch.Tensor, warped_mean: torch.Tensor, eta: float) -> torch.Tensor:
    """``z_t = (1 − η) z_{t−1} + η · mean_i(z_i ∘ Φ_i)``."""
    return (1.0 - eta) * atlas + eta * warped_mean


# ------------------------------------------------------------------ patches on the grid


def atlas_train_transforms(grid: Sequence[int], dim: int, anisotropic: bool,
                           deep_supervision_scales: Sequence[Sequence[float]] | None, strength: str):
    """The U-Net's augmentation (``full`` or ``light``) without mirroring; ``full`` rotates (15°)
    and scales (0.85-1.15) less than the U-Net's, since the STN learns the residual pose
    (documentation/atlas_istn.md)."""
    from autoseg.trainers.augmentation import build_train_transforms

    # light stays free of resampling: a scale range given there would switch zooming on
    return build_train_transforms(grid, dim, anisotropic, deep_supervision_scales, strength=strength, mirror_axes=(),
                                  max_rotation=math.radians(15), scale=(0.85, 1.15) if strength == "full" else None)


class AtlasGridSampler(PatchSampler):
    """Every sample is the atlas-grid box around the case's foreground centre (± ``jitter``)."""

    def __init__(self, *args, jitter: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.jitter = int(jitter)
        self._centers: dict[str, tuple[int, int, int]] = {}

    def center(self, case_id: str) -> tuple[int, int, int]:
        if case_id not in self._centers:
            self._centers[case_id] = foreground_center(self.arrays(case_id)[1])
        return self._centers[case_id]

    def _location(self, case: str, rng: np.random.Generator, force: bool) -> PatchLocation:
        c = list(self.center(case))
        axes = range(3) if self.dim == 3 else range(1, 3)
        for ax in axes:
            c[ax] += int(rng.integers(-self.jitter, self.jitter + 1)) if self.jitter else 0
        # PatchSampler.crop cuts [c - s//2, c - s//2 + s): the same box as grid_box
        return PatchLocation(case, (c[0], c[1], c[2]), True)


# ------------------------------------------------------------------ the trainer


@register_trainer("atlas_istn")
class AtlasISTNTrainer(Trainer):
    architecture = "unet"
    stn_lr = 1e-3  # Adam
    stn_features = (16, 32, 32, 32)
    integration_steps = 7
    reg_weight = 0.1  # λ
    omega_max = 1.0
    omega_midpoint = 0.2  # fraction of training at which ω = ω_max / 2
    atlas_eta = 0.01
    atlas_margin = 4  # voxels around the median foreground box
    grid_jitter = 2
    # test-time refinement defaults (stored in the checkpoint; `autoseg predict --refine N` overrides N)
    refine_iterations = 50
    refine_lr = 1e-3
    refine_beta = 1.0
    refine_gamma = 0.0
    refine_reg_weight = 0.1

    # ---------------------------------------------------------------- setup

    def _setup(self) -> None:
        super()._setup()
        from autoseg.networks.stn import SpatialTransformer

        dim = self.config.dim
        if dim == 2 and not self.plans.is_2d_dataset:
            raise UserError("atlas_istn: the 2d configuration of a 3D dataset has no 2D atlas; use 3d_fullres")
        segs = [self.preprocessed.load_seg(c, mmap=True) for c in self.train_ids]
        divisor = np.prod(np.asarray(self.config.network.strides), axis=0).tolist()
        self.atlas_grid = atlas_grid_from_labels(segs, dim, divisor, self.atlas_margin)
        k = self.plans.num_classes
        self.stn = SpatialTransformer(k - 1, dim, tuple(self.stn_features), self.integration_steps).to(self.device)
        self.stn_optimizer = torch.optim.Adam(self.stn.parameters(), lr=self.stn_lr)
        image_sum, label_sum = None, None
        for cid, seg in zip(self.train_ids, segs):
            data = self.preprocessed.load_data(cid, mmap=True)
            box = grid_box(foreground_center(seg), self.atlas_grid, seg.shape)
            img = crop_to_box(data, box)
            lab = crop_to_box(np.asarray(seg)[None].astype(np.float32), box)[0].astype(np.int64)
            onehot = np.eye(k, dtype=np.float32)[lab].transpose(-1, *range(lab.ndim))
            if dim == 2:
                img, onehot = img[:, 0], onehot[:, 0]
            image_sum = img if image_sum is None else image_sum + img
            label_sum = onehot if label_sum is None else label_sum + onehot
        n = len(self.train_ids)
        self.atlas_image = torch.from_numpy(image_sum / n).to(self.device)
        self.atlas_labels = torch.from_numpy(label_sum / n).to(self.device)
        self._reset_accumulators()
        self.last_stn_losses: dict[str, float] = {}
        print(f"atlas_istn: atlas grid {self.atlas_grid} at spacing {self.config.spacing} mm", file=sys.stderr)

    def _reset_accumulators(self) -> None:
        self._acc_image = torch.zeros_like(self.atlas_image)
        self._acc_labels = torch.zeros_like(self.atlas_labels)
        self._acc_count = 0

    def mirror_axes(self) -> list[int]:
        return []  # never mirrored (atlas_train_transforms), so never flipped at test time

    def build_sampler(self, case_ids: list[str], seed: int) -> Any:
        # every sample is the atlas grid around the case's foreground centre (jittered), so the
        # ITN and the STN see the structure where the atlas has it
        return AtlasGridSampler(self.preprocessed_dir, case_ids, self.atlas_grid, self.config.dim,
                                self.config.batch_size, oversample_foreground=1.0, seed=seed, jitter=self.grid_jitter)

    def build_batches(self, case_ids: list[str], train: bool, seed: int) -> Iterator[dict[str, Any]]:
        if not train:
            return super().build_batches(case_ids, train, seed)
        from autoseg.trainers.batch_loader import TrainingBatches

        transforms = atlas_train_transforms(self.atlas_grid, self.config.dim, self.config.anisotropic,
                                            self.deep_supervision_scales(), self.augmentation)
        batches = TrainingBatches(self.build_sampler(case_ids, seed), transforms, self.num_workers)
        self._closables.append(batches)
        return iter(batches)

    # ---------------------------------------------------------------- the step

    def omega(self) -> float:
        progress = self.iteration / max(1, self.total_iterations)
        return self.omega_max * sigmoid_rampup(progress, self.omega_midpoint)

    def train_step(self, batch: dict[str, Any]) -> float:
        data = batch["data"].to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in batch["target"]]
        omega = self.omega()
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr()
        for g in self.stn_optimizer.param_groups:
            g["lr"] = self.stn_lr * omega
        self.optimizer.zero_grad(set_to_none=True)
        self.stn_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
            loss_s = self.loss(output, target)
        logits = output[0] if isinstance(output, (list, tuple)) else output
        # detached: the STN losses must not reach the ITN
        probs = torch.softmax(logits.detach().float(), 1)
        atlas_fg = self.atlas_labels[None, 1:]
        with self._autocast():  # the STN's convolutions only; its geometry stays fp32
            reg = self.stn(probs[:, 1:], atlas_fg)
        labels = one_hot(target[0], self.plans.num_classes)
        la2s, ls2a = atlas_losses(reg, labels[:, 1:], atlas_fg)
        from autoseg.networks.stn import smoothness_loss

        lreg = smoothness_loss(reg.velocity)
        stn_loss = la2s + ls2a + self.reg_weight * lreg
        loss = loss_s + omega * stn_loss
        if self.scaler is not None:  # fp16: only the ITN's loss is scaled; the STN's stays fp32
            self._backward_and_step(loss_s)
            stn_loss.backward()
        else:  # the STN's input is detached: this reaches the ITN with Ls's gradient only
            self._backward_and_step(loss)
        nn.utils.clip_grad_norm_(self.stn.parameters(), self.grad_clip)
        self.stn_optimizer.step()
        with torch.no_grad():
            self._acc_image += reg.subject_to_atlas(data.float()).sum(0)
            self._acc_labels += reg.subject_to_atlas(labels).sum(0)
            self._acc_count += data.shape[0]
        self.last_stn_losses = {"la2s": float(la2s.detach()), "ls2a": float(ls2a.detach()), "reg": float(lreg.detach()),
                                "omega": omega}
        return float(loss.detach())

    # ---------------------------------------------------------------- atlas, checkpoints

    def on_train_epoch_end(self) -> None:
        if self._acc_count:
            n = self._acc_count
            self.atlas_image = atlas_update(self.atlas_image, self._acc_image / n, self.atlas_eta)
            self.atlas_labels = atlas_update(self.atlas_labels, self._acc_labels / n, self.atlas_eta)
        self._reset_accumulators()
        self.save_atlas()
        if self.last_stn_losses:
            s = self.last_stn_losses
            print(f"atlas_istn: La2s {s['la2s']:.4f}, Ls2a {s['ls2a']:.4f}, Lreg {s['reg']:.4f}, "
                  f"omega {s['omega']:.3f}", file=sys.stderr)

    def save_atlas(self) -> None:
        """``atlas_image.nii.gz`` (first channel) and ``atlas_labelmap.nii.gz`` (argmax label values)."""
        save_atlas_nifti(self.atlas_image.cpu().numpy(), self.atlas_labels.cpu().numpy(), self.config.spacing,
                         self.plans.label_values, self.fold_dir)

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"atlas_istn": {
            "stn": self.stn.state_dict(),
            "stn_optimizer": self.stn_optimizer.state_dict(),
            "atlas_image": self.atlas_image.cpu(),
            "atlas_labels": self.atlas_labels.cpu(),
            "grid": list(self.atlas_grid),
            "spacing": [float(s) for s in self.config.spacing],
            "stn_features": list(self.stn_features),
            "integration_steps": self.integration_steps,
            "refine": {"iterations": self.refine_iterations, "lr": self.refine_lr, "beta": self.refine_beta,
                       "gamma": self.refine_gamma, "reg_weight": self.refine_reg_weight},
        }}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        a = state["atlas_istn"]
        self.stn.load_state_dict(a["stn"])
        self.stn_optimizer.load_state_dict(a["stn_optimizer"])
        self.atlas_image = a["atlas_image"].to(self.device)
        self.atlas_labels = a["atlas_labels"].to(self.device)
        self.atlas_grid = list(a["grid"])
        self._reset_accumulators()


def save_atlas_nifti(image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], label_values: Sequence[int],
                     folder) -> None:
    """Write the atlas (``(C, *grid)`` image, ``(K, *grid)`` probabilities) on its grid's spacing."""
    from pathlib import Path

    from autoseg.dataset.imageio import Geometry, write_image

    folder = Path(folder)
    img = image[0]
    lab = np.asarray(label_values)[labels.argmax(0)].astype(np.uint8 if max(label_values) < 256 else np.int32)
    if img.ndim == 2:
        img, lab = img[None], lab[None]
    geometry = Geometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), 3)
    write_image(img.astype(np.float32), geometry, folder / "atlas_image.nii.gz")
    write_image(lab, geometry, folder / "atlas_labelmap.nii.gz")
