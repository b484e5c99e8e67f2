"""A seeded synthetic whole-body CT: int16 HU, 100+ disjoint labelled structures, MSD datasets of it.

    python benchmarks/ct_phantom.py --out /tmp/LargeCT --cases 10 --shape 300 512 512

Other benchmarks import it (``sys.path`` insert of the benchmarks folder)::

    image, label = ct_phantom.make_phantom(shape=(600, 512, 512), spacing=(1.5, 0.8, 0.8), num_labels=104, seed=0)
    ct_phantom.write_case(image, label, (1.5, 0.8, 0.8), "ct.nii.gz", "ct_label.nii.gz")
    ct_phantom.write_dataset("/tmp/LargeCT", 10, (300, 512, 512), (1.5, 0.8, 0.8), 104, seed=0)

The anatomy is laid out in fractions of the array (z from the neck at 0 to the thighs at 1; y and
x from -1 to 1, y anterior to posterior, x patient right to left), so every structure scales with
the shape and most of them are still present at a few dozen voxels a side. Each structure is
evaluated only inside its own bounding box, in float32: a 600x512x512 case costs the image, the
label map and a few box-sized temporaries, and takes seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

AIR_HU = -1000
FAT_HU = -95
SOFT_TISSUE_HU = 25
NOISE_HU = 12.0
HU_MIN, HU_MAX = -1024, 3071
SLAB = 8  # slices per noise slab: bounded float32 temporaries


@dataclass(frozen=True)
class Structure:
    """One label: a shape in array fractions and its intensity.

    ``kind``: ``ellipsoid`` (center, radii), ``tube`` (along z from ``center`` to ``end``,
    radii ``(rz unused, ry, rx)``, z from ``center[0]`` to ``end[0]``), ``shell`` (ellipsoid
    between ``inner`` and 1 of its radius), ``rib`` (an arc of the thorax ellipse, see ``_rib``).
    ``hu`` is the inside; ``rim_hu`` the outer 30% of the radius (bone cortex), or None.
    ``layer``: painting order, higher paints over lower, so the labels stay disjoint.
    """

    name: str
    kind: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: int
    rim_hu: int | None = None
    layer: int = 0
    end: tuple[float, float, float] | None = None
    inner: float = 0.0
    side: int = 0


def _pairs(name: str, kind: str, center, radii, hu: int, layer: int, end=None, **kw) -> list[Structure]:
    """Right (x < 0) and left (x > 0) copies; ``center`` and ``end`` are given for the right one."""
    out = []
    for side, mirror in (("right", 1.0), ("left", -1.0)):
        c = (center[0], center[1], center[2] * mirror)
        e = None if end is None else (end[0], end[1], end[2] * mirror)
        out.append(Structure(f"{name}_{side}", kind, c, radii, hu, layer=layer, end=e, **kw))
    return out


def _organs() -> list[Structure]:
    e, t = "ellipsoid", "tube"
    s = [
        Structure("spleen", e, (0.40, 0.25, 0.55), (0.05, 0.12, 0.10), 45, layer=1),
        Structure("kidney_right", e, (0.47, 0.28, -0.33), (0.05, 0.08, 0.07), 33, layer=1),
        Structure("kidney_left", e, (0.46, 0.28, 0.33), (0.05, 0.08, 0.07), 33, layer=1),
        Structure("gallbladder", e, (0.43, -0.18, -0.30), (0.025, 0.05, 0.05), 12, layer=1),
        Structure("liver", e, (0.38, -0.05, -0.35), (0.08, 0.33, 0.40), 58, layer=0),
        Structure("stomach", e, (0.39, -0.22, 0.30), (0.05, 0.15, 0.18), 30, layer=1),
        Structure("aorta", t, (0.18, 0.06, 0.06), (0.0, 0.035, 0.035), 42, layer=1, end=(0.66, 0.06, 0.06)),
        Structure("inferior_vena_cava", t, (0.30, 0.05, -0.10), (0.0, 0.035, 0.035), 38, layer=1,
                  end=(0.66, 0.05, -0.10)),
        Structure("portal_vein", e, (0.42, -0.02, -0.17), (0.015, 0.025, 0.08), 48, layer=1),
        Structure("pancreas", e, (0.45, 0.0, 0.14), (0.02, 0.04, 0.16), 40, layer=1),
        Structure("adrenal_gland_right", e, (0.42, 0.20, -0.22), (0.015, 0.03, 0.03), 28, layer=1),
        Structure("adrenal_gland_left", e, (0.42, 0.20, 0.22), (0.015, 0.03, 0.03), 28, layer=1),
        Structure("esophagus", t, (0.04, 0.10, 0.03), (0.0, 0.025, 0.025), 35, layer=1, end=(0.38, 0.12, 0.03)),
        Structure("trachea", t, (0.01, 0.0, 0.0), (0.0, 0.045, 0.045), -950, layer=1, end=(0.15, -0.02, 0.0)),
        Structure("lung_right", e, (0.25, 0.0, -0.45), (0.13, 0.40, 0.32), -820, layer=0),
        Structure("lung_left", e, (0.25, 0.0, 0.45), (0.13, 0.40, 0.32), -820, layer=0),
        Structure("heart", e, (0.27, -0.22, 0.10), (0.07, 0.20, 0.24), 40, layer=1),
        Structure("thyroid_gland", e, (0.035, -0.12, 0.0), (0.02, 0.05, 0.15), 80, layer=1),
        Structure("urinary_bladder", e, (0.74, -0.25, 0.0), (0.04, 0.12, 0.15), 10, layer=1),
        Structure("prostate", e, (0.79, -0.10, 0.0), (0.015, 0.05, 0.05), 40, layer=1),
        Structure("colon", "shell", (0.56, -0.05, 0.0), (0.10, 0.45, 0.62), 20, layer=0, inner=0.8),
        Structure("small_bowel", e, (0.58, -0.25, 0.0), (0.07, 0.20, 0.35), 35, layer=0),
        Structure("duodenum", t, (0.44, -0.02, -0.06), (0.0, 0.03, 0.03), 36, layer=1, end=(0.50, -0.02, -0.06)),
        Structure("spinal_cord", t, (0.01, 0.32, 0.0), (0.0, 0.025, 0.025), 35, layer=1, end=(0.58, 0.42, 0.0)),
    ]
    s += _pairs("iliac_artery", t, (0.66, 0.06, -0.02), (0.0, 0.02, 0.02), 42, 1, end=(0.78, 0.0, -0.30))
    return s


def _vertebrae() -> list[Structure]:
    levels = ([(f"C{i}", z) for i, z in zip(range(1, 8), np.linspace(0.012, 0.066, 7))]
              + [(f"T{i}", z) for i, z in zip(range(1, 13), np.linspace(0.085, 0.44, 12))]
              + [(f"L{i}", z) for i, z in zip(range(1, 6), np.linspace(0.47, 0.61, 5))])
    out = []
    for name, z in levels:
        gap = 0.009 if name[0] == "C" else 0.032 if name[0] == "T" else 0.035
        # The column runs from the neck's centre line back into the trunk, deeper the lower it is.
        y, ry, rx = (0.18, 0.06, 0.08) if name[0] == "C" else (0.22, 0.09, 0.11) if name[0] == "T" else (0.22, 0.10, 0.13)
        out.append(Structure(f"vertebra_{name}", "ellipsoid", (float(z), y, 0.0), (0.4 * gap, ry, rx),
                             330, rim_hu=900, layer=3))
    return out


def _ribs() -> list[Structure]:
    out = []
    for i, z in enumerate(np.linspace(0.085, 0.44, 12), start=1):
        for side, sign in (("left", 1), ("right", -1)):
            # The lowest two are floating ribs: they stop short of the front.
            out.append(Structure(f"rib_{side}_{i}", "rib", (float(z), -0.45 if i <= 10 else 0.0, 0.0),
                                 (0.008, 0.05, 0.0), 700, layer=3, side=sign))
    return out


def _other_bones() -> list[Structure]:
    e, t = "ellipsoid", "tube"
    s = [Structure("sternum", e, (0.20, -0.50, 0.0), (0.09, 0.035, 0.05), 330, rim_hu=800, layer=3),
         Structure("sacrum", e, (0.665, 0.30, 0.0), (0.04, 0.08, 0.12), 330, rim_hu=850, layer=3)]
    s += _pairs("clavicula", e, (0.075, -0.30, -0.42), (0.012, 0.04, 0.30), 400, 3, rim_hu=1100)
    s += _pairs("scapula", e, (0.15, 0.43, -0.55), (0.07, 0.03, 0.20), 500, 3, rim_hu=1000)
    s += _pairs("humerus", t, (0.08, 0.0, -0.85), (0.0, 0.05, 0.05), 400, 3, end=(0.35, 0.0, -0.84), rim_hu=1300)
    s += _pairs("hip", "shell", (0.69, 0.05, -0.45), (0.06, 0.30, 0.30), 900, 3, inner=0.75)
    s += _pairs("femur", t, (0.755, 0.0, -0.45), (0.0, 0.065, 0.065), 400, 3, end=(1.0, 0.0, -0.40), rim_hu=1350)
    return s


def _muscles() -> list[Structure]:
    e, t = "ellipsoid", "tube"
    m = []
    m += _pairs("muscle_psoas", t, (0.48, 0.22, -0.15), (0.0, 0.06, 0.06), 52, 2, end=(0.76, 0.05, -0.30))
    m += _pairs("muscle_iliacus", e, (0.70, 0.0, -0.42), (0.04, 0.12, 0.15), 50, 2)
    m += _pairs("muscle_erector_spinae", t, (0.08, 0.47, -0.14), (0.0, 0.07, 0.09), 55, 2, end=(0.66, 0.47, -0.14))
    m += _pairs("muscle_gluteus_maximus", e, (0.74, 0.45, -0.42), (0.06, 0.10, 0.22), 56, 2)
    m += _pairs("muscle_gluteus_medius", e, (0.68, 0.32, -0.62), (0.04, 0.08, 0.12), 54, 2)
    m += _pairs("muscle_gluteus_minimus", e, (0.71, 0.20, -0.70), (0.03, 0.06, 0.08), 53, 2)
    m += _pairs("muscle_rectus_abdominis", t, (0.38, -0.50, -0.10), (0.0, 0.03, 0.08), 50, 2, end=(0.72, -0.50, -0.10))
    m += _pairs("muscle_external_oblique", t, (0.42, -0.20, -0.70), (0.0, 0.12, 0.04), 48, 2, end=(0.62, -0.20, -0.70))
    m += _pairs("muscle_quadriceps", t, (0.80, -0.22, -0.42), (0.0, 0.14, 0.20), 58, 2, end=(1.0, -0.22, -0.40))
    m += _pairs("muscle_hamstrings", t, (0.80, 0.25, -0.45), (0.0, 0.12, 0.15), 55, 2, end=(1.0, 0.25, -0.42))
    m += _pairs("muscle_adductors", t, (0.80, 0.05, -0.20), (0.0, 0.10, 0.08), 52, 2, end=(1.0, 0.05, -0.25))
    m += _pairs("muscle_trapezius", e, (0.09, 0.42, -0.35), (0.05, 0.06, 0.25), 56, 2)
    m += _pairs("muscle_pectoralis_major", e, (0.17, -0.47, -0.45), (0.06, 0.04, 0.25), 57, 2)
    m += _pairs("muscle_latissimus_dorsi", e, (0.30, 0.38, -0.70), (0.10, 0.10, 0.10), 54, 2)
    m += _pairs("muscle_sternocleidomastoid", t, (0.005, 0.0, -0.20), (0.0, 0.05, 0.05), 55, 2, end=(0.07, -0.10, -0.12))
    return m


CATALOG: tuple[Structure, ...] = tuple(_organs() + _vertebrae() + _ribs() + _other_bones() + _muscles())


def _lymph_nodes(n: int, rng: np.random.Generator) -> list[Structure]:
    """Labels past the catalogue: small nodes scattered through the trunk's soft tissue."""
    z = rng.uniform(0.10, 0.75, n)
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    rho = rng.uniform(0.2, 0.6, n)
    return [Structure(f"lymph_node_{i + 1}", "ellipsoid", (float(z[i]), float(0.5 * rho[i] * math.sin(angle[i])),
                                                          float(0.75 * rho[i] * math.cos(angle[i]))),
                      (0.012, 0.03, 0.03), 40, layer=2) for i in range(n)]


def label_names(num_labels: int) -> list[str]:
    """The names of labels ``1..num_labels``, in label order."""
    extra = max(0, num_labels - len(CATALOG))
    return [s.name for s in CATALOG[:num_labels]] + [f"lymph_node_{i + 1}" for i in range(extra)]


# --------------------------------------------------------------------------- geometry in a box


def _axis(n: int, lo: float, hi: float, fraction_to_index, index_to_fraction) -> tuple[int, int, np.ndarray]:
    """Voxel range ``[a, b)`` covering fractions ``lo..hi`` and the fractions of its voxel centres."""
    a = max(0, math.floor(fraction_to_index(lo)))
    b = min(n, math.ceil(fraction_to_index(hi)) + 1)
    return a, b, index_to_fraction(np.arange(a, b, dtype=np.float32))


class _Grid:
    """Fractions <-> voxel indices for one shape; z in [0, 1], y and x in [-1, 1]."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self.min_radius = (0.5 / shape[0], 1.0 / shape[1], 1.0 / shape[2])  # half a voxel

    def box(self, lo, hi) -> tuple[tuple[slice, ...], list[np.ndarray]]:
        Z, Y, X = self.shape
        za, zb, z = _axis(Z, lo[0], hi[0], lambda f: f * Z, lambda i: (i + 0.5) / Z)
        ya, yb, y = _axis(Y, lo[1], hi[1], lambda f: (f + 1) / 2 * Y, lambda i: (i + 0.5) / Y * 2 - 1)
        xa, xb, x = _axis(X, lo[2], hi[2], lambda f: (f + 1) / 2 * X, lambda i: (i + 0.5) / X * 2 - 1)
        return (slice(za, zb), slice(ya, yb), slice(xa, xb)), [z, y, x]

    def index(self, point) -> tuple[int, int, int]:
        Z, Y, X = self.shape
        return (min(Z - 1, max(0, int(point[0] * Z))), min(Y - 1, max(0, int((point[1] + 1) / 2 * Y))),
                min(X - 1, max(0, int((point[2] + 1) / 2 * X))))


def _radii(s: Structure, grid: _Grid) -> np.ndarray:
    return np.maximum(np.asarray(s.radii, dtype=np.float32), np.asarray(grid.min_radius, dtype=np.float32))


def _ellipsoid(s: Structure, grid: _Grid):
    c, r = np.asarray(s.center, dtype=np.float32), _radii(s, grid)
    box, (z, y, x) = grid.box(c - r, c + r)
    q = (((z - c[0]) / r[0]) ** 2)[:, None, None] + (((y - c[1]) / r[1]) ** 2)[None, :, None] \
        + (((x - c[2]) / r[2]) ** 2)[None, None, :]
    inside = q <= 1.0
    if s.kind == "shell":
        inside &= q >= np.float32(s.inner ** 2)
    return box, inside, q


def _tube(s: Structure, grid: _Grid):
    a, b = np.asarray(s.center, dtype=np.float32), np.asarray(s.end, dtype=np.float32)
    r = _radii(s, grid)
    lo = np.minimum(a, b) - np.array([0.0, r[1], r[2]], dtype=np.float32)
    hi = np.maximum(a, b) + np.array([0.0, r[1], r[2]], dtype=np.float32)
    box, (z, y, x) = grid.box(lo, hi)
    t = np.clip((z - a[0]) / max(float(b[0] - a[0]), 1e-6), 0.0, 1.0)
    cy, cx = a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t
    q = (((y[None, :] - cy[:, None]) / r[1]) ** 2)[:, :, None] + (((x[None, :] - cx[:, None]) / r[2]) ** 2)[:, None, :]
    inside = q <= 1.0
    inside &= ((z >= min(a[0], b[0]) - grid.min_radius[0]) & (z <= max(a[0], b[0]) + grid.min_radius[0]))[:, None, None]
    return box, inside, q


RIB_ELLIPSE = (0.0, 0.55, 0.80)  # y centre, y and x semi-axes of the rib cage
RIB_DROP = 0.04  # how much lower (in z) a rib's front end lies than its back


def _rib(s: Structure, grid: _Grid):
    """A thin curved bar at ``rho`` = 1 of the rib-cage ellipse, on one side, sloping down to the front."""
    cy, ay, ax = RIB_ELLIPSE
    half_z = max(s.radii[0], grid.min_radius[0])
    front, back = s.center[1], 0.35
    x_lo, x_hi = (0.04, ax * 1.1) if s.side > 0 else (-ax * 1.1, -0.04)
    box, (z, y, x) = grid.box((s.center[0] - half_z, front, x_lo), (s.center[0] + RIB_DROP + half_z, back, x_hi))
    rho = np.sqrt(((y - cy) / ay)[:, None] ** 2 + (x / ax)[None, :] ** 2)  # (y, x)
    thickness = max(s.radii[1], 1.2 * grid.min_radius[2] / ax)
    radial = ((rho - 1.0) / thickness) ** 2
    z_mid = s.center[0] + RIB_DROP * (back - y) / (back - front)  # (y,)
    dz = ((z[:, None] - z_mid[None, :]) / half_z) ** 2  # (z, y)
    inside = (dz[:, :, None] + radial[None, :, :]) <= 1.0
    inside &= ((y >= front) & (y <= back))[None, :, None]
    inside &= ((x > 0) if s.side > 0 else (x < 0))[None, None, :]
    return box, inside, None


SHAPES = {"ellipsoid": _ellipsoid, "shell": _ellipsoid, "tube": _tube, "rib": _rib}


def _paint(image: np.ndarray, label: np.ndarray, value: int, s: Structure, grid: _Grid) -> None:
    box, inside, q = SHAPES[s.kind](s, grid)
    if s.kind in ("ellipsoid", "tube"):
        # The centre voxel always belongs to its structure, so a tiny grid still shows the label.
        cz, cy, cx = grid.index(s.center if s.kind == "ellipsoid" else (
            (s.center[0] + s.end[0]) / 2, (s.center[1] + s.end[1]) / 2, (s.center[2] + s.end[2]) / 2))
        local = (cz - box[0].start, cy - box[1].start, cx - box[2].start)
        if all(0 <= v < n for v, n in zip(local, inside.shape)):
            inside[local] = True
    if s.rim_hu is not None and q is not None:
        hu = np.where(q > np.float32(0.49), np.int16(s.rim_hu), np.int16(s.hu))[inside]
    else:
        hu = np.int16(s.hu)
    label[box][inside] = value
    image[box][inside] = hu


# --------------------------------------------------------------------------- body and noise


def _body_profile(z: np.ndarray, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Trunk semi-axes (y, x) per slice fraction: shoulders, waist, hips."""
    knots = [0.07, 0.20, 0.45, 0.70, 0.80]
    ry = np.interp(z, knots, [0.55, 0.60, 0.62, 0.60, 0.58]) * scale[0]
    rx = np.interp(z, knots, [0.92, 0.92, 0.82, 0.90, 0.88]) * scale[1]
    return ry, rx


def _fill_body(image: np.ndarray, scale: tuple[float, float]) -> None:
    """Air outside an elliptical body; a subcutaneous fat ring; soft tissue inside. One slice at a time."""
    Z, Y, X = image.shape
    y = ((np.arange(Y, dtype=np.float32) + 0.5) / Y * 2 - 1)[:, None]
    x = ((np.arange(X, dtype=np.float32) + 0.5) / X * 2 - 1)[None, :]
    zf = (np.arange(Z) + 0.5) / Z
    ry, rx = _body_profile(zf, scale)
    for k in range(Z):
        if zf[k] < 0.07:  # neck
            rho2 = ((y - 0.1) / 0.30) ** 2 + (x / 0.30) ** 2
        elif zf[k] < 0.80:
            rho2 = (y / np.float32(ry[k])) ** 2 + (x / np.float32(rx[k])) ** 2
        else:  # two thighs
            rho2 = np.minimum(((x + 0.42) / 0.38) ** 2, ((x - 0.42) / 0.38) ** 2) + (y / 0.48) ** 2
        out = image[k]
        out[...] = AIR_HU
        out[rho2 <= 1.0] = FAT_HU
        out[rho2 <= 0.88 ** 2] = SOFT_TISSUE_HU


def _add_noise(image: np.ndarray, rng: np.random.Generator, sd: float) -> None:
    for a in range(0, image.shape[0], SLAB):
        slab = image[a:a + SLAB]
        noisy = rng.standard_normal(slab.shape, dtype=np.float32)
        noisy *= np.float32(sd)
        noisy += slab
        np.rint(noisy, out=noisy)
        np.clip(noisy, HU_MIN, HU_MAX, out=noisy)
        slab[...] = noisy


def _jitter(s: Structure, rng: np.random.Generator) -> Structure:
    """The case's own variant: positions move by about 1% of the body, sizes by up to 7%."""
    shift = rng.uniform(-0.01, 0.01, 3)
    size = rng.uniform(0.93, 1.07)
    hu_shift = int(rng.integers(-5, 6))
    c = tuple(float(v + d) for v, d in zip(s.center, shift))
    e = None if s.end is None else tuple(float(v + d) for v, d in zip(s.end, shift))
    return replace(s, center=c, end=e, radii=tuple(float(v * size) for v in s.radii), hu=s.hu + hu_shift,
                   rim_hu=None if s.rim_hu is None else s.rim_hu + 10 * hu_shift)


def make_phantom(shape=(600, 512, 512), spacing=(1.5, 0.8, 0.8), num_labels=104, seed=0,
                 noise_hu: float = NOISE_HU) -> tuple[np.ndarray, np.ndarray]:
    """A whole-body CT phantom: ``image`` int16 HU ``(Z, Y, X)``, ``label`` ``(Z, Y, X)`` with values 0..num_labels.

    ``spacing`` (z, y, x mm) does not change the layout (it is in fractions of the array); it is
    accepted so callers pass the geometry they write. The label map is uint8 up to 255 labels and
    uint16 above. ``seed`` moves and resizes every structure a little and draws the noise.
    """
    del spacing
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"ct_phantom: shape must be three positive sizes (Z, Y, X), not {shape}")
    if num_labels < 0 or num_labels > 65535:
        raise ValueError(f"ct_phantom: num_labels must be in 0..65535, not {num_labels}")
    rng = np.random.default_rng(seed)
    structures = [_jitter(s, rng) for s in CATALOG]
    structures = structures[:num_labels] + _lymph_nodes(max(0, num_labels - len(CATALOG)), rng)
    grid = _Grid(shape)
    image = np.empty(shape, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8 if num_labels <= 255 else np.uint16)
    _fill_body(image, tuple(rng.uniform(0.97, 1.03, 2)))
    order = sorted(range(len(structures)), key=lambda i: (structures[i].layer, i))
    for i in order:
        _paint(image, label, i + 1, structures[i], grid)
    _add_noise(image, rng, noise_hu)
    return image, label


# --------------------------------------------------------------------------- files


def write_case(image, label, spacing, image_path, label_path=None) -> None:
    """Write ``image`` (and ``label``) as NIfTI (or any SimpleITK format, by ending); spacing is (z, y, x) mm."""
    import SimpleITK as sitk

    for array, path in ((image, image_path), (label, label_path)):
        if array is None or path is None:
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetSpacing(tuple(float(v) for v in reversed(tuple(spacing))))
        # Level 1: the noise barely compresses, and the default level costs minutes per case.
        sitk.WriteImage(img, str(path), True, 1)


def case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_dataset(folder, n_cases, shape, spacing, num_labels, seed) -> Path:
    """An MSD dataset of ``n_cases`` phantoms: ``dataset.json`` (CT, named labels), ``imagesTr``, ``labelsTr``."""
    root = Path(folder)
    training = []
    for i in range(int(n_cases)):
        name = f"case_{i:03d}.nii.gz"
        image, label = make_phantom(shape, spacing, num_labels, case_seed(seed, i))
        write_case(image, label, spacing, root / "imagesTr" / name, root / "labelsTr" / name)
        del image, label
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    names = label_names(int(num_labels))
    meta = {
        "name": root.name,
        "description": "seeded synthetic whole-body CT phantoms (benchmarks/ct_phantom.py)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i): n for i, n in enumerate(names, start=1)}},
        "numTraining": int(n_cases),
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write (MSD layout)")
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--shape", type=int, nargs=3, default=[600, 512, 512], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8], metavar=("Z", "Y", "X"))
    p.add_argument("--labels", type=int, default=104)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    write_dataset(args.out, args.cases, tuple(args.shape), tuple(args.spacing), args.labels, args.seed)
    print(f"ct_phantom: {args.cases} case(s) {tuple(args.shape)} with {args.labels} labels in {args.out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
