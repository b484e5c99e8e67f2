"""Network step time of the hybrid U-Net on the ACDC ``3d_hybrid`` plan, with its pooling variants.

    python benchmarks/bench_hybrid_step.py [--steps 6] [--threads 2]

One training step = forward + backward + Adam step at the ACDC ``3d_hybrid`` plan (patch
5x96x96, batch 9, features 16-128 over 5 stages, in-plane strides), bf16 autocast, contiguous
memory, as the trainer runs it on a CPU. Rows are stepped in turn (A, B, C, A, B, C, ...), so
load from other jobs falls on all of them alike; the median of ``--steps`` steps after two
warm-up steps each. Rows:

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
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import autoseg.networks.hybrid_unet as hybrid
from autoseg.planners.plans import NetworkTopology

TOPOLOGY = NetworkTopology([16, 32, 64, 128, 128], [[1, 3, 3]] * 5, [[1, 1, 1]] + [[1, 2, 2]] * 4)


def torch_pools(x: torch.Tensor, thicknesses) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    means, maxes = [], []
    for n in thicknesses:
        n = min(n, x.shape[2] if x.shape[2] % 2 else x.shape[2] - 1)
        k, pad = (n, 3, 3), (n // 2, 1, 1)
        # avg_pool3d has no bf16 kernel on CPU: autocast's fp32 path, as the first implementation ran
        means.append(F.avg_pool3d(x.float(), k, 1, pad, count_include_pad=False).to(x.dtype))
        maxes.append(F.max_pool3d(x, k, 1, pad))
    return means, maxes


def make_step(shipped_pool: bool = True, drop_block: int | None = None, **network_kwargs) -> Callable[[], None]:
    """``drop_block``: 0 replaces every skip module's residual block by the identity, 1 its aggregation."""
    torch.manual_seed(0)
    net = hybrid.HybridUNet(1, 4, TOPOLOGY, **network_kwargs)
    if drop_block is not None:
        for module in net.skips:
            if isinstance(module, hybrid.SkipModule):
                module[drop_block] = nn.Identity()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(9, 1, 5, 96, 96)

    def step() -> None:
        pool = hybrid.neighbourhood_pool
        hybrid.neighbourhood_pool = pool if shipped_pool else torch_pools
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = sum(o.float().mean() for o in net(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
        finally:
            hybrid.neighbourhood_pool = pool
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {
        "hybrid": make_step(),
        "hybrid, aggregation pools all channels": make_step(aggregation_reduction=1),
        "hybrid, residual blocks only": make_step(drop_block=1),
        "hybrid, aggregations only": make_step(drop_block=0),
        "hybrid, aggregations only, pooling all channels": make_step(drop_block=0, aggregation_reduction=1),
        "hybrid, torch 3D pools": make_step(shipped_pool=False),
        "hybrid, skip modules from stage 1": make_step(first_skip_stage=1),
        "hybrid, skip modules from stage 3": make_step(first_skip_stage=3),
        "hybrid_no3d": make_step(skip_modules=False),
    }
    for step in rows.values():
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.steps):
        for name, step in rows.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    print("| network | s/step (median) |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} |")


if __name__ == "__main__":
    main()
