"""``autoseg find-best-configuration``: pick the configuration/ensemble and postprocessing to predict with."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "find-best-configuration",
        help="choose the best configuration or ensemble and its postprocessing on cross-validation",
        description="Score every trained configuration (all requested folds must have validation "
                    "predictions) and every pair of them as an ensemble by cross-validated mean "
                    "foreground Dice, decide largest-component postprocessing for each, and choose the "
                    "highest postprocessed Dice (--rank-on raw: the highest before postprocessing). "
                    "Writes best_configuration.json (read by autoseg predict), find_best_report.md "
                    "and find_best.png into the dataset's workspace folder.",
    )
    p.add_argument("dataset", help="dataset name in the workspace, or the raw dataset folder")
    p.add_argument("--workspace", default=None, help="workspace folder (default: $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.add_argument("-c", "--configurations", nargs="+", default=None, help="only these configurations (default: all trained)")
    p.add_argument("-t", "--trainers", nargs="+", default=None, help="only these trainers (default: all trained)")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="folds whose validation predictions to use (default 0 1 2 3 4)")
    p.add_argument("--rank-on", choices=["postprocessed", "raw"], default="postprocessed",
                   help="choose on the Dice after each candidate's own postprocessing (default; that is what "
                        "predict delivers) or before it, as nnU-Net does")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoseg.commands import check_folds
    from autoseg.errors import UserError
    from autoseg.postprocessing.find_best import find_best_configuration
    from autoseg.workspace import resolve_dataset

    check_folds("--folds", args.folds, allow_all=False)
    ws = resolve_dataset(args.dataset, args.workspace)
    if not ws.root.is_dir():
        raise UserError(f"{ws.root}: no such dataset in the workspace; run plan-and-preprocess first")
    selection = find_best_configuration(ws, args.configurations, args.trainers, args.folds, rank_on=args.rank_on)
    print("raw     postprocessed  candidate")
    for c in selection.ranked_candidates():
        mark = "  <- selected" if c.name == selection.selected.name else ""
        print(f"{c.mean_dice:.4f}  {c.postprocessed_mean_dice:.4f}         {c.name}{mark}")
    pp = selection.selected.postprocessing
    print(f"ranked on {selection.ranked_on} Dice; postprocessing: largest foreground component "
          f"{'on' if pp['foreground_largest_component'] else 'off'}, per class {pp['per_class_largest_component'] or 'none'}; "
          f"mean Dice {selection.dice_before_postprocessing['mean']:.4f} -> "
          f"{selection.dice_after_postprocessing['mean']:.4f}")
    print(f"wrote {ws.best_configuration_file} and {ws.root / 'find_best_report.md'}")
    return 0
