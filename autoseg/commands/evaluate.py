"""``autoseg evaluate``: score predicted label maps against references."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a folder of predictions against reference label maps",
        description="Pair files by case id and compute, per case and per class, Dice, IoU, HD95, HD, "
                    "ASSD, NSD, precision and sensitivity (distances in mm). Writes summary.json, "
                    "summary.csv and boxplot.png (Dice and HD95 per class across cases) into the "
                    "prediction folder (or -o). See documentation/evaluation.md.",
    )
    p.add_argument("reference_folder", help="folder of reference label maps (e.g. a dataset's labelsTr)")
    p.add_argument("prediction_folder", help="folder of predicted label maps, same file names")
    p.add_argument("-l", "--labels", type=int, nargs="+", default=None,
                   help="label values to score (default: every nonzero value found)")
    p.add_argument("-o", "--output", default=None, help="folder for summary.json, summary.csv and boxplot.png (default: prediction folder)")
    p.add_argument("-np", "--num-workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1.0)")
    p.add_argument("--file-ending", default=None, help="only consider files with this ending, e.g. .nii.gz")
    p.add_argument("--workspace", default=None, help="workspace folder (unused here; accepted for uniformity)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoseg.commands import check_at_least
    from autoseg.evaluation.evaluate import evaluate_folders
    from autoseg.evaluation.metrics import METRIC_NAMES
    from autoseg.evaluation.plots import BOXPLOT_NAME, dice_hd95_boxplot

    check_at_least("-np/--num-workers", args.num_workers, 1)
    check_at_least("--nsd-tolerance", args.nsd_tolerance, 0)
    summary = evaluate_folders(args.reference_folder, args.prediction_folder, args.labels, args.num_workers,
                               args.file_ending, args.output, args.nsd_tolerance)
    print(f"evaluated {summary['num_cases']} case(s); label values {summary['label_values']}")
    if summary["missing_predictions"]:
        print(f"warning: {len(summary['missing_predictions'])} reference case(s) have no prediction: "
              + ", ".join(summary["missing_predictions"][:10]))
    print("label  " + "  ".join(f"{m:>11}" for m in METRIC_NAMES))
    for label, m in summary["mean"].items():
        print(f"{label:>5}  " + "  ".join(f"{m[k]:11.4f}" for k in METRIC_NAMES))
    fg = summary["foreground_mean"]
    print(f"{'mean':>5}  " + "  ".join(f"{fg[k]:11.4f}" for k in METRIC_NAMES))
    out = Path(args.output or args.prediction_folder)
    dice_hd95_boxplot(summary, out / BOXPLOT_NAME)
    print(f"wrote {out / 'summary.json'}, summary.csv and {BOXPLOT_NAME} (Dice and HD95 per class across cases)")
    return 0
