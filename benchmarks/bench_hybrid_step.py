"""Network step time of the hybrid U-Net on the ACDC ``3d_hybrid`` plan, with its pooling variants.

    python benchmarks/bench_hybrid_step.py [--steps 6] [--threads 2]

One training step = forward + backward + Adam step at patch 10x96x96, batch 4, features
16-128 over 5 stages (in-plane strides), bf16 autocast, contiguous memory, as the trainer runs it
on a CPU; the median of ``--steps - 1`` steps after one warm-up. Rows:

* ``hybrid``: the network as shipped (separable neighbourhood pooling);
* ``hybrid, torch 3D pools``: the same network with ``avg_pool3d``/``max_pool3d`` (the first
  implementation), for comparison;
* ``hybrid, skip modules from stage 1``: ``first_skip_stage=1`` (the default until the fourth
  session; stage 2, a quarter of the in-plane resolution, is the default now);
* ``hybrid_no3d``: the ablation without skip modules.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

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


def step_time(skip: bool, steps: int, first_skip_stage: int = 2) -> float:
    torch.manual_seed(0)
    net = hybrid.HybridUNet(1, 4, TOPOLOGY, skip_modules=skip, first_skip_stage=first_skip_stage)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(4, 1, 10, 96, 96)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(o.float().mean() for o in net(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    rest = sorted(times[1:])
    return rest[len(rest) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| network | s/step |\n|---|---|")
    print(f"| hybrid | {step_time(True, args.steps):.2f} |", flush=True)
    shipped = hybrid.neighbourhood_pool
    hybrid.neighbourhood_pool = torch_pools
    try:
        print(f"| hybrid, torch 3D pools | {step_time(True, args.steps):.2f} |", flush=True)
    finally:
        hybrid.neighbourhood_pool = shipped
    print(f"| hybrid, skip modules from stage 1 | {step_time(True, args.steps, first_skip_stage=1):.2f} |", flush=True)
    print(f"| hybrid_no3d | {step_time(False, args.steps):.2f} |", flush=True)


if __name__ == "__main__":
    main()
