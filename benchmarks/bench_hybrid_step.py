"""Network step time of the hybrid U-Net on the ACDC ``3d_hybrid`` plan, with its variants.

    python benchmarks/bench_hybrid_step.py [--steps 6] [--threads 2]
        [--plans documentation/examples/plans_ACDC.json] [--configuration 3d_hybrid]
    python benchmarks/bench_hybrid_step.py --inference-batches 1 2 4

One training step is :func:`profile_train_step.synthetic_train_step` (the trainer's CPU step:
bf16 autocast, deep-supervision Dice + CE, backward, Adam) at the plan's patch and batch
(ACDC: 5x96x96, batch 9, features 16-128 over 5 stages). Rows are stepped in turn
(:func:`profile_train_step.interleaved_times`, two warm-up steps each); the median of
``--steps`` steps. Rows:

* ``hybrid``: the network as shipped (aggregation pools a quarter of the channels);
* ``hybrid, aggregation pools all channels``: ``aggregation_reduction=1`` (until the seventh
  session);
* ``hybrid, residual blocks only`` / ``hybrid, aggregations only`` (also with all channels
  pooled): one of the two skip blocks replaced by the identity, to see which costs what;
* ``hybrid, torch 3D pools``: separable pooling swapped for ``avg_pool3d``/``max_pool3d``
  (the first implementation);
* ``hybrid, skip modules from stage 1`` / ``from stage 3``: ``first_skip_stage`` 1 (until the
  fourth session) or 3 (12x12 maps and coarser);
* ``hybrid_no3d``: the ablation without skip modules.

``--inference-batches`` instead times the shipped network's eval forward pass (bf16, as
sliding-window prediction runs it) on the plan's inference window, per window, at each batch
size: does sending several windows per pass make each cheaper?
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import autoseg.networks.hybrid_unet as hybrid
from autoseg.planners.plans import ConfigurationPlan, Plans

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_train_step import REPO, interleaved_times, synthetic_train_step  # noqa: E402


def torch_pools(x: torch.Tensor, thicknesses) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    means, maxes = [], []
    for n in thicknesses:
        n = min(n, x.shape[2] if x.shape[2] % 2 else x.shape[2] - 1)
        k, pad = (n, 3, 3), (n // 2, 1, 1)
        # avg_pool3d has no bf16 kernel on CPU: autocast's fp32 path, as the first implementation ran
        means.append(F.avg_pool3d(x.float(), k, 1, pad, count_include_pad=False).to(x.dtype))
        maxes.append(F.max_pool3d(x, k, 1, pad))
    return means, maxes


def build(plans: Plans, config: ConfigurationPlan, drop_block: int | None = None, **network_kwargs) -> nn.Module:
    """The planned hybrid network; ``drop_block`` 0 replaces every skip module's residual block by
    the identity, 1 its aggregation."""
    torch.manual_seed(0)
    net = hybrid.HybridUNet(len(plans.channel_names), plans.num_classes, config.network, **network_kwargs)
    if drop_block is not None:
        for module in net.skips:
            if isinstance(module, hybrid.SkipModule):
                module[drop_block] = nn.Identity()
    return net


def with_torch_pools(step: Callable[[], None]) -> Callable[[], None]:
    def patched() -> None:
        shipped = hybrid.neighbourhood_pool
        hybrid.neighbourhood_pool = torch_pools
        try:
            step()
        finally:
            hybrid.neighbourhood_pool = shipped
    return patched


def inference_times(plans: Plans, config: ConfigurationPlan, batches: list[int], repeats: int) -> None:
    net = build(plans, config).eval()

    def forward(batch: int) -> Callable[[], None]:
        x = torch.randn(batch, len(plans.channel_names), *config.inference_patch)

        def call() -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                net(x)
        return call

    times = interleaved_times({str(b): forward(b) for b in batches}, repeats)
    print(f"| windows per pass ({'x'.join(map(str, config.inference_patch))}) | s per window (median) |\n|---|---|")
    for b in batches:
        print(f"| {b} | {statistics.median(times[str(b)]) / b:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plans", type=Path, default=REPO / "documentation" / "examples" / "plans_ACDC.json")
    ap.add_argument("--configuration", default="3d_hybrid")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inference-batches", type=int, nargs="+", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plans = Plans.load(args.plans)
    config = plans.configuration(args.configuration)
    if args.inference_batches:
        inference_times(plans, config, args.inference_batches, args.steps)
        return
    rows = {
        "hybrid": build(plans, config),
        "hybrid, aggregation pools all channels": build(plans, config, aggregation_reduction=1),
        "hybrid, residual blocks only": build(plans, config, drop_block=1),
        "hybrid, aggregations only": build(plans, config, drop_block=0),
        "hybrid, aggregations only, pooling all channels": build(plans, config, drop_block=0, aggregation_reduction=1),
        "hybrid, torch 3D pools": build(plans, config),
        "hybrid, skip modules from stage 1": build(plans, config, first_skip_stage=1),
        "hybrid, skip modules from stage 3": build(plans, config, first_skip_stage=3),
        "hybrid_no3d": build(plans, config, skip_modules=False),
    }
    steps = {name: synthetic_train_step(plans, config, net) for name, net in rows.items()}
    steps["hybrid, torch 3D pools"] = with_torch_pools(steps["hybrid, torch 3D pools"])
    times = interleaved_times(steps, args.steps)
    print(f"{args.plans.name} {args.configuration}: patch {config.patch_size}, batch {config.batch_size}, "
          f"{args.threads} threads, median of {args.steps} steps")
    print("| network | s/step (median) |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} |")


if __name__ == "__main__":
    main()
