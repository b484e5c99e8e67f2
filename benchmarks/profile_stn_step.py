"""Time and profile one training step of Atlas-ISTN's spatial transformer on its own.

    python benchmarks/profile_stn_step.py [--grid 40 56 40] [--batch 4] [--threads 2] [--rows 14]

The STN part of an ``atlas_istn`` step on random inputs: forward (in fp32, then with its
convolutions under bf16 autocast as the trainer runs it), La2s + Ls2a + 0.1 Lreg, backward,
Adam, and the two atlas-accumulation warps. Prints the median of 5 steps for each precision,
then the operators of one bf16 step by self CPU time. Defaults: the Hippocampus atlas grid.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from autoseg.networks.stn import SpatialTransformer, atlas_losses, smoothness_loss
from autoseg.trainers.atlas_istn import AtlasISTNTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, nargs="+", default=[40, 56, 40])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=2, help="foreground classes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=14)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dim = len(args.grid)
    stn = SpatialTransformer(args.classes, dim, AtlasISTNTrainer.stn_features, AtlasISTNTrainer.integration_steps)
    opt = torch.optim.Adam(stn.parameters(), 1e-3)
    probs = torch.rand(args.batch, args.classes, *args.grid)
    atlas = torch.rand(1, args.classes, *args.grid)
    labels = (torch.rand(args.batch, args.classes, *args.grid) > 0.5).float()

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            reg = stn(probs, atlas)
        la2s, ls2a = atlas_losses(reg, labels, atlas)
        loss = la2s + ls2a + AtlasISTNTrainer.reg_weight * smoothness_loss(reg.velocity)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            reg.subject_to_atlas(probs[:, :1])
            reg.subject_to_atlas(labels)

    for bf16 in (False, True):
        step(bf16)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            step(bf16)
            times.append(time.perf_counter() - t)
        print(f"convolutions in {'bf16' if bf16 else 'fp32'}: median {statistics.median(times):.3f} s/step")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
