"""Atlas-ISTN prediction: ITN segmentation, atlas registration with test-time refinement.

For each case: the ITN (the trained U-Net, sliding window on the preprocessed volume) gives
class probabilities; the atlas grid box is cut around the centre of mass of its foreground;
a copy of the STN is optimised for ``iterations`` steps (Adam) on
``L* = β La2s* + γ Ls2a* + λ* Lreg`` with the ITN's foreground probabilities in place of the
ground truth (the ITN is frozen: only the copy's parameters are in the optimiser); the atlas
labelmap probabilities are warped onto the case (Φ⁻¹), pasted back into the preprocessed
volume (background outside the box) and exported to the original geometry like any
prediction. Because the final labels are a diffeomorphic warp of the atlas, each class keeps
the atlas's topology.

Outputs per case (:class:`AtlasRefinement`, a refinement step of
:func:`autoseg.inference.folder.predict_folder`):

* ``CASE<ending>``: the warped atlas segmentation (the default output);
* ``CASE_itn<ending>``: the ITN's own segmentation;
* ``CASE_displacement.nii.gz``: Φ⁻¹ − id on the atlas grid, a vector image with components
  (x, y[, z]) in mm (ITK order) and the atlas grid's spacing; its origin is the box's corner in
  the preprocessed (cropped, resampled) volume, in mm;
* ``atlas_istn.json``: per case the box and L* before and after refinement.
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from autoseg.atomic import atomic_path, read_json, write_json
from autoseg.dataset.imageio import Geometry
from autoseg.errors import UserError
from autoseg.inference.cases import InputCase
from autoseg.inference.export import write_prediction
from autoseg.inference.predictor import Inferred, Predictor, finish
from autoseg.networks.stn import SpatialTransformer, atlas_losses, normalised_to_voxel_scale, smoothness_loss
from autoseg.preprocessing.atlas_grid import crop_to_box, foreground_center, grid_box, uncrop_from_box


@dataclass
class AtlasModel:
    """The STN and atlas of one trained fold."""

    stn: SpatialTransformer
    atlas_image: torch.Tensor  # (C, *grid)
    atlas_labels: torch.Tensor  # (K, *grid) probabilities
    grid: list[int]
    spacing: list[float]
    refine: dict[str, float] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.grid)


def has_atlas(checkpoint_file: str | os.PathLike) -> bool:
    from autoseg.checkpoint import load_checkpoint

    return "atlas_istn" in load_checkpoint(checkpoint_file)


def load_atlas_model(checkpoint_file: str | os.PathLike, device: str | torch.device = "cpu") -> AtlasModel:
    from autoseg.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint_file)
    a = state.get("atlas_istn")
    if a is None:
        raise UserError(f"{checkpoint_file}: not an atlas_istn checkpoint (no STN / atlas stored)")
    labels = a["atlas_labels"].float()
    stn = SpatialTransformer(labels.shape[0] - 1, len(a["grid"]), tuple(a["stn_features"]), int(a["integration_steps"]))
    stn.load_state_dict(a["stn"])
    return AtlasModel(stn.to(device).eval(), a["atlas_image"].float().to(device), labels.to(device),
                      [int(g) for g in a["grid"]], [float(s) for s in a["spacing"]], dict(a.get("refine", {})))


def refinement_loss(stn: SpatialTransformer, target_fg: torch.Tensor, atlas_fg: torch.Tensor, beta: float,
                    gamma: float, reg_weight: float):
    """(L*, registration) for a target (N, F, *grid) and atlas (1, F, *grid)."""
    reg = stn(target_fg, atlas_fg)
    la2s, ls2a = atlas_losses(reg, target_fg, atlas_fg)
    return beta * la2s + gamma * ls2a + reg_weight * smoothness_loss(reg.velocity), reg


def refine_stn(stn: SpatialTransformer, target_fg: torch.Tensor, atlas_fg: torch.Tensor, iterations: int,
               lr: float = 1e-3, beta: float = 1.0, gamma: float = 0.0,
               reg_weight: float = 0.1) -> tuple[SpatialTransformer, list[float]]:
    """Optimise a copy of ``stn`` for ``iterations`` Adam steps on L*; returns it and L* per step.

    The list has ``iterations + 1`` entries: L* before each step, then L* of the returned
    parameters. Those are the best seen, the one-pass start included, so refinement never
    leaves a case worse off than one pass (a few Adam steps can overshoot on a flat loss).
    ``stn`` itself is left unchanged; the target is detached, so nothing upstream (the ITN) moves.
    """
    stn = copy.deepcopy(stn).train()
    for p in stn.parameters():
        p.requires_grad_(True)
    target_fg = target_fg.detach()
    atlas_fg = atlas_fg.detach()
    opt = torch.optim.Adam(stn.parameters(), lr=lr)
    history: list[float] = []
    best_loss, best_state = float("inf"), None
    for _ in range(int(iterations)):
        opt.zero_grad(set_to_none=True)
        loss, _ = refinement_loss(stn, target_fg, atlas_fg, beta, gamma, reg_weight)
        history.append(float(loss.detach()))
        if history[-1] < best_loss:
            best_loss, best_state = history[-1], copy.deepcopy(stn.state_dict())
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(refinement_loss(stn, target_fg, atlas_fg, beta, gamma, reg_weight)[0])
    if best_state is not None and final > best_loss:
        stn.load_state_dict(best_state)
        final = best_loss
    history.append(final)
    return stn.eval(), history


@dataclass
class AtlasResult:
    atlas_probabilities: np.ndarray  # (K, Z, Y, X) warped atlas on the preprocessed grid
    box: list[tuple[int, int]]  # the atlas grid box in the preprocessed volume (z, y, x), half-open
    displacement_mm: np.ndarray  # (*grid, dim) Φ⁻¹ − id, components (x, y[, z]) in mm
    losses: list[float]  # L* during refinement (first: one pass)


def register_case(model: AtlasModel, itn_probabilities: np.ndarray | torch.Tensor, iterations: int | None = None,
                  **refine_kwargs: float) -> AtlasResult:
    """Warp the atlas onto one case given the ITN's ``(K, Z, Y, X)`` preprocessed-grid probabilities."""
    probs = itn_probabilities.numpy() if isinstance(itn_probabilities, torch.Tensor) else np.asarray(itn_probabilities)
    shape = probs.shape[1:]
    box = grid_box(foreground_center(probs.argmax(0)), model.grid, shape)
    target = crop_to_box(probs[1:], box)
    if model.dim == 2:
        target = target[:, 0]
    device = model.atlas_labels.device
    target_t = torch.from_numpy(target)[None].to(device)
    atlas_fg = model.atlas_labels[None, 1:]
    settings = {k: float(v) for k, v in model.refine.items() if k != "iterations"}
    settings.update(refine_kwargs)
    n = int(model.refine.get("iterations", 50) if iterations is None else iterations)
    with torch.enable_grad():
        stn, losses = refine_stn(model.stn, target_t, atlas_fg, n, **settings)
    with torch.no_grad():
        reg = stn(target_t, atlas_fg)
        warped = reg.atlas_to_subject(model.atlas_labels[None])[0].cpu().numpy()
        disp = reg.displacement_a2s()[0].cpu().numpy()  # (dim, *grid), normalised, (x, y[, z])
    if model.dim == 2:
        warped = warped[:, None]
    atlas_probs = uncrop_from_box(warped, box, shape)
    vox = normalised_to_voxel_scale(model.grid)
    mm = list(reversed(model.spacing[-model.dim:]))
    disp_mm = np.stack([disp[c] * vox[c] * mm[c] for c in range(model.dim)], -1).astype(np.float32)
    return AtlasResult(atlas_probs, box, disp_mm, losses)


def write_displacement(disp_mm: np.ndarray, spacing: Sequence[float], corner_mm: Sequence[float], path: Path) -> None:
    """A vector image (ITK component order x, y[, z]) with the atlas grid's spacing."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(disp_mm.astype(np.float32), isVector=True)
    dim = disp_mm.ndim - 1
    img.SetSpacing(tuple(float(s) for s in reversed(list(spacing)[-dim:])))
    img.SetOrigin(tuple(float(c) for c in reversed(list(corner_mm)[-dim:])))
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


class AtlasRefinement:
    """The atlas of one trained fold registered onto each case the ITN predicted (see the module docstring)."""

    def __init__(self, model: AtlasModel, iterations: int | None = None) -> None:
        self.model = model
        self.iterations = int(model.refine.get("iterations", 50) if iterations is None else iterations)
        self.report: dict[str, Any] | None = None
        self.done = 0

    def output_names(self, case: InputCase) -> list[str]:
        return [f"{case.case_id}_itn{case.ending}", f"{case.case_id}_displacement.nii.gz"]

    def refine(self, predictor: Predictor, case: InputCase, inferred: Inferred) -> tuple[Inferred, AtlasResult]:
        (itn, props), = inferred
        result = register_case(self.model, itn.float(), self.iterations)
        return [(torch.from_numpy(result.atlas_probabilities), props)], result

    def write(self, predictor: Predictor, case: InputCase, geometry: Geometry, inferred: Inferred,
              result: AtlasResult, output_folder: Path) -> None:
        (itn, props), = inferred
        itn_seg = finish([predictor], [(itn, props)]).segmentation
        write_prediction(itn_seg, geometry, output_folder / self.output_names(case)[0])
        corner = [lo * s for (lo, _), s in zip(result.box, props["target_spacing"])]
        write_displacement(result.displacement_mm, self.model.spacing, corner, output_folder / self.output_names(case)[1])
        self._report(output_folder)[case.case_id] = {"box": [list(b) for b in result.box], "refine_iterations": self.iterations,
                                     "loss_one_pass": result.losses[0], "loss_refined": result.losses[-1]}
        self.done += 1

    def _report(self, output_folder: Path) -> dict[str, Any]:
        """Per case: box and L*, with the cases of earlier runs into the same folder kept."""
        if self.report is None:
            report_file = output_folder / "atlas_istn.json"
            self.report = read_json(report_file).get("cases", {}) if report_file.is_file() else {}
        return self.report

    def close(self, output_folder: Path) -> None:
        write_json(output_folder / "atlas_istn.json",
                   {"grid": self.model.grid, "spacing": self.model.spacing, "cases": self._report(output_folder)})
        print(f"atlas-ISTN: {self.done} case(s), {self.iterations} refinement iteration(s) each", file=sys.stderr)
