"""Training augmentation: transforms that draw their parameters apart from applying them.

Every transform draws its random parameters in ``sample(rng, n)`` and applies them in
``apply(batch, params)``. Splitting the two (as TorchIO does) makes a batch reproducible
from its seed alone, lets a test replay exact parameters, and keeps augmentation free of
the global ``np.random`` state that batchgenerators' transforms draw from inside
``__call__`` (which a background thread would share with everything else). The geometric
work reuses batchgenerators' coordinate helpers; the intensity transforms follow
batchgenerators' / nnU-Net's definitions and probabilities.

A batch is a dict of numpy arrays: ``data`` (B, C, *patch) float32, ``seg`` (B, 1, *patch)
int16. The spatial transform receives, per sample, a region around the patch centre large
enough for that sample's rotation/scaling (``Compose.region_sizes``) and returns the patch;
the rest keep shapes.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from batchgenerators.augmentations.utils import (create_zero_centered_coordinate_mesh, rotate_coords_2d,
                                                 rotate_coords_3d)

from autoseg.planners.plans import DEFAULT_SCALE_RANGE

Batch = dict[str, Any]


class Transform(ABC):
    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        """Per-sample parameters for a batch of ``n`` samples (None: leave that sample alone)."""

    @abstractmethod
    def apply(self, batch: Batch, params: list) -> Batch:
        """The batch with the parameters ``sample`` drew applied."""


class Compose:
    """Transforms in order; ``__call__`` samples then applies, returning the recorded params too."""

    def __init__(self, transforms: Sequence[Transform],
                 deep_supervision_scales: Sequence[Sequence[float]] | None = None) -> None:
        self.transforms = list(transforms)
        self.deep_supervision_scales = None if deep_supervision_scales is None else [list(s) for s in deep_supervision_scales]

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list[list]:
        return [t.sample(rng, n, channels) for t in self.transforms]

    def region_sizes(self, params: list[list], patch_size: Sequence[int], n: int) -> list[tuple[int, ...]]:
        """Per sample, the region the sampler must cut so the spatial transform has real data
        under its whole grid (only rotated/scaled samples need more than the patch)."""
        for t, p in zip(self.transforms, params):
            if isinstance(t, SpatialTransform):
                return [t.region_size(q) for q in p]
        return [tuple(int(s) for s in patch_size)] * n

    def apply(self, batch: Batch, params: list[list]) -> Batch:
        for t, p in zip(self.transforms, params):
            batch = t.apply(batch, p)
        if self.deep_supervision_scales is not None:
            batch["target"] = downsample_seg(batch["seg"], self.deep_supervision_scales)
        return batch

    def __call__(self, batch: Batch, rng: np.random.Generator) -> tuple[Batch, list[list]]:
        params = self.sample(rng, len(batch["data"]), batch["data"].shape[1])
        return self.apply(batch, params), params


def downsample_seg(seg: np.ndarray, scales: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Nearest-neighbour targets for deep supervision, one per scale (full resolution first).

    The factors are integer strides, so nearest neighbour is taking every f-th voxel, the
    same voxels ``F.interpolate(mode="nearest")`` would pick.
    """
    out = []
    for factors in scales:
        sl = (slice(None), slice(None)) + tuple(slice(None, None, int(round(f))) for f in factors)
        out.append(np.ascontiguousarray(seg[sl]))
    return out


class SpatialTransform(Transform):
    """Rotation and scaling about the patch centre, then cut to ``patch_size``.

    Samples left alone (most of them) are centre-cropped without interpolation. Data uses
    cubic interpolation with nearest-edge extension, labels nearest neighbour with 0 outside.
    ``rotation_axes`` lists which of the 3D rotations apply ((0,) = in-plane around z only);
    ``scale_axes`` which patch axes are scaled (default all; thick-slice 3D: (1, 2), since a
    zoom along z would interpolate between slices 10 mm apart).
    """

    def __init__(self, patch_size: Sequence[int], rotation: float, scale: tuple[float, float],
                 p_rotation: float = 0.2, p_scale: float = 0.2, rotation_axes: Sequence[int] = (0, 1, 2),
                 order_data: int = 3, scale_axes: Sequence[int] | None = None) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dim = len(self.patch_size)
        self.rotation = rotation
        self.scale = scale
        self.p_rotation = p_rotation
        self.p_scale = p_scale
        self.rotation_axes = tuple(rotation_axes) if self.dim == 3 else (0,)
        self.scale_axes = tuple(range(self.dim)) if scale_axes is None else tuple(int(a) for a in scale_axes)
        self.order_data = order_data

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        params = []
        for _ in range(n):
            angles = None
            if rng.uniform() < self.p_rotation:
                angles = [float(rng.uniform(-self.rotation, self.rotation)) if a in self.rotation_axes else 0.0
                          for a in range(3 if self.dim == 3 else 1)]
            scale = None
            if rng.uniform() < self.p_scale:
                # half zoom in, half zoom out, as batchgenerators does: an asymmetric range
                # (0.7, 1.4) would otherwise mostly zoom out
                lo, hi = self.scale
                scale = float(rng.uniform(lo, 1.0) if rng.uniform() < 0.5 and lo < 1 else rng.uniform(max(lo, 1.0), hi))
            params.append(None if angles is None and scale is None else {"angles": angles, "scale": scale})
        return params

    def coordinates(self, p: dict) -> np.ndarray:
        """Sampling grid (dim, *patch) in voxel offsets from the patch centre."""
        coords = create_zero_centered_coordinate_mesh(self.patch_size)
        if p["angles"] is not None:
            coords = rotate_coords_3d(coords, *p["angles"]) if self.dim == 3 else rotate_coords_2d(coords, p["angles"][0])
        if p["scale"] is not None:
            for axis in self.scale_axes:
                coords[axis] = coords[axis] * p["scale"]
        return coords

    def region_size(self, p: dict | None) -> tuple[int, ...]:
        """Region around the centre this sample's grid reaches (+ spline support), >= the patch."""
        if p is None:
            return self.patch_size
        reach = np.abs(self.coordinates(p)).reshape(self.dim, -1).max(axis=1)
        return tuple(max(ps, 2 * int(math.ceil(r)) + 6) for ps, r in zip(self.patch_size, reach))

    def apply(self, batch: Batch, params: list) -> Batch:
        """``batch["data"]``/``["seg"]`` may be lists of per-sample regions of different sizes."""
        data, seg = batch["data"], batch["seg"]
        n_ch, n_seg = data[0].shape[0], seg[0].shape[0]
        out_d = np.empty((len(params), n_ch) + self.patch_size, np.float32)
        out_s = np.empty((len(params), n_seg) + self.patch_size, seg[0].dtype)
        for b, p in enumerate(params):
            in_size = data[b].shape[1:]
            # the output's centre sits on the voxel a plain centre crop would put there, so
            # transformed and untransformed samples line up with the sampler's centre
            start = [s // 2 - ps // 2 for s, ps in zip(in_size, self.patch_size)]
            if p is None:
                crop = tuple(slice(a, a + ps) for a, ps in zip(start, self.patch_size))
                out_d[b] = data[b][(slice(None),) + crop]
                out_s[b] = seg[b][(slice(None),) + crop]
                continue
            coords = self.coordinates(p)
            for d in range(self.dim):
                coords[d] += start[d] + (self.patch_size[d] - 1) / 2
            # the cubic prefilter runs over the whole input: give it only the grid's bounding box
            lo = [max(0, int(math.floor(coords[d].min())) - 2) for d in range(self.dim)]
            hi = [min(in_size[d], int(math.ceil(coords[d].max())) + 3) for d in range(self.dim)]
            if any(h <= l for l, h in zip(lo, hi)):
                lo, hi = [0] * self.dim, list(in_size)
            box = tuple(slice(l, h) for l, h in zip(lo, hi))
            for d in range(self.dim):
                coords[d] -= lo[d]
            for c in range(n_ch):
                out_d[b, c] = map_coordinates(data[b][(c,) + box], coords, order=self.order_data, mode="nearest")
            for c in range(n_seg):
                out_s[b, c] = map_coordinates(seg[b][(c,) + box], coords, order=0, mode="constant", cval=0)
        batch["data"], batch["seg"] = out_d, out_s
        return batch


class MirrorTransform(Transform):
    def __init__(self, axes: Sequence[int], p: float = 0.5) -> None:
        self.axes = tuple(axes)
        self.p = p

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        return [[a for a in self.axes if rng.uniform() < self.p] or None for _ in range(n)]

    def apply(self, batch: Batch, params: list) -> Batch:
        for b, axes in enumerate(params):
            if axes:
                flip = tuple(a + 1 for a in axes)  # skip the channel axis of one sample
                batch["data"][b] = np.flip(batch["data"][b], flip)
                batch["seg"][b] = np.flip(batch["seg"][b], flip)
        return batch


class GaussianNoise(Transform):
    def __init__(self, variance: tuple[float, float] = (0.0, 0.1), p: float = 0.1) -> None:
        self.variance, self.p = variance, p

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        # the noise field itself comes from a seed so the parameters stay small to record
        return [{"std": math.sqrt(rng.uniform(*self.variance)), "seed": int(rng.integers(2**31))}
                if rng.uniform() < self.p else None for _ in range(n)]

    def apply(self, batch: Batch, params: list) -> Batch:
        for b, p in enumerate(params):
            if p is not None:
                x = batch["data"][b]
                x += np.random.default_rng(p["seed"]).standard_normal(x.shape, dtype=np.float32) * np.float32(p["std"])
        return batch


def _per_channel(rng: np.random.Generator, n: int, channels: int, p: float, p_per_channel: float,
                 bounds: tuple[float, float]) -> list[dict[int, float] | None]:
    """Per sample, with probability ``p``, a value in ``bounds`` for each channel drawn with
    probability ``p_per_channel`` (None: the sample is left alone)."""
    out = []
    for _ in range(n):
        if rng.uniform() < p:
            values = {c: float(rng.uniform(*bounds)) for c in range(channels) if rng.uniform() < p_per_channel}
            out.append(values or None)
        else:
            out.append(None)
    return out


class GaussianBlur(Transform):
    def __init__(self, sigma: tuple[float, float] = (0.5, 1.0), p: float = 0.2, p_per_channel: float = 0.5) -> None:
        self.sigma, self.p, self.p_per_channel = sigma, p, p_per_channel

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        return _per_channel(rng, n, channels, self.p, self.p_per_channel, self.sigma)

    def apply(self, batch: Batch, params: list) -> Batch:
        for b, p in enumerate(params):
            for c, s in (p or {}).items():
                batch["data"][b, c] = gaussian_filter(batch["data"][b, c], s, order=0, mode="nearest")
        return batch


class BrightnessMultiplicative(Transform):
    def __init__(self, multiplier: tuple[float, float] = (0.75, 1.25), p: float = 0.15) -> None:
        self.multiplier, self.p = multiplier, p

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        return [[float(rng.uniform(*self.multiplier)) for _ in range(channels)] if rng.uniform() < self.p else None
                for _ in range(n)]

    def apply(self, batch: Batch, params: list) -> Batch:
        for b, p in enumerate(params):
            if p is not None:
                batch["data"][b] *= np.asarray(p, np.float32).reshape((-1,) + (1,) * (batch["data"].ndim - 2))
        return batch


class Contrast(Transform):
    """Scale around the mean, clipped back to the sample's original range (preserve_range)."""

    def __init__(self, factor: tuple[float, float] = (0.75, 1.25), p: float = 0.15) -> None:
        self.factor, self.p = factor, p

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        return _two_sided_per_channel(rng, n, channels, self.p, self.factor)

    def apply(self, batch: Batch, params: list) -> Batch:
        for b, p in enumerate(params):
            for c, f in enumerate(p or []):
                x = batch["data"][b, c]
                lo, hi, mean = x.min(), x.max(), x.mean()
                np.clip((x - mean) * np.float32(f) + mean, lo, hi, out=x)
        return batch


class SimulateLowResolution(Transform):
    """Downsample linearly by a random zoom, upsample back with nearest neighbour, per channel.

    Axes in ``ignore_axes`` (the coarse z axis of anisotropic data) keep their resolution.
    """

    def __init__(self, zoom: tuple[float, float] = (0.5, 1.0), p: float = 0.25, p_per_channel: float = 0.5,
                 ignore_axes: Sequence[int] = ()) -> None:
        self.zoom, self.p, self.p_per_channel, self.ignore_axes = zoom, p, p_per_channel, tuple(ignore_axes)

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        return _per_channel(rng, n, channels, self.p, self.p_per_channel, self.zoom)

    def apply(self, batch: Batch, params: list) -> Batch:
        import torch
        import torch.nn.functional as F

        for b, p in enumerate(params):
            for c, z in (p or {}).items():
                x = batch["data"][b, c]
                small = [s if a in self.ignore_axes else max(1, round(s * z)) for a, s in enumerate(x.shape)]
                t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
                mode = "bilinear" if x.ndim == 2 else "trilinear"
                t = F.interpolate(t, size=small, mode=mode, align_corners=False)
                t = F.interpolate(t, size=list(x.shape), mode="nearest")
                batch["data"][b, c] = t[0, 0].numpy()
        return batch


class Gamma(Transform):
    """x -> x^gamma on the sample rescaled to [0, 1], keeping its mean and std (retain_stats).

    ``invert`` applies it to the negated image, brightening dark structures instead.
    """

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 0.3, invert: bool = False) -> None:
        self.gamma, self.p, self.invert = gamma, p, invert

    def sample(self, rng: np.random.Generator, n: int, channels: int) -> list:
        return _two_sided_per_channel(rng, n, channels, self.p, self.gamma)

    def apply(self, batch: Batch, params: list) -> Batch:
        for b, p in enumerate(params):
            for c, g in enumerate(p or []):
                x = batch["data"][b, c]
                if self.invert:
                    x *= -1
                mean, std = x.mean(), x.std()
                lo, rng_ = x.min(), x.max() - x.min()
                y = np.power((x - lo) / (rng_ + 1e-7), np.float32(g)) * rng_ + lo
                y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
                if self.invert:
                    y *= -1
                batch["data"][b, c] = y
        return batch


def _two_sided(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """Half the draws below 1, half above, when the range straddles 1 (batchgenerators' rule)."""
    lo, hi = bounds
    if lo < 1 < hi and rng.uniform() < 0.5:
        return float(rng.uniform(lo, 1.0))
    return float(rng.uniform(max(lo, 1.0), hi)) if lo < 1 < hi else float(rng.uniform(lo, hi))


def _two_sided_per_channel(rng: np.random.Generator, n: int, channels: int, p: float,
                           bounds: tuple[float, float]) -> list[list[float] | None]:
    """Per sample, with probability ``p``, one :func:`_two_sided` factor per channel."""
    return [[_two_sided(rng, bounds) for _ in range(channels)] if rng.uniform() < p else None for _ in range(n)]


AUGMENTATION_STRENGTHS = ("full", "light")


def build_train_transforms(patch_size: Sequence[int], dim: int, anisotropic: bool,
                           deep_supervision_scales: Sequence[Sequence[float]] | None,
                           strength: str = "full", mirror_axes: Sequence[int] | None = None,
                           max_rotation: float | None = None,
                           scale: Sequence[float] | None = None) -> Compose:
    """``full``: nnU-Net's default augmentation (probabilities per sample), elastic deformation off.

    2D and anisotropic 3D rotate in-plane by up to 180 degrees; isotropic 3D by up to 30
    degrees around each axis (``max_rotation``, radians, overrides both). Anisotropic data never
    resamples along its coarse z axis.

    ``light``: mirroring and cheap intensity changes only, no rotation. Strong spatial
    augmentation is a regulariser that pays off over hundreds of thousands of iterations;
    a CPU budget of a few thousand is still under-fitting, and the spatial transform's
    interpolation takes loader time from the network (documentation/training.md). The one
    exception is ``scale``: given (the plan's ``scale_range``, set for datasets whose object
    sizes spread wider than nnU-Net's default range), light augmentation zooms too, since that
    is not regularisation but coverage of sizes the training cases barely show.

    ``scale``: the scaling range (sampling-grid factors); None: nnU-Net's (0.7, 1.4) in ``full``,
    no scaling in ``light``. 2D and thick-slice 3D scale in-plane only.

    ``mirror_axes`` (patch axes) limits the mirroring of either: None mirrors every axis, ``()``
    none (the plan's ``mirror_axes``: axes along which the classes keep their order are left
    alone; Atlas-ISTN: a mirrored case would swap the atlas's left and right, which no affine undoes).
    """
    if len(patch_size) != dim:
        raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} axes, dim is {dim}")
    if strength not in AUGMENTATION_STRENGTHS:
        raise ValueError(f"augmentation strength '{strength}': choose one of {AUGMENTATION_STRENGTHS}")
    axes = tuple(range(dim)) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    if any(not 0 <= a < dim for a in axes):
        raise ValueError(f"mirror_axes {list(axes)} are not axes of a {dim}D patch")
    mirroring: list[Transform] = [MirrorTransform(axes=axes)] if axes else []
    in_plane = dim == 2 or anisotropic
    scale_axes = (1, 2) if dim == 3 and anisotropic else None
    if strength == "light":
        zoom: list[Transform] = [] if scale is None else [
            SpatialTransform(patch_size, rotation=0.0, scale=(float(scale[0]), float(scale[1])), p_rotation=0.0,
                             scale_axes=scale_axes)]
        return Compose([
            *zoom,
            GaussianNoise(),
            BrightnessMultiplicative(),
            Contrast(),
            Gamma(p=0.3),
            *mirroring,
        ], deep_supervision_scales=deep_supervision_scales)
    if max_rotation is None:
        max_rotation = math.pi if in_plane else math.radians(30)
    lo, hi = DEFAULT_SCALE_RANGE if scale is None else scale
    spatial = SpatialTransform(patch_size, rotation=max_rotation, scale=(float(lo), float(hi)),
                               rotation_axes=(0,) if in_plane else (0, 1, 2), scale_axes=scale_axes)
    transforms: list[Transform] = [
        spatial,
        GaussianNoise(),
        GaussianBlur(),
        BrightnessMultiplicative(),
        Contrast(),
        SimulateLowResolution(ignore_axes=(0,) if anisotropic and dim == 3 else ()),
        Gamma(invert=True, p=0.1),
        Gamma(p=0.3),
        *mirroring,
    ]
    return Compose(transforms, deep_supervision_scales=deep_supervision_scales)


def build_val_transforms(deep_supervision_scales: Sequence[Sequence[float]] | None) -> Compose:
    """No augmentation; only the deep-supervision targets."""
    return Compose([], deep_supervision_scales=deep_supervision_scales)
