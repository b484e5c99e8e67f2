"""How fast each optimizer leaves the all-background start, on autoseg's own training pieces.

Usage (after `autoseg plan-and-preprocess ../shared/data/Task04_Hippocampus --workspace WS`):

    python benchmarks/optimizer_start.py WS/Task04_Hippocampus --optimizer sgd --iterations 201
    python benchmarks/optimizer_start.py WS/Task04_Hippocampus --optimizer adam --lr 1e-3 --iterations 201

Prints the training-batch loss and per-class Dice every 20 iterations; the same seed gives the
same batches for every optimizer. Results are in documentation/training.md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autoseg.atomic import read_json
from autoseg.networks import build_network, deep_supervision_scales
from autoseg.planners.plans import Plans
from autoseg.trainers.augmentation import build_train_transforms
from autoseg.trainers.batch_loader import TrainingBatches
from autoseg.trainers.patch_sampler import PatchSampler
from autoseg.trainers.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_workspace", help="the dataset's folder in the workspace (holds plans.json)")
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--optimizer", choices=["sgd", "adam"], required=True)
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-2 for sgd, 1e-3 for adam")
    ap.add_argument("--iterations", type=int, default=201)
    args = ap.parse_args()

    plans = Plans.load(f"{args.dataset_workspace}/plans.json")
    cfg = plans.configuration(args.configuration)
    train_ids = read_json(f"{args.dataset_workspace}/splits.json")[0]["train"]
    scales = deep_supervision_scales(cfg.network)
    torch.manual_seed(0)
    net = build_network(plans, cfg)
    sampler = PatchSampler(f"{args.dataset_workspace}/preprocessed/{cfg.data_identifier}", train_ids,
                           cfg.patch_size, cfg.dim, cfg.batch_size, seed=0)
    transforms = build_train_transforms(cfg.patch_size, cfg.dim, cfg.anisotropic, scales)
    loss_fn = DeepSupervisionLoss(DiceCELoss(), deep_supervision_weights(len(scales)))
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=args.lr or 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=args.lr or 1e-3, weight_decay=3e-5)
    t0 = time.monotonic()
    with TrainingBatches(sampler, transforms, 1) as batches:
        for i, batch in enumerate(batches):
            if i == args.iterations:
                break
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(batch["data"])
                loss = loss_fn(out, batch["target"])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            opt.step()
            if i % 20 == 0:
                pred, tgt = out[0].argmax(1), batch["target"][0][:, 0]
                dice = [float(2 * ((pred == c) & (tgt == c)).sum() / ((pred == c).sum() + (tgt == c).sum()).clamp_min(1))
                        for c in range(1, plans.num_classes)]
                print(f"{i:5d} loss {loss.item():.4f} dice {np.round(dice, 3).tolist()} {time.monotonic() - t0:.1f} s",
                      flush=True)


if __name__ == "__main__":
    main()
