"""Benchmark: thick-slice configurations compared by cross-validation at one equal budget (issue 5).

    python benchmarks/bench_acdc_configs.py [--data ../shared/data/ACDC] [--folds 0 1 2] [--minutes 4]
        [--rows 2d 3d_fullres 3d_hybrid 2.5d hybrid_no3d] [--tag NAME]

Every row is one ``autoseg train DATASET CONFIGURATION FOLD --trainer TRAINER --time-budget
MINUTES --device cpu`` run, one after the other on the same machine, with nothing else of the
benchmark running meanwhile. The budget includes the end-of-fold validation, which predicts the
fold's validation cases in their original geometry and scores them (``autoseg.evaluation``: Dice
and HD95 per class; a class missing from the prediction but present in the reference scores
Dice 0 and the image diagonal as distance). Patient grouping is on (autoseg's default for
``patientNNN_frameXX``), so no patient is split across folds.

Rows (configuration, trainer):
  2d            2d, unet
  3d_fullres    3d_fullres, unet
  3d_hybrid     3d_hybrid, hybrid
  2.5d          2d, unet_2p5d (3 adjacent slices in, centre slice out)
  hybrid_no3d   3d_hybrid, hybrid_no3d (ablation: the hybrid without its 3D skip modules)

Resumable: a row and fold already scored in SCRATCH/<tag>/table.json is not retrained (a failed
one is). Results go to SCRATCH/<tag>/table.json and table.md, the models to
SCRATCH/<tag>/workspace/; a markdown table (mean over folds, per class) is
printed.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from autoseg.atomic import write_json  # noqa: E402

ROWS = {
    "2d": ("2d", "unet"),
    "3d_fullres": ("3d_fullres", "unet"),
    "3d_hybrid": ("3d_hybrid", "hybrid"),
    "2.5d": ("2d", "unet_2p5d"),
    "hybrid_no3d": ("3d_hybrid", "hybrid_no3d"),
}
CLASS_NAMES = {"1": "RV", "2": "MYO", "3": "LV"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "ACDC", help="dataset folder (default ../shared/data/ACDC)")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per run, validation included")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--tag", default=None, help="results subfolder (default: budget_<minutes>min)")
    p.add_argument("--preprocess-workers", type=int, default=2)
    p.add_argument("--scratch", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p.parse_args(argv)


def fold_row(summary: dict) -> dict:
    """Per-class mean Dice and HD95 of one fold's validation summary, and their means over classes."""
    per_class = {k: {"Dice": v["Dice"], "HD95": v["HD95"]} for k, v in summary["mean"].items()}
    return {"per_class": per_class, "mean_dice": float(np.mean([v["Dice"] for v in per_class.values()])),
            "mean_hd95": float(np.mean([v["HD95"] for v in per_class.values()])), "num_cases": summary["num_cases"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = harness.dataset_folder(args.data)
    if data is None:
        return 2
    scratch = harness.scratch_folder(args.scratch, "acdc_configs", data)
    tag = args.tag or f"budget_{args.minutes:g}min"
    out = scratch / tag
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workspace = scratch / "autoseg_workspace"
    print("preparing (not timed): autoseg plan-and-preprocess", file=sys.stderr, flush=True)
    dataset_ws = harness.prepare_autoseg(data, workspace, args.preprocess_workers, logs)
    plans = json.loads((dataset_ws / "plans.json").read_text())
    missing = sorted({ROWS[r][0] for r in args.rows} - set(plans["configurations"]))
    if missing:
        print(f"error: {dataset_ws / 'plans.json'} has no configuration {missing}", file=sys.stderr)
        return 2
    # one workspace per tag (budget), sharing the preprocessed data: runs at another budget never
    # find this budget's checkpoints; rows differ in trainer or configuration, so they never collide
    run_root = out / "workspace"
    run_ws = run_root / data.name
    run_ws.mkdir(parents=True, exist_ok=True)
    if not (run_ws / "preprocessed").exists():
        (run_ws / "preprocessed").symlink_to(dataset_ws / "preprocessed", target_is_directory=True)
    harness.autoseg_splits(dataset_ws, "2d")  # splits.json (patients grouped) before copying it
    for name in ("dataset_source.json", "fingerprint.json", "plans.json", "splits.json", "grouping.json"):
        if (dataset_ws / name).is_file() and not (run_ws / name).exists():
            (run_ws / name).write_bytes((dataset_ws / name).read_bytes())
    results_file = out / "table.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for fold in args.folds:  # fold-major: a partial run still compares every row on the same folds
        for row in args.rows:
            config, trainer = ROWS[row]
            key = f"{row}/fold_{fold}"
            if "mean_dice" in results.get(key, {}):
                continue
            real_fold_dir = run_ws / "results" / f"{trainer}__{config}" / f"fold_{fold}"
            command = [sys.executable, "-m", "autoseg", "train", data.name, config, str(fold), "--trainer", trainer,
                       "--time-budget", str(args.minutes), "--device", "cpu", "--workspace", str(run_root)]
            if (real_fold_dir / "checkpoint_latest.pt").is_file() and not (real_fold_dir / "validation" / "summary.json").is_file():
                command.append("--continue")
            print(f"[fold {fold}] {row}: {shlex.join(map(str, command))}", file=sys.stderr, flush=True)
            if args.dry_run:
                continue
            t0 = time.monotonic()
            with open(logs / f"{row}_fold{fold}.log", "w") as log:
                rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
            wall = time.monotonic() - t0
            real_summary = real_fold_dir / "validation" / "summary.json"
            if rc != 0 or not real_summary.is_file():
                print(f"[fold {fold}] {row}: failed (exit {rc}); see {logs / f'{row}_fold{fold}.log'}", file=sys.stderr)
                results[key] = {"error": f"exit {rc}", "wall_s": wall}
            else:
                training = json.loads((real_fold_dir / "log.json").read_text())
                epochs = training.get("epochs", [])
                results[key] = {**fold_row(json.loads(real_summary.read_text())), "wall_s": wall,
                                "iterations": epochs[-1]["iterations"] if epochs else 0,
                                "augmentation": training.get("augmentation")}
                r = results[key]
                print(f"[fold {fold}] {row}: mean Dice {r['mean_dice']:.4f}, HD95 {r['mean_hd95']:.2f} mm, "
                      f"{r['iterations']} iterations, {wall:.0f} s", file=sys.stderr, flush=True)
            results["_meta"] = {"command": shlex.join(sys.argv), "minutes": args.minutes, "machine": harness.machine_info()}
            write_json(results_file, results)
    if args.dry_run:
        return 0
    table = render_table(results, args.rows, args.folds, args.minutes)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


def render_table(results: dict, rows: list[str], folds: list[int], minutes: float) -> str:
    header = ["configuration (trainer)", "folds", "RV Dice", "MYO Dice", "LV Dice", "mean Dice", "mean HD95 (mm)",
              "iterations (mean)"]
    lines = []
    for row in rows:
        got = [results[f"{row}/fold_{f}"] for f in folds if "mean_dice" in results.get(f"{row}/fold_{f}", {})]
        if not got:
            lines.append([f"{row} ({ROWS[row][1]})", "0", "-", "-", "-", "-", "-", "-"])
            continue
        cls = [float(np.mean([g["per_class"][c]["Dice"] for g in got])) for c in CLASS_NAMES]
        lines.append([f"{ROWS[row][0]} ({ROWS[row][1]})", str(len(got)), *(f"{c:.3f}" for c in cls),
                      f"{np.mean([g['mean_dice'] for g in got]):.3f}", f"{np.mean([g['mean_hd95'] for g in got]):.2f}",
                      f"{np.mean([g['iterations'] for g in got]):.0f}"])
    return (f"Budget {minutes:g} min per run (validation included), folds {folds}\n\n"
            + harness.markdown_table(header, lines))


if __name__ == "__main__":
    sys.exit(main())
