import math

import numpy as np
import pytest

from autoseg.trainers.augmentation import (SpatialTransform, build_train_transforms, build_val_transforms,
                                           downsample_seg)
from autoseg.trainers.batch_loader import make_batch
from autoseg.trainers.patch_sampler import PatchSampler

from tests.trainers.test_patch_sampler import write_case

SCALES_3D = [[1, 1, 1], [1, 2, 2], [2, 4, 4]]


def test_train_batch_shapes_and_labels_3d(sampler3d):
    t = build_train_transforms((8, 16, 16), 3, anisotropic=False, deep_supervision_scales=SCALES_3D)
    for i in range(6):
        b = make_batch(sampler3d, t, 0, i)
        assert b["data"].shape == (4, 2, 8, 16, 16) and b["data"].dtype == np.float32
        assert np.isfinite(b["data"]).all()
        shapes = [tuple(x.shape) for x in b["target"]]
        assert shapes == [(4, 1, 8, 16, 16), (4, 1, 8, 8, 8), (4, 1, 4, 4, 4)]
        for x in b["target"]:
            assert set(np.unique(x)) <= {0, 1, 2}


def test_train_batch_2d(tmp_path):
    write_case(tmp_path, "a", (5, 40, 36))
    s = PatchSampler(tmp_path, ["a"], (16, 24), dim=2, batch_size=3)
    t = build_train_transforms((16, 24), 2, anisotropic=False, deep_supervision_scales=[[1, 1], [2, 2], [4, 4]])
    b = make_batch(s, t, 0, 0)
    assert b["data"].shape == (3, 1, 16, 24)
    assert [x.shape for x in b["target"]] == [(3, 1, 16, 24), (3, 1, 8, 12), (3, 1, 4, 6)]


def test_seed_reproduces_augmented_batch(sampler3d):
    t = build_train_transforms((8, 16, 16), 3, anisotropic=True, deep_supervision_scales=SCALES_3D)
    a, b, c = make_batch(sampler3d, t, 5, 2), make_batch(sampler3d, t, 5, 2), make_batch(sampler3d, t, 5, 3)
    np.testing.assert_array_equal(a["data"], b["data"])
    np.testing.assert_array_equal(a["target"][0], b["target"][0])
    assert a["params"] == b["params"]
    assert not np.array_equal(a["data"], c["data"])


def test_recorded_params_replay(sampler3d):
    t = build_train_transforms((8, 16, 16), 3, anisotropic=False, deep_supervision_scales=None)
    rng = np.random.default_rng(0)
    data, seg = sampler3d.sample_batch(rng, size=(30, 40, 40))
    params = t.sample(rng, 4, 2)
    one = t.apply({"data": data.copy(), "seg": seg.copy()}, params)
    two = t.apply({"data": data.copy(), "seg": seg.copy()}, params)
    np.testing.assert_array_equal(one["data"], two["data"])


def test_spatial_identity_is_centre_crop_and_rotation_is_exact():
    x = np.arange(2 * 1 * 10 * 12, dtype=np.float32).reshape(2, 1, 10, 12)
    seg = (x > 100).astype(np.int16)
    t = SpatialTransform((4, 6), rotation=math.pi, scale=(1, 1))
    out = t.apply({"data": x.copy(), "seg": seg.copy()}, [None, {"angles": [math.pi], "scale": None}])
    np.testing.assert_array_equal(out["data"][0], x[0, :, 3:7, 3:9])
    # 180 degrees about the centre of an even-sized crop is a flip of both axes
    np.testing.assert_allclose(out["data"][1], x[1, :, 3:7, 3:9][:, ::-1, ::-1], atol=1e-3)
    np.testing.assert_array_equal(out["seg"][1], seg[1, :, 3:7, 3:9][:, ::-1, ::-1])


def test_region_size_covers_rotated_grid():
    t = SpatialTransform((8, 16, 16), rotation=math.radians(30), scale=(0.7, 1.4))
    p = {"angles": [0.5, 0.5, 0.5], "scale": 1.4}
    size = t.region_size(p)
    reach = np.abs(t.coordinates(p)).reshape(3, -1).max(axis=1)
    assert all(s >= 2 * r + 2 for s, r in zip(size, reach))
    assert t.region_size(None) == (8, 16, 16)


def test_anisotropic_rotates_in_plane_only():
    t = build_train_transforms((8, 16, 16), 3, anisotropic=True, deep_supervision_scales=None)
    params = t.sample(np.random.default_rng(0), 200, 1)[0]
    rotated = [p["angles"] for p in params if p is not None and p["angles"] is not None]
    assert rotated and all(a[1] == 0 and a[2] == 0 for a in rotated)


def test_val_transforms_only_targets():
    t = build_val_transforms([[1, 1, 1], [2, 2, 2]])
    seg = np.random.default_rng(0).integers(0, 3, (2, 1, 8, 8, 8)).astype(np.int16)
    data = np.ones((2, 1, 8, 8, 8), np.float32)
    out, _ = t({"data": data.copy(), "seg": seg}, np.random.default_rng(0))
    np.testing.assert_array_equal(out["data"], data)
    np.testing.assert_array_equal(out["target"][1], seg[:, :, ::2, ::2, ::2])
    assert downsample_seg(seg, [[1, 2, 4]])[0].shape == (2, 1, 8, 4, 2)


def test_mirror_flips_data_and_seg_together():
    from autoseg.trainers.augmentation import MirrorTransform

    x = np.arange(2 * 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 2, 3, 4, 5)
    seg = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 1, 3, 4, 5)
    out = MirrorTransform((0, 1, 2)).apply({"data": x.copy(), "seg": seg.copy()}, [[0, 2], None])
    np.testing.assert_array_equal(out["data"][0], x[0][:, ::-1, :, ::-1])
    np.testing.assert_array_equal(out["seg"][0], seg[0][:, ::-1, :, ::-1])
    np.testing.assert_array_equal(out["data"][1], x[1])


def test_intensity_transforms_keep_shape_and_finite_values():
    from autoseg.trainers.augmentation import (BrightnessMultiplicative, Contrast, Gamma, GaussianBlur, GaussianNoise,
                                               SimulateLowResolution)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 8, 12, 10)).astype(np.float32)
    for t in (GaussianNoise(p=1), GaussianBlur(p=1, p_per_channel=1), BrightnessMultiplicative(p=1), Contrast(p=1),
              SimulateLowResolution(p=1, p_per_channel=1, ignore_axes=(0,)), Gamma(p=1), Gamma(p=1, invert=True)):
        out = t.apply({"data": x.copy(), "seg": None}, t.sample(np.random.default_rng(1), 3, 2))["data"]
        assert out.shape == x.shape and out.dtype == np.float32 and np.isfinite(out).all()
        assert not np.allclose(out, x), type(t).__name__
    # gamma keeps each channel's mean and std
    g = Gamma(p=1).apply({"data": x.copy(), "seg": None}, [[1.4, 0.8]] * 3)["data"]
    np.testing.assert_allclose(g.mean(axis=(2, 3, 4)), x.mean(axis=(2, 3, 4)), atol=1e-4)
    np.testing.assert_allclose(g.std(axis=(2, 3, 4)), x.std(axis=(2, 3, 4)), rtol=1e-3)
    # contrast stays within the original range
    c = Contrast(p=1).apply({"data": x.copy(), "seg": None}, [[1.25, 1.25]] * 3)["data"]
    assert c.max() <= x.max() + 1e-6 and c.min() >= x.min() - 1e-6


def test_foreground_mostly_survives_augmentation(tmp_path):
    for i in range(2):
        write_case(tmp_path, f"c{i}", (40, 64, 64), seed=i)
    s = PatchSampler(tmp_path, ["c0", "c1"], (8, 16, 16), dim=3, batch_size=4, oversample_foreground=1.0)
    t = build_train_transforms((8, 16, 16), 3, anisotropic=False, deep_supervision_scales=None)
    hits = [bool((b > 0).any()) for i in range(10) for b in make_batch(s, t, 0, i)["target"][0]]
    assert np.mean(hits) > 0.9


@pytest.mark.parametrize("region", [(9, 14, 13), (10, 15, 12)])
def test_zero_rotation_equals_plain_crop(region):
    # the interpolated path and the crop path must put the same voxel at the patch centre
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1) + region).astype(np.float32)
    seg = rng.integers(0, 3, (1, 1) + region).astype(np.int16)
    t = SpatialTransform((5, 8, 7), rotation=0.5, scale=(1, 1))
    a = t.apply({"data": x.copy(), "seg": seg.copy()}, [None])
    b = t.apply({"data": x.copy(), "seg": seg.copy()}, [{"angles": [0.0, 0.0, 0.0], "scale": None}])
    np.testing.assert_allclose(a["data"], b["data"], atol=1e-5)
    np.testing.assert_array_equal(a["seg"], b["seg"])


def test_light_augmentation_never_resamples(sampler3d):
    """light: labels are only ever mirrored (no interpolation), intensities only rescaled or noised."""
    from autoseg.trainers.augmentation import MirrorTransform

    light = build_train_transforms((8, 16, 16), 3, anisotropic=False, deep_supervision_scales=SCALES_3D,
                                   strength="light")
    assert not any(isinstance(t, SpatialTransform) for t in light.transforms)
    assert any(isinstance(t, MirrorTransform) for t in light.transforms)
    for i in range(4):
        rng = np.random.default_rng([0, i])
        locations = sampler3d.sample_locations(rng)
        b = make_batch(sampler3d, light, 0, i)
        assert b["data"].shape == (4, 2, 8, 16, 16)
        for loc, seg, p_mirror in zip(locations, b["target"][0], b["params"][-1]):
            raw_seg = sampler3d.crop(loc, (8, 16, 16))[1]
            flipped = raw_seg
            for axis in p_mirror or ():
                flipped = np.flip(flipped, axis + 1)
            np.testing.assert_array_equal(seg, flipped)
    with pytest.raises(ValueError, match="strength"):
        build_train_transforms((8, 16, 16), 3, False, None, strength="heavy")


def test_mirror_axes_limit_the_mirroring():
    from autoseg.trainers.augmentation import MirrorTransform

    for strength in ("light", "full"):
        none = build_train_transforms((8, 16, 16), 3, False, SCALES_3D, strength=strength, mirror_axes=())
        assert not any(isinstance(t, MirrorTransform) for t in none.transforms)
        some = build_train_transforms((8, 16, 16), 3, False, SCALES_3D, strength=strength, mirror_axes=[1])
        assert [t.axes for t in some.transforms if isinstance(t, MirrorTransform)] == [(1,)]
    with pytest.raises(ValueError, match="mirror_axes"):
        build_train_transforms((16, 16), 2, False, None, mirror_axes=[2])


def test_light_augmentation_zooms_only_with_a_planned_scale_range():
    light = build_train_transforms((8, 16, 16), 3, anisotropic=True, deep_supervision_scales=None, strength="light",
                                   scale=(0.5, 1.6))
    spatial = [t for t in light.transforms if isinstance(t, SpatialTransform)]
    assert len(spatial) == 1 and spatial[0].p_rotation == 0.0 and spatial[0].scale == (0.5, 1.6)
    assert spatial[0].scale_axes == (1, 2)  # thick slices: never zoomed along z
    full = build_train_transforms((16, 16), 2, anisotropic=False, deep_supervision_scales=None)
    assert [t.scale for t in full.transforms if isinstance(t, SpatialTransform)] == [(0.7, 1.4)]


def test_in_plane_scaling_leaves_slices_alone():
    """A zoom on thick-slice data keeps every output slice a resampling of its own input slice."""
    rng = np.random.default_rng(0)
    x = np.zeros((1, 1, 6, 20, 20), np.float32)
    for z in range(6):
        x[0, 0, z] = z  # each slice constant: any mixing along z shows as a non-integer value
    seg = np.zeros((1, 1, 6, 20, 20), np.int16)
    t = SpatialTransform((6, 12, 12), rotation=0.0, scale=(0.5, 0.5), p_rotation=0.0, p_scale=1.0, scale_axes=(1, 2))
    params = t.sample(rng, 1, 1)
    out = t.apply({"data": [x[0]], "seg": [seg[0]]}, params)["data"]
    np.testing.assert_allclose(out[0, 0], np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 12, 12)), atol=1e-4)
    # scaling every axis would have mixed them
    t_all = SpatialTransform((6, 12, 12), rotation=0.0, scale=(0.5, 0.5), p_rotation=0.0, p_scale=1.0)
    out_all = t_all.apply({"data": [x[0]], "seg": [seg[0]]}, params)["data"]
    assert not np.allclose(out_all[0, 0, 1], 1.0, atol=1e-3)
