"""``autoseg predict``: segment a folder of images with a trained model or the chosen ensemble."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoseg.inference.cases import FolderPart
    from autoseg.inference.predictor import Predictor


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
    p.add_argument("-d", "--dataset", default=None, help="dataset name in the workspace (or its raw folder)")
    p.add_argument("--model", default=None, metavar="ZIP",
                   help="a model archive (autoseg export-model) instead of -d: checked completely, extracted once "
                        "into <workspace>/.model_cache and reused (documentation/sharing.md)")
    p.add_argument("--engine", choices=("torch", "onnxruntime"), default="torch",
                   help="run the networks on torch (default) or onnxruntime (pip install -e \".[onnx]\"; each fold "
                        "is exported to ONNX once, into the model folder's onnx/; fp32)")
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
    p.add_argument("--scratch-dir", default=None, metavar="DIR",
                   help="where a volume whose class probabilities exceed half the RAM accumulates them on disk "
                        "(default: the system's temporary folder; documentation/inference.md, \"Memory\")")
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
    p.add_argument("--part", type=int, default=None, metavar="K",
                   help="with --num-parts N: predict only cases K, K+N, K+2N, ... of INPUT (in case-id order), so N "
                        "processes, e.g. one per GPU (CUDA_VISIBLE_DEVICES=K), predict the folder once between them; "
                        "volumes go to volumes_partKofN.csv (documentation/distributed.md)")
    p.add_argument("--num-parts", type=int, default=None, metavar="N",
                   help="number of parts INPUT is split into (see --part)")
    p.add_argument("--preview", action="store_true",
                   help="also write previews/CASE.png: axial, coronal and sagittal slices through the structures with "
                        "the labels drawn over the image (documentation/evaluation.md, \"Pictures\")")
    p.add_argument("--meshes", nargs="?", const="stl", default=None, choices=("stl", "vtk", "obj"),
                   help="also write meshes/CASE_<value>_<name>.<stl|vtk|obj>: one surface per label in the image's "
                        "physical (LPS) coordinates, so it overlays the image in 3D Slicer (documentation/meshes.md)")
    p.add_argument("--mesh-smooth", type=float, default=0.0, metavar="SIGMA_MM",
                   help="with --meshes: Gaussian smoothing of each label before its surface, sigma in mm (default 0)")
    p.add_argument("--mesh-decimate", type=float, default=0.0, metavar="FRACTION",
                   help="with --meshes: fraction of triangles to remove (needs pip install 'autoseg[meshes]')")
    p.add_argument("--structure-stats", action="store_true",
                   help="also write structures.csv and structures.json beside volumes.csv: per label its volume, "
                        "surface area, intensity mean/std (HU for CT), connected components, bounding box in mm")
    p.add_argument("--output-format", choices=("input", "dicom-seg"), default="input",
                   help="input: label maps in the input's format (NIfTI for DICOM input); dicom-seg: also "
                        "CASE.seg.dcm, a DICOM Segmentation referencing the source series (DICOM input; "
                        "pip install 'autoseg[dicom]'; documentation/dicom.md)")
    p.add_argument("--dicom-identifiers", choices=("series", "patient"), default="series",
                   help="output names of DICOM series: series = {SeriesNumber}_{SeriesDescription}_{uid hash} "
                        "(default: no patient identifiers in file names); patient = "
                        "{PatientID}_{StudyDate}_{SeriesNumber}_{SeriesDescription}")
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.set_defaults(func=run)


def _case_outputs(predictors, args: argparse.Namespace) -> list:
    """The extra per-case outputs the options ask for, checked before any model runs."""
    from autoseg.errors import UserError
    from autoseg.inference.case_outputs import DicomSegOutput, MeshOutput, PreviewOutput, StructureStatsOutput

    plans = predictors[0].plans
    if args.meshes is None and (args.mesh_smooth or args.mesh_decimate):
        raise UserError("--mesh-smooth and --mesh-decimate go with --meshes")
    outputs: list = []
    if args.preview:
        outputs.append(PreviewOutput(plans))
    if args.meshes is not None:
        outputs.append(MeshOutput(plans, args.meshes, args.mesh_smooth, args.mesh_decimate))
    if args.structure_stats:
        outputs.append(StructureStatsOutput(plans))
    if args.output_format == "dicom-seg":
        names = " + ".join(p.model_folder.name for p in predictors if p.model_folder is not None)
        outputs.append(DicomSegOutput(plans, names or "autoseg"))
    return outputs


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


def _input_part(args: argparse.Namespace) -> FolderPart | None:
    """The part of INPUT this process predicts (--part/--num-parts), None for all of it; checked
    before any model loads."""
    from autoseg.errors import UserError
    from autoseg.inference.cases import FolderPart

    if args.part is None and args.num_parts is None:
        return None
    if args.part is None or args.num_parts is None:
        raise UserError("--part K and --num-parts N go together (this process predicts part K of N)")
    return FolderPart(args.input, args.part, args.num_parts)


def _write_part_volumes(predictors: list[Predictor], part: FolderPart, output_folder: Path,
                        dicom_identifiers: str = "series") -> Path:
    """The part's volume table, from its cases' segmentations (those predicted now and those kept)."""
    from autoseg.dataset.imageio import read_label
    from autoseg.inference.cases import find_input_cases
    from autoseg.inference.export import label_volumes_ml
    from autoseg.inference.folder import output_name, write_volumes_csv

    first = predictors[0]
    rows = []
    for case in find_input_cases(part, first.num_channels, dicom_identifiers):
        seg, geometry = read_label(output_folder / output_name(case))
        rows.append((case.case_id, label_volumes_ml(seg, geometry.spacing, first.label_values)))
    path = output_folder / part.volumes_name
    write_volumes_csv(path, rows, first.label_values, first.plans.label_names)
    return path


def _check_arguments(args: argparse.Namespace) -> None:
    """What the options alone can say is wrong, and the input and output folders, before any model
    loads: a prediction must not run for minutes and then fail to write its first result."""
    from autoseg.atomic import check_writable_folder
    from autoseg.commands import check_at_least, check_folds
    from autoseg.errors import UserError

    check_folds("-f/--folds", args.folds)
    check_at_least("-np/--num-workers", args.num_workers, 1)
    check_at_least("--refine", args.refine, 0)
    source = Path(args.input).expanduser()
    if not source.is_dir():
        what = "is a file, not a folder" if source.exists() else "does not exist"
        raise UserError(f"input folder {source} {what}")
    if not any(not f.name.startswith(".") for f in source.iterdir()):
        raise UserError(f"input folder {source} is empty: no images found")
    if Path(args.output).expanduser().resolve() == source.resolve():
        raise UserError(f"-o {args.output}: the output folder must differ from the input folder")
    check_writable_folder(Path(args.output).expanduser())


def run(args: argparse.Namespace) -> int:
    from autoseg.errors import UserError
    from autoseg.inference.folder import predict_folder
    from autoseg.inference.predictor import Predictor
    from autoseg.postprocessing.selection import models_to_predict
    from autoseg.workspace import resolve_dataset

    part = _input_part(args)
    _check_arguments(args)
    if (args.dataset is None) == (args.model is None):
        raise UserError("say which model: -d DATASET (trained in the workspace) or --model ZIP (a model archive)")
    if args.model is not None:
        from autoseg.inference.model_archive import open_model

        ws = open_model(args.model, args.workspace)
    else:
        ws = resolve_dataset(args.dataset, args.workspace)
    if args.engine == "onnxruntime":
        from autoseg.inference.onnx_engine import onnx_predictor_from_model_folder as load_predictor
    else:
        load_predictor = Predictor.from_model_folder
    if not ws.root.is_dir():
        raise UserError(f"dataset workspace {ws.root} does not exist; check -d and --workspace")
    members, folds, post = models_to_predict(ws, args.configuration, args.trainer, args.folds, args.no_postprocessing)
    predictors = []
    for trainer, configuration in members:
        folder = ws.results_dir(trainer, configuration)
        if not folder.is_dir():
            raise UserError(f"no trained model in {folder}; train it with 'autoseg train' (or pass --trainer/-c)")
        predictors.append(load_predictor(folder, folds=folds, checkpoint=args.checkpoint, scratch_dir=args.scratch_dir,
                                         device=args.device, tta=not args.no_tta, overlap=args.overlap,
                                         precision=args.precision))
    refinement = _atlas_refinement(predictors, folds, args)
    if refinement is not None and part is not None and part.num_parts > 1:
        raise UserError("--part/--num-parts: an atlas_istn model keeps one atlas_istn.json per output folder, which "
                        "parts writing at once would overwrite; predict its cases in one process")
    names = " + ".join(f"{t}__{c}" for t, c in members)
    print(f"predicting with {names}, folds {', '.join(folds)}"
          + (f", postprocessing {post}" if post else "") + ("" if not args.no_tta else ", no TTA")
          + (f", atlas-ISTN refinement {refinement.iterations} iteration(s)" if refinement else "")
          + (f", part {part.part} of {part.num_parts}" if part is not None else "")
          + (", on onnxruntime" if args.engine == "onnxruntime" else ""))
    # a part's table is its own file: predict_folder's volumes.csv would cover only this part's cases
    source = args.input if part is None else part
    done = predict_folder(predictors, source, args.output, save_probabilities=args.save_probabilities,
                          uncertainty=args.uncertainty, overwrite=args.overwrite, num_workers=args.num_workers,
                          postprocessing=post, refinement=refinement, write_volumes=part is None,
                          outputs=_case_outputs(predictors, args), dicom_identifiers=args.dicom_identifiers)
    output = Path(args.output)
    volumes = output / "volumes.csv" if part is None else _write_part_volumes(predictors, part, output,
                                                                               args.dicom_identifiers)
    print(f"predicted {len(done)} case(s) into {args.output} (volumes in {volumes})")
    return 0
