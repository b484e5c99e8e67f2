"""Does a deeper sliding window help a trained hybrid? Score one fold's validation cases with
windows of different sizes, same weights.

    python benchmarks/hybrid_inference_window.py --workspace SCRATCH/TAG/workspace/ACDC \
        --windows 5x96x96 10x96x96 [--tta] [--fold 0] [--trainer hybrid]

Predicts every validation case of the fold from its preprocessed array (the fold's final
checkpoint, sliding window with overlap 0.5, mirroring TTA along the checkpoint's axes with
``--tta``) once per window size, and prints the mean Dice per class on the preprocessed grid
(the benchmark tables score in the original geometry; on ACDC the two agreed to 0.001 for the
plan's own window) and the prediction time. A window deeper than a case is cut to its slices.
Used in the sixth session to choose the hybrid's ``inference_patch_size`` (10-slice windows on ACDC)
and in the eighth to drop it again (documentation/hybrid.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from autoseg.evaluation.metrics import dice_per_label
from autoseg.postprocessing.ensemble import segmentation_from_probabilities
from autoseg.inference.predictor import Predictor


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="the dataset's workspace folder (holds plans.json)")
    ap.add_argument("--configuration", default="3d_hybrid")
    ap.add_argument("--trainer", default="hybrid")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--windows", nargs="+", required=True, help="window sizes, e.g. 5x96x96 10x96x96")
    ap.add_argument("--tta", action="store_true")
    args = ap.parse_args(argv)
    predictor = Predictor.from_model_folder(args.workspace / "results" / f"{args.trainer}__{args.configuration}", folds=(args.fold,),
                          device="cpu", tta=args.tta)
    val = json.loads((args.workspace / "splits.json").read_text())[args.fold]["val"]
    pre = args.workspace / "preprocessed" / predictor.config.data_identifier
    label_values = list(predictor.plans.label_values)
    print(f"{args.trainer}__{args.configuration} fold {args.fold}, {len(val)} cases, TTA {'on' if args.tta else 'off'}")
    print("| window | " + " | ".join(f"label {v}" for v in label_values[1:]) + " | mean Dice | seconds |")
    print("|---|" + "---|" * (len(label_values) + 1))
    for spec in args.windows:
        window = [int(v) for v in spec.split("x")]
        scores, t = [], time.perf_counter()
        for case in val:
            data = np.load(pre / f"{case}.npy")
            ref = np.load(pre / f"{case}_seg.npy")
            # the slice axis (first) is cut to the case; in-plane sizes must keep the network's stride
            predictor.config.inference_patch_size = [min(window[0], data.shape[1])] + window[1:]
            pred = segmentation_from_probabilities(predictor.predict_preprocessed(data), label_values)
            scores.append(list(dice_per_label(ref, pred, label_values).values()))
        mean = np.mean(scores, axis=0)
        print(f"| {spec} | " + " | ".join(f"{d:.3f}" for d in mean) + f" | {mean.mean():.4f} | {time.perf_counter() - t:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
