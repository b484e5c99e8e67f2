"""``autoseg ensemble``: average the probabilities of several prediction folders."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="average saved probabilities of several prediction folders into one segmentation",
        description="Each input folder holds CASE_probabilities.npy (from autoseg predict "
                    "--save-probabilities or training's fold validation) next to CASE<ending>. "
                    "The averaged probabilities' argmax is written with the geometry of the first "
                    "folder's segmentation file.",
    )
    p.add_argument("-i", "--input", nargs="+", required=True, help="two or more prediction folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-l", "--labels", type=int, nargs="+", default=None,
                   help="label value of each probability channel (default: from probabilities.json/plans.json)")
    p.add_argument("--save-probabilities", action="store_true", help="also write the averaged probabilities")
    p.add_argument("--postprocessing", default=None, help="postprocessing spec JSON to apply to the results")
    p.add_argument("--workspace", default=None, help="workspace folder (unused here; accepted for uniformity)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoseg.postprocessing.ensemble import ensemble_folders
    from autoseg.commands.postprocess import load_spec

    spec = load_spec(args.postprocessing) if args.postprocessing else None
    cases = ensemble_folders(args.input, args.output, args.labels, args.save_probabilities, spec)
    print(f"ensembled {len(cases)} case(s) from {len(args.input)} folders into {args.output}")
    return 0
