"""Predict new images with a trained model (one configuration, one or more folds) or an ensemble.

A :class:`Predictor` loads each fold's network once and averages the folds' softmax per
tile (one pass over the tiles for all folds). :func:`predict_folder` runs one or several
predictors (an ensemble of configurations, averaged in the original geometry) over a folder:
the next case is read and preprocessed in a background thread while the current one is
predicted, and exporting/writing also runs in the background. Existing outputs are kept
unless ``overwrite``; every file is written atomically.

Input folders hold either one file per case (``CASE.nii.gz``, possibly multi-channel: a 4D
volume or an RGB PNG) or nnU-Net-style channel files ``CASE_0000.nii.gz``, ``CASE_0001...``.
"""
from __future__ import annotations

import csv
import io
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from autoseg.atomic import atomic_path, remove_partials, write_json
from autoseg.cli import UserError
from autoseg.dataset.imageio import SUPPORTED_ENDINGS, Geometry, ImageReadError, read_image, split_ending
from autoseg.inference.export import (
    entropy_map,
    label_volumes_ml,
    segmentation_from_probabilities,
    to_original_geometry,
    write_prediction,
)
from autoseg.inference.sliding_window import predict_sliding_window
from autoseg.planners.plans import ConfigurationPlan, Plans

_CHANNEL_FILE = re.compile(r"^(.*)_(\d{4})$")
# image formats that hold only 8-bit pixels: a float entropy map goes to TIFF instead
_EIGHT_BIT_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg")


def average_probabilities(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Mean of same-shaped probability arrays, summed in place as they arrive.

    Takes an iterable so an ensemble's members can be computed one at a time: only the running
    sum and the current member exist at once.
    """
    total, n = None, 0
    for a in arrays:
        if total is None:
            total = a
        else:
            total += a
        n += 1
    if total is None:
        raise ValueError("nothing to average")
    if n > 1:
        total /= n
    return total


# ------------------------------------------------------------------ finding input cases

@dataclass
class InputCase:
    case_id: str
    files: list[Path]  # one multi-channel file, or one file per channel in channel order
    ending: str  # the input's file ending; the prediction is written in the same format


def find_input_cases(folder: str | os.PathLike, num_channels: int) -> list[InputCase]:
    """The cases in ``folder``: nnU-Net-style ``CASE_XXXX`` channel files, else one file per case."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"input folder {folder} does not exist")
    files = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        parts = split_ending(f.name)
        if parts is not None:
            files.append((f, parts[0], parts[1]))
    if not files:
        raise UserError(f"input folder {folder} holds no image files ({', '.join(SUPPORTED_ENDINGS)})")

    groups: dict[str, dict[int, tuple[Path, str]]] = {}
    all_channel_files = True
    for f, stem, ending in files:
        m = _CHANNEL_FILE.match(stem)
        if not m:
            all_channel_files = False
            break
        groups.setdefault(m.group(1), {})[int(m.group(2))] = (f, ending)
    if all_channel_files and all(set(g) == set(range(num_channels)) for g in groups.values()):
        return [InputCase(cid, [g[i][0] for i in range(num_channels)], g[0][1]) for cid, g in sorted(groups.items())]
    if all_channel_files and num_channels > 1:
        # channel files, but some case lacks a channel: name it rather than guess
        for cid, g in sorted(groups.items()):
            missing = [i for i in range(num_channels) if i not in g]
            if missing:
                raise UserError(f"{folder}: case {cid} lacks channel file(s) "
                                f"{', '.join(f'{cid}_{i:04d}' for i in missing)} (the model expects {num_channels} channels)")
            extra = [i for i in g if i >= num_channels]
            if extra:
                raise UserError(f"{folder}: {g[extra[0]][0].name} is channel {extra[0]} but the model expects {num_channels} channel(s)")
    return [InputCase(stem, [f], ending) for f, stem, ending in files]


def _header_channels(path: Path) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial size) from the file header only, without reading pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: unreadable image file ({(first[0] if first else '')[:200]})") from None
    size = reader.GetSize()
    channels = reader.GetNumberOfComponents()
    if len(size) == 4:
        channels *= size[3]
        size = size[:3]
    return channels, tuple(size)


def check_input_cases(cases: Sequence[InputCase], num_channels: int) -> None:
    """Fail before any work if a file is unreadable or a case has the wrong number of channels."""
    for case in cases:
        total, sizes = 0, set()
        for f in case.files:
            ch, size = _header_channels(f)
            total += ch
            sizes.add(size)
        if total != num_channels:
            what = case.files[0] if len(case.files) == 1 else f"case {case.case_id} ({len(case.files)} files)"
            raise UserError(f"{what}: has {total} channel(s) but the model was trained on {num_channels}")
        if len(sizes) > 1:
            raise UserError(f"case {case.case_id}: channel files differ in size {sorted(sizes)}")


def load_input_case(case: InputCase) -> tuple[np.ndarray, Geometry]:
    """``(C, Z, Y, X)`` image and the geometry of its first channel file."""
    arrays, geometry = [], None
    for f in case.files:
        try:
            arr, g = read_image(f)
        except ImageReadError as e:
            raise UserError(str(e)) from None
        if geometry is None:
            geometry = g
        elif arr.shape[1:] != arrays[0].shape[1:]:
            raise UserError(f"{f}: shape {arr.shape[1:]} differs from the case's first channel {arrays[0].shape[1:]}")
        arrays.append(arr.astype(np.float32, copy=False))
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), geometry


# ------------------------------------------------------------------ one configuration

def _resolve_folds(folds: Iterable[int | str] | str) -> list[str]:
    if isinstance(folds, (str, int)):
        folds = [folds]
    return [str(f) for f in folds]


def _build_network(trainer_name: str | None, architecture: str, plans: Plans, config: ConfigurationPlan) -> nn.Module:
    """The network a trainer trains: a trainer may override ``build_network`` (user trainers)."""
    from types import SimpleNamespace

    from autoseg.networks import build_network

    if trainer_name:
        try:
            from autoseg.trainers.base import Trainer
            from autoseg.trainers.registry import TrainerNotFound, get_trainer

            cls = get_trainer(trainer_name)
            if cls.build_network is not Trainer.build_network:
                return cls.build_network(SimpleNamespace(plans=plans, config=config, architecture=architecture))
        except (ImportError, TrainerNotFound):
            pass  # not registered here: the checkpoint's architecture name is enough
    return build_network(plans, config, architecture=architecture)


class Predictor:
    """One trained configuration (its folds averaged), ready to predict images.

    ``model_folder`` is ``<workspace>/<dataset>/results/<trainer>__<configuration>`` with
    ``plans.json`` and ``fold_<k>/checkpoint_<checkpoint>.pt``. ``precision``: auto, fp32,
    bf16 or fp16 (auto = bf16 where the hardware runs it natively).
    """

    def __init__(self, model_folder: str | os.PathLike, folds: Iterable[int | str] | str = (0, 1, 2, 3, 4),
                 checkpoint: str = "final", device: str = "auto", tta: bool = True, overlap: float = 0.5,
                 precision: str = "auto") -> None:
        from autoseg.device import resolve_device

        model_folder = Path(model_folder)
        plans_file = model_folder / "plans.json"
        if not plans_file.is_file():
            raise UserError(f"{plans_file} does not exist: {model_folder} is not a trained model folder")
        try:
            plans = Plans.load(plans_file)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{plans_file}: {e}") from None
        if checkpoint not in ("final", "best", "latest"):
            raise UserError(f"checkpoint '{checkpoint}': choose final, best or latest")
        dev = resolve_device(device)
        fold_names = _resolve_folds(folds)
        files = [model_folder / f"fold_{f}" / f"checkpoint_{checkpoint}.pt" for f in fold_names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            have = sorted(p.parent.name for p in model_folder.glob(f"fold_*/checkpoint_{checkpoint}.pt"))
            raise UserError(f"checkpoint(s) missing: {', '.join(missing)}"
                            + (f"; available: {', '.join(have)} (choose folds with -f)" if have else
                               "; train the model first (autoseg train)"))
        from autoseg.trainers.checkpoint import load_checkpoint

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
            net = _build_network(state.get("trainer"), state.get("architecture", "unet"), plans, config)
            net.load_state_dict(state["network"])
            networks.append(net)
            if "mirror_axes" in state:
                # flip at test time only what the folds were trained to see mirrored (all must agree)
                trained = set(int(a) for a in state["mirror_axes"])
                mirror_axes = trained if mirror_axes is None else mirror_axes & trained
            del state
        self._setup(plans, configuration, networks, dev, tta, overlap, precision,
                    sorted(mirror_axes) if mirror_axes is not None else None)
        self.model_folder = model_folder
        self.folds = fold_names

    @classmethod
    def from_networks(cls, plans: Plans, configuration: str, networks: Sequence[nn.Module], device: str = "cpu",
                      tta: bool = True, overlap: float = 0.5, precision: str = "fp32") -> "Predictor":
        """A predictor for networks already in memory (e.g. right after training)."""
        from autoseg.device import resolve_device

        self = cls.__new__(cls)
        self._setup(plans, configuration, list(networks), resolve_device(device), tta, overlap, precision)
        self.model_folder = None
        self.folds = [str(i) for i in range(len(networks))]
        return self

    def _setup(self, plans: Plans, configuration: str, networks: list[nn.Module], device: torch.device,
               tta: bool, overlap: float, precision: str, mirror_axes: list[int] | None = None) -> None:
        from autoseg.device import resolve_precision

        if not 0 <= overlap < 1:
            raise UserError(f"overlap {overlap} must be in [0, 1)")
        self.plans = plans
        self.configuration = configuration
        self.config = plans.configuration(configuration)
        self.device = device
        self.tta = tta
        # test-time flips: the checkpoints' training mirror axes, else the plan's (None: every axis)
        self.mirror_axes = mirror_axes if mirror_axes is not None else self.config.mirror_axes
        self.overlap = overlap
        self.autocast_dtype, _ = resolve_precision(precision, device)
        if device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        self.networks = [n.to(device).eval() for n in networks]

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

    def predict_preprocessed(self, data: np.ndarray) -> torch.Tensor:
        """``(K, z, y, x)`` probabilities on the preprocessed grid, folds averaged."""
        return predict_sliding_window(self.networks, data, self.config.inference_patch, self.config.dim,
                                      self.plans.num_classes, overlap=self.overlap, tta=self.tta,
                                      mirror_axes=self.mirror_axes,
                                      device=self.device, autocast_dtype=self.autocast_dtype)

    def export(self, probabilities: torch.Tensor | np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        return to_original_geometry(probabilities, properties, self.plans, self.config)

    def predict_probabilities(self, image: np.ndarray, geometry: Geometry) -> np.ndarray:
        """``(K, Z0, Y0, X0)`` float32 probabilities in the image's own grid."""
        data, properties = self.preprocess(image, geometry)
        probs = self.predict_preprocessed(data)
        del data
        # the preprocessed-grid copy goes to float16 before export builds the original-grid
        # float32 volume, so a large CT never holds two float32 (K, Z, Y, X) volumes at once
        probs = probs.to(torch.float16)
        return self.export(probs, properties)

    def predict_case(self, image: np.ndarray, geometry: Geometry,
                     return_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Label map ``(Z0, Y0, X0)`` (label values) and, if asked, the probabilities."""
        probs = self.predict_probabilities(image, geometry)
        seg = segmentation_from_probabilities(probs, self.label_values)
        return seg, (probs if return_probabilities else None)

    def predict_folder(self, input_folder: str | os.PathLike, output_folder: str | os.PathLike, **kwargs) -> list[str]:
        """See :func:`predict_folder`."""
        return predict_folder([self], input_folder, output_folder, **kwargs)


# ------------------------------------------------------------------ a folder, one model or an ensemble

def check_ensemble(predictors: Sequence[Predictor]) -> None:
    if not predictors:
        raise UserError("no model to predict with")
    first = predictors[0]
    for p in predictors[1:]:
        if p.label_values != first.label_values:
            raise UserError(f"ensemble members disagree on label values: {first.label_values} vs {p.label_values}")
        if p.num_channels != first.num_channels:
            raise UserError(f"ensemble members disagree on the number of channels: {first.num_channels} vs {p.num_channels}")


def output_name(case: InputCase) -> str:
    return f"{case.case_id}{case.ending}"


def entropy_name(case: InputCase) -> str:
    ending = ".tif" if case.ending.lower() in _EIGHT_BIT_ENDINGS else case.ending
    return f"{case.case_id}_entropy{ending}"


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def write_volumes_csv(path: Path, rows: list[tuple[str, dict[int, float]]], label_values: Sequence[int],
                      label_names: Sequence[str] | None = None) -> None:
    """``case_id`` then one column per foreground label: its volume in mL."""
    fg = [v for v in label_values if v != 0]
    names = dict(zip(label_values, label_names)) if label_names else {}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case_id"] + [f"{names.get(v, 'label')}_{v}_ml" for v in fg])
    for cid, vols in sorted(rows):
        w.writerow([cid] + [f"{vols[v]:.6g}" for v in fg])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def predict_folder(
    predictors: Sequence[Predictor],
    input_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    save_probabilities: bool = False,
    uncertainty: bool = False,
    overwrite: bool = False,
    num_workers: int = 1,
    postprocessing: dict | None = None,
    write_volumes: bool = True,
) -> list[str]:
    """Predict every case of ``input_folder`` into ``output_folder``; returns the case ids predicted.

    Several predictors form an ensemble (probabilities averaged in the original grid).
    ``postprocessing`` is a connected-component spec (autoseg.postprocessing.connected_components).
    Writes ``CASE<ending>``, with ``save_probabilities`` ``CASE_probabilities.npy`` (float16,
    ``(K, Z, Y, X)``) and ``probabilities.json``, with ``uncertainty`` ``CASE_entropy<ending>``,
    and ``volumes.csv`` (mL per case and label) for all cases in the output folder.
    """
    from tqdm import tqdm

    predictors = list(predictors)
    check_ensemble(predictors)
    first = predictors[0]
    label_values = first.label_values
    output_folder = Path(output_folder)
    cases = find_input_cases(input_folder, first.num_channels)
    check_input_cases(cases, first.num_channels)
    if Path(input_folder).resolve() == output_folder.resolve():
        raise UserError("the output folder must differ from the input folder")
    output_folder.mkdir(parents=True, exist_ok=True)
    remove_partials(output_folder)
    if postprocessing:
        from autoseg.postprocessing.connected_components import validate_spec

        try:
            postprocessing = validate_spec(postprocessing)
        except ValueError as e:
            raise UserError(f"postprocessing: {e}") from None
    if save_probabilities:
        write_json(output_folder / "probabilities.json",
                   {"label_values": label_values, "label_names": list(first.plans.label_names)})

    def needed(case: InputCase) -> bool:
        wanted = [output_folder / output_name(case)]
        if save_probabilities:
            wanted.append(output_folder / f"{case.case_id}_probabilities.npy")
        if uncertainty:
            wanted.append(output_folder / entropy_name(case))
        return overwrite or not all(p.is_file() for p in wanted)

    todo = [c for c in cases if needed(c)]
    volumes: dict[str, dict[int, float]] = {}

    def prepare(case: InputCase):
        image, geometry = load_input_case(case)
        prepared = [p.preprocess(image, geometry, case.case_id) for p in predictors]
        return geometry, prepared

    def finish(case: InputCase, geometry: Geometry, results: list[tuple[Predictor, torch.Tensor, dict]]) -> None:
        probs = average_probabilities(p.export(pre_probs, props) for p, pre_probs, props in results)
        seg = segmentation_from_probabilities(probs, label_values)
        if postprocessing:
            from autoseg.postprocessing.connected_components import apply_postprocessing

            seg = apply_postprocessing(seg, postprocessing, label_values)
        if save_probabilities:
            _save_npy(probs.astype(np.float16), output_folder / f"{case.case_id}_probabilities.npy")
        if uncertainty:
            write_prediction(entropy_map(probs), geometry, output_folder / entropy_name(case))
        # the segmentation last: its presence marks the case done
        write_prediction(seg, geometry, output_folder / output_name(case))
        volumes[case.case_id] = label_volumes_ml(seg, geometry.spacing, label_values)

    workers = max(1, int(num_workers))
    with ThreadPoolExecutor(max_workers=workers) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        pending_reads: list[Future] = [reader.submit(prepare, c) for c in todo[:workers]]
        pending_write: Future | None = None
        for i, case in enumerate(tqdm(todo, desc="predict", dynamic_ncols=True, disable=None)):
            geometry, prepared = pending_reads.pop(0).result()
            if i + workers < len(todo):
                pending_reads.append(reader.submit(prepare, todo[i + workers]))
            results = []
            for p, (data, props) in zip(predictors, prepared):
                # float16 while waiting for export: see predict_probabilities
                results.append((p, p.predict_preprocessed(data).to(torch.float16), props))
            del prepared
            if pending_write is not None:
                pending_write.result()  # at most one case waits for export: bounds memory
            pending_write = writer.submit(finish, case, geometry, results)
        if pending_write is not None:
            pending_write.result()

    if write_volumes:
        from autoseg.dataset.imageio import read_label

        rows = []
        for case in cases:
            if case.case_id not in volumes:
                seg_file = output_folder / output_name(case)
                seg, geometry = read_label(seg_file)
                volumes[case.case_id] = label_volumes_ml(seg, geometry.spacing, label_values)
            rows.append((case.case_id, volumes[case.case_id]))
        write_volumes_csv(output_folder / "volumes.csv", rows, label_values, first.plans.label_names)
    return [c.case_id for c in todo]
