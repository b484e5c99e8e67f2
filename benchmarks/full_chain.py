"""The whole pipeline on a real dataset with a short CPU budget per fold (issue 4's "full chain").

    python benchmarks/full_chain.py --data ../shared/data/Task04_Hippocampus --fold-minutes 2 \\
        --configurations 3d_fullres 2d --workspace ~/.cache/autoseg-bench/scratch/full_chain

Runs plan-and-preprocess, trains five folds of each configuration (each fold with
``--time-budget FOLD_MINUTES``, final validation included), find-best-configuration, predicts a
folder of ``--predict-cases`` raw images with what find-best chose, and checks with SimpleITK
that every prediction has exactly the input's size, spacing, origin and direction. Every step is
an ``autoseg`` command; the script prints them and where the report is.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "Task04_Hippocampus"))
    ap.add_argument("--workspace", default=str(Path.home() / ".cache" / "autoseg-bench" / "scratch" / "full_chain"))
    ap.add_argument("--configurations", nargs="+", default=["3d_fullres", "2d"])
    ap.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    ap.add_argument("--fold-minutes", type=float, default=2.0)
    ap.add_argument("--predict-cases", type=int, default=10)
    args = ap.parse_args()

    data = Path(args.data).resolve()
    ws = Path(args.workspace)
    name = data.name
    autoseg = [sys.executable, "-m", "autoseg"]
    times = {}
    times["plan-and-preprocess"] = run(autoseg + ["plan-and-preprocess", str(data), "--workspace", str(ws), "-np", "2"])
    for config in args.configurations:
        for fold in args.folds:
            fold_dir = ws / name / "results" / f"unet__{config}" / f"fold_{fold}"
            if (fold_dir / "validation" / "summary.json").is_file():
                continue  # finished in an earlier run of this script
            extra = ["--continue"] if fold_dir.is_dir() else []
            times[f"train {config} {fold}"] = run(autoseg + ["train", name, config, fold, "--workspace", str(ws),
                                                             "--time-budget", str(args.fold_minutes)] + extra)
    times["find-best-configuration"] = run(autoseg + ["find-best-configuration", name, "--workspace", str(ws),
                                                      "--folds"] + args.folds)
    inp = ws / "new_cases"
    out = ws / "new_cases_predicted"
    shutil.rmtree(out, ignore_errors=True)
    inp.mkdir(parents=True, exist_ok=True)
    images = sorted((data / "imagesTr").glob("*.nii.gz"))[: args.predict_cases]
    for f in images:
        if not (inp / f.name).exists():
            shutil.copy(f, inp / f.name)
    times["predict"] = run(autoseg + ["predict", "-i", str(inp), "-o", str(out), "-d", name, "--workspace", str(ws)])

    mismatches = 0
    for f in images:
        a, b = sitk.ReadImage(str(f)), sitk.ReadImage(str(out / f.name))
        same = (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
                and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection())
        mismatches += not same
        if not same:
            print(f"GEOMETRY MISMATCH {f.name}: {a.GetSize()} {b.GetSize()} {a.GetSpacing()} {b.GetSpacing()}")
    print(f"\ngeometry: {len(images) - mismatches}/{len(images)} predictions match their input exactly "
          "(size, spacing, origin, direction; SimpleITK)")
    print("wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"report: {ws / name / 'find_best_report.md'}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
