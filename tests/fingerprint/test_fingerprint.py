"""Fingerprint: per-case shapes, crops, label counts, intensity statistics; JSON round trip."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry, read_image, read_label, write_image
from autoseg.dataset.layout import load_dataset
from autoseg.errors import DatasetError
from autoseg.fingerprint import Fingerprint, compute_fingerprint
from autoseg.synthetic import make_dataset

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GEO = Geometry((2.0, 1.0, 0.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fp") / "Synth", num_cases=4, shape=(10, 16, 14), spacing=(2.0, 1.0, 1.0), seed=3)


def _write_msd(root: Path, cases: list[tuple[np.ndarray, np.ndarray]], modality=None, labels=None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, (image, label) in enumerate(cases):
        name = f"c{i}.nii.gz"
        write_image(image, GEO, root / "imagesTr" / name)
        write_image(label, GEO, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": root.name, "tensorImageSize": "3D", "modality": modality or {"0": "MRI"},
            "labels": labels or {"0": "background", "1": "a", "3": "b"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_synthetic_fingerprint_matches_direct_computation(synthetic):
    spec = load_dataset(synthetic)
    fp = compute_fingerprint(spec)
    assert fp.num_cases == 4 and fp.channel_names == ["MRI"] and fp.label_values == [0, 1, 2]
    assert fp.label_names == ["background", "inner", "outer"] and not fp.is_2d
    assert fp.median_spacing == [2.0, 1.0, 1.0] and fp.anisotropy == pytest.approx(2.0)
    foreground = []
    for case, cfp in zip(spec.cases, fp.cases):
        image, geo = read_image(case.image_files[0])
        label, _ = read_label(case.label_file)
        assert cfp.spacing == list(geo.spacing) and cfp.shape == list(label.shape)
        assert sum(cfp.class_voxels.values()) == label.size
        assert cfp.class_voxels[1] == int((label == 1).sum())
        assert set(cfp.class_components) == {1, 2} and cfp.class_components[1] == 1
        foreground.append(image[0][label > 0])
    foreground = np.concatenate(foreground).astype(np.float64)
    assert foreground.size < 4 * 10_000  # so every foreground voxel is sampled: statistics are exact
    ch = fp.intensity[0]
    assert ch.num_samples == foreground.size
    assert ch.mean == pytest.approx(foreground.mean(), rel=1e-5)
    assert ch.std == pytest.approx(foreground.std(), rel=1e-4)
    assert ch.percentile_99_5 == pytest.approx(np.percentile(foreground, 99.5), rel=1e-5)
    assert ch.min == pytest.approx(foreground.min()) and ch.max == pytest.approx(foreground.max())
    assert ch.clipped_std <= ch.std


def test_parallel_equals_serial_and_json_round_trip(synthetic, tmp_path):
    spec = load_dataset(synthetic)
    serial = compute_fingerprint(spec, num_workers=1, seed=5)
    parallel = compute_fingerprint(spec, num_workers=2, seed=5)
    assert serial.to_dict() == parallel.to_dict()
    path = tmp_path / "fingerprint.json"
    serial.save(path)
    loaded = Fingerprint.load(path)
    assert loaded == serial
    assert all(isinstance(k, int) for k in loaded.cases[0].class_voxels)
    raw = json.loads(path.read_text())
    raw["version"] = 999
    with pytest.raises(ValueError, match="version"):
        Fingerprint.from_dict(raw)


def test_crop_to_nonzero_and_component_counts(tmp_path):
    image = np.zeros((8, 12, 10), np.float32)
    image[2:6, 3:11, 1:7] = 5.0
    label = np.zeros((8, 12, 10), np.uint8)
    label[2:4, 3:5, 1:3] = 1
    label[4:6, 8:11, 4:7] = 1  # second, separate island of label 1
    label[3, 7, 5] = 3  # non-consecutive label value
    root = _write_msd(tmp_path / "Crop", [(image, label)])
    fp = compute_fingerprint(load_dataset(root))
    c = fp.cases[0]
    assert c.crop_bbox == [[2, 6], [3, 11], [1, 7]] and c.shape_after_crop == [4, 8, 6] and c.shape == [8, 12, 10]
    assert c.class_components == {1: 2, 3: 1}
    # centroid of label 1: mean of its 8 + 18 voxels' (z, y, x) indices
    z, y, x = np.nonzero(label == 1)
    assert c.class_centroids[1] == pytest.approx([z.mean(), y.mean(), x.mean()], abs=0.01)
    assert c.class_centroids[3] == [3.0, 7.0, 5.0] and 0 not in c.class_centroids
    assert c.class_voxels == {0: label.size - 8 - 18 - 1, 1: 26, 3: 1}
    assert fp.median_shape_after_crop == [4, 8, 6] and fp.median_spacing == [2.0, 1.0, 0.5]
    assert fp.anisotropy == pytest.approx(4.0) and fp.label_values == [0, 1, 3]


def test_no_foreground_falls_back_to_all_voxels(tmp_path):
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    root = _write_msd(tmp_path / "Empty", [(image, np.zeros(image.shape, np.uint8))])
    fp = compute_fingerprint(load_dataset(root))
    assert fp.intensity[0].from_all_voxels and fp.intensity[0].min >= 1


def test_label_shape_mismatch_is_a_dataset_error(tmp_path):
    image = np.ones((4, 5, 6), np.float32)
    root = _write_msd(tmp_path / "Bad", [(image, np.zeros((4, 5, 7), np.uint8))])
    with pytest.raises(DatasetError, match="label shape"):
        compute_fingerprint(load_dataset(root))


def test_declared_channels_must_match_images(tmp_path):
    image = np.ones((4, 5, 6), np.float32)
    root = _write_msd(tmp_path / "Chan", [(image, np.zeros(image.shape, np.uint8))], modality={"0": "T1", "1": "T2"})
    with pytest.raises(DatasetError, match="declares 2"):
        compute_fingerprint(load_dataset(root))


def test_multichannel_nnunetv2_layout(tmp_path):
    root = tmp_path / "Two"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        label = np.zeros((4, 6, 6), np.uint8)
        label[1:3, 2:4, 2:4] = 1
        write_image(rng.normal(10, 1, label.shape).astype(np.float32), GEO, root / "imagesTr" / f"p{i}_0000.nii.gz")
        write_image(rng.normal(-50, 2, label.shape).astype(np.float32), GEO, root / "imagesTr" / f"p{i}_0001.nii.gz")
        write_image(label, GEO, root / "labelsTr" / f"p{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "CT"}, "labels": {"background": 0, "x": 1},
                                                  "file_ending": ".nii.gz", "numTraining": 2}))
    fp = compute_fingerprint(load_dataset(root))
    assert [c.name for c in fp.intensity] == ["T1", "CT"]
    assert fp.intensity[0].mean == pytest.approx(10, abs=1) and fp.intensity[1].mean == pytest.approx(-50, abs=2)


def _subset(name: str, n: int):
    if not (DATA / name).is_dir():
        pytest.skip(f"{DATA / name} is absent")
    spec = load_dataset(DATA / name)
    return dataclasses.replace(spec, cases=spec.cases[:n])


def test_real_hippocampus_subset():
    fp = compute_fingerprint(_subset("Task04_Hippocampus", 30), num_workers=2)
    assert fp.median_spacing == [1.0, 1.0, 1.0] and fp.num_cases == 30
    assert all(1 in c.class_voxels and 2 in c.class_voxels for c in fp.cases)


def test_real_acdc_subset_is_anisotropic():
    fp = compute_fingerprint(_subset("ACDC", 8), num_workers=2)
    assert fp.anisotropy == pytest.approx(6.4, abs=0.05)
    assert fp.median_spacing[0] == pytest.approx(10.0)


def test_real_drive_subset_is_2d_rgb():
    fp = compute_fingerprint(_subset("DRIVE", 3))
    assert fp.is_2d and len(fp.intensity) == 3 and fp.median_shape_after_crop[0] == 1
    assert fp.cases[0].shape == [1, 584, 565] and fp.label_values == [0, 1]


def test_real_verse_ct_labels():
    fp = compute_fingerprint(_subset("VerSe_sample", 4), num_workers=2)
    assert fp.channel_names == ["CT"] and fp.label_values == [0] + list(range(16, 25))
    assert fp.intensity[0].percentile_00_5 < 0 < fp.intensity[0].percentile_99_5  # HU
