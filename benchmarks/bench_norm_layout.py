"""CPU training-step time for the norm implementation and memory layout (documentation/networks.md).

    python benchmarks/bench_norm_layout.py [--plans documentation/examples/plans_ACDC.json]
        [--configuration 2d] [--architecture unet] [--steps 8]

Variants of one planned network, stepped in turn (A, B, C, A, B, C, ...) so that load from
other jobs on a shared machine falls on all of them alike:

* ``instance norm, channels-last``: ``nn.InstanceNorm2d/3d`` in channels-last (the old CPU default);
* ``instance norm, contiguous``;
* ``group-norm form, contiguous``: autoseg's ``InstanceNorm`` (the current default).

Each step is forward under bf16 autocast, deep-supervision Dice + CE on ``output.float()``,
backward and an Adam step on random data at the planned patch and batch size. Prints the
median and minimum seconds per step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autoseg.networks import build_network
from autoseg.networks.layers import InstanceNorm
from autoseg.planners.plans import Plans

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_train_step import (  # noqa: E402
    add_plan_arguments,
    interleaved_times,
    plan_from_arguments,
    synthetic_train_step,
)


def with_torch_instance_norm(net: nn.Module, dim: int) -> nn.Module:
    """Swap every autoseg ``InstanceNorm`` for torch's own, parameters copied."""
    cls = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim]
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, InstanceNorm):
                ref = cls(child.num_channels, eps=child.eps, affine=True)
                ref.load_state_dict(child.state_dict())
                setattr(module, name, ref)
    return net


def make_step(plans: Plans, config, torch_norm: bool, channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    net = build_network(plans, config)
    if torch_norm:
        net = with_torch_instance_norm(net, config.dim)
    fmt = ({2: torch.channels_last, 3: torch.channels_last_3d}[config.dim] if channels_last
           else torch.contiguous_format)
    return synthetic_train_step(plans, config, net, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(ap)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    plans, config = plan_from_arguments(args)
    variants = {
        "instance norm, channels-last": make_step(plans, config, True, True),
        "instance norm, contiguous": make_step(plans, config, True, False),
        "group-norm form, contiguous": make_step(plans, config, False, False),
    }
    times = interleaved_times(variants, args.steps)
    print(f"{args.plans.name} {args.configuration} {args.architecture}, {args.threads} threads, {args.steps} steps each")
    for name, ts in times.items():
        print(f"  {name:30s} median {statistics.median(ts):.3f} s  min {min(ts):.3f} s")


if __name__ == "__main__":
    main()
