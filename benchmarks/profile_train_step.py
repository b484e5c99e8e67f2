"""Where one CPU training step of a planned U-Net spends its time (torch.profiler).

    python benchmarks/profile_train_step.py [--plans documentation/examples/plans_Task04_Hippocampus.json]
        [--configuration 3d_fullres] [--architecture unet] [--threads 2] [--rows 12]

The step is what the trainer runs on a CPU: the planned network (contiguous memory), bf16
autocast, deep-supervision Dice + CE in fp32, backward, Adam step, on random data at the planned
patch and batch size. Two warm-up steps, then one profiled step; prints the operators by
self CPU time, and the share of ``aten::copy_`` (dtype and memory-layout conversions).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from autoseg.networks import build_network, deep_supervision_scales
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.trainers.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights

REPO = Path(__file__).resolve().parents[1]


def synthetic_train_step(plans: Plans, config, net: torch.nn.Module,
                         memory_format: torch.memory_format = torch.contiguous_format) -> Callable[[], None]:
    """One CPU training step of ``net`` as the trainer runs it, on random data at the planned
    patch and batch size: bf16 autocast forward, deep-supervision Dice + CE in fp32, backward, Adam."""
    net = net.to(memory_format=memory_format)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    # a 2.5D network takes each channel's neighbouring slices as channels
    channels = len(plans.channel_names) * int(getattr(net, "context_slices", 1))
    x = torch.randn(config.batch_size, channels, *config.patch_size).contiguous(memory_format=memory_format)
    scales = deep_supervision_scales(config.network)
    targets = [torch.randint(0, plans.num_classes, (config.batch_size, 1,
                                                    *[int(round(p / s)) for p, s in zip(config.patch_size, sc)]))
               for sc in scales]
    loss_fn = DeepSupervisionLoss(DiceCELoss(), deep_supervision_weights(len(scales)))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        out = [out] if isinstance(out, torch.Tensor) else out  # networks without deep supervision
        loss = loss_fn([o.float() for o in out], targets[:len(out)])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def interleaved_times(variants: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each variant, called in turn (A, B, C, A, B, C, ...) after ``warmup``
    calls each, so that load from other jobs on a shared machine falls on all of them alike."""
    for call in variants.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, call in variants.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return times


def add_plan_arguments(ap: argparse.ArgumentParser) -> None:
    """--plans, --configuration, --architecture, --threads: which planned network, on how many threads."""
    ap.add_argument("--plans", type=Path, default=REPO / "documentation" / "examples" / "plans_Task04_Hippocampus.json")
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--architecture", default="unet", help="a key of autoseg.networks.ARCHITECTURES (e.g. hybrid)")
    ap.add_argument("--threads", type=int, default=2)


def plan_from_arguments(args: argparse.Namespace) -> tuple[Plans, ConfigurationPlan]:
    """The plans and configuration :func:`add_plan_arguments` names; sets torch's thread count."""
    torch.set_num_threads(args.threads)
    plans = Plans.load(args.plans)
    return plans, dataclasses.replace(plans.configuration(args.configuration), architecture=args.architecture)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(ap)
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    plans, config = plan_from_arguments(args)
    step = synthetic_train_step(plans, config, build_network(plans, config))

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    copies = sum(e.self_cpu_time_total for e in averages if e.key == "aten::copy_")
    print(f"aten::copy_: {100 * copies / total:.0f}% of the step's self CPU time")


if __name__ == "__main__":
    main()
