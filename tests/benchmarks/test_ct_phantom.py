"""benchmarks/ct_phantom.py: the seeded whole-body CT phantom and its MSD datasets."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ct_phantom

from autoseg.dataset.layout import load_dataset


@pytest.fixture(scope="module")
def moderate():
    return ct_phantom.make_phantom(shape=(120, 128, 128), spacing=(1.5, 0.8, 0.8), num_labels=104, seed=0)


def test_same_seed_same_phantom_other_seed_other_phantom():
    a_img, a_lab = ct_phantom.make_phantom(shape=(40, 48, 48), num_labels=104, seed=3)
    b_img, b_lab = ct_phantom.make_phantom(shape=(40, 48, 48), num_labels=104, seed=3)
    c_img, c_lab = ct_phantom.make_phantom(shape=(40, 48, 48), num_labels=104, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)
    assert not np.array_equal(a_img, c_img)


def test_dtypes_shape_and_most_labels_even_at_a_tiny_shape():
    image, label = ct_phantom.make_phantom(shape=(40, 48, 48), num_labels=104, seed=0)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.shape == label.shape == (40, 48, 48)
    present = set(np.unique(label).tolist()) - {0}
    assert present <= set(range(1, 105))
    assert len(present) >= 95


def test_every_label_present_at_a_moderate_shape(moderate):
    _, label = moderate
    counts = np.bincount(label.ravel(), minlength=105)
    assert len(counts) == 105
    missing = [ct_phantom.label_names(104)[i - 1] for i in range(1, 105) if counts[i] == 0]
    assert missing == []


def test_intensities_are_ct_like(moderate):
    image, label = moderate
    names = ct_phantom.label_names(104)
    assert image.min() >= -1024
    corner = image[:, :4, :4]
    assert abs(float(np.median(corner)) - ct_phantom.AIR_HU) < 15  # air around the body
    tissue = image[label == 0]
    assert np.count_nonzero((tissue > -150) & (tissue < 90)) > 0.2 * tissue.size  # fat and soft tissue
    medians = {n: float(np.median(image[label == i])) for i, n in enumerate(names, start=1)}
    bones = [n for n in names if n.startswith(("vertebra_", "rib_", "femur", "hip", "sacrum", "humerus"))]
    muscles = [n for n in names if n.startswith("muscle_")]
    assert len(bones) >= 50 and len(muscles) >= 10
    assert all(300 <= medians[n] <= 1500 for n in bones), {n: medians[n] for n in bones}
    assert all(30 <= medians[n] <= 80 for n in muscles), {n: medians[n] for n in muscles}
    assert medians["lung_left"] < -700


def test_label_names_cover_the_anatomy_and_extend_past_the_catalogue():
    names = ct_phantom.label_names(104)
    assert len(names) == len(set(names)) == 104
    assert {"vertebra_L1", "vertebra_C1", "rib_left_3", "rib_right_12", "liver"} <= set(names)
    assert sum(n.startswith("vertebra_") for n in names) == 24
    assert sum(n.startswith("rib_") for n in names) == 24
    many = ct_phantom.label_names(300)
    assert len(set(many)) == 300 and many[:104] == names


def test_more_than_255_labels_use_uint16():
    _, label = ct_phantom.make_phantom(shape=(60, 64, 64), num_labels=300, seed=0)
    assert label.dtype == np.uint16
    assert int(label.max()) > 255


def test_few_labels_are_the_first_structures_of_the_full_set():
    _, few = ct_phantom.make_phantom(shape=(40, 48, 48), num_labels=3, seed=0)
    assert set(np.unique(few).tolist()) <= {0, 1, 2, 3}
    assert np.count_nonzero(few) > 0


def test_write_dataset_is_an_msd_dataset_autoseg_reads(tmp_path):
    root = ct_phantom.write_dataset(tmp_path / "Phantom", 2, (24, 32, 32), (1.5, 0.8, 0.8), 104, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"]["0"] == "background" and len(meta["labels"]) == 105
    spec = load_dataset(root)
    assert len(spec.cases) == 2
    img = sitk.ReadImage(str(root / "imagesTr" / "case_000.nii.gz"))
    lab = sitk.ReadImage(str(root / "labelsTr" / "case_000.nii.gz"))
    assert img.GetSize() == (32, 32, 24)
    assert img.GetSpacing() == pytest.approx((0.8, 0.8, 1.5))
    assert img.GetPixelID() == sitk.sitkInt16
    expected_img, expected_lab = ct_phantom.make_phantom((24, 32, 32), (1.5, 0.8, 0.8), 104, ct_phantom.case_seed(0, 0))
    assert np.array_equal(sitk.GetArrayFromImage(img), expected_img)
    assert np.array_equal(sitk.GetArrayFromImage(lab), expected_lab)
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "case_001.nii.gz")))
    assert not np.array_equal(second, expected_lab)


def test_bad_shape_is_refused_in_one_line():
    with pytest.raises(ValueError, match="ct_phantom: shape"):
        ct_phantom.make_phantom(shape=(0, 8, 8))
