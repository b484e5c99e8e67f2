"""A dataset's fingerprint: the statistics planning needs, computed once by reading every case.

Per case: spacing, shape before and after cropping to the nonzero region, voxels,
connected components and centroid per label value. Per channel: intensity statistics of foreground
voxels (label > 0), sampled with a fixed seed so the same dataset gives the same file.
Per dataset: medians and the anisotropy. Saved as plain JSON (``fingerprint.json``);
the schema is documented in ``documentation/fingerprint.md``.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask
from scipy import ndimage

from autoseg.atomic import read_json, write_json
from autoseg.dataset.imageio import ImageReadError, read_channels, read_label
from autoseg.dataset.layout import Case, DatasetSpec
from autoseg.errors import DatasetError, Problem
# One definition of "the nonzero region" for the fingerprint and preprocessing, so the
# planned shapes are the shapes preprocessing will produce.

FINGERPRINT_VERSION = 1
SAMPLES_PER_CASE = 10_000
PERCENTILES = (0.5, 50.0, 99.5)


@dataclass
class CaseFingerprint:
    case_id: str
    spacing: list[float]  # (z, y, x) mm
    shape: list[int]  # (z, y, x) as stored
    shape_after_crop: list[int]  # (z, y, x) inside the nonzero bounding box
    crop_bbox: list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open
    class_voxels: dict[int, int]  # label value -> voxel count (every value present, 0 included)
    class_components: dict[int, int]  # label value -> connected components (26/8-connected), foreground only
    # label value -> centroid (z, y, x) in array voxels, foreground only: which side of which
    # class lies (the planner's mirroring rule). Empty in fingerprints written before it existed.
    class_centroids: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class ChannelIntensity:
    """Foreground intensities of one channel, pooled over the sampled voxels of all cases."""

    name: str
    num_samples: int
    mean: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_50_0: float
    percentile_99_5: float
    # mean/std after clipping to [percentile_00_5, percentile_99_5]: what CT normalization uses
    clipped_mean: float
    clipped_std: float
    # True when no case had foreground and the statistics come from all voxels instead
    from_all_voxels: bool = False


@dataclass
class Fingerprint:
    version: int
    dataset_name: str
    channel_names: list[str]
    label_values: list[int]
    label_names: list[str]
    is_2d: bool
    num_cases: int
    median_spacing: list[float]  # (z, y, x)
    median_shape_after_crop: list[int]  # (z, y, x), in each case's own voxels
    anisotropy: float  # max / min of median_spacing
    intensity: list[ChannelIntensity]
    cases: list[CaseFingerprint]
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        if d.get("version") != FINGERPRINT_VERSION:
            raise ValueError(f"fingerprint version {d.get('version')} is not supported (expected {FINGERPRINT_VERSION}); "
                             "re-run plan-and-preprocess")
        fields = dict(d)
        fields["intensity"] = [ChannelIntensity(**c) for c in d["intensity"]]
        cases = []
        for c in d["cases"]:
            c = dict(c)
            # JSON object keys are strings; label values are integers in code
            c["class_voxels"] = {int(k): int(v) for k, v in c["class_voxels"].items()}
            c["class_components"] = {int(k): int(v) for k, v in c["class_components"].items()}
            c["class_centroids"] = {int(k): [float(x) for x in v] for k, v in c.get("class_centroids", {}).items()}
            cases.append(CaseFingerprint(**c))
        fields["cases"] = cases
        return cls(**fields)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Fingerprint":
        return cls.from_dict(read_json(path))

    @property
    def spacings(self) -> np.ndarray:
        """(num_cases, 3) array of per-case spacings."""
        return np.array([c.spacing for c in self.cases], dtype=float)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        return np.array([c.shape_after_crop for c in self.cases], dtype=float)


class _CaseProblem(Exception):
    """A case cannot be fingerprinted; carries the :class:`Problem` to report."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """Half-open box ``[[z0, z1], [y0, y1], [x0, x1]]`` of the voxels where any channel of ``image``
    ``(C, Z, Y, X)`` is nonzero: what preprocessing crops to, so the fingerprint measures it.

    An image with no nonzero voxel keeps its full extent (cropping it to nothing would leave
    nothing to predict on).
    """
    if image.ndim != 4:
        raise ValueError(f"expected (C, Z, Y, X), got shape {image.shape}")
    return [[int(lo), int(hi)] for lo, hi in get_bbox_from_mask(np.any(image != 0, axis=0))]


def read_case(case: Case) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Image ``(C, Z, Y, X)`` (one file per channel, or one multi-channel file), label, spacing."""
    image, geometry = read_channels(case.image_files)
    label = read_label(case.label_file)[0] if case.label_file is not None else None
    return image, label, geometry.spacing


def _case_fingerprint(case: Case, index: int, seed: int) -> tuple[CaseFingerprint, np.ndarray, np.ndarray]:
    """One case's fingerprint plus its sampled foreground intensities ``(C, n)`` and a small
    sample of all voxels (the fallback when a dataset has no foreground anywhere)."""
    image, label, spacing = read_case(case)
    if label is not None and label.shape != image.shape[1:]:
        raise _CaseProblem(Problem(f"label shape {list(label.shape)} differs from image shape {list(image.shape[1:])}",
                                   case.case_id, str(case.label_file)))
    bbox = nonzero_bbox(image)
    class_voxels: dict[int, int] = {}
    class_components: dict[int, int] = {}
    class_centroids: dict[int, list[float]] = {}
    # a seed per case (not per worker) so the samples do not depend on num_workers
    rng = np.random.default_rng([seed, index])
    fg_samples = np.zeros((image.shape[0], 0), np.float32)
    if label is not None:
        if label.dtype.kind in "ui" and label.size and label.min() >= 0:
            counts = np.bincount(label.ravel())  # far faster than np.unique's sort
            values = np.flatnonzero(counts)
            counts = counts[values]
        else:
            values, counts = np.unique(label, return_counts=True)
        class_voxels = {int(v): int(n) for v, n in zip(values, counts)}
        # 2D images (Z == 1) are labelled 8-connected in-plane, volumes 26-connected
        structure = np.ones((3, 3, 3), bool) if label.shape[0] > 1 else np.pad(np.ones((1, 3, 3), bool), ((1, 1), (0, 0), (0, 0)))
        foreground_values = [int(v) for v in values if v != 0]
        for v in foreground_values:
            class_components[v] = int(ndimage.label(label == v, structure=structure)[1])
        if foreground_values:
            centroids = ndimage.center_of_mass(np.ones(label.shape, np.uint8), label, foreground_values)
            class_centroids = {v: [round(float(x), 2) for x in c] for v, c in zip(foreground_values, centroids)}
        fg = np.flatnonzero(label.ravel() > 0)
        if fg.size:
            pick = rng.choice(fg, size=min(SAMPLES_PER_CASE, fg.size), replace=False)
            fg_samples = image.reshape(image.shape[0], -1)[:, pick].astype(np.float32)
    flat = image.reshape(image.shape[0], -1)
    all_samples = flat[:, rng.integers(0, flat.shape[1], size=min(1000, flat.shape[1]))].astype(np.float32)
    fp = CaseFingerprint(
        case_id=case.case_id,
        spacing=[float(s) for s in spacing],
        shape=[int(s) for s in image.shape[1:]],
        shape_after_crop=[hi - lo for lo, hi in bbox],
        crop_bbox=bbox,
        class_voxels=class_voxels,
        class_components=class_components,
        class_centroids=class_centroids,
    )
    return fp, fg_samples, all_samples


def _case_job(args: tuple[Case, int, int]):
    """A case's result, or the :class:`Problem` that stopped it (exceptions with custom
    constructors do not survive the trip back from a worker process, a Problem does)."""
    case = args[0]
    try:
        return _case_fingerprint(*args)
    except _CaseProblem as e:
        return e.problem
    except ImageReadError as e:
        return Problem(str(e), case.case_id)


def _init_worker() -> None:
    # each worker reads one small file at a time; ITK's own threads would only compete
    import SimpleITK as sitk
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)


def channel_intensity(name: str, samples: np.ndarray, from_all_voxels: bool = False) -> ChannelIntensity:
    """Statistics of one channel's pooled samples (1D)."""
    samples = samples.astype(np.float64)
    if samples.size == 0:
        raise ValueError(f"channel {name}: no voxels to compute intensity statistics from")
    p_low, p50, p_high = np.percentile(samples, PERCENTILES)
    clipped = np.clip(samples, p_low, p_high)
    return ChannelIntensity(
        name=name, num_samples=int(samples.size), mean=float(samples.mean()), std=float(samples.std()),
        min=float(samples.min()), max=float(samples.max()), percentile_00_5=float(p_low),
        percentile_50_0=float(p50), percentile_99_5=float(p_high), clipped_mean=float(clipped.mean()),
        clipped_std=float(clipped.std()), from_all_voxels=from_all_voxels,
    )


def compute_fingerprint(spec: DatasetSpec, num_workers: int = 1, seed: int = 0) -> Fingerprint:
    """Read every case once and summarise the dataset; parallel across cases if ``num_workers > 1``."""
    from tqdm import tqdm

    if not spec.cases:
        raise DatasetError([Problem("dataset has no training cases", None, "dataset.json")], spec.root)
    jobs = [(case, i, seed) for i, case in enumerate(spec.cases)]
    progress = dict(total=len(jobs), desc="fingerprint", unit="case", leave=False)
    if num_workers > 1 and len(jobs) > 1:
        # fork: workers inherit the imported modules, so starting them costs milliseconds
        ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=ctx, initializer=_init_worker) as pool:
            chunk = max(1, len(jobs) // (num_workers * 8))
            results = list(tqdm(pool.map(_case_job, jobs, chunksize=chunk), **progress))
    else:
        results = [_case_job(j) for j in tqdm(jobs, **progress)]

    problems = [r for r in results if isinstance(r, Problem)]
    if problems:
        raise DatasetError(problems, spec.root)
    cases = [r[0] for r in results]
    channel_names = spec.channel_names or [f"channel_{i}" for i in range(results[0][1].shape[0])]
    wrong = [Problem(f"image has {r[1].shape[0]} channel(s) but dataset.json declares {len(channel_names)}", r[0].case_id)
             for r in results if r[1].shape[0] != len(channel_names)]
    if wrong:
        raise DatasetError(wrong, spec.root)
    fg = np.concatenate([r[1] for r in results], axis=1)
    use_all = fg.shape[1] == 0
    pooled = np.concatenate([r[2] for r in results], axis=1) if use_all else fg
    intensity = [channel_intensity(name, pooled[c], use_all) for c, name in enumerate(channel_names)]

    spacings = np.array([c.spacing for c in cases], dtype=float)
    shapes = np.array([c.shape_after_crop for c in cases], dtype=float)
    median_spacing = np.median(spacings, axis=0)
    # a 2D dataset's z "spacing" is a placeholder, not an axis: anisotropy is in-plane only
    in_plane = median_spacing[1:] if spec.is_2d else median_spacing
    return Fingerprint(
        version=FINGERPRINT_VERSION,
        dataset_name=spec.name,
        channel_names=list(channel_names),
        label_values=spec.label_values,
        label_names=[spec.labels[v] for v in spec.label_values],
        is_2d=bool(spec.is_2d),
        num_cases=len(cases),
        median_spacing=[float(s) for s in median_spacing],
        median_shape_after_crop=[int(round(s)) for s in np.median(shapes, axis=0)],
        anisotropy=float(in_plane.max() / in_plane.min()),
        intensity=intensity,
        cases=cases,
        seed=seed,
    )
