"""What ``autoseg predict`` writes per case besides the label map: previews, surface meshes,
per-structure statistics, DICOM-SEG.

Each is a :class:`CaseOutput` that :func:`autoseg.inference.folder.predict_folder` runs for every
predicted case after the prediction and before the label map, which is written last because its
presence marks the case done. A case is redone when any of its outputs' files is missing, so a
rerun that asks for a new output fills it in for cases predicted earlier.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from autoseg.atomic import read_json, write_json
from autoseg.dataset.imageio import Geometry
from autoseg.errors import UserError
from autoseg.inference.cases import InputCase

if TYPE_CHECKING:
    from autoseg.inference.predictor import CasePrediction
    from autoseg.planners.plans import Plans


class CaseOutput(Protocol):
    """One extra output of every predicted case."""

    needs_image: bool  # whether write() gets the case's image (kept in memory until then)

    def check(self, cases: Sequence[InputCase]) -> None:
        """Before any work: refuse cases this output cannot be made for."""

    def output_names(self, case: InputCase) -> list[str]:
        """Files (relative to the output folder) that exist once this output of ``case`` is written."""

    def write(self, case: InputCase, image: np.ndarray | None, geometry: Geometry, prediction: "CasePrediction",
              output_folder: Path) -> None:
        """Write this output of one case (atomically)."""

    def close(self, output_folder: Path, cases: Sequence[InputCase]) -> None:
        """After the last case (``cases``: every case of the input folder, predicted now or before)."""


class _NoCheck:
    def check(self, cases: Sequence[InputCase]) -> None:
        pass

    def close(self, output_folder: Path, cases: Sequence[InputCase]) -> None:
        pass


@dataclass
class PreviewOutput(_NoCheck):
    """``previews/CASE.png``: three orthogonal slices with the labels drawn over the image."""

    plans: "Plans"
    needs_image: bool = True

    def output_names(self, case: InputCase) -> list[str]:
        return [f"previews/{case.case_id}.png"]

    def write(self, case, image, geometry, prediction, output_folder) -> None:
        from autoseg.evaluation.preview import modality_of_plans, preview_channels, preview_png

        preview_png(preview_channels(image, geometry), prediction.segmentation, geometry, self.plans.label_values,
                    self.plans.label_names, output_folder / self.output_names(case)[0], title=case.case_id,
                    modality=modality_of_plans(self.plans))


@dataclass
class MeshOutput(_NoCheck):
    """``meshes/CASE_<value>_<name>.<fmt>`` per label present and ``meshes/CASE_meshes.json``."""

    plans: "Plans"
    fmt: str = "stl"
    smooth_mm: float = 0.0
    decimate: float = 0.0
    needs_image: bool = False

    def __post_init__(self) -> None:
        from autoseg.inference.meshes import check_mesh_options

        check_mesh_options(self.fmt, self.smooth_mm, self.decimate)
        if self.plans.is_2d_dataset:
            raise UserError("--meshes: surface meshes are 3D only; this model predicts 2D images")

    def output_names(self, case: InputCase) -> list[str]:
        from autoseg.inference.meshes import mesh_index_name

        return [f"meshes/{mesh_index_name(case.case_id)}"]

    def write(self, case, image, geometry, prediction, output_folder) -> None:
        from autoseg.inference.meshes import write_case_meshes

        write_case_meshes(output_folder / "meshes", case.case_id, prediction.segmentation, geometry,
                          self.plans.label_values, self.plans.label_names, self.fmt, self.smooth_mm, self.decimate)


@dataclass
class StructureStatsOutput(_NoCheck):
    """Per-structure statistics: ``structures/CASE.json`` per case, gathered at the end into
    ``structures.csv`` and ``structures.json`` beside ``volumes.csv`` (every case of the folder)."""

    plans: "Plans"
    needs_image: bool = True

    def output_names(self, case: InputCase) -> list[str]:
        return [f"structures/{case.case_id}.json"]

    def write(self, case, image, geometry, prediction, output_folder) -> None:
        from autoseg.evaluation.structure_stats import structure_statistics

        rows = structure_statistics(case.case_id, prediction.segmentation, geometry, image,
                                    self.plans.label_values, self.plans.label_names)
        write_json(output_folder / self.output_names(case)[0], [r.to_dict() for r in rows])

    def close(self, output_folder: Path, cases: Sequence[InputCase]) -> None:
        from autoseg.evaluation.structure_stats import StructureStats, write_structure_statistics

        rows = []
        for case in cases:
            per_case = output_folder / self.output_names(case)[0]
            if per_case.is_file():
                rows += [StructureStats.from_dict(r) for r in read_json(per_case)]
        write_structure_statistics(output_folder, rows)


@dataclass
class DicomSegOutput:
    """``CASE.seg.dcm``: a DICOM Segmentation referencing the case's source series."""

    plans: "Plans"
    model_name: str = "autoseg"
    needs_image: bool = False

    def check(self, cases: Sequence[InputCase]) -> None:
        from autoseg.inference.dicom_seg import require_highdicom

        require_highdicom()
        not_dicom = [c for c in cases if c.dicom is None]
        if not_dicom:
            raise UserError(f"--output-format dicom-seg needs DICOM input (a DICOM-SEG references its source "
                            f"series); {not_dicom[0].files[0]} is not DICOM")

    def output_names(self, case: InputCase) -> list[str]:
        from autoseg.inference.dicom_seg import dicom_seg_name

        return [dicom_seg_name(case.case_id)]

    def write(self, case, image, geometry, prediction, output_folder) -> None:
        from autoseg.inference.dicom_seg import write_dicom_seg

        write_dicom_seg(prediction.segmentation, case.dicom, self.plans.label_values, self.plans.label_names,
                        output_folder / self.output_names(case)[0], model_name=self.model_name)

    def close(self, output_folder: Path, cases: Sequence[InputCase]) -> None:
        pass
