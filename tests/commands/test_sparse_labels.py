"""Label values beyond 255 and not consecutive (VerSe-like codes, TotalSegmentator-style sets)
through plan, train, predict and evaluate: the values survive, and the names follow them."""
import json

import numpy as np
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.synthetic import make_dataset

VALUES = {1: 7, 2: 300}  # synthetic label -> the dataset's value


def sparse_dataset(root):
    raw = make_dataset(root, num_cases=4, shape=(16, 20, 20), seed=0)
    for f in (raw / "labelsTr").glob("*.nii.gz"):
        img = sitk.ReadImage(str(f))
        a = sitk.GetArrayFromImage(img)
        out = np.zeros(a.shape, np.int16)
        for k, v in VALUES.items():
            out[a == k] = v
        o = sitk.GetImageFromArray(out)
        o.CopyInformation(img)
        sitk.WriteImage(o, str(f))
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "7": "inner", "300": "outer"}
    (raw / "dataset.json").write_text(json.dumps(meta))
    return raw


def test_label_values_above_255_go_through_the_whole_pipeline(tmp_path):
    raw = sparse_dataset(tmp_path / "raw" / "Sparse")
    ws = ["--workspace", str(tmp_path / "ws")]
    assert main(["plan-and-preprocess", str(raw), *ws, "-c", "3d_fullres", "-np", "1"]) == 0
    assert main(["train", "Sparse", "3d_fullres", "0", *ws, "--epochs", "1", "--iters-per-epoch", "2",
                 "--val-iters", "1", "--device", "cpu", "--num-workers", "0"]) == 0
    summary = json.loads((tmp_path / "ws" / "Sparse" / "results" / "unet__3d_fullres" / "fold_0" / "validation"
                          / "summary.json").read_text())
    assert set(summary["mean"]) == {"7", "300"}
    out = tmp_path / "out"
    assert main(["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "Sparse", "-c", "3d_fullres", "-f", "0",
                 "--no-tta", "--device", "cpu", "--structure-stats", *ws]) == 0
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_000.nii.gz")))
    assert set(np.unique(seg)) <= {0, 7, 300} and seg.dtype == np.uint16
    assert (out / "volumes.csv").read_text().splitlines()[0] == "case_id,inner_7_ml,outer_300_ml"
    names = {(r["label"], r["name"]) for r in json.loads((out / "structures.json").read_text())["structures"]}
    assert names <= {(7, "inner"), (300, "outer")}
    assert main(["evaluate", str(raw / "labelsTr"), str(out)]) == 0
    evaluated = json.loads((out / "summary.json").read_text())
    assert set(evaluated["mean"]) == {"7", "300"}
