"""``autoseg export-onnx``: each fold's network as an ONNX file, for onnxruntime or other runtimes."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export each fold's network to ONNX (dynamic batch and spatial sizes)",
        description="Export the folds of best_configuration.json's models (or the one given with -c) as "
                    "fold_K.onnx with a fold_K.json sidecar and the model's plans.json, into each model "
                    "folder's onnx/ (or OUTPUT/<trainer>__<configuration>/). Each file is checked on "
                    "onnxruntime against torch before it counts as exported. 'autoseg predict --engine "
                    "onnxruntime' predicts with these files (exporting missing ones itself). Needs "
                    "pip install -e \".[onnx]\". See documentation/sharing.md.",
    )
    p.add_argument("dataset", help="dataset name in the workspace (or its raw folder)")
    p.add_argument("-o", "--output", default=None,
                   help="folder for the exports (one subfolder per model); default: <model folder>/onnx")
    p.add_argument("-c", "--configuration", default=None,
                   help="export this configuration; default: the models of best_configuration.json")
    p.add_argument("--trainer", default="unet", help="trainer name with -c (default unet)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to export (0 1 2 3 4, or all); default: those of best_configuration.json, else 0-4")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final",
                   help="which checkpoint of each fold (default final)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch.onnx's torch.export-based exporter (dynamo, needs onnxscript), the older "
                        "TorchScript tracer, or auto: dynamo, then torchscript for a network dynamo cannot export")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check of each file")
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoseg.commands import check_folds
    from autoseg.errors import UserError
    from autoseg.inference.onnx_engine import ONNX_FOLDER, export_onnx
    from autoseg.postprocessing.selection import models_to_predict
    from autoseg.workspace import resolve_dataset

    check_folds("-f/--folds", args.folds)
    ws = resolve_dataset(args.dataset, args.workspace)
    if not ws.root.is_dir():
        raise UserError(f"dataset workspace {ws.root} does not exist; check the dataset name and --workspace")
    members, folds, _ = models_to_predict(ws, args.configuration, args.trainer, args.folds)
    for trainer, configuration in members:
        folder = ws.results_dir(trainer, configuration)
        if not folder.is_dir():
            raise UserError(f"no trained model in {folder}; train it with 'autoseg train' (or pass --trainer/-c)")
        out = Path(args.output) / folder.name if args.output else folder / ONNX_FOLDER
        records = export_onnx(folder, out, folds, opset=args.opset, checkpoint=args.checkpoint,
                              exporter=args.exporter, verify=not args.no_verify)
        for r in records:
            check = (f", onnxruntime vs torch max |logit diff| {r.max_abs_diff:.2g}" if r.max_abs_diff is not None
                     else ", not checked")
            print(f"{folder.name} fold {r.fold}: {out / r.onnx_name} ({r.exporter} exporter, opset {r.opset}, "
                  f"{'dynamic' if r.dynamic_spatial else 'fixed'} spatial size{check})")
    return 0
