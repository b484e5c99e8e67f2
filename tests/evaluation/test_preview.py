"""Case pictures: fixed label colours, physical aspect, legend, orientation, windows, 2D and empty maps."""
from __future__ import annotations

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry
from autoseg.evaluation.preview import (CT_BONE_WINDOW, CT_SOFT_TISSUE_WINDOW, OVERLAY_ALPHA, PALETTE, Orientation,
                                        blend_overlay, intensity_window, label_colours, modality_of_plans,
                                        panel_extent, preview_figure, preview_png)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
NAMES = ["background", "inner", "outer", "third"]
VALUES = [0, 1, 2, 3]


def volume(shape=(10, 20, 30)):
    """Image 0 on the left half and 100 on the right, a block of 50 holding label 1, and a
    small label-2 block; label 3 absent."""
    image = np.zeros(shape, np.float32)
    image[:, :, shape[2] // 2:] = 100.0
    seg = np.zeros(shape, np.uint8)
    seg[3:7, 5:15, 3:13] = 1
    image[seg == 1] = 50.0
    seg[4:6, 8:11, 20:24] = 2
    return image[None], seg


def _rendered_pixel(fig, ax, x_mm: float, y_mm: float) -> np.ndarray:
    fig.canvas.draw()
    buffer = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x_mm, y_mm))
    return buffer[int(round(buffer.shape[0] - py)), int(round(px)), :3] / 255.0


def test_label_colours_fixed_per_value_background_transparent():
    a = label_colours([0, 1, 2, 3])
    b = label_colours([3, 7, 2])
    assert a[0] == (0.0, 0.0, 0.0, 0.0)
    assert a[2] == b[2] and a[3] == b[3]  # a label's colour does not depend on the others present
    assert a[1][3] == 1.0
    many = label_colours(range(1, len(PALETTE) + 1))
    assert len({c for c in many.values()}) == len(PALETTE)  # qualitative: all distinct
    assert label_colours([1 + len(PALETTE)])[1 + len(PALETTE)] == many[1]  # wraps around


def test_blend_overlay_mixes_the_label_colour():
    rgb = np.full((4, 4, 3), 0.5, np.float32)
    labels = np.zeros((4, 4), np.uint8)
    labels[1, 2] = 2
    out = blend_overlay(rgb, labels, label_colours([0, 2]))
    expected = (1 - OVERLAY_ALPHA) * 0.5 + OVERLAY_ALPHA * np.array(label_colours([2])[2][:3])
    np.testing.assert_allclose(out[1, 2], expected, atol=1e-6)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.5, 0.5])  # background untouched


def test_png_written_with_legend_and_rendered_colour(tmp_path):
    image, seg = volume()
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY, 3)
    path = tmp_path / "case.png"
    preview_png(image, seg, geometry, VALUES, NAMES, path, title="case_000")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["case.png"]  # nothing half-written left

    fig = preview_figure(image, seg, geometry, VALUES, NAMES, title="case_000")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["inner (1)", "outer (2)"]  # names of the labels present only
    assert fig._suptitle.get_text() == "case_000"
    axial = fig.axes[0]
    assert axial.get_title().startswith("axial")
    # inside the label-1 block, away from its outline: image 50 in a 0..100 window is grey 0.5
    expected = (1 - OVERLAY_ALPHA) * 0.5 + OVERLAY_ALPHA * np.array(label_colours([1])[1][:3])
    np.testing.assert_allclose(_rendered_pixel(fig, axial, 8.0, 10.0), expected, atol=3 / 255)
    # background pixels show the bare image
    np.testing.assert_allclose(_rendered_pixel(fig, axial, 1.5, 18.5), [0, 0, 0], atol=3 / 255)


def test_panels_keep_the_physical_aspect_ratio():
    assert panel_extent((20, 30), (2.0, 0.5)) == (0.0, 15.0, 40.0, 0.0)
    image, seg = volume()
    geometry = Geometry((4.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY, 3)  # thick slices
    fig = preview_figure(image, seg, geometry, VALUES, NAMES)
    axial, coronal, sagittal = fig.axes[:3]
    assert axial.get_images()[0].get_extent() == [0.0, 30.0, 20.0, 0.0]
    assert coronal.get_images()[0].get_extent() == [0.0, 30.0, 40.0, 0.0]  # 10 slices x 4 mm
    assert sagittal.get_images()[0].get_extent() == [0.0, 20.0, 40.0, 0.0]
    fig.canvas.draw()
    for ax, (w, h) in ((axial, (30, 20)), (coronal, (30, 40)), (sagittal, (20, 40))):
        box = ax.get_window_extent()
        assert box.width / box.height == pytest.approx(w / h, rel=0.03)


def test_slices_go_through_the_structures():
    image, seg = volume()
    fig = preview_figure(image, seg, Geometry((1.0, 1.0, 1.0), (0, 0, 0), IDENTITY, 3), VALUES, NAMES)
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[0] == "axial (z = 4)"  # label voxels on slices 3-6: centre of mass 4.5, nearest filled 4
    assert titles[1].startswith("coronal (y = ") and titles[2].startswith("sagittal (x = ")


def test_orientation_follows_the_direction():
    rng = np.random.default_rng(0)
    arr = rng.random((4, 5, 6))
    # stored with x and y reversed (RAS-like): shown the same as the LPS-stored array
    flipped = Orientation.from_geometry(Geometry((1, 1, 1), (0, 0, 0), (-1, 0, 0, 0, -1, 0, 0, 0, 1), 3))
    assert flipped.flips == (False, True, True)
    np.testing.assert_array_equal(flipped.apply(arr[:, ::-1, ::-1]), arr)
    # index axis i (numpy x) runs along physical z, k (numpy z) along physical x: a sagittal stack
    swapped = Orientation.from_geometry(Geometry((3.0, 2.0, 1.0), (0, 0, 0), (0, 0, 1, 0, 1, 0, 1, 0, 0), 3))
    assert swapped.axes == (2, 1, 0) and swapped.spacing((3.0, 2.0, 1.0)) == (1.0, 2.0, 3.0)
    assert swapped.apply(arr).shape == (6, 5, 4)
    assert swapped.source_index(0, 1, arr.shape) == (2, 1)


def test_empty_segmentation_draws_the_middle(tmp_path):
    image, seg = volume()
    empty = np.zeros_like(seg)
    fig = preview_figure(image, empty, Geometry((1.0, 1.0, 1.0), (0, 0, 0), IDENTITY, 3), VALUES, NAMES)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["no labels"]
    assert fig.axes[0].get_title() == "axial (z = 5)"
    preview_png(image, empty, Geometry((1.0, 1.0, 1.0), (0, 0, 0), IDENTITY, 3), VALUES, NAMES, tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 5_000


def test_reference_outlines_and_legend():
    image, seg = volume()
    reference = np.roll(seg, 2, axis=2)
    reference[0, 0, 0] = 3  # a label only the reference has is named too
    fig = preview_figure(image, seg, Geometry((1.0, 1.0, 1.0), (0, 0, 0), IDENTITY, 3), VALUES, {1: "inner", 2: "outer"},
                         reference=reference)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["inner (1)", "outer (2)", "label 3",
                                                                   "prediction", "reference"]
    styles = {tuple(c.get_linestyle()[0][1] or ()) != () for c in fig.axes[0].collections}
    assert styles == {False, True}  # solid prediction outlines and dashed reference outlines


def test_2d_image_one_panel(tmp_path):
    image, seg = volume((1, 20, 30))
    seg[0, 5:15, 3:13] = 1
    geometry = Geometry((1.0, 0.5, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2)
    fig = preview_figure(image, seg, geometry, VALUES, NAMES)
    assert len(fig.axes) == 1 and fig.axes[0].get_images()[0].get_extent() == [0.0, 30.0, 10.0, 0.0]
    rgb = np.stack([image[0] * 2.0] * 3).clip(0, 255)  # an RGB picture: drawn in colour
    preview_png(rgb, seg, geometry, VALUES, NAMES, tmp_path / "rgb.png")
    assert (tmp_path / "rgb.png").stat().st_size > 5_000


def test_windows():
    ct = np.full((4, 8, 8), -1000.0, np.float32)
    fg = np.zeros(ct.shape, bool)
    fg[1:3, 2:5, 2:5] = True
    ct[fg] = 60.0
    assert intensity_window(ct, "CT", fg) == CT_SOFT_TISSUE_WINDOW
    ct[fg] = 900.0  # vertebrae
    assert intensity_window(ct, "ct", fg) == CT_BONE_WINDOW
    mr = np.arange(1000, dtype=np.float32)
    low, high = intensity_window(mr)
    assert low == pytest.approx(9.99) and high == pytest.approx(989.01)
    assert intensity_window(np.zeros(10)) == (0.0, 1.0)
    assert modality_of_plans({"normalization": [{"scheme": "ct"}]}) == "CT"
    assert modality_of_plans({"normalization": [{"scheme": "zscore"}]}) is None


def test_shape_mismatch_is_refused():
    image, seg = volume()
    with pytest.raises(ValueError, match="shape"):
        preview_figure(image, seg[:-1], Geometry((1.0, 1.0, 1.0), (0, 0, 0), IDENTITY, 3), VALUES, NAMES)


def test_preview_channels_keeps_what_is_drawn():
    from autoseg.evaluation.preview import preview_channels

    mri = np.zeros((4, 3, 5, 5), np.float32)
    kept = preview_channels(mri, Geometry((1.0, 1.0, 1.0), (0, 0, 0), IDENTITY, 3))
    assert kept.shape == (1, 3, 5, 5) and not np.shares_memory(kept, mri)
    rgb = np.zeros((3, 1, 5, 5), np.float32)
    assert preview_channels(rgb, Geometry((1.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2)).shape == (3, 1, 5, 5)
