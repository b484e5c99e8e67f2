"""Does this torch's CPU bf16 Conv3d backward return garbage for 2-voxel axes? (training.md, "Non-finite steps")

    python benchmarks/bf16_conv3d_backward_check.py [--repeats 300] [--threads 1]

Runs the same Conv3d forward + backward (bf16 autocast, fixed weights, input and output
gradient) ``--repeats`` times per shape and counts runs whose gradients are not finite, and the
largest difference between runs relative to the gradient's size. A correct kernel gives 0 and 0
(the same inputs give the same result). With torch 2.13 on this project's CPU machines, shapes
with 2 voxels along an axis that has a 3-kernel fail; 3 or more voxels, and the shapes the
planner makes (every feature map >= 4 voxels per axis), do not. The float32 row is the control.
"""
from __future__ import annotations

import argparse

import torch

SHAPES = [  # (in channels, out channels, kernel, (batch, z, y, x), bf16 autocast)
    (8, 16, (3, 3, 3), (2, 2, 8, 8), True),
    (8, 16, (3, 3, 3), (2, 2, 8, 8), False),
    (16, 16, (3, 3, 3), (2, 2, 2, 2), True),
    (8, 16, (3, 3, 3), (2, 2, 2, 8), True),
    (8, 16, (3, 3, 3), (2, 8, 8, 2), True),
    (8, 16, (1, 3, 3), (2, 2, 2, 2), True),
    (16, 16, (3, 3, 3), (2, 3, 3, 3), True),
    (16, 16, (3, 3, 3), (2, 4, 4, 4), True),
    (128, 128, (1, 3, 3), (9, 5, 6, 6), True),
]


def check(cin: int, cout: int, kernel: tuple[int, ...], shape: tuple[int, ...], bf16: bool,
          repeats: int) -> tuple[int, float]:
    """(runs with a non-finite gradient, max relative difference between finite runs)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel), bias=False)
    x = torch.randn(shape[0], cin, *shape[1:])
    grad_out = torch.randn(shape[0], cout, *shape[1:])
    bad, ref, worst = 0, None, 0.0
    for _ in range(repeats):
        xx = x.clone().requires_grad_()
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(xx)
        y.backward(grad_out.to(y.dtype))
        g = torch.cat([conv.weight.grad.flatten(), xx.grad.flatten()])
        if not torch.isfinite(g).all():
            bad += 1
        elif ref is None:
            ref = g
        else:
            worst = max(worst, float((g - ref).abs().max() / ref.abs().max()))
    return bad, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats per row\n")
    print("| in -> out channels | kernel | input (batch, z, y, x) | precision | non-finite runs | max relative difference |")
    print("|---|---|---|---|---|---|")
    for cin, cout, kernel, shape, bf16 in SHAPES:
        bad, worst = check(cin, cout, kernel, shape, bf16, args.repeats)
        print(f"| {cin} -> {cout} | {'x'.join(map(str, kernel))} | {'x'.join(map(str, shape))} | "
              f"{'bf16' if bf16 else 'fp32'} | {bad} / {args.repeats} | {worst:.1e} |", flush=True)


if __name__ == "__main__":
    main()
