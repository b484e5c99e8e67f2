"""``autoseg plan-and-preprocess``: verify a dataset, fingerprint it, plan, preprocess.

Nothing is written before the dataset has passed the integrity check, so a broken dataset
never leaves a half-made workspace. Preprocessing resumes: rerunning the command skips
cases that are already done.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path


def default_num_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan-and-preprocess",
        help="verify a dataset, fingerprint it, plan the configurations and preprocess the data",
        description="Check every case of DATASET_FOLDER (MSD or nnU-Net v2 layout) and stop with a list of "
                    "all problems if any; then write the dataset fingerprint, plans.json and the preprocessed "
                    "data of each configuration into <workspace>/<name>/. Rerunning resumes: cases already "
                    "preprocessed are skipped. See documentation/preprocessing.md.",
    )
    p.add_argument("dataset", metavar="DATASET_FOLDER", help="raw dataset folder holding dataset.json")
    p.add_argument("--workspace", default=None, help="workspace folder (default: $AUTOSEG_HOME, else ~/autoseg_workspace)")
    p.add_argument("-np", "--num-workers", type=int, default=default_num_workers(),
                   help="parallel processes (default: CPU count, at most 8)")
    p.add_argument("--planner", default="default",
                   help="planner: a registered name, package.module:ClassName or path/to/file.py:ClassName (default: default)")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory in GB the plans are sized for (default 8)")
    p.add_argument("--profile", choices=["auto", "cpu", "gpu"], default="auto",
                   help="size patches and networks for GPU or CPU training (default auto: GPU if CUDA is available)")
    p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to preprocess (default: every planned one)")
    p.add_argument("--verify-only", action="store_true", help="only check the dataset; write nothing")
    p.add_argument("--plan-only", action="store_true", help="write fingerprint.json and plans.json; do not preprocess")
    p.add_argument("--hybrid", action="store_true",
                   help="also plan 3d_hybrid (2D U-Net stages with 3D skip modules) on a 3D dataset that is not "
                        "anisotropic (it is planned automatically when the slice spacing is > 3x in-plane)")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction of MRI channels before cropping")
    p.add_argument("--name", default=None, help="dataset name in the workspace (default: the folder's name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoseg.atomic import write_json
    from autoseg.dataset.integrity import verify_dataset
    from autoseg.dataset.layout import load_dataset
    from autoseg.errors import DatasetError, UserError
    from autoseg.workspace import DatasetWorkspace

    if args.num_workers < 1:
        raise UserError(f"-np must be at least 1, got {args.num_workers}")
    started = time.perf_counter()
    spec = load_dataset(args.dataset)
    problems = verify_dataset(spec, args.num_workers)
    if args.verify_only:
        if problems:
            print(DatasetError(problems, spec.root), file=sys.stderr)
            return 2
        print(f"dataset OK: {len(spec.cases)} cases")
        return 0
    if problems:
        raise DatasetError(problems, spec.root)

    from autoseg.fingerprint.fingerprint import compute_fingerprint
    from autoseg.planners import get_planner

    workspace = DatasetWorkspace.create(args.workspace, args.name or Path(spec.root).name)
    workspace.root.mkdir(parents=True, exist_ok=True)
    write_json(workspace.source_file, {"raw_path": str(spec.root), "layout": spec.layout})

    fingerprint = compute_fingerprint(spec, args.num_workers)
    fingerprint.save(workspace.fingerprint_file)

    planner_cls = get_planner(args.planner)
    options = {"force_hybrid": True} if getattr(args, "hybrid", False) else {}
    if options and "force_hybrid" not in inspect.signature(planner_cls).parameters:
        raise UserError(f"--hybrid: planner '{args.planner}' has no force_hybrid option")
    planner = planner_cls(fingerprint, gpu_memory_gb=args.gpu_memory, profile=args.profile, **options)
    plans = planner.plan()
    plans.n4_bias_correction = bool(args.n4)
    plans.save(workspace.plans_file)

    configurations = args.configurations or list(plans.configurations)
    unknown = [c for c in configurations if c not in plans.configurations]
    if unknown:
        raise UserError(f"configuration(s) {', '.join(unknown)} not planned; planned: {', '.join(plans.configurations)}")

    print(f"{spec.name}: {len(spec.cases)} cases, {len(plans.channel_names)} channel(s) {plans.channel_names}, "
          f"label values {plans.label_values}, profile {plans.profile}")
    for name, config in plans.configurations.items():
        spacing = "x".join(f"{s:.3g}" for s in config.spacing)
        patch = "x".join(str(s) for s in config.patch_size)
        mark = "" if name in configurations else "  (not preprocessed)"
        print(f"  {name:<11} spacing {spacing} mm, patch {patch}, batch {config.batch_size}, "
              f"{config.network.n_stages} stages{mark}")
    print(f"wrote {workspace.fingerprint_file} and {workspace.plans_file}")
    if args.plan_only:
        return 0

    from autoseg.preprocessing.runner import preprocess_dataset

    counts = preprocess_dataset(spec, plans, configurations, workspace, args.num_workers, n4=args.n4)
    for ident, n in counts.items():
        skipped = len(spec.cases) - n
        extra = f" ({skipped} already done)" if skipped else ""
        print(f"preprocessed {n} case(s) into {workspace.preprocessed_dir(ident)}{extra}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
