"""Parameter count and CPU training-step time of every built-in trainer's network at the
example plans' patch and batch size (the table in documentation/networks.md).

    python benchmarks/bench_architectures.py [--steps 5] [--threads 2] [--trainers fct vnet ...]

For each trainer and each configuration of ``plans_Task04_Hippocampus.json`` and
``plans_ACDC.json`` (``documentation/examples/``, the CPU profile) whose dimensionality it
trains: the network as ``build_network`` makes it for that trainer, its parameter count, and the
median seconds of a training step (bf16 autocast forward, deep-supervision Dice + CE, backward,
Adam; random data). Networks are stepped in turn, one step each per round, so load from other
jobs falls on all of them alike. Atlas-ISTN is its ITN U-Net plus an STN step
(benchmarks/bench_atlas_istn.py), so it is left out here.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

from autoseg.networks import build_network
from autoseg.planners.plans import Plans
from autoseg.trainers.registry import BUILTIN_TRAINERS, get_trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_train_step import interleaved_times, synthetic_train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLANS = ("plans_Task04_Hippocampus.json", "plans_ACDC.json")
SKIP = {"atlas_istn"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trainers", nargs="+", default=[n for n in BUILTIN_TRAINERS if n not in SKIP])
    ap.add_argument("--configurations", nargs="+", default=["2d", "3d_fullres"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, steps = [], {}
    for plans_name in PLANS:
        plans = Plans.load(REPO / "documentation" / "examples" / plans_name)
        for cname in args.configurations:
            if cname not in plans.configurations:
                continue
            planned = plans.configuration(cname)
            for trainer in args.trainers:
                if f"{planned.dim}d" not in BUILTIN_TRAINERS[trainer].dims:
                    continue
                config = dataclasses.replace(planned, architecture=get_trainer(trainer).architecture)
                try:
                    torch.manual_seed(0)
                    net = build_network(plans, config)
                except ImportError as e:  # an optional extra that is not installed
                    print(f"skipping {trainer}: {e}", file=sys.stderr)
                    continue
                key = (plans.dataset_name, cname, trainer)
                rows.append((key, sum(p.numel() for p in net.parameters()), config))
                steps[key] = synthetic_train_step(plans, config, net)
    times = interleaved_times(steps, args.steps, warmup=1)
    print(f"{args.threads} threads, median of {args.steps} steps (after 1 warm-up), bf16 autocast, random data")
    print("| dataset | configuration (patch x batch) | trainer | parameters | s/iteration |")
    print("|---|---|---|---|---|")
    for key, n, config in rows:
        patch = "x".join(map(str, config.patch_size))
        print(f"| {key[0]} | {key[1]} ({patch} x {config.batch_size}) | {key[2]} | {n / 1e6:.2f} M | "
              f"{statistics.median(times[key]):.3f} |")


if __name__ == "__main__":
    main()
