"""Pictures to check a segmentation by eye: orthogonal slices with the label map drawn over the image.

One PNG per case: axial, coronal and sagittal slices (one panel for a 2D image) through the
foreground, each drawn in millimetres so thick slices keep their true proportions. The volume
is first turned to the nearest LPS orientation (from the geometry's direction), so the panels
are shown in radiological convention whatever order the file stores its axes in: axial with
anterior at the top and the patient's right on the left, coronal and sagittal with superior
at the top. Labels are filled with a fixed colour per label value, the same in every picture
of every run, and outlined; a reference label map, when given, is drawn as dashed outlines in
the same colours.

Figures are built on matplotlib's Agg canvas without pyplot, so pictures can be drawn from
the background writer thread of ``autoseg predict``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import permutations
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from autoseg.atomic import atomic_path
from autoseg.dataset.imageio import Geometry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib's tab10 then its lighter tab20 partners, both without the greys, which would vanish
# over a greyscale image. Label value v always takes entry (v - 1) mod len: the colour of a label
# never depends on which other labels a dataset or a case has.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
)
OVERLAY_ALPHA = 0.4
# CT windows in HU as (low, high): soft tissue is level 40 / width 400, bone level 300 / width 1500.
CT_SOFT_TISSUE_WINDOW = (-160.0, 240.0)
CT_BONE_WINDOW = (-450.0, 1050.0)
# Structures whose median intensity is above this many HU are bone (vertebrae, ribs, skull):
# in a soft-tissue window they would be a flat white.
BONE_MEDIAN_HU = 300.0
# Percentiles and medians are taken on at most this many voxels: a large CT has 10^8.
_MAX_SAMPLES = 1_000_000
# panel height in inches at 100 dpi: at least this, up to about one pixel per voxel of the tallest
# panel, so a 512 x 512 slice is not shrunk to a third of its detail
_PANEL_HEIGHT_IN = (3.4, 6.0)


def _hex_to_rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5))


def label_colours(label_values: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """RGBA in [0, 1] per label value: fixed per value, background (0) fully transparent."""
    out = {}
    for v in label_values:
        v = int(v)
        out[v] = (0.0, 0.0, 0.0, 0.0) if v == 0 else (*_hex_to_rgb(PALETTE[(v - 1) % len(PALETTE)]), 1.0)
    return out


def modality_of_plans(plans) -> str | None:
    """``"CT"`` when the plans normalize the first channel as CT (HU), else None. Takes a
    :class:`autoseg.planners.plans.Plans` or its JSON dict."""
    normalization = plans.get("normalization") if isinstance(plans, dict) else getattr(plans, "normalization", None)
    if not normalization:
        return None
    first = normalization[0]
    scheme = first.get("scheme") if isinstance(first, dict) else getattr(first, "scheme", None)
    return "CT" if str(scheme).lower() == "ct" else None


@dataclass
class Orientation:
    """How numpy axes ``(z, y, x)`` of an array map onto LPS-ordered axes (superior, posterior, left).

    Output axis ``b`` is input axis ``axes[b]``, reversed where ``flips[b]``; after that, index
    increases towards superior, posterior and the patient's left.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def from_geometry(cls, geometry: Geometry) -> "Orientation":
        """The axis permutation closest to the direction matrix, then the signs along it."""
        if len(geometry.direction) != 9:
            return cls((0, 1, 2), (False, False, False))
        # ITK: column c of the row-major direction is index axis c (x, y, z); row r is physical x, y, z.
        # numpy axis a is ITK index axis 2 - a; LPS-ordered output axis b is physical axis 2 - b.
        d = np.asarray(geometry.direction, float).reshape(3, 3)
        best = max(permutations(range(3)), key=lambda p: sum(abs(d[2 - b, 2 - p[b]]) for b in range(3)))
        return cls(tuple(best), tuple(bool(d[2 - b, 2 - best[b]] < 0) for b in range(3)))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """A view of a ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array in LPS order."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in self.axes))
        index = tuple([slice(None)] * lead + [slice(None, None, -1) if f else slice(None) for f in self.flips])
        return out[index]

    def spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        return tuple(float(spacing[a]) for a in self.axes)

    def source_index(self, axis: int, index: int, shape: Sequence[int]) -> tuple[int, int]:
        """(numpy axis, index) in the stored array of ``index`` along output ``axis``."""
        a = self.axes[axis]
        return a, (shape[a] - 1 - index if self.flips[axis] else index)


def panel_extent(shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float, float]:
    """imshow extent ``(left, right, bottom, top)`` in mm of a ``(rows, cols)`` slice drawn with
    row 0 at the top, for ``spacing`` ``(row, col)`` in mm: equal axes then keep the physical
    aspect ratio."""
    rows, cols = int(shape[0]), int(shape[1])
    return 0.0, cols * float(spacing[1]), rows * float(spacing[0]), 0.0


def _sample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    step = max(1, flat.size // _MAX_SAMPLES)
    return flat[::step]


def intensity_window(image: np.ndarray, modality: str | None = None,
                     foreground: np.ndarray | None = None) -> tuple[float, float]:
    """Display range of one channel: a soft-tissue or bone window in HU for CT (bone when the
    structures' median is above :data:`BONE_MEDIAN_HU`), else the 1st to 99th percentile."""
    if modality is not None and modality.upper() == "CT":
        if foreground is not None and foreground.any():
            inside = _sample(image[foreground])
            if float(np.median(inside)) > BONE_MEDIAN_HU:
                return CT_BONE_WINDOW
        return CT_SOFT_TISSUE_WINDOW
    values = _sample(image)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    if high <= low:
        high = low + 1.0
    return low, high


def blend_overlay(rgb: np.ndarray, labels: np.ndarray, colours: Mapping[int, Sequence[float]],
                  alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``rgb`` ``(H, W, 3)`` in [0, 1] with every labelled pixel mixed with its label's colour:
    ``(1 - alpha) * image + alpha * colour``. Values without a colour take the palette's."""
    out = np.array(rgb, dtype=np.float32, copy=True)
    for v in np.unique(labels):
        v = int(v)
        if v == 0:
            continue
        colour = colours.get(v) or label_colours([v])[v]
        mask = labels == v
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour[:3], np.float32)
    return out


def present_values(labels: np.ndarray) -> list[int]:
    """The nonzero values of a label map, sorted. Counting is one pass over a CT's 10^8 voxels,
    where np.unique would sort them."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    if np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < 1 << 16:
        counts = np.bincount(labels.reshape(-1))
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    return [int(v) for v in np.unique(labels) if v != 0]


def _label_name(label_names: Sequence[str] | Mapping[int, str] | None, label_values: Sequence[int], v: int) -> str:
    if isinstance(label_names, Mapping):
        name = label_names.get(v, label_names.get(str(v)))
    elif label_names is not None and v in label_values and len(label_names) == len(label_values):
        name = label_names[list(label_values).index(v)]
    else:
        name = None
    return f"{name} ({v})" if name else f"label {v}"


def _focus_index(foreground: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` nearest the foreground's centre of mass that holds foreground,
    so that every panel shows structure even when the centre lies outside it (a ring)."""
    other = tuple(a for a in range(foreground.ndim) if a != axis)
    counts = foreground.sum(axis=other, dtype=np.int64)
    if counts.sum() == 0:
        return foreground.shape[axis] // 2
    centre = float((counts * np.arange(counts.size)).sum() / counts.sum())
    filled = np.flatnonzero(counts)
    return int(filled[np.argmin(np.abs(filled - centre))])


def _as_channels(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        return image[None]
    if image.ndim == 4:
        return image
    raise ValueError(f"expected an image (C, Z, Y, X) or (Z, Y, X), got shape {image.shape}")


def _is_2d(geometry: Geometry, shape: Sequence[int]) -> bool:
    return geometry.file_ndim == 2 or int(shape[0]) == 1


def preview_channels(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A copy of only the channels a picture draws (the first; a 2D image's three or four colour
    channels), for callers that keep the image until the picture is drawn, e.g. while the
    prediction runs: a multi-channel MRI then holds one channel, not four."""
    channels = _as_channels(image)
    keep = channels.shape[0] if _is_2d(geometry, channels.shape[1:]) and channels.shape[0] in (3, 4) else 1
    return np.array(channels[:keep], copy=True)


def _greyscale_rgb(image2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    grey = np.clip((np.nan_to_num(image2d.astype(np.float32)) - low) / (high - low), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=-1)


def _colour_rgb(channels2d: np.ndarray) -> np.ndarray:
    """(3 or 4, H, W) colour channels as RGB in [0, 1]: 8-bit as stored, anything else stretched."""
    rgb = channels2d[:3].astype(np.float32)
    if rgb.min() >= 0 and rgb.max() <= 255:
        return np.moveaxis(rgb / 255.0, 0, -1)
    out = [_greyscale_rgb(c, intensity_window(c))[..., 0] for c in rgb]
    return np.stack(out, axis=-1)


def _cut(array: np.ndarray, axis: int, index: int, flip_rows: bool) -> np.ndarray:
    """Slice ``index`` along spatial ``axis`` of a ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array, rows
    reversed with ``flip_rows`` (superior to the top)."""
    at = [slice(None)] * array.ndim
    at[array.ndim - 3 + axis] = index
    out = array[tuple(at)]
    return np.ascontiguousarray(out[..., ::-1, :] if flip_rows else out)


@dataclass
class _Panel:
    title: str
    rgb: np.ndarray  # (H, W, 3), overlay blended
    segmentation: np.ndarray  # (H, W)
    reference: np.ndarray | None
    spacing: tuple[float, float]  # (row, col) mm


def _panels(image: np.ndarray, segmentation: np.ndarray, geometry: Geometry, reference: np.ndarray | None,
            modality: str | None, colours: Mapping[int, Sequence[float]]) -> list[_Panel]:
    channels = _as_channels(image)
    if channels.shape[1:] != segmentation.shape:
        raise ValueError(f"segmentation shape {segmentation.shape} differs from the image's {channels.shape[1:]}")
    if reference is not None and reference.shape != segmentation.shape:
        raise ValueError(f"reference shape {reference.shape} differs from the segmentation's {segmentation.shape}")
    foreground = segmentation != 0
    if reference is not None and not foreground.any():
        foreground = reference != 0
    is_2d = _is_2d(geometry, segmentation.shape)
    colour = is_2d and channels.shape[0] in (3, 4)
    window = None if colour else intensity_window(channels[0], modality, foreground)

    def rgb_of(channel_slices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        base = _colour_rgb(channel_slices) if colour else _greyscale_rgb(channel_slices[0], window)
        return blend_overlay(base, labels, colours)

    if is_2d:
        ref = None if reference is None else reference[0]
        return [_Panel("image", rgb_of(channels[:, 0], segmentation[0]), segmentation[0], ref,
                       (float(geometry.spacing[1]), float(geometry.spacing[2])))]

    orientation = Orientation.from_geometry(geometry)
    img, seg = orientation.apply(channels[:1]), orientation.apply(segmentation)
    ref = None if reference is None else orientation.apply(reference)
    fg = orientation.apply(foreground)
    sz, sy, sx = orientation.spacing(geometry.spacing)
    names = "zyx"
    panels = []
    # (title, output axis sliced, flip rows so superior is at the top, row and column spacing)
    for title, axis, flip, spacing in (("axial", 0, False, (sy, sx)), ("coronal", 1, True, (sz, sx)),
                                       ("sagittal", 2, True, (sz, sy))):
        k = _focus_index(fg, axis)
        src_axis, src_index = orientation.source_index(axis, k, segmentation.shape)
        seg2d = _cut(seg, axis, k, flip)
        panels.append(_Panel(f"{title} ({names[src_axis]} = {src_index})", rgb_of(_cut(img, axis, k, flip), seg2d),
                             seg2d, None if ref is None else _cut(ref, axis, k, flip), spacing))
    return panels


def _outline(ax, mask: np.ndarray, spacing: tuple[float, float], colour, linestyle: str) -> None:
    """Draw the boundary of ``mask`` along pixel edges. A contour through pixel centres would cut
    corners and sit half a pixel inside the fill, which on thick slices is millimetres off; so
    the contour is traced on the mask's bounding box repeated ``f`` times per pixel, where it
    runs within 1 / (2 f) of a pixel of the edges."""
    if not mask.any():
        return
    rows, cols = np.nonzero(mask)
    r0, c0 = int(rows.min()), int(cols.min())
    sub = mask[r0:int(rows.max()) + 1, c0:int(cols.max()) + 1]
    f = max(1, min(8, 1024 // max(sub.shape)))
    # padded with background, so a structure touching the image border is closed there
    up = np.pad(np.repeat(np.repeat(sub, f, axis=0), f, axis=1), 1).astype(np.float32)
    y = r0 * spacing[0] + (np.arange(up.shape[0]) - 0.5) * spacing[0] / f
    x = c0 * spacing[1] + (np.arange(up.shape[1]) - 0.5) * spacing[1] / f
    ax.contour(x, y, up, levels=[0.5], colors=[tuple(colour[:3])],
               linewidths=1.2 if linestyle == "solid" else 1.0, linestyles=linestyle)


def preview_figure(image: np.ndarray, segmentation: np.ndarray, geometry: Geometry, label_values: Sequence[int],
                   label_names: Sequence[str] | Mapping[int, str] | None, title: str | None = None,
                   reference: np.ndarray | None = None, modality: str | None = None) -> "Figure":
    """The picture :func:`preview_png` writes, as a matplotlib Figure on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    segmentation = np.asarray(segmentation)
    reference = None if reference is None else np.asarray(reference)
    label_values = [int(v) for v in label_values]
    present = set(present_values(segmentation))
    if reference is not None:
        present |= set(present_values(reference))
    present = sorted(present)
    colours = label_colours(sorted(set(label_values) | set(present)))
    panels = _panels(image, segmentation, geometry, reference, modality, colours)

    # every panel the same height on the page, as wide as its physical proportions need
    ratios = [p.rgb.shape[1] * p.spacing[1] / (p.rgb.shape[0] * p.spacing[0]) for p in panels]
    height = float(np.clip(max(p.rgb.shape[0] for p in panels) / 100.0, *_PANEL_HEIGHT_IN))
    width = min(20.0, max(4.0, height * sum(ratios) + 0.6))
    fig = Figure(figsize=(width, height + 1.3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": ratios})[0]
    for ax, p in zip(axes, panels):
        extent = panel_extent(p.rgb.shape, p.spacing)
        ax.imshow(p.rgb, extent=extent, interpolation="nearest", origin="upper")
        for v in present:
            _outline(ax, p.segmentation == v, p.spacing, colours[v], "solid")
            if p.reference is not None:
                _outline(ax, p.reference == v, p.spacing, colours[v], "dashed")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])  # the contours' padding must not widen the panel
        ax.set_aspect("equal")
        ax.set_title(p.title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=colours[v][:3], edgecolor=colours[v][:3], label=_label_name(label_names, label_values, v))
               for v in present]
    if not present:
        handles.append(Patch(facecolor="none", edgecolor="none", label="no labels"))
    if reference is not None:
        handles += [Line2D([], [], color="black", linestyle="solid", label="prediction"),
                    Line2D([], [], color="black", linestyle="dashed", label="reference")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def preview_png(image: np.ndarray, segmentation: np.ndarray, geometry: Geometry, label_values: Sequence[int],
                label_names: Sequence[str] | Mapping[int, str] | None, path: str | os.PathLike,
                title: str | None = None, reference: np.ndarray | None = None, modality: str | None = None,
                dpi: int = 100) -> None:
    """Write the case's picture to ``path`` (PNG, atomically); see the module docstring.

    ``image`` is ``(C, Z, Y, X)`` (the first channel is drawn; a 2D image with three or four
    channels is drawn in colour) or ``(Z, Y, X)``; ``segmentation`` and ``reference`` are
    ``(Z, Y, X)`` label maps on the image's grid. ``label_names`` is a list parallel to
    ``label_values`` (as in the plans) or a mapping value -> name. ``modality="CT"`` windows
    the image in HU.
    """
    fig = preview_figure(image, segmentation, geometry, label_values, label_names, title, reference, modality)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
