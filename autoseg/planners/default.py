"""The default planner: nnU-Net's rules, plus a CPU profile sized for a few cores.

Each decision is one method, so a subclass changes one rule (see ``documentation/plans.md``):
:meth:`DefaultPlanner.target_spacing`, :meth:`~DefaultPlanner.normalization`,
:meth:`~DefaultPlanner.resampling`, :meth:`~DefaultPlanner.patch_and_topology`,
:meth:`~DefaultPlanner.batch_size`, :meth:`~DefaultPlanner.cost` / :meth:`~DefaultPlanner.budget`,
:meth:`~DefaultPlanner.mirror_axes`, :meth:`~DefaultPlanner.scale_range`, and one method per configuration.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from autoseg.planners.base import Planner
from autoseg.planners.plans import (
    DEFAULT_SCALE_RANGE,
    ChannelNormalization,
    ConfigurationPlan,
    NetworkTopology,
    ResamplingPlan,
)
from autoseg.planners.topology import (
    HYBRID_FIRST_SKIP_STAGE,
    MIN_SIZE_TO_POOL,
    _stage_voxels,
    activation_memory_bytes,
    fit_patch,
    total_stride,
    training_flops,
    training_memory_bytes,
)

# Spacing ratio (coarsest / finest) above which data counts as anisotropic.
ANISOTROPY_THRESHOLD = 3.0
# One batch covers at most this fraction of the dataset's voxels, so small datasets are not
# trained with batches that are mostly the same images.
MAX_DATASET_FRACTION_PER_BATCH = 0.05
# 3d_lowres is planned when the full-resolution patch covers less than this of the median image.
LOWRES_THRESHOLD = 0.25
LOWRES_SPACING_STEP = 1.05
# CPU profile: FLOPs of one training iteration (forward + backward). A 16-128 feature U-Net,
# batch 4, patch 40x56x40 costs 1.15e11 and runs ~0.3 s/iteration on 2 cores in bf16.
CPU_FLOPS_PER_ITERATION = 1.4e11
RGB_NAMES = {"r", "g", "b", "red", "green", "blue"}
# 3d_hybrid: slices per patch, the thickest window of the network's neighbourhood aggregation
# (autoseg.networks.hybrid_unet.NEIGHBOURHOOD_THICKNESSES), at most the median image's. The
# budget goes to more stacks per batch rather than more slices per stack: on ACDC, batch 8 of
# 5 slices beat batch 4 of all 10 at the same cost (documentation/hybrid.md, "Patch and batch").
HYBRID_PATCH_SLICES = 5
# Mirroring rule: an axis along which one class lies on the same side of another in at least
# this fraction of the cases holding both (and at least MIRROR_MIN_CASES of them) is not mirrored.
MIRROR_SIDE_AGREEMENT = 0.9
MIRROR_MIN_CASES = 10
# Scaling augmentation: a dataset whose objects differ in size by more than nnU-Net's
# DEFAULT_SCALE_RANGE covers (from at least SIZE_MIN_CASES cases) gets a range widened to its
# observed spread, capped at SCALE_RANGE_CAP.
SCALE_RANGE_CAP = (0.5, 2.0)
SIZE_MIN_CASES = 10

if TYPE_CHECKING:
    from autoseg.fingerprint.fingerprint import CaseFingerprint, Fingerprint


def oriented_axes(centroids: list[dict[int, list[float]]], agreement: float = MIRROR_SIDE_AGREEMENT,
                  min_cases: int = MIRROR_MIN_CASES) -> list[int]:
    """Array axes (0-2 of z, y, x) along which the classes keep a consistent order.

    ``centroids``: per case, label value -> centroid (z, y, x). For every pair of classes, the
    sign of the centroid difference along each axis is counted over the cases that hold both;
    an axis where one sign wins in ``agreement`` of at least ``min_cases`` cases is oriented.
    Mirroring such an axis produces label layouts the data never shows (Hippocampus: anterior
    and posterior swap ends; ACDC: the right ventricle moves to the other side of the left),
    which the network must then also learn.
    """
    labels = sorted({v for case in centroids for v in case})
    if len(labels) < 2:
        return []
    position = {v: i for i, v in enumerate(labels)}
    dims = max(len(p) for case in centroids for p in case.values())
    if dims == 0:
        return []
    # (cases, classes, axes), NaN where a case lacks the class: comparisons with NaN are false, so
    # the sums below count only the cases that hold both classes of a pair
    table = np.full((len(centroids), len(labels), dims), np.nan)
    for c, case in enumerate(centroids):
        for v, p in case.items():
            table[c, position[v], :len(p)] = p
    present = (~np.isnan(table[:, :, 0])).astype(np.float64)
    both = present.T @ present
    pair = np.triu(both >= min_cases, k=1)
    oriented = []
    # cases per chunk: a (chunk, K, K) comparison stays near 4 M elements with hundreds of classes
    chunk = max(1, (1 << 22) // (len(labels) ** 2))
    for axis in range(dims):
        positive, negative = np.zeros_like(both), np.zeros_like(both)
        for start in range(0, len(centroids), chunk):
            x = table[start:start + chunk, :, axis]
            positive += (x[:, None, :] > x[:, :, None]).sum(axis=0)  # [a, b]: b after a along the axis
            negative += (x[:, None, :] < x[:, :, None]).sum(axis=0)
        agree = np.maximum(positive, negative) >= agreement * np.maximum(both, 1)
        if np.any(pair & agree):
            oriented.append(axis)
    return oriented


def object_sizes(cases: Sequence[CaseFingerprint], in_plane: bool) -> np.ndarray:
    """Per case, the linear size in mm of its foreground (every label but 0 together).

    ``in_plane``: the square root of the mean foreground area per slice (slices of the cropped
    image), for configurations that scale only in-plane (2D, thick-slice 3D); otherwise the cube
    root of the foreground volume. Cases without foreground are left out.
    """
    sizes = []
    for case in cases:
        voxels = sum(int(n) for label, n in case.class_voxels.items() if int(label) != 0)
        if voxels == 0:
            continue
        z, y, x = case.spacing
        if in_plane:
            sizes.append(math.sqrt(voxels * y * x / max(1, case.shape_after_crop[0])))
        else:
            sizes.append((voxels * z * y * x) ** (1.0 / 3.0))
    return np.asarray(sizes, dtype=float)


def size_scale_range(sizes: np.ndarray, default: tuple[float, float] = DEFAULT_SCALE_RANGE,
                     cap: tuple[float, float] = SCALE_RANGE_CAP,
                     min_cases: int = SIZE_MIN_CASES) -> list[float] | None:
    """Scaling-augmentation range wide enough to turn the median object into the largest and the
    smallest one seen, or None when ``default`` already covers that spread (or too few cases).

    The range is of sampling-grid factors: 0.5 shows an object at twice its size. Measured on
    ACDC, whose nominal spacing hides true voxel sizes of 0.7-1.6 mm: patient057's heart is 2.2x
    the median, and every network trained without such zoom failed on it (documentation/plans.md).
    """
    if len(sizes) < min_cases:
        return None
    median = float(np.median(sizes))
    lo, hi = median / float(sizes.max()), median / float(sizes.min())
    if lo >= default[0] and hi <= default[1]:
        return None
    return [round(max(cap[0], min(default[0], lo)), 3), round(min(cap[1], max(default[1], hi)), 3)]


def hybrid_skip_flops(topology: NetworkTopology, patch: list[int], batch: int) -> float:
    """FLOPs (forward + backward) of the hybrid U-Net's 3D skip modules, on top of its 2D U-Net.

    Per skip voxel of a stage with f features (stages HYBRID_FIRST_SKIP_STAGE and deeper):
    bottleneck residual block 0.5 + 27/4 + 0.5 f^2 MACs, aggregation f*f/4 + 1.5f*2f + 2f*f
    = 5.25 f^2 (it pools a quarter of the channels).
    """
    f = topology.features_per_stage
    voxels = _stage_voxels(topology, patch)
    first = min(HYBRID_FIRST_SKIP_STAGE, topology.n_stages - 1)
    macs = sum(voxels[s] * 13.0 * f[s] * f[s] for s in range(first, topology.n_stages))
    return 2.0 * 3.0 * macs * batch


class DefaultPlanner(Planner):
    """``force_hybrid``: plan ``3d_hybrid`` on any 3D dataset, not only anisotropic ones
    (``plan-and-preprocess --hybrid``)."""

    name = "default"

    def __init__(self, fingerprint: "Fingerprint", gpu_memory_gb: float = 8.0, profile: str = "auto",
                 force_hybrid: bool = False) -> None:
        super().__init__(fingerprint, gpu_memory_gb, profile)
        self.force_hybrid = bool(force_hybrid)

    # --- profile: how big a network and batch this machine affords ---

    def features(self, dim: int) -> tuple[int, int]:
        """(features of the first stage, cap): doubling per stage up to the cap."""
        if self.profile == "cpu":
            return 16, (128 if dim == 3 else 256)
        return 32, (320 if dim == 3 else 512)

    def batch_limits(self, dim: int, hybrid: bool = False) -> tuple[int, int | None]:
        """(smallest batch, the one the patch is sized for; largest batch, None: only memory and
        the dataset-fraction cap limit it). ``hybrid``: for the hybrid U-Net of ``3d_hybrid``."""
        if self.profile == "cpu":
            # the hybrid's convolutions are 2D: it takes the 2D profile's batch (more, thinner
            # stacks per step), the 3D one would give it 4 stacks of twice the slices
            return (4, 4) if dim == 3 and not hybrid else (8, 16)
        return 2, None

    def cost(self, patch: list[int], topology: NetworkTopology, batch: int, hybrid: bool = False) -> float:
        """What the budget limits: GPU memory in bytes, or CPU FLOPs per iteration; ``hybrid``
        adds the hybrid U-Net's 3D skip modules."""
        if self.profile == "cpu":
            flops = training_flops(topology, patch, batch, len(self.fingerprint.channel_names), len(self.fingerprint.label_values))
            if hybrid:
                flops += hybrid_skip_flops(topology, patch, batch)
            return flops
        # the K-channel outputs count too: with a hundred classes they rival the network's activations
        memory = training_memory_bytes(topology, patch, batch, len(self.fingerprint.label_values))
        if hybrid:
            # skip modules keep ~14 activations of f channels per skip voxel (pooled maps, bottlenecks)
            memory += activation_memory_bytes(topology, patch, batch) * 0.5
        return memory

    def budget(self, dim: int) -> float:
        return CPU_FLOPS_PER_ITERATION if self.profile == "cpu" else self.gpu_memory_gb * 1e9

    # --- spacing and intensities ---

    def is_anisotropic(self) -> bool:
        return not self.fingerprint.is_2d and self.fingerprint.anisotropy > ANISOTROPY_THRESHOLD

    def coarse_axis(self) -> int | None:
        """The axis with the coarsest median spacing, on anisotropic data; else None."""
        return int(np.argmax(self.fingerprint.median_spacing)) if self.is_anisotropic() else None

    def target_spacing(self) -> list[float]:
        """Median spacing; on anisotropic data the coarse axis takes the 10th percentile of its
        spacings, so the few finely sliced cases are not thrown away by downsampling."""
        spacing = [float(s) for s in self.fingerprint.median_spacing]
        axis = self.coarse_axis()
        if axis is not None:
            spacing[axis] = float(np.percentile(self.fingerprint.spacings[:, axis], 10))
        return spacing

    def normalization(self) -> list[ChannelNormalization]:
        fp = self.fingerprint
        names = [n.strip().lower() for n in fp.channel_names]
        rgb = len(names) == 3 and (set(names) <= RGB_NAMES or fp.is_2d)
        out = []
        for name, stats in zip(names, fp.intensity):
            if name == "ct":
                # HU mean something: clip to the foreground's range, then one dataset-wide z-score
                out.append(ChannelNormalization("ct", clip_low=stats.percentile_00_5, clip_high=stats.percentile_99_5,
                                                mean=stats.clipped_mean, std=stats.clipped_std))
            elif rgb:
                out.append(ChannelNormalization("rgb"))
            else:
                out.append(ChannelNormalization("zscore"))
        return out

    def resampling(self) -> ResamplingPlan:
        """Cubic images, linear per-label maps; the coarse axis of anisotropic data is
        resampled separately with nearest neighbour, so thick slices are not blended."""
        return ResamplingPlan(image_order=3, label_order=1, separate_axis=self.coarse_axis(), separate_axis_order=0)

    # --- patch, topology, batch ---

    def patch_and_topology(self, spacing: list[float], median_shape: list[int],
                           frozen_axes: tuple[int, ...] = (),
                           keep_axes: tuple[int, ...] = (), hybrid: bool = False) -> tuple[list[int], NetworkTopology]:
        """Largest patch up to the median image shape whose training iteration fits the budget.

        Starts at the median shape (rounded up to divide by the network's stride); while too
        costly, the axis spanning the most millimetres shrinks by one stride step, so a shrunken
        patch tends to a cube in mm and keeps context in every direction (thick-slice axes,
        which span many mm in few voxels, keep their slices longest relative to in-plane).
        ``keep_axes`` never shrink (the 3d_hybrid patch depth).
        """
        dim = len(spacing)
        base, cap = self.features(dim)
        kwargs = dict(base_features=base, max_features=cap, frozen_axes=frozen_axes)
        patch, topology = fit_patch([max(1, int(m)) for m in median_shape], spacing, **kwargs)
        batch = self.batch_limits(dim, hybrid)[0]
        budget = self.budget(dim)
        while self.cost(patch, topology, batch, hybrid) > budget:
            stride = total_stride(topology)
            shrinkable = [a for a in range(dim) if a not in keep_axes and patch[a] - stride[a] >= MIN_SIZE_TO_POOL]
            if not shrinkable:
                break  # as small as a useful patch gets; the batch stays at its minimum
            axis = max(shrinkable, key=lambda a: (patch[a] * spacing[a], patch[a]))
            smaller = list(patch)
            smaller[axis] -= stride[axis]
            new_patch, new_topology = fit_patch(smaller, spacing, **kwargs)
            if math.prod(new_patch) >= math.prod(patch):
                break
            patch, topology = new_patch, new_topology
        return patch, topology

    def batch_size(self, patch: list[int], topology: NetworkTopology, dataset_voxels: float,
                   hybrid: bool = False) -> int:
        """Grow from the profile's smallest batch while the budget allows; growth stops where one
        batch would cover more than 5% of the dataset's voxels (bigger batches of a small dataset
        repeat the same images). Never below the profile's smallest batch (>= 2: instance norm
        and the loss need more than one sample to be stable)."""
        dim = len(patch)
        smallest, largest = self.batch_limits(dim, hybrid)
        batch, budget = smallest, self.budget(dim)
        while (largest is None or batch < largest) and batch < 1024 and self.cost(patch, topology, batch + 1, hybrid) <= budget:
            batch += 1
        data_cap = int(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels / math.prod(patch))
        return max(smallest, min(batch, data_cap))

    # --- augmentation ---

    def mirror_axes(self, dim: int) -> list[int]:
        """Network axes (0..dim-1, over the last ``dim`` array axes) that training may mirror and
        test-time augmentation flips: all but those where the classes lie in a consistent order
        (:func:`oriented_axes`). nnU-Net mirrors every axis; for single-class data, or a
        fingerprint without centroids, so does this rule."""
        oriented = oriented_axes([c.class_centroids for c in self.fingerprint.cases])
        first = 3 - dim
        return [a - first for a in range(first, 3) if a not in oriented]

    def scale_range(self, dim: int, anisotropic: bool) -> list[float] | None:
        """Scaling-augmentation range for the dataset's object sizes (:func:`size_scale_range`),
        measured in-plane where the configuration scales in-plane only (2D, thick-slice 3D); None
        when nnU-Net's default range already covers them."""
        in_plane = dim == 2 or anisotropic
        return size_scale_range(object_sizes(self.fingerprint.cases, in_plane))

    # --- configurations ---

    def data_identifier(self, name: str, spacing: list[float]) -> str:
        return f"{name}_{'x'.join(f'{s:.2f}' for s in spacing)}"

    def make_configuration(self, name: str, dim: int, spacing: list[float], frozen_axes: tuple[int, ...] = (),
                           trainer: str = "unet", architecture: str = "unet", notes: str = "",
                           patch_depth: dict[int, int] | None = None) -> ConfigurationPlan:
        """Plan one configuration at ``spacing`` (z, y, x); a 2D network uses the last two axes.

        ``patch_depth`` {axis: size} fixes the patch along those axes (the budget shrinks the others).
        The budget costs the network ``architecture`` names (the hybrid U-Net's skip modules included)."""
        median = self.median_shape(spacing)
        net_spacing, net_median = spacing[3 - dim:], median[3 - dim:]
        net_median = list(net_median)
        for axis, size in (patch_depth or {}).items():
            net_median[axis] = size
        hybrid = architecture == "hybrid"
        patch, topology = self.patch_and_topology(net_spacing, net_median, frozen_axes, tuple(patch_depth or ()), hybrid)
        batch = self.batch_size(patch, topology, self.dataset_voxels(spacing), hybrid)
        ratio = max(net_spacing) / min(net_spacing)
        anisotropic = bool(dim == 3 and ratio > ANISOTROPY_THRESHOLD)
        return ConfigurationPlan(
            name=name, dim=dim, data_identifier=self.data_identifier(name, spacing),
            spacing=[float(s) for s in spacing], median_shape=median, patch_size=patch, batch_size=batch,
            network=topology, trainer=trainer, architecture=architecture, resampling=self.resampling(),
            anisotropic=anisotropic, notes=notes,
            mirror_axes=self.mirror_axes(dim), scale_range=self.scale_range(dim, anisotropic),
        )

    def configuration_2d(self) -> ConfigurationPlan:
        spacing = self.target_spacing()
        notes = ""
        if not self.fingerprint.is_2d:
            # slices are not resampled across: z is kept at the median slice spacing so the
            # 2d configuration can share the 3d_fullres data and sample slices from it
            spacing[0] = float(self.fingerprint.median_spacing[0])
            notes = ("spacing[0] is the median slice spacing: the 2d network never looks across slices, "
                     "it is trained on single slices of the preprocessed volumes")
        return self.make_configuration("2d", 2, spacing, notes=notes)

    def configuration_3d_fullres(self) -> ConfigurationPlan:
        return self.make_configuration("3d_fullres", 3, self.target_spacing())

    def configuration_3d_lowres(self, fullres: ConfigurationPlan) -> ConfigurationPlan | None:
        """A coarser spacing whose patch covers the median image, when the full-resolution patch
        sees less than a quarter of it; None otherwise. Anisotropic data coarsens its fine axes
        first, until they reach the coarse one."""
        if math.prod(fullres.patch_size) >= LOWRES_THRESHOLD * math.prod(fullres.median_shape):
            return None
        spacing = list(fullres.spacing)
        for _ in range(200):
            coarsest = max(spacing)
            grow = [a for a in range(3) if spacing[a] * LOWRES_SPACING_STEP < coarsest] or [0, 1, 2]
            for a in grow:
                spacing[a] *= LOWRES_SPACING_STEP
            median = self.median_shape(spacing)
            patch, _ = self.patch_and_topology(spacing, median)
            if math.prod(patch) >= math.prod(median):
                break
        config = self.make_configuration("3d_lowres", 3, spacing,
                                         notes="coarser spacing so the patch covers the median image; "
                                               "its predictions feed a cascade or an ensemble")
        return config

    def hybrid_depth(self, median_slices: int) -> int:
        """Patch size across slices: :data:`HYBRID_PATCH_SLICES` (the aggregation's thickest
        window, so the centre slice sees all of it), at most the median image's slices."""
        return max(1, min(median_slices, HYBRID_PATCH_SLICES))

    def configuration_3d_hybrid(self, fullres: ConfigurationPlan) -> ConfigurationPlan | None:
        """On anisotropic data (or any 3D data with ``force_hybrid``): the full-resolution data with an
        in-plane-only topology (no pooling and kernel 1 across the slice axis at every stage); the
        hybrid network mixes information across slices in its 3D skip modules. The patch keeps
        :meth:`hybrid_depth` slices; the budget, costed with the skip modules, shrinks it in-plane.
        Prediction slides the training patch: the skip modules predicted worse on windows deeper
        than the stacks they were trained on (documentation/hybrid.md, "Inference window")."""
        axis = self.coarse_axis()
        if axis is None:
            if not (self.force_hybrid and not self.fingerprint.is_2d):
                return None
            axis = int(np.argmax(self.fingerprint.median_spacing)) if self.fingerprint.anisotropy > 1.0 else 0
        depth = self.hybrid_depth(int(fullres.median_shape[axis]))
        return self.make_configuration(
            "3d_hybrid", 3, list(fullres.spacing), frozen_axes=(axis,), trainer="hybrid", architecture="hybrid",
            notes=f"in-plane topology: axis {axis} is never pooled or convolved; the patch keeps {depth} slices",
            patch_depth={axis: depth})

    def plan_configurations(self) -> dict[str, ConfigurationPlan]:
        configs: dict[str, ConfigurationPlan] = {}
        fullres = None if self.fingerprint.is_2d else self.configuration_3d_fullres()
        configs["2d"] = self.configuration_2d()
        if fullres is not None:
            configs["3d_fullres"] = fullres
            for extra in (self.configuration_3d_lowres(fullres), self.configuration_3d_hybrid(fullres)):
                if extra is not None:
                    configs[extra.name] = extra
        # configurations at the same spacing read the same preprocessed data
        by_spacing: dict[tuple, str] = {}
        for name in ["3d_fullres", "2d", "3d_lowres", "3d_hybrid"]:
            if name in configs:
                key = tuple(round(s, 6) for s in configs[name].spacing)
                configs[name].data_identifier = by_spacing.setdefault(key, configs[name].data_identifier)
        return configs
