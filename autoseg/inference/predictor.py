"""The one way a case is predicted: preprocess, sliding window, back to the original grid, argmax.

A :class:`Predictor` is one trained configuration with its folds' networks, built from a model
folder (:meth:`Predictor.from_model_folder`) or from networks in memory (fold validation right
after training). Several predictors form an ensemble. Every caller (``autoseg predict`` on a
folder, the Python API, fold validation, Atlas-ISTN refinement) runs the same three steps,
which :func:`predict_case` chains and :func:`autoseg.inference.folder.predict_folder` overlaps
across cases:

1. :func:`prepare`: each predictor preprocesses the image as its plans say;
2. :func:`infer`: each predictor's folds share one sliding-window pass over the tiles;
3. :func:`finish`: probabilities go back to the image's grid one class at a time, are averaged
   over the predictors, and become label values (plus the chosen postprocessing). The
   original-grid probabilities exist only where a caller asks for them: written class by class
   to a file, or (the Python API) kept in memory.

A large case of one configuration, when nobody asks for its probabilities, takes a shorter
way (:func:`streams`, :func:`stream`): steps 2 and 3 run together, z rows at a time, so the
``(K, Z, Y, X)`` probabilities never exist even on the preprocessed grid; the label map is the
one steps 2 and 3 give, without their float16 rounding of the probabilities.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from autoseg.atomic import read_json
from autoseg.dataset.imageio import Geometry
from autoseg.device import resolve_device, resolve_precision
from autoseg.errors import UserError
from autoseg.inference.export import ExportMember, RowExport, export_case, to_original_geometry
from autoseg.inference.sliding_window import predict_sliding_window
from autoseg.networks import build_network
from autoseg.planners.plans import Plans

CHECKPOINTS = ("final", "best", "latest")
# float32 bytes of a case's (K, Z, Y, X) preprocessed-grid probabilities above which it is streamed
# (a module setting; tests lower it). Below it the whole-array path is as fast and keeps the
# probabilities for whoever wants them.
STREAM_BYTES = 1 << 30


def fold_names(folds: Iterable[int | str] | str | int) -> list[str]:
    """Fold names as folders name them (``"0"``, ``"all"``), from an int, a string or a list."""
    if isinstance(folds, (str, int)):
        folds = [folds]
    return [str(f) for f in folds]


class Predictor:
    """One trained configuration (its folds' networks averaged per tile), ready to predict images.

    ``precision``: auto, fp32, bf16 or fp16 (auto = bf16 where the hardware runs it natively).
    ``mirror_axes``: the network axes test-time augmentation flips; None: the plan's.
    ``scratch_dir``: where a sliding-window accumulator too large for memory goes (a temporary
    file; default the system's temporary folder), see :mod:`autoseg.inference.sliding_window`.
    """

    def __init__(self, plans: Plans, configuration: str, networks: Sequence[nn.Module], *,
                 device: str | torch.device = "auto", tta: bool = True, overlap: float = 0.5,
                 precision: str = "auto", mirror_axes: Sequence[int] | None = None,
                 scratch_dir: str | os.PathLike | None = None) -> None:
        if not 0 <= overlap < 1:
            raise UserError(f"overlap {overlap} must be in [0, 1)")
        self.plans = plans
        self.configuration = configuration
        self.config = plans.configuration(configuration)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.tta = tta
        self.mirror_axes = list(mirror_axes) if mirror_axes is not None else self.config.mirror_axes
        self.overlap = overlap
        self.scratch_dir = scratch_dir
        self.autocast_dtype, _ = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        self.networks = [n.to(self.device).eval() for n in networks]
        self.model_folder: Path | None = None
        self.folds = [str(i) for i in range(len(self.networks))]

    @classmethod
    def from_model_folder(cls, model_folder: str | os.PathLike, folds: Iterable[int | str] | str = (0, 1, 2, 3, 4),
                          checkpoint: str = "final", device: str = "auto", tta: bool = True, overlap: float = 0.5,
                          precision: str = "auto", scratch_dir: str | os.PathLike | None = None) -> "Predictor":
        """``model_folder`` is ``<workspace>/<dataset>/results/<trainer>__<configuration>`` with
        ``plans.json`` (the plans as trained) and ``fold_<k>/checkpoint_<checkpoint>.pt``."""
        from autoseg.checkpoint import load_checkpoint

        model_folder = Path(model_folder)
        plans_file = model_folder / "plans.json"
        if not plans_file.is_file():
            raise UserError(f"{plans_file} does not exist: {model_folder} is not a trained model folder")
        try:
            plans = Plans.load(plans_file)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{plans_file}: {e}") from None
        if checkpoint not in CHECKPOINTS:
            raise UserError(f"checkpoint '{checkpoint}': choose {', '.join(CHECKPOINTS)}")
        names = fold_names(folds)
        files = [model_folder / f"fold_{f}" / f"checkpoint_{checkpoint}.pt" for f in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            have = sorted(p.parent.name for p in model_folder.glob(f"fold_*/checkpoint_{checkpoint}.pt"))
            raise UserError(f"checkpoint(s) missing: {', '.join(missing)}"
                            + (f"; available: {', '.join(have)} (choose folds with -f)" if have else
                               "; train the model first (autoseg train)"))
        recorded = read_json(plans_file)  # which fields the model's plans copy was written with
        networks, configuration, mirror_axes = [], None, None
        for f in files:
            state = load_checkpoint(f, map_location="cpu")
            if not isinstance(state, dict) or "network" not in state:
                raise UserError(f"{f}: not an autoseg checkpoint (no 'network' weights)")
            configuration = state.get("configuration") or model_folder.name.split("__")[-1]
            try:
                config = plans.configuration(configuration)
            except KeyError as e:
                raise UserError(f"{plans_file}: {e.args[0]}") from None
            if "architecture" not in recorded["configurations"][configuration]:
                # model folders trained before plans recorded the network name it in the checkpoint
                config = dataclasses.replace(config, architecture=state.get("architecture", "unet"))
                plans.configurations[configuration] = config
            net = build_network(plans, config)
            net.load_state_dict(state["network"])
            networks.append(net)
            if "mirror_axes" in state:
                # flip at test time only what the folds were trained to see mirrored (all must agree)
                trained = set(int(a) for a in state["mirror_axes"])
                mirror_axes = trained if mirror_axes is None else mirror_axes & trained
            del state
        predictor = cls(plans, configuration, networks, device=device, tta=tta, overlap=overlap, precision=precision,
                        mirror_axes=sorted(mirror_axes) if mirror_axes is not None else None, scratch_dir=scratch_dir)
        predictor.model_folder = model_folder
        predictor.folds = names
        return predictor

    @property
    def num_channels(self) -> int:
        return len(self.plans.channel_names)

    @property
    def label_values(self) -> list[int]:
        return list(self.plans.label_values)

    def preprocess(self, image: np.ndarray, geometry: Geometry, case_id: str = "") -> tuple[np.ndarray, dict[str, Any]]:
        from autoseg.preprocessing.pipeline import preprocess_case

        if image.ndim != 4 or image.shape[0] != self.num_channels:
            raise UserError(f"{case_id or 'image'}: shape {image.shape} is not (C={self.num_channels}, Z, Y, X)")
        data, _, properties = preprocess_case(image, None, geometry, self.plans, self.config, case_id=case_id)
        return data, properties

    def predict_preprocessed(self, data: np.ndarray, on_rows=None) -> torch.Tensor | None:
        """``(K, z, y, x)`` probabilities on the preprocessed grid, folds averaged (float32, or
        float16 for a large case: see :mod:`autoseg.inference.sliding_window`); with ``on_rows``
        they are streamed to it z rows at a time instead."""
        return predict_sliding_window(self.networks, data, self.config.inference_patch, self.config.dim,
                                      self.plans.num_classes, overlap=self.overlap, tta=self.tta,
                                      mirror_axes=self.mirror_axes,
                                      device=self.device, autocast_dtype=self.autocast_dtype,
                                      scratch_dir=self.scratch_dir, on_rows=on_rows)

    def export(self, probabilities: torch.Tensor | np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """Preprocessed-grid probabilities -> ``(K, Z0, Y0, X0)`` float32 in the image's own grid
        (the whole array; :func:`finish` streams the classes instead)."""
        return to_original_geometry(probabilities, properties, self.plans, self.config)

    def export_member(self, probabilities: torch.Tensor | np.ndarray, properties: dict[str, Any]) -> ExportMember:
        """This predictor's share of a case for :func:`autoseg.inference.export.export_case`."""
        return ExportMember(probabilities, properties, self.config)

    def predict_probabilities(self, image: np.ndarray, geometry: Geometry) -> np.ndarray:
        """``(K, Z0, Y0, X0)`` float32 probabilities in the image's own grid: ``K`` image-sized
        float32 volumes in memory (:func:`predict_case` without ``probabilities`` avoids them)."""
        return predict_case([self], image, geometry, probabilities=True).probabilities


# ------------------------------------------------------------------ the case path


@dataclass
class CasePrediction:
    """One case's result. ``probabilities`` and ``entropy`` exist only when :func:`finish` was asked
    for them (they cost ``K`` and one image-sized float32 volumes); a probabilities file written by
    :func:`finish` is named by ``probabilities_file``."""

    probabilities: np.ndarray | None  # (K, Z0, Y0, X0) float32 in the image's grid, averaged over the predictors
    segmentation: np.ndarray  # (Z0, Y0, X0) label values, postprocessed
    entropy: np.ndarray | None = None  # (Z0, Y0, X0) float32 nats of the averaged probabilities
    probabilities_file: Path | None = None  # float16 (K, Z0, Y0, X0) .npy, complete


Prepared = list[tuple[np.ndarray, dict[str, Any]]]  # per predictor: preprocessed data, properties
Inferred = list[tuple[torch.Tensor, dict[str, Any]]]  # per predictor: preprocessed-grid probabilities, properties


def check_ensemble(predictors: Sequence[Predictor]) -> None:
    if not predictors:
        raise UserError("no model to predict with")
    first = predictors[0]
    for p in predictors[1:]:
        if p.label_values != first.label_values:
            raise UserError(f"ensemble members disagree on label values: {first.label_values} vs {p.label_values}")
        if p.num_channels != first.num_channels:
            raise UserError(f"ensemble members disagree on the number of channels: {first.num_channels} vs {p.num_channels}")


def prepare(predictors: Sequence[Predictor], image: np.ndarray, geometry: Geometry, case_id: str = "") -> Prepared:
    return [p.preprocess(image, geometry, case_id) for p in predictors]


def infer(predictors: Sequence[Predictor], prepared: Prepared) -> Inferred:
    # float16 while waiting for export (a large case is accumulated in float16 already: no copy)
    return [(p.predict_preprocessed(data).to(torch.float16), props) for p, (data, props) in zip(predictors, prepared)]


def streams(predictors: Sequence[Predictor], prepared: Prepared, probabilities: bool | str | os.PathLike = False) -> bool:
    """Whether :func:`stream` predicts this case: one configuration, no probabilities wanted, and
    preprocessed-grid probabilities above :data:`STREAM_BYTES`."""
    if len(predictors) != 1 or probabilities is not False or not RowExport.supports(predictors[0].config):
        return False
    data, _ = prepared[0]
    return predictors[0].plans.num_classes * int(np.prod(data.shape[1:])) * 4 > STREAM_BYTES


def stream(predictor: Predictor, prepared: Prepared, postprocessing: dict | None = None, *,
           entropy: bool = False) -> CasePrediction:
    """Steps 2 and 3 together, z rows at a time: the label map (and entropy) of :func:`finish`."""
    data, properties = prepared[0]
    rows = RowExport(properties, predictor.config, predictor.label_values, entropy=entropy)
    predictor.predict_preprocessed(data, on_rows=rows)
    exported = rows.result()
    return CasePrediction(None, _postprocess(exported.segmentation, postprocessing, predictor.label_values),
                          exported.entropy)


def _postprocess(seg: np.ndarray, postprocessing: dict | None, label_values: Sequence[int]) -> np.ndarray:
    if not postprocessing:
        return seg
    from autoseg.postprocessing.connected_components import apply_postprocessing

    return apply_postprocessing(seg, postprocessing, label_values)


def finish(predictors: Sequence[Predictor], inferred: Inferred, postprocessing: dict | None = None, *,
           probabilities: bool | str | os.PathLike = False, entropy: bool = False) -> CasePrediction:
    """Export to the image's grid class by class, average over the predictors, argmax, postprocess.

    ``probabilities``: False (default) builds no original-grid probabilities at all; a path
    writes them there as float16 ``(K, Z0, Y0, X0)`` ``.npy``, one class at a time and atomically
    (``autoseg predict --save-probabilities``, fold validation); True keeps them in memory as
    float32 (``K`` image-sized volumes: the Python API's ``return_probabilities``).
    ``entropy``: also the per-voxel entropy of the averaged probabilities (one volume).
    """
    file = None if isinstance(probabilities, bool) else Path(probabilities)
    exported = export_case([p.export_member(probs, props) for p, (probs, props) in zip(predictors, inferred)],
                           predictors[0].label_values, probabilities_file=file,
                           keep_probabilities=probabilities is True, entropy=entropy)
    seg = _postprocess(exported.segmentation, postprocessing, predictors[0].label_values)
    return CasePrediction(exported.probabilities, seg, exported.entropy, file)


def predict_case(predictors: Sequence[Predictor], image: np.ndarray, geometry: Geometry, case_id: str = "",
                 postprocessing: dict | None = None, *, probabilities: bool | str | os.PathLike = False,
                 entropy: bool = False) -> CasePrediction:
    """One image ``(C, Z, Y, X)`` through every step, averaged over ``predictors`` (an ensemble);
    ``probabilities`` and ``entropy`` as in :func:`finish`."""
    check_ensemble(predictors)
    prepared = prepare(predictors, image, geometry, case_id)
    if streams(predictors, prepared, probabilities):
        return stream(predictors[0], prepared, postprocessing, entropy=entropy)
    return finish(predictors, infer(predictors, prepared), postprocessing, probabilities=probabilities,
                  entropy=entropy)
