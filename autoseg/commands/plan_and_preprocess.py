"""``autoseg plan-and-preprocess``: verify a dataset, fingerprint it, plan, preprocess.

Nothing is written before the dataset has passed the integrity check, so a broken dataset
never leaves a half-made workspace. Preprocessing resumes: rerunning the command skips
cases that are already done.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


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
    from autoseg.commands import check_positive
    from autoseg.dataset.integrity import verify_dataset
    from autoseg.dataset.layout import load_dataset
    from autoseg.errors import DatasetError, UserError
    from autoseg.preprocessing.plan_and_preprocess import plan_and_preprocess

    if args.num_workers < 1:
        raise UserError(f"-np must be at least 1, got {args.num_workers}")
    check_positive("--gpu-memory", args.gpu_memory)
    started = time.perf_counter()
    if args.verify_only:
        spec = load_dataset(args.dataset)
        problems = verify_dataset(spec, args.num_workers)
        if problems:
            print(DatasetError(problems, spec.root), file=sys.stderr)
            return 2
        print(f"dataset OK: {len(spec.cases)} cases")
        return 0

    def planned(prepared) -> None:
        for line in prepared.describe():
            print(line)
        print(f"wrote {prepared.workspace.fingerprint_file} and {prepared.workspace.plans_file}", flush=True)

    prepared = plan_and_preprocess(
        args.dataset, args.workspace, name=args.name, num_workers=args.num_workers, planner=args.planner,
        gpu_memory_gb=args.gpu_memory, profile=args.profile, configurations=args.configurations,
        force_hybrid=bool(getattr(args, "hybrid", False)), n4=args.n4, plan_only=args.plan_only, on_planned=planned)
    if args.plan_only:
        return 0
    for line in prepared.preprocessing_lines():
        print(line)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
