"""Cropping, resampling, normalization and the per-case pipeline (autoseg.preprocessing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry
from autoseg.planners.plans import (
    ChannelNormalization,
    ConfigurationPlan,
    NetworkTopology,
    Plans,
    ResamplingPlan,
)
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

from autoseg.preprocessing.cropping import crop, crop_to_nonzero, nonzero_bbox
from autoseg.preprocessing.normalization import normalize, normalize_channel
from autoseg.preprocessing.pipeline import labels_to_class_indices, preprocess_case, sample_class_locations
from autoseg.preprocessing.resampling import compute_new_shape, resample

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def make_plans(spacing, dim=3, separate_axis=None, label_values=(0, 1, 2), norm=None, channels=1) -> tuple[Plans, ConfigurationPlan]:
    n = len(spacing) if dim == 3 else 2
    topo = NetworkTopology([8, 16], [[3] * n] * 2, [[1] * n, [2] * n])
    config = ConfigurationPlan(
        name="3d_fullres" if dim == 3 else "2d", dim=dim, data_identifier="test_data", spacing=list(spacing),
        median_shape=[8, 8, 8], patch_size=[8] * n, batch_size=2, network=topo,
        resampling=ResamplingPlan(separate_axis=separate_axis),
    )
    plans = Plans(
        version=1, dataset_name="t", planner="test", profile="cpu", gpu_memory_gb=8, channel_names=["MRI"] * channels,
        label_values=list(label_values), label_names=[str(v) for v in label_values],
        normalization=[norm or ChannelNormalization("zscore")] * channels, configurations={config.name: config},
    )
    return plans, config


def geometry(spacing) -> Geometry:
    return Geometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)


# --- cropping ---

def test_crop_uncrop_round_trip():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 10, 12, 14), np.float32)
    image[0, 2:7, 3:9, 4:5] = rng.normal(size=(5, 6, 1)) + 5
    image[1, 3:8, 3:4, 4:12] = 1  # the second channel extends the box
    label = (image[0] > 0).astype(np.uint8)
    cropped, cropped_label, bbox = crop_to_nonzero(image, label)
    assert bbox == [[2, 8], [3, 9], [4, 12]]
    assert cropped.shape == (2, 6, 6, 8) and cropped_label.shape == (6, 6, 8)
    # the box puts a result back where it came from (acvl-utils, as export does)
    np.testing.assert_array_equal(insert_crop_into_image(np.zeros_like(image), cropped, bbox), image)
    np.testing.assert_array_equal(insert_crop_into_image(np.zeros_like(label), cropped_label, bbox), label)
    probs = np.full((3,) + cropped.shape[1:], 0.5, np.float32)
    full = insert_crop_into_image(np.full((3, 10, 12, 14), 0.25, np.float32), probs, bbox)
    assert full.shape == (3, 10, 12, 14) and full[0, 0, 0, 0] == 0.25 and full[1, 2, 3, 4] == 0.5
    with pytest.raises(ValueError):
        insert_crop_into_image(np.zeros((3, 10, 12, 14)), probs[:, :-1], bbox)


def test_all_zero_image_keeps_full_extent():
    image = np.zeros((1, 4, 5, 6), np.float32)
    assert nonzero_bbox(image) == [[0, 4], [0, 5], [0, 6]]
    assert crop(image, nonzero_bbox(image)).shape == image.shape


# --- resampling ---

def test_compute_new_shape():
    assert compute_new_shape([10, 100, 100], [3.0, 0.5, 0.5], [1.5, 1.0, 1.0]) == [20, 50, 50]
    assert compute_new_shape([1, 64, 64], [1.0, 1.0, 1.0], [5.0, 1.0, 1.0]) == [1, 64, 64]  # never 0


def test_no_op_when_shape_unchanged():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)
    out = resample(x, (5, 6, 7), order=3)
    assert out is x  # no work, not even a copy
    lab = np.random.default_rng(0).integers(0, 3, (5, 6, 7)).astype(np.int16)
    assert np.shares_memory(resample(lab, (5, 6, 7), order=1, is_label=True), lab)
    u8 = np.ones((1, 5, 6, 7), np.uint8)
    assert resample(u8, (5, 6, 7)).dtype == np.float32


def test_image_resampling_shape_and_values():
    z, y, x = np.meshgrid(np.arange(14), np.arange(15), np.arange(16), indexing="ij")
    ramp = (2.0 * x + 1.0 * y - z).astype(np.float32)[None]
    up = resample(ramp, (28, 30, 32), order=3)
    assert up.shape == (1, 28, 30, 32) and up.dtype == np.float32
    # pixel-area alignment: output voxel i sits at input coordinate (i + 0.5) / 2 - 0.5
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) / 2 - 0.5 for n in (28, 30, 32)], indexing="ij")
    expected = 2.0 * xx + yy - zz
    # (a spline with edge replication bends within a few voxels of the border: compare the interior)
    interior = (slice(None), slice(12, -12), slice(12, -12), slice(12, -12))
    np.testing.assert_allclose(up[interior], expected[None][interior], atol=1e-3)
    down = resample(up, (14, 15, 16), order=3)
    inner = (slice(None), slice(5, -5), slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(down[inner], ramp[inner], atol=0.01)
    lin = resample(ramp, (28, 30, 32), order=1)
    np.testing.assert_allclose(lin[:, 1:-1, 1:-1, 1:-1], expected[None][:, 1:-1, 1:-1, 1:-1], atol=1e-4)


def test_label_resampling_keeps_label_values():
    rng = np.random.default_rng(1)
    lab = np.zeros((12, 14, 16), np.int16)
    lab[2:9, 3:10, 4:12] = 3
    lab[4:7, 5:8, 6:9] = 7
    lab[rng.random(lab.shape) > 0.97] = 5
    for order in (0, 1):
        for shape in [(20, 9, 31), (6, 28, 16)]:
            out = resample(lab, shape, order=order, is_label=True)
            assert out.shape == shape and out.dtype == np.int16
            assert set(np.unique(out)) <= {0, 3, 5, 7}
    # linear per-label resampling reproduces a blob's volume in physical units
    big = resample(lab, (24, 28, 32), order=1, is_label=True)
    assert abs((big == 3).sum() / 8 - (lab == 3).sum()) / (lab == 3).sum() < 0.15
    assert set(np.unique(resample(lab, (24, 28, 32), order=0, is_label=True))) == {0, 3, 5, 7}


def test_anisotropic_separate_axis_does_not_blend_slices():
    # each thick slice has its own constant value: nearest along z must not invent new values
    slices = np.arange(1, 6, dtype=np.float32) * 10
    x = np.broadcast_to(slices[:, None, None], (5, 16, 16)).copy()[None]
    out = resample(x, (10, 24, 24), order=3, separate_axis=0, separate_axis_order=0)
    assert out.shape == (1, 10, 24, 24)
    np.testing.assert_allclose(np.unique(np.round(out, 3)), slices)
    # joint cubic resampling would blend neighbouring slices
    joint = resample(x, (10, 24, 24), order=3)
    assert len(np.unique(np.round(joint, 3))) > 5
    # linear along the separate axis blends, monotonically between neighbours
    lin = resample(x, (10, 24, 24), order=3, separate_axis=0, separate_axis_order=1)
    assert lin.min() >= 10 - 1e-4 and lin.max() <= 50 + 1e-4
    # the in-plane axes of each slice are resampled: an x-ramp keeps its slope per slice
    ramp = np.broadcast_to(np.arange(24, dtype=np.float32), (4, 3, 24)).copy()
    r = resample(ramp, (4, 6, 48), order=3, separate_axis=1)
    expected = np.broadcast_to((np.arange(48) + 0.5) / 2 - 0.5, (4, 6, 48))
    np.testing.assert_allclose(r[:, :, 12:-12], expected[:, :, 12:-12], atol=1e-3)


def test_probability_maps_stay_a_partition_of_unity():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 6, 10, 12)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    out = resample(p, (9, 17, 23), order=1)
    assert out.dtype == np.float32 and out.shape == (4, 9, 17, 23)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert out.min() >= 0
    out_sep = resample(p, (12, 17, 23), order=1, separate_axis=0, separate_axis_order=1)
    np.testing.assert_allclose(out_sep.sum(0), 1.0, atol=1e-5)


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError):
        resample(np.zeros((4, 4)), (2, 2, 2))
    with pytest.raises(ValueError):
        resample(np.zeros((1, 4, 4, 4)), (2, 2))
    with pytest.raises(ValueError):
        resample(np.zeros((1, 4, 4, 4)), (2, 2, 2), separate_axis=3)


# --- normalization ---

def test_ct_normalization_clips_then_uses_dataset_statistics():
    x = np.array([-3000, -100, 0, 100, 3000], np.float32)
    out = normalize_channel(x, ChannelNormalization("ct", clip_low=-100, clip_high=200, mean=50, std=25))
    np.testing.assert_allclose(out, [-6, -6, -2, 2, 6])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="clip_low"):
        normalize_channel(x, ChannelNormalization("ct"))


def test_zscore_and_rgb_are_per_case_and_per_channel():
    rng = np.random.default_rng(3)
    image = np.stack([rng.normal(100, 20, (1, 8, 8)), rng.integers(0, 256, (1, 8, 8))]).astype(np.uint8)
    out = normalize(image, [ChannelNormalization("zscore"), ChannelNormalization("rgb")])
    assert out.dtype == np.float32 and out.shape == image.shape
    for c in range(2):
        assert abs(out[c].mean()) < 1e-5 and abs(out[c].std() - 1) < 1e-4
    const = normalize_channel(np.full((3, 3), 7.0), ChannelNormalization("zscore"))
    assert np.all(np.isfinite(const)) and np.all(const == 0)
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize_channel(image[0], ChannelNormalization("minmax"))
    with pytest.raises(ValueError, match="channel"):
        normalize(image, [ChannelNormalization("zscore")])


# --- pipeline ---

def test_labels_to_class_indices():
    lab = np.array([[[0, 16, 24], [24, 0, 16]]], np.uint8)
    np.testing.assert_array_equal(labels_to_class_indices(lab, [0, 16, 24]), [[[0, 1, 2], [2, 0, 1]]])
    assert labels_to_class_indices(lab.astype(np.float32), [0, 16, 24]).dtype == np.int16
    with pytest.raises(ValueError, match="24"):
        labels_to_class_indices(lab, [0, 16])


def test_sample_class_locations_is_capped_and_seeded():
    seg = np.zeros((10, 10, 10), np.int16)
    seg[:5] = 1
    seg[9, 9, 9] = 2
    a = sample_class_locations(seg, 4, seed=1, max_per_class=100)
    assert len(a["1"]) == 100 and a["2"] == [[9, 9, 9]] and a["3"] == []
    assert all(seg[tuple(p)] == 1 for p in a["1"])
    assert a == sample_class_locations(seg, 4, seed=1, max_per_class=100)


def _synthetic_case(shape=(10, 20, 24), seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((1,) + shape, np.float32)
    image[0, 1:-1, 2:-3, 3:-2] = rng.normal(100, 10, (shape[0] - 2, shape[1] - 5, shape[2] - 5))
    label = np.zeros(shape, np.uint8)
    label[3:7, 6:14, 8:16] = 4
    label[4:6, 8:12, 10:14] = 9
    return image, label


def test_preprocess_case_3d():
    image, label = _synthetic_case()
    plans, config = make_plans([1.0, 1.0, 1.0], label_values=(0, 4, 9))
    data, seg, props = preprocess_case(image, label, geometry((2.0, 1.0, 1.0)), plans, config, case_id="c1")
    bbox = [[1, 9], [2, 17], [3, 22]]
    assert props["crop_bbox"] == bbox
    assert props["shape_after_crop"] == [8, 15, 19]
    assert data.shape == (1, 16, 15, 19) and data.dtype == np.float32
    assert seg.shape == (16, 15, 19) and seg.dtype == np.int16
    assert set(np.unique(seg)) == {0, 1, 2}
    assert props["shape_after_resampling"] == [16, 15, 19]
    assert props["original_shape"] == [10, 20, 24] and props["original_spacing"] == [2.0, 1.0, 1.0]
    assert props["target_spacing"] == [1.0, 1.0, 1.0] and props["case_id"] == "c1"
    assert set(props) >= {"case_id", "geometry", "original_shape", "crop_bbox", "shape_after_crop", "original_spacing",
                          "target_spacing", "shape_after_resampling", "class_locations"}
    assert Geometry.from_dict(props["geometry"]).spacing == (2.0, 1.0, 1.0)
    for k in ("1", "2"):
        locs = np.array(props["class_locations"][k])
        assert len(locs) > 0 and np.all(seg[tuple(locs.T)] == int(k))
    # inference: no label, identical data
    data2, seg2, props2 = preprocess_case(image, None, geometry((2.0, 1.0, 1.0)), plans, config, case_id="c1")
    assert seg2 is None and "class_locations" not in props2
    np.testing.assert_array_equal(data, data2)


def test_preprocess_case_2d_keeps_slice_spacing():
    image, label = _synthetic_case()
    plans, config = make_plans([1.0, 0.5, 0.5], dim=2, label_values=(0, 4, 9))
    data, seg, props = preprocess_case(image, label, geometry((3.0, 1.0, 1.0)), plans, config)
    assert props["target_spacing"] == [3.0, 0.5, 0.5]
    assert data.shape == (1, 8, 30, 38) and seg.shape == (8, 30, 38)
    assert props["separate_axis"] == 0


def test_preprocess_case_anisotropic_uses_separate_axis():
    image, label = _synthetic_case()
    plans, config = make_plans([2.0, 1.0, 1.0], separate_axis=0, label_values=(0, 4, 9))
    data, seg, props = preprocess_case(image, label, geometry((8.0, 1.0, 1.0)), plans, config)
    assert props["separate_axis"] == 0 and data.shape == (1, 32, 15, 19)
    # nearest along z: output slices are copies of input slices (after normalization)
    assert np.array_equal(data[0, 0], data[0, 1]) and np.array_equal(data[0, 2], data[0, 3])


def test_preprocess_case_rejects_mismatched_label():
    image, label = _synthetic_case()
    plans, config = make_plans([1.0, 1.0, 1.0], label_values=(0, 4, 9))
    with pytest.raises(ValueError, match="label shape"):
        preprocess_case(image, label[:-1], geometry((1, 1, 1)), plans, config)


def test_bias_field_correction_flattens_a_smooth_field():
    from autoseg.preprocessing.bias_field import correct_bias_field, is_mri_channel

    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 32, 32)], indexing="ij")
    tissue = (zz ** 2 + yy ** 2 + xx ** 2) < 0.8
    rng = np.random.default_rng(0)
    truth = np.where(tissue, 100.0, 0.0) + tissue * rng.normal(0, 2, tissue.shape)
    bias = np.exp(0.3 * xx)  # smooth multiplicative field, +-35%
    observed = (truth * bias).astype(np.float32)
    corrected = correct_bias_field(observed, (1.0, 1.0, 1.0), shrink=2, iterations=20)
    cv = lambda a: a[tissue].std() / a[tissue].mean()
    assert corrected.shape == observed.shape and corrected.dtype == np.float32
    assert cv(corrected) < 0.6 * cv(observed)
    assert is_mri_channel("T2", "zscore") and not is_mri_channel("CT", "ct") and not is_mri_channel("R", "rgb")


@pytest.mark.skipif(not (DATA / "ACDC").is_dir(), reason="shared ACDC data not present")
def test_real_acdc_case_anisotropic():
    from autoseg.dataset.imageio import read_image, read_label

    img, geo = read_image(DATA / "ACDC" / "imagesTr" / "patient001_frame01.nii.gz")
    lab, _ = read_label(DATA / "ACDC" / "labelsTr" / "patient001_frame01.nii.gz")
    plans, config = make_plans([10.0, 2.0, 2.0], separate_axis=0, label_values=(0, 1, 2, 3))
    data, seg, props = preprocess_case(img.astype(np.float32), lab, geo, plans, config, case_id="patient001_frame01")
    assert data.shape[1] == img.shape[1]  # 10 mm slices stay 10 mm: z is not touched
    assert data.shape[2:] == tuple(round(s * 1.5625 / 2) for s in props["shape_after_crop"][1:])
    assert set(np.unique(seg)) == {0, 1, 2, 3}
