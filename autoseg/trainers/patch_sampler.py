"""Random training patches from preprocessed cases, with foreground oversampling.

Where a patch comes from (case, centre, and for 2D the slice) is drawn first as a
:class:`PatchLocation`, then cut out by :meth:`PatchSampler.crop`: drawing and cutting are
separate so a batch can be recorded and replayed, and so the augmentation can ask for a
larger region around the same centre (rotation and scaling pull voxels from outside the
final patch; cutting them from the volume avoids padded corners).

Regions outside the volume are padded with 0 in both arrays: after normalization 0 is the
mean intensity (a neutral value rather than an artificial edge), and for the label map
everything outside the preprocessed bounding box is background by construction (cropping
removed only background), so 0 is the true class there, not a guess to be ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from autoseg.errors import UserError
from autoseg.preprocessing.preprocessed import PreprocessedFolder


@dataclass(frozen=True)
class PatchLocation:
    """Where one patch comes from: case, centre voxel (z, y, x) and whether foreground was forced.

    For 2D sampling the centre's z is the slice; the patch covers (y, x) around it.
    """

    case_id: str
    center: tuple[int, int, int]
    forced_foreground: bool = False


class PatchSampler:
    """Draws batches of patches of ``patch_size`` from ``preprocessed_dir/<case>.npy``.

    The last ``round(batch_size * oversample_foreground)`` samples of every batch (at least one
    when oversampling is on) are centred, with jitter, on a random voxel of a random
    foreground class listed in the case's ``class_locations``; the rest lie inside the volume
    (where it is larger than the patch), along each axis flush with one of its two ends with
    probability ``edge_flush``, at a uniform position otherwise.

    Why the ends: a uniform position inside the volume covers a voxel at the volume's edge
    with probability 1 / (n - p + 1), under 1% for a 96-voxel patch on a 224-voxel axis
    against ~75% in the middle, while sliding-window inference tiles every edge. Small-patch
    networks trained that way took arms at the edge of ACDC's field of view for hearts
    (documentation/hybrid.md, "Islands"). A flush patch covers an edge without padding a
    voxel, as an inference window there does. ``edge_flush=0`` (the default) draws uniform
    positions only; the plan's configuration sets it (``ConfigurationPlan.edge_flush``).
    """

    def __init__(self, preprocessed_dir: str | Path, case_ids: Sequence[str], patch_size: Sequence[int], dim: int,
                 batch_size: int, oversample_foreground: float = 0.33, seed: int = 0,
                 edge_flush: float = 0.0) -> None:
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if len(patch_size) != dim:
            raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} axes, dim is {dim}")
        if not case_ids:
            raise ValueError("PatchSampler needs at least one case")
        self.preprocessed_dir = Path(preprocessed_dir)
        self.folder = PreprocessedFolder(self.preprocessed_dir)
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dim = dim
        self.batch_size = int(batch_size)
        self.oversample_foreground = float(oversample_foreground)
        if not 0.0 <= edge_flush <= 1.0:
            raise ValueError(f"edge_flush is a probability, got {edge_flush}")
        self.edge_flush = float(edge_flush)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._locations: dict[str, dict[int, np.ndarray]] = {}
        for case in self.case_ids:
            missing = self.folder.missing_files(case)
            if missing:
                raise UserError(f"{missing[0]}: missing; re-run preprocessing for this configuration")

    # Memmaps and parsed locations are per process; a worker process reopens its own.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    @property
    def num_forced(self) -> int:
        if self.oversample_foreground <= 0:
            return 0
        return min(self.batch_size, max(1, round(self.batch_size * self.oversample_foreground)))

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(data (C,Z,Y,X) float32, seg (Z,Y,X) int16) as read-only memmaps, opened once."""
        if case_id not in self._arrays:
            data = self.folder.load_data(case_id, mmap=True)
            seg = self.folder.load_seg(case_id, mmap=True)
            if data.ndim != 4 or seg.shape != data.shape[1:]:
                raise UserError(f"{self.folder.data_file(case_id)}: data shape {data.shape} and seg shape "
                                   f"{seg.shape} do not match the (C,Z,Y,X)/(Z,Y,X) convention")
            self._arrays[case_id] = (data, seg)
        return self._arrays[case_id]

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]:
        if case_id not in self._locations:
            locs = {}
            for cls, points in self.folder.load_properties(case_id).get("class_locations", {}).items():
                if int(cls) > 0 and len(points):
                    locs[int(cls)] = np.asarray(points, dtype=np.int64).reshape(-1, 3)
            self._locations[case_id] = locs
        return self._locations[case_id]

    @property
    def num_channels(self) -> int:
        return int(self.arrays(self.case_ids[0])[0].shape[0])

    def _spatial_shape(self, case_id: str) -> tuple[int, int, int]:
        return tuple(self.arrays(case_id)[1].shape)  # type: ignore[return-value]

    def sample_locations(self, rng: np.random.Generator | None = None) -> list[PatchLocation]:
        """One batch's worth of patch locations (the batch's random parameters)."""
        rng = self.rng if rng is None else rng
        n_forced = self.num_forced
        locations = []
        for b in range(self.batch_size):
            case = self.case_ids[int(rng.integers(len(self.case_ids)))]
            locations.append(self._location(case, rng, force=b >= self.batch_size - n_forced))
        return locations

    def _location(self, case: str, rng: np.random.Generator, force: bool) -> PatchLocation:
        shape = self._spatial_shape(case)
        # the axes the patch spans: all three in 3D, (y, x) in 2D where z is a slice index
        axes = range(3) if self.dim == 3 else range(1, 3)
        locs = self.class_locations(case) if force else {}
        center = [0, 0, 0]
        if locs:
            cls = sorted(locs)[int(rng.integers(len(locs)))]
            voxel = locs[cls][int(rng.integers(len(locs[cls])))]
            if self.dim == 2:
                center[0] = int(voxel[0])
        elif self.dim == 2:
            center[0] = int(rng.integers(shape[0]))
        for p, ax in zip(self.patch_size, axes):
            lo, hi = min(0, shape[ax] - p), max(0, shape[ax] - p)
            if locs:
                # Jitter within a sixth of the patch; the patch stays inside the volume where it
                # can, but may stick out (zero-padded) to keep the voxel at least a quarter patch
                # from its edge, so rotation and scaling about the centre rarely push it out.
                v = int(voxel[ax])
                jitter = int(rng.integers(-(p // 6), p // 6 + 1))
                corner = int(np.clip(v - p // 2 + jitter, min(lo, v - (3 * p) // 4), max(hi, v - p // 4)))
            elif self.edge_flush > 0 and lo == 0 < hi and rng.random() < self.edge_flush:
                # only along an axis longer than the patch; a shorter one is padded (centred) anyway
                corner = lo if rng.random() < 0.5 else hi
            else:
                corner = int(rng.integers(lo, hi + 1))
            center[ax] = corner + p // 2
        return PatchLocation(case, (center[0], center[1], center[2]), bool(locs))

    def crop(self, location: PatchLocation, size: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cut ``size`` (default patch_size) around the location's centre, zero-padded.

        Returns data (C, *size) float32 and seg (1, *size) int16.
        """
        size = self.patch_size if size is None else tuple(int(s) for s in size)
        data, seg = self.arrays(location.case_id)
        z = location.center[0]
        box = [] if self.dim == 3 else [[z, z + 1]]
        for c, s in zip(location.center[3 - self.dim:], size):
            box.append([c - s // 2, c - s // 2 + s])
        d = crop_and_pad_nd(data, box, cast_cropped_to=np.float32)
        g = crop_and_pad_nd(seg, box, cast_cropped_to=np.int16)
        if self.dim == 2:
            d, g = d[:, 0], g[0]
        return d, g[None]

    def sample_batch(self, rng: np.random.Generator | None = None, size: Sequence[int] | None = None,
                     locations: Sequence[PatchLocation] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """data (B, C, *size) float32, seg (B, 1, *size) int16; size defaults to patch_size.

        ``locations`` replays a recorded batch; otherwise they are drawn from ``rng`` (default:
        the sampler's own seeded generator).
        """
        if locations is None:
            locations = self.sample_locations(rng)
        crops = [self.crop(loc, size) for loc in locations]
        return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])


class ContextSlicePatchSampler(PatchSampler):
    """2D patches with ``context_slices`` neighbouring slices stacked as channels (2.5D).

    ``crop`` returns data ``(C * K, *size)`` ordered channel-major (``c0 z-h .. c0 z+h, c1 ...``)
    and the label of the centre slice only. Slices beyond the volume repeat the edge slice:
    a zero slice (the mean intensity) would look like nothing the network sees inside a volume.
    """

    def __init__(self, preprocessed_dir: str | Path, case_ids: Sequence[str], patch_size: Sequence[int],
                 batch_size: int, context_slices: int, oversample_foreground: float = 0.33, seed: int = 0,
                 edge_flush: float = 0.0) -> None:
        if context_slices < 1 or context_slices % 2 == 0:
            raise ValueError(f"context_slices must be odd and >= 1, got {context_slices}")
        super().__init__(preprocessed_dir, case_ids, patch_size, 2, batch_size, oversample_foreground, seed,
                         edge_flush=edge_flush)
        self.context_slices = int(context_slices)

    @property
    def num_channels(self) -> int:
        return super().num_channels * self.context_slices

    def crop(self, location: PatchLocation, size: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        n_slices = self._spatial_shape(location.case_id)[0]
        h = self.context_slices // 2
        z = location.center[0]
        slabs, seg = [], None
        for dz in range(-h, h + 1):
            zz = min(max(z + dz, 0), n_slices - 1)
            d, g = super().crop(PatchLocation(location.case_id, (zz, location.center[1], location.center[2]),
                                              location.forced_foreground), size)
            slabs.append(d)
            if dz == 0:
                seg = g
        data = np.stack(slabs, axis=1)  # (C, K, *size)
        return data.reshape((-1,) + data.shape[2:]), seg
