import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.inference.export import entropy_map, label_volumes_ml, to_original_geometry, write_prediction
from autoseg.postprocessing.ensemble import label_dtype, segmentation_from_probabilities
from autoseg.planners.plans import (
    ChannelNormalization,
    ConfigurationPlan,
    NetworkTopology,
    Plans,
    ResamplingPlan,
)
from autoseg.preprocessing.pipeline import preprocess_case


def make_plans(spacing, dim=3, label_values=(0, 1, 2), separate_axis=None, patch=(8, 8, 8)) -> Plans:
    topo = NetworkTopology([4, 8], [[3] * dim] * 2, [[1] * dim, [2] * dim])
    cfg = ConfigurationPlan(
        name="3d_fullres" if dim == 3 else "2d", dim=dim, data_identifier="x", spacing=list(spacing),
        median_shape=[8, 8, 8], patch_size=list(patch[-dim:]), batch_size=2, network=topo,
        resampling=ResamplingPlan(separate_axis=separate_axis),
    )
    return Plans(1, "t", "default", "cpu", 8, ["MR"], list(label_values), [f"l{v}" for v in label_values],
                 [ChannelNormalization("zscore")], {cfg.name: cfg})


def framed_case(shape=(14, 20, 18), label_values=(0, 1, 2), seed=0):
    """An image with a zero frame (so it is cropped) and blobs of each label inside."""
    rng = np.random.default_rng(seed)
    image = np.zeros((1,) + shape, np.float32)
    image[0, 2:-3, 3:-2, 1:-4] = rng.normal(5, 1, size=(shape[0] - 5, shape[1] - 5, shape[2] - 5))
    label = np.full(shape, label_values[0], np.int16)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    label[((zz - 7) ** 2 / 16 + (yy - 10) ** 2 / 25 + (xx - 8) ** 2 / 16) < 1] = label_values[1]
    label[(zz >= 5) & (zz < 8) & (yy >= 12) & (yy < 16) & (xx >= 4) & (xx < 7)] = label_values[2]
    return image, label


def one_hot(seg: np.ndarray, k: int) -> np.ndarray:
    return (np.arange(k)[:, None, None, None] == seg[None]).astype(np.float32)


def roundtrip(plans, image, label, spacing):
    cfg = next(iter(plans.configurations.values()))
    geometry = Geometry(tuple(spacing), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)
    data, seg, props = preprocess_case(image, label, geometry, plans, cfg)
    probs = to_original_geometry(one_hot(seg, plans.num_classes), props, plans, cfg)
    assert probs.shape == (plans.num_classes,) + image.shape[1:]
    assert probs.dtype == np.float32
    return props, probs, segmentation_from_probabilities(probs, plans.label_values)


def test_roundtrip_with_cropping_only_is_exact():
    image, label = framed_case(label_values=(0, 16, 24))
    plans = make_plans((1.0, 1.0, 1.0), label_values=(0, 16, 24))
    props, probs, back = roundtrip(plans, image, label, (1.0, 1.0, 1.0))
    assert props["shape_after_crop"] != props["original_shape"]  # the case really was cropped
    np.testing.assert_array_equal(back, label)
    # outside the crop box: background with probability 1
    assert probs[0, 0].min() == 1.0 and probs[1:, 0].max() == 0.0


def test_roundtrip_with_anisotropic_resampling_is_nearly_exact():
    image, label = framed_case(shape=(14, 20, 18))
    plans = make_plans((1.5, 0.7, 0.7), separate_axis=0)
    props, probs, back = roundtrip(plans, image, label, (3.0, 1.0, 1.0))
    assert props["shape_after_resampling"] != props["shape_after_crop"]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    mismatch = np.mean(back != label)
    assert mismatch < 0.01, mismatch
    assert set(np.unique(back)) == {0, 1, 2}


def test_segmentation_from_probabilities_maps_values_and_dtype():
    probs = np.zeros((3, 1, 2, 2), np.float32)
    probs[0, 0, 0, 0] = probs[1, 0, 0, 1] = probs[2, 0, 1, 0] = probs[2, 0, 1, 1] = 1
    seg = segmentation_from_probabilities(probs, [0, 16, 300])
    assert seg.dtype == np.uint16
    np.testing.assert_array_equal(seg[0], [[0, 16], [300, 300]])
    assert segmentation_from_probabilities(probs, [0, 1, 2]).dtype == np.uint8
    assert label_dtype([-1, 5]) == np.int8


def test_entropy_and_volumes():
    probs = np.array([1.0, 0.5, 0.0], np.float32), np.array([0.0, 0.5, 1.0], np.float32)
    probs = np.stack(probs)[:, None, None, :]  # (2, 1, 1, 3)
    e = entropy_map(probs)
    assert e.dtype == np.float32
    np.testing.assert_allclose(e[0, 0], [0, np.log(2), 0], atol=1e-6)
    seg = np.array([[[0, 5, 5, 9]]], np.uint8)
    vol = label_volumes_ml(seg, (2.0, 1.0, 0.5), [0, 5, 9])
    assert vol == {0: pytest.approx(0.001), 5: pytest.approx(0.002), 9: pytest.approx(0.001)}


def _assert_same_geometry(a: str, b: str):
    ia, ib = sitk.ReadImage(a), sitk.ReadImage(b)
    assert ia.GetSize() == ib.GetSize()
    assert ia.GetSpacing() == ib.GetSpacing()
    assert ia.GetOrigin() == ib.GetOrigin()
    assert ia.GetDirection() == ib.GetDirection()
    assert ia.GetDimension() == ib.GetDimension()


def test_written_prediction_keeps_oblique_geometry(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry((2.5, 0.8, 0.9), (10.5, -3.25, 7.0), direction, 3)
    src = tmp_path / "in.nii.gz"
    write_image(np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32), geometry, src)
    _, g = read_image(src)
    seg = np.zeros((5, 6, 7), np.uint8)
    seg[2, 3, 4] = 2
    write_prediction(seg, g, tmp_path / "out.nii.gz")
    _assert_same_geometry(str(src), str(tmp_path / "out.nii.gz"))
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz")))
    np.testing.assert_array_equal(out, seg)
    assert not list(tmp_path.glob(".partial-*"))


def test_written_prediction_keeps_2d_png_geometry(tmp_path):
    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8), isVector=True)
    src = tmp_path / "in.png"
    sitk.WriteImage(img, str(src))
    arr, g = read_image(src)
    assert arr.shape == (3, 1, 9, 13) and g.file_ndim == 2
    seg = np.zeros((1, 9, 13), np.uint8)
    seg[0, 2:4, 5:9] = 1
    write_prediction(seg, g, tmp_path / "out.png")
    _assert_same_geometry(str(src), str(tmp_path / "out.png"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.png"))), seg[0])
