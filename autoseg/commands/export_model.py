"""``autoseg export-model``: a trained model or the chosen ensemble as one zip file."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-model",
        help="pack the chosen model(s) into one zip that predicts on another machine",
        description="Write OUTPUT (a zip) with what prediction needs: best_configuration.json's models "
                    "(or the one given with -c), their plans, the folds' checkpoints (weights only: no "
                    "optimizer state, nothing pickled), the postprocessing and the label names, and "
                    "manifest.json with versions and every member's size and sha256. Predict with it "
                    "anywhere: 'autoseg predict --model OUTPUT ...', or 'autoseg import-model OUTPUT'. "
                    "See documentation/sharing.md.",
    )
    p.add_argument("dataset", help="dataset name in the workspace (or its raw folder)")
    p.add_argument("-o", "--output", required=True, help="the archive to write (model.zip)")
    p.add_argument("-c", "--configuration", default=None,
                   help="export this configuration alone, without postprocessing; default: best_configuration.json")
    p.add_argument("--trainer", default="unet", help="trainer name with -c (default unet)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to include (0 1 2 3 4); default: those of best_configuration.json, else 0-4")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final",
                   help="which checkpoint of each fold (default final, what predict uses)")
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoseg.commands import check_folds
    from autoseg.inference.model_archive import archive_summary, export_model
    from autoseg.workspace import resolve_dataset

    check_folds("-f/--folds", args.folds)
    ws = resolve_dataset(args.dataset, args.workspace)
    manifest = export_model(ws, args.output, folds=args.folds, configuration=args.configuration,
                            trainer=args.trainer, checkpoint=args.checkpoint)
    size = Path(args.output).stat().st_size
    print(archive_summary(manifest))
    print(f"wrote {args.output} ({size / 2**20:.1f} MB, {len(manifest.members)} members and manifest.json); "
          f"predict with: autoseg predict --model {args.output} -i INPUT -o OUTPUT")
    return 0
