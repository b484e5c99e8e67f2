"""``autoseg predict``: segment a folder of images with a trained model or the chosen ensemble."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment a folder of new images with a trained model",
        description="Predict every image in INPUT (CASE.nii.gz, or CASE_0000.nii.gz per channel; PNG for 2D "
                    "datasets) and write CASE<ending> label maps with the input's exact geometry into OUTPUT, "
                    "plus volumes.csv (mL per case and label). Without -c, follows best_configuration.json "
                    "(written by 'autoseg find-best-configuration'): its configuration or ensemble and "
                    "postprocessing. Existing outputs are skipped unless --overwrite. See documentation/inference.md.",
    )
    p.add_argument("-i", "--input", required=True, help="folder of images to segment")
    p.add_argument("-o", "--output", required=True, help="folder for the results (created if needed)")
    p.add_argument("-d", "--dataset", required=True, help="dataset name in the workspace (or its raw folder)")
    p.add_argument("-c", "--configuration", default=None,
                   help="configuration to use (2d, 3d_fullres, ...); default: best_configuration.json")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to average (0 1 2 3 4, or 'all'); default: those of best_configuration.json, else 0-4")
    p.add_argument("--trainer", default="unet", help="trainer name with -c (default unet)")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final",
                   help="which checkpoint of each fold (default final)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write CASE_probabilities.npy (float16, (K, Z, Y, X)) and probabilities.json")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write CASE_entropy<ending>: per-voxel entropy of the averaged probabilities")
    p.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation (about 4-8x faster)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap, 0 to <1 (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="predict again cases whose output already exists")
    p.add_argument("--no-postprocessing", action="store_true",
                   help="ignore the postprocessing chosen in best_configuration.json")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (default auto)")
    p.add_argument("-np", "--num-workers", type=int, default=1,
                   help="background threads reading/preprocessing upcoming cases (default 1)")
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="atlas_istn models: test-time refinement iterations of the STN per case (default: the "
                        "trained model's, 50); 0 = one pass. Writes CASE (warped atlas), CASE_itn and "
                        "CASE_displacement.nii.gz; see documentation/atlas_istn.md")
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.set_defaults(func=run)


def _atlas_refinement(predictors, folds: list[str], args: argparse.Namespace):
    """The refinement step of an atlas_istn model; None for other models."""
    from autoseg.errors import UserError
    from autoseg.inference.atlas_refinement import AtlasRefinement, has_atlas, load_atlas_model

    files = [p.model_folder / f"fold_{f}" / f"checkpoint_{args.checkpoint}.pt" for p in predictors for f in folds]
    with_atlas = [f for f in files if has_atlas(f)]
    if not with_atlas:
        if args.refine is not None:
            raise UserError("--refine applies only to atlas_istn models")
        return None
    if len(files) != 1:
        raise UserError("an atlas_istn model predicts with one fold's atlas: choose one fold with -f and no ensemble")
    return AtlasRefinement(load_atlas_model(with_atlas[0], predictors[0].device), args.refine)


def run(args: argparse.Namespace) -> int:
    from autoseg.errors import UserError
    from autoseg.inference.folder import predict_folder
    from autoseg.inference.predictor import Predictor
    from autoseg.postprocessing.selection import models_to_predict
    from autoseg.workspace import resolve_dataset

    ws = resolve_dataset(args.dataset, args.workspace)
    if not ws.root.is_dir():
        raise UserError(f"dataset workspace {ws.root} does not exist; check -d and --workspace")
    members, folds, post = models_to_predict(ws, args.configuration, args.trainer, args.folds, args.no_postprocessing)
    predictors = []
    for trainer, configuration in members:
        folder = ws.results_dir(trainer, configuration)
        if not folder.is_dir():
            raise UserError(f"no trained model in {folder}; train it with 'autoseg train' (or pass --trainer/-c)")
        predictors.append(Predictor.from_model_folder(folder, folds=folds, checkpoint=args.checkpoint,
                                                      device=args.device, tta=not args.no_tta, overlap=args.overlap,
                                                      precision=args.precision))
    refinement = _atlas_refinement(predictors, folds, args)
    names = " + ".join(f"{t}__{c}" for t, c in members)
    print(f"predicting with {names}, folds {', '.join(folds)}"
          + (f", postprocessing {post}" if post else "") + ("" if not args.no_tta else ", no TTA")
          + (f", atlas-ISTN refinement {refinement.iterations} iteration(s)" if refinement else ""))
    done = predict_folder(predictors, args.input, args.output, save_probabilities=args.save_probabilities,
                          uncertainty=args.uncertainty, overwrite=args.overwrite, num_workers=args.num_workers,
                          postprocessing=post, refinement=refinement)
    print(f"predicted {len(done)} case(s) into {args.output} (volumes in {args.output}/volumes.csv)")
    return 0
