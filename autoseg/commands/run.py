"""``autoseg run``: the whole study (plan, every configuration x fold, find-best, predict) as one resumable command."""
from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Run a whole study of DATASET, resuming whatever an earlier run left:

  1. plan-and-preprocess (an existing plans.json is kept; finished cases are skipped)
  2. train every selected configuration x trainer x fold as an independent job on the executor;
     a fold with done.json is skipped, a fold with a checkpoint resumes from it
  3. find-best-configuration, once every selected fold has finished
  4. with --predict INPUT OUTPUT, segment INPUT with the chosen model or ensemble

A failed job does not stop the others; the run then ends with exit code 1, naming the failed
jobs, and rerunning the same command finishes the study. Progress: <workspace>/<dataset>/
study_status.json (rewritten on every job change) and study_logs/ (one log per job); the result:
study_summary.json. See documentation/study.md."""

EPILOG = """executors:
  local            this machine: one job at a time, or --parallel N processes, each with
                   cores/N torch threads and, with CUDA, its own GPU
  slurm            one SLURM job array through submitit (pip install 'autoseg[slurm]'), at most
                   --slurm-array-parallelism jobs at once; a pre-empted or timed-out job is
                   requeued and resumes from its checkpoint
  submitit-local   submitit's local executor: every job its own process here, all at once
  submitit-debug   submitit's debug executor: the jobs one by one in this process

example:
  autoseg run /data/Task04_Hippocampus --executor slurm --slurm-partition gpu --slurm-gpus 1 \\
      --slurm-time 720 --slurm-array-parallelism 5 --predict imagesTs/ predictions/"""


def register(subparsers) -> None:
    from autoseg.commands.plan_and_preprocess import default_num_workers

    p = subparsers.add_parser("run", help="the whole study: plan, train every fold, find-best, predict (resumable)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="raw dataset folder, or the name of a dataset in the workspace")
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to train (default: every planned one)")
    p.add_argument("-t", "--trainers", nargs="+", default=None, metavar="TRAINER",
                   help="trainers to train each configuration with (default: each configuration's planned trainer)")
    p.add_argument("--folds", type=int, nargs="+", default=None, metavar="K", help="folds to train (default 0 1 2 3 4)")
    g = p.add_argument_group("executor")
    g.add_argument("--executor", choices=["local", "slurm", "submitit-local", "submitit-debug"], default="local",
                   help="where the training jobs run (default local)")
    g.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="local executor: jobs at once, each in its own process (default 1: one by one, in this process)")
    g.add_argument("--slurm-partition", default=None, metavar="NAME", help="SLURM partition")
    g.add_argument("--slurm-gpus", type=int, default=None, metavar="N", help="GPUs per job")
    g.add_argument("--slurm-cpus", type=int, default=None, metavar="N", help="CPUs per job (torch uses that many threads)")
    g.add_argument("--slurm-mem-gb", type=float, default=None, metavar="GB", help="memory per job")
    g.add_argument("--slurm-time", type=int, default=None, metavar="MIN",
                   help="time limit per job in minutes (default: 1440)")
    g.add_argument("--slurm-array-parallelism", type=int, default=None, metavar="N",
                   help="at most N jobs of the array at once")
    g.add_argument("--slurm-profile", default=None, metavar="FILE.json",
                   help="these settings as a JSON object (partition, gpus_per_node, cpus_per_task, mem_gb, "
                        "timeout_min, array_parallelism, additional_parameters, setup); options given here win")
    t = p.add_argument_group("training")
    t.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall-clock budget for the whole study, e.g. 2h, 90m or 45 (minutes): configurations, folds "
                        "and each fold's minutes are chosen to fit (written to run_plan.json)")
    t.add_argument("--fold-minutes", type=float, default=None, metavar="MIN",
                   help="wall-clock budget of each fold, training and validation (default: none)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs per fold (default: the trainer's, 1000)")
    t.add_argument("--iters-per-epoch", type=int, default=None, help="iterations per epoch (default 250 GPU, 50 CPU)")
    t.add_argument("--val-iters", type=int, default=None, help="validation batches per epoch (default 50 GPU, 5 CPU)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    t.add_argument("--seed", type=int, default=0, help="seed for patch sampling and augmentation")
    pl = p.add_argument_group("planning")
    pl.add_argument("-np", "--num-workers", type=int, default=default_num_workers(),
                    help="preprocessing processes (default: CPU count, at most 8)")
    pl.add_argument("--planner", default="default", help="planner for a dataset not planned yet (default: default)")
    pl.add_argument("--profile", choices=["auto", "cpu", "gpu"], default="auto",
                    help="size plans for GPU or CPU training (default auto: GPU if CUDA is available)")
    pl.add_argument("--gpu-memory", type=float, default=8.0, help="GPU memory in GB the plans are sized for (default 8)")
    pl.add_argument("--name", default=None, help="dataset name in the workspace (default: the folder's name)")
    p.add_argument("--predict", nargs=2, default=None, metavar=("INPUT", "OUTPUT"),
                   help="afterwards, segment the images in INPUT with the chosen model into OUTPUT")
    p.set_defaults(func=run)


def build_executor(args: argparse.Namespace):
    """The executor the options ask for; options of another executor are an error, not ignored."""
    from autoseg.errors import UserError
    from autoseg.study.executors import SlurmProfile, make_executor

    slurm = {"--slurm-partition": args.slurm_partition, "--slurm-gpus": args.slurm_gpus,
             "--slurm-cpus": args.slurm_cpus, "--slurm-mem-gb": args.slurm_mem_gb, "--slurm-time": args.slurm_time,
             "--slurm-array-parallelism": args.slurm_array_parallelism, "--slurm-profile": args.slurm_profile}
    given = [flag for flag, value in slurm.items() if value is not None]
    if args.executor == "local":
        if given:
            raise UserError(f"{', '.join(given)}: only for --executor slurm (or submitit-local/-debug)")
        return make_executor("local", parallel=1 if args.parallel is None else args.parallel)
    if args.parallel is not None:
        raise UserError(f"--parallel is for --executor local; with {args.executor} use --slurm-array-parallelism")
    for flag in ("--slurm-gpus", "--slurm-cpus", "--slurm-mem-gb", "--slurm-time", "--slurm-array-parallelism"):
        value = slurm[flag]
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    profile = SlurmProfile.load(args.slurm_profile) if args.slurm_profile else SlurmProfile()
    profile = profile.merged(partition=args.slurm_partition, gpus_per_node=args.slurm_gpus,
                             cpus_per_task=args.slurm_cpus, mem_gb=args.slurm_mem_gb, timeout_min=args.slurm_time,
                             array_parallelism=args.slurm_array_parallelism)
    return make_executor(args.executor, profile=profile)


def run(args: argparse.Namespace) -> int:
    from autoseg.commands import check_positive
    from autoseg.study.runner import StudyOptions, run_study

    check_positive("--gpu-memory", args.gpu_memory)
    executor = build_executor(args)
    options = StudyOptions(
        configurations=args.configurations, trainers=args.trainers, folds=args.folds, epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters, fold_minutes=args.fold_minutes,
        time_budget=args.time_budget, device=args.device, precision=args.precision, seed=args.seed,
        num_workers=args.num_workers, planner=args.planner, profile=args.profile, gpu_memory_gb=args.gpu_memory,
        name=args.name, predict=tuple(args.predict) if args.predict else None)
    summary = run_study(args.dataset, args.workspace, options, executor)
    print()
    for line in summary.lines():
        print(line)
    if summary.status != "finished":
        names = "; ".join(f"{f['name']}: {f['error']}" for f in summary.failed) or summary.message
        print(f"autoseg run: {len(summary.failed)} job(s) failed: {names}", file=sys.stderr)
        return 1
    return 0
