"""Predict a folder of images: one model or an ensemble, every file written atomically.

Each case runs :mod:`autoseg.inference.predictor`'s steps; the next case is read and
preprocessed in a background thread while the current one is predicted, and exporting and
writing run in the background too. Existing outputs are kept unless ``overwrite``. The
segmentation is written last: its presence marks a case done, so a rerun resumes.

A :class:`Refinement` (Atlas-ISTN's registration, :mod:`autoseg.inference.atlas_refinement`)
may replace the networks' probabilities on the preprocessed grid before they are exported,
and write outputs of its own.
"""
from __future__ import annotations

import csv
import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from autoseg.atomic import atomic_path, remove_partials, save_npy, write_json
from autoseg.dataset.dicom import read_dicom_series
from autoseg.dataset.imageio import Geometry, read_channels, read_label
from autoseg.errors import UserError
from autoseg.inference.case_outputs import CaseOutput
from autoseg.inference.cases import InputCase, check_input_cases, find_input_cases
from autoseg.inference.export import entropy_map, label_volumes_ml, write_prediction
from autoseg.inference.memory_estimate import check_memory
from autoseg.inference.predictor import (CasePrediction, Inferred, Predictor, check_ensemble, finish, infer, prepare,
                                        stream, streams)
from autoseg.postprocessing.ensemble import PROBABILITIES_SUFFIX

# image formats that hold only 8-bit pixels: a float entropy map goes to TIFF instead
_EIGHT_BIT_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg")


class Refinement(Protocol):
    """A step between the networks and the export (one predictor)."""

    def output_names(self, case: InputCase) -> list[str]:
        """The files it writes per case (a case is redone unless all exist)."""

    def refine(self, predictor: Predictor, case: InputCase, inferred: Inferred) -> tuple[Inferred, Any]:
        """The probabilities to export instead, and what :meth:`write` needs."""

    def write(self, predictor: Predictor, case: InputCase, geometry: Geometry, inferred: Inferred, extra: Any,
              output_folder: Path) -> None:
        """Write its own outputs of one case (before the segmentation)."""

    def close(self, output_folder: Path) -> None:
        """After the last case."""


def output_name(case: InputCase) -> str:
    return f"{case.case_id}{case.ending}"


def entropy_name(case: InputCase) -> str:
    ending = ".tif" if case.ending.lower() in _EIGHT_BIT_ENDINGS else case.ending
    return f"{case.case_id}_entropy{ending}"


def write_case_outputs(output_folder: Path, case_id: str, ending: str, prediction: CasePrediction, geometry: Geometry,
                       save_probabilities: bool = False, entropy_file: str | None = None) -> Path:
    """``CASE_probabilities.npy`` (float16, class index order), the entropy map, then ``CASE<ending>``
    (last: it marks the case done); returns the segmentation's path.

    The probabilities file is the one :func:`~autoseg.inference.predictor.finish` wrote class by
    class when given this path, else it is saved from the prediction's in-memory probabilities;
    the entropy map is the prediction's own, else computed from those.
    """
    if save_probabilities:
        target = output_folder / f"{case_id}{PROBABILITIES_SUFFIX}"
        if prediction.probabilities_file is None or Path(prediction.probabilities_file) != target:
            if prediction.probabilities is None:
                raise ValueError(f"{case_id}: no probabilities to save; call finish(..., probabilities={target})")
            save_npy(target, prediction.probabilities.astype(np.float16))
    if entropy_file:
        if prediction.entropy is not None:
            entropy = prediction.entropy
        elif prediction.probabilities is not None:
            entropy = entropy_map(prediction.probabilities)
        else:
            raise ValueError(f"{case_id}: no entropy map; call finish(..., entropy=True)")
        write_prediction(entropy, geometry, output_folder / entropy_file)
    seg_file = output_folder / f"{case_id}{ending}"
    write_prediction(prediction.segmentation, geometry, seg_file)
    return seg_file


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
    refinement: Refinement | None = None,
    outputs: Sequence[CaseOutput] = (),
    dicom_identifiers: str = "series",
) -> list[str]:
    """Predict every case of ``input_folder`` into ``output_folder``; returns the case ids predicted.

    Several predictors form an ensemble (probabilities averaged in the original grid).
    ``postprocessing`` is a connected-component spec (autoseg.postprocessing.connected_components).
    Writes ``CASE<ending>``, with ``save_probabilities`` ``CASE_probabilities.npy`` (float16,
    ``(K, Z, Y, X)``) and ``probabilities.json``, with ``uncertainty`` ``CASE_entropy<ending>``,
    and ``volumes.csv`` (mL per case and label) for all cases in the output folder. ``outputs``
    write more per case (previews, meshes, statistics, DICOM-SEG: :mod:`autoseg.inference.case_outputs`).
    DICOM series are read as one case each (:mod:`autoseg.dataset.dicom`).
    """
    from tqdm import tqdm

    predictors = list(predictors)
    check_ensemble(predictors)
    if refinement is not None and len(predictors) != 1:
        raise UserError("a refinement step predicts with one model, not an ensemble")
    first = predictors[0]
    label_values = first.label_values
    output_folder = Path(output_folder)
    cases = find_input_cases(input_folder, first.num_channels, dicom_identifiers)
    check_input_cases(cases, first.num_channels)
    check_memory(predictors, cases, probabilities=save_probabilities, entropy=uncertainty,
                 scratch_dir=first.scratch_dir)
    outputs = list(outputs)
    for out in outputs:
        out.check(cases)
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
        wanted = [output_name(case)] + (refinement.output_names(case) if refinement is not None else [])
        if save_probabilities:
            wanted.append(f"{case.case_id}{PROBABILITIES_SUFFIX}")
        if uncertainty:
            wanted.append(entropy_name(case))
        for out in outputs:
            wanted += out.output_names(case)
        return overwrite or not all((output_folder / name).is_file() for name in wanted)

    todo = [c for c in cases if needed(c)]
    volumes: dict[str, dict[int, float]] = {}

    keep_image = any(out.needs_image for out in outputs)

    def read_and_prepare(case: InputCase):
        if case.dicom is not None:
            image, geometry = read_dicom_series(case.dicom)
            image = image.astype(np.float32, copy=False)
        else:
            image, geometry = read_channels(case.files)
        return geometry, prepare(predictors, image, geometry, case.case_id), image if keep_image else None

    def probabilities_file(case: InputCase) -> Path | bool:
        return output_folder / f"{case.case_id}{PROBABILITIES_SUFFIX}" if save_probabilities else False

    def export_and_write(case: InputCase, geometry: Geometry, inferred: Inferred | CasePrediction,
                         refined: tuple | None, image: np.ndarray | None) -> None:
        if isinstance(inferred, CasePrediction):  # streamed: exported already
            prediction = inferred
        else:
            if refined is not None:
                refinement.write(first, case, geometry, inferred, refined[1], output_folder)
                inferred = refined[0]
            prediction = finish(predictors, inferred, postprocessing, entropy=uncertainty,
                                probabilities=probabilities_file(case))
        for out in outputs:  # before the label map, which is written last and marks the case done
            out.write(case, image, geometry, prediction, output_folder)
        write_case_outputs(output_folder, case.case_id, case.ending, prediction, geometry, save_probabilities,
                           entropy_name(case) if uncertainty else None)
        volumes[case.case_id] = label_volumes_ml(prediction.segmentation, geometry.spacing, label_values)

    workers = max(1, int(num_workers))
    with ThreadPoolExecutor(max_workers=workers) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        pending_reads: list[Future] = [reader.submit(read_and_prepare, c) for c in todo[:workers]]
        pending_write: Future | None = None
        for i, case in enumerate(tqdm(todo, desc="predict", dynamic_ncols=True, disable=None)):
            geometry, prepared, image = pending_reads.pop(0).result()
            if i + workers < len(todo):
                pending_reads.append(reader.submit(read_and_prepare, todo[i + workers]))
            refined = None
            if refinement is None and streams(predictors, prepared, probabilities_file(case)):
                inferred = stream(first, prepared, postprocessing, entropy=uncertainty)
            else:
                inferred = infer(predictors, prepared)
                refined = refinement.refine(first, case, inferred) if refinement is not None else None
            del prepared
            if pending_write is not None:
                pending_write.result()  # at most one case waits for export: bounds memory
            pending_write = writer.submit(export_and_write, case, geometry, inferred, refined, image)
            del image
        if pending_write is not None:
            pending_write.result()
    if refinement is not None:
        refinement.close(output_folder)
    for out in outputs:
        out.close(output_folder, cases)

    if write_volumes:
        rows = []
        for case in cases:
            if case.case_id not in volumes:
                seg, geometry = read_label(output_folder / output_name(case))
                volumes[case.case_id] = label_volumes_ml(seg, geometry.spacing, label_values)
            rows.append((case.case_id, volumes[case.case_id]))
        write_volumes_csv(output_folder / "volumes.csv", rows, label_values, first.plans.label_names)
    return [c.case_id for c in todo]
