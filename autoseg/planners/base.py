"""The planner interface: a fingerprint in, a :class:`~autoseg.planners.plans.Plans` out.

:class:`Planner` holds what every planner shares (the fingerprint, the compute profile,
shapes at a given spacing) and assembles the plans from two decisions that subclasses
make: :meth:`Planner.normalization` and :meth:`Planner.plan_configurations`. To change
one rule of the default planner, subclass :class:`autoseg.planners.default.DefaultPlanner`
and override that one method; see ``documentation/plans.md``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from autoseg.planners.plans import PLANS_VERSION, ChannelNormalization, ConfigurationPlan, Plans

if TYPE_CHECKING:
    from autoseg.fingerprint.fingerprint import Fingerprint

PROFILES = ("gpu", "cpu")


def _gpu_driver_present() -> bool:
    """False when no GPU driver is visible; only then is "no GPU" certain without torch."""
    import os
    import sys

    markers = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
    return os.name != "posix" or sys.platform == "darwin" or any(os.path.exists(m) for m in markers)


def resolve_profile(profile: str) -> str:
    """``"auto"`` becomes ``"gpu"`` when CUDA is available, else ``"cpu"``."""
    from autoseg.errors import UserError

    if profile == "auto":
        if not _gpu_driver_present():
            return "cpu"  # decided without importing torch, which costs 2-3 s of start-up
        import torch  # only here: planning otherwise needs no torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise UserError(f"unknown profile '{profile}'; choose auto, {', '.join(PROFILES)}")
    return profile


class Planner(ABC):
    """Base class of planners. Subclasses implement :meth:`normalization` and
    :meth:`plan_configurations`; :meth:`plan` assembles the plans around them.

    ``name`` (a class attribute) is what ``plans.json`` records as the planner; a class that
    does not set its own records ``module:ClassName`` so the plans say where they came from.
    """

    name: str | None = None

    def __init__(self, fingerprint: "Fingerprint", gpu_memory_gb: float = 8.0, profile: str = "auto") -> None:
        self.fingerprint = fingerprint
        self.gpu_memory_gb = float(gpu_memory_gb)
        self.profile = resolve_profile(profile)

    @property
    def planner_name(self) -> str:
        cls = type(self)
        return cls.__dict__.get("name") or f"{cls.__module__}:{cls.__qualname__}"

    def plan(self) -> Plans:
        fp = self.fingerprint
        return Plans(
            version=PLANS_VERSION,
            dataset_name=fp.dataset_name,
            planner=self.planner_name,
            profile=self.profile,
            gpu_memory_gb=self.gpu_memory_gb,
            channel_names=list(fp.channel_names),
            label_values=list(fp.label_values),
            label_names=list(fp.label_names),
            normalization=self.normalization(),
            configurations=self.plan_configurations(),
            is_2d_dataset=fp.is_2d,
            anisotropy=fp.anisotropy,
        )

    @abstractmethod
    def normalization(self) -> list[ChannelNormalization]:
        """One entry per input channel."""

    @abstractmethod
    def plan_configurations(self) -> dict[str, ConfigurationPlan]:
        """Configurations by name (``2d``, ``3d_fullres``, ...)."""

    # Shapes at a target spacing, shared by all planners.

    def resampled_shapes(self, spacing: list[float]) -> np.ndarray:
        """(num_cases, 3) shapes after cropping and resampling each case to ``spacing``."""
        fp = self.fingerprint
        shapes = fp.shapes_after_crop * fp.spacings / np.asarray(spacing, dtype=float)
        if fp.is_2d:
            shapes[:, 0] = 1  # a 2D dataset's single slice stays a single slice
        return np.maximum(np.round(shapes), 1)

    def median_shape(self, spacing: list[float]) -> list[int]:
        """Median (z, y, x) shape of the cases resampled to ``spacing``."""
        return [int(s) for s in np.median(self.resampled_shapes(spacing), axis=0).round()]

    def dataset_voxels(self, spacing: list[float]) -> float:
        """Voxels of the whole dataset resampled to ``spacing``."""
        return float(np.prod(self.resampled_shapes(spacing), axis=1).sum())
