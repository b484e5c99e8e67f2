"""Does a trained model fail on a case because of its scale? Predict it as stored and with its
in-plane spacing multiplied by a factor, and score both.

    python benchmarks/rescaled_spacing_check.py --workspace SCRATCH/TAG/workspace -c 2d \
        --cases patient057_frame01:0.5 patient057_frame09:0.5 patient038_frame01:0.66 [--fold 0]

ACDC's spacing is nominal (its dataset.json: the source lost the true one), so a case scanned at
0.7 mm shows a heart twice the usual size in voxels. Each CASE:FACTOR is written into a scratch
folder twice (image and label, as stored and with y/x spacing times FACTOR), predicted with
``autoseg predict`` (the fold's final checkpoint, mirroring TTA as planned, no postprocessing)
and scored with ``autoseg evaluate``. Prints Dice per class of both. Used in the fifth session
to find why every 20-minute ACDC model failed on patient057 (documentation/plans.md, "Scaling").
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def write_case(data: Path, case: str, factor: float, images: Path, labels: Path) -> None:
    for source, target in ((data / "imagesTr" / f"{case}.nii.gz", images), (data / "labelsTr" / f"{case}.nii.gz", labels)):
        image = sitk.ReadImage(str(source))
        x, y, z = image.GetSpacing()
        image.SetSpacing((x * factor, y * factor, z))
        target.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(target / f"{case}.nii.gz"))


def dice_per_case(summary: Path) -> dict[str, list[float]]:
    d = json.loads(summary.read_text())
    labels = [str(v) for v in d["label_values"] if int(v) != 0]
    return {c["case_id"]: [c["metrics"][k]["Dice"] for k in labels] for c in d["per_case"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "ACDC")
    p.add_argument("--workspace", type=Path, required=True, help="autoseg workspace holding the trained model")
    p.add_argument("-c", "--configuration", default="2d")
    p.add_argument("--trainer", default=None, help="trainer name (default: the configuration's usual one)")
    p.add_argument("--fold", default="0")
    p.add_argument("--cases", nargs="+", required=True, help="CASE:FACTOR, e.g. patient057_frame01:0.5")
    args = p.parse_args(argv)
    trainer = args.trainer or {"3d_hybrid": "hybrid"}.get(args.configuration, "unet")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for spec in args.cases:
            case, factor = spec.rsplit(":", 1)
            write_case(args.data, case, 1.0, tmp / "stored" / "images", tmp / "stored" / "labels")
            write_case(args.data, case, float(factor), tmp / "rescaled" / "images", tmp / "rescaled" / "labels")
        scores = {}
        for variant in ("stored", "rescaled"):
            out = tmp / variant / "predicted"
            subprocess.run([sys.executable, "-m", "autoseg", "predict", "-i", str(tmp / variant / "images"), "-o", str(out),
                            "-d", args.data.name, "-c", args.configuration, "--trainer", trainer, "-f", args.fold,
                            "--workspace", str(args.workspace), "--device", "cpu", "--no-postprocessing"], check=True)
            subprocess.run([sys.executable, "-m", "autoseg", "evaluate", str(tmp / variant / "labels"), str(out),
                            "-o", str(tmp / variant / "scores")], check=True, stdout=subprocess.DEVNULL)
            scores[variant] = dice_per_case(tmp / variant / "scores" / "summary.json")
        for spec in args.cases:
            case, factor = spec.rsplit(":", 1)
            rows.append([case, factor] + [" / ".join(f"{d:.2f}" for d in scores[v][case]) for v in ("stored", "rescaled")])
    print(f"{args.configuration} ({trainer}), fold {args.fold}, {args.workspace}")
    print(harness.markdown_table(["case", "in-plane spacing x", "Dice as stored", "Dice rescaled"], rows))


if __name__ == "__main__":
    main()
