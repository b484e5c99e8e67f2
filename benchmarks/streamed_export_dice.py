"""Does streaming a case row by row change its Dice? The whole-array path and the streamed one, on a fold's validation cases.

    python benchmarks/streamed_export_dice.py --workspace WS -d Task04_Hippocampus -c 3d_fullres -f 0
    python benchmarks/streamed_export_dice.py --workspace WS -d ACDC -c 2d -f 0

Each validation case of the fold (``splits.json``) is read from the raw dataset and predicted with the
fold's final checkpoint twice through ``predict_case``: as every ordinary case is (sliding window into
a whole ``(K, Z, Y, X)`` accumulator, float16 while it waits, exported class by class), and streamed
(``predictor.STREAM_BYTES = 0``: what a case above 1 GiB of probabilities gets). Both label maps are
scored against the reference with ``evaluate_case``; the script prints the mean Dice per class of each
path, the largest per-case difference and the share of voxels whose label differs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", required=True)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-c", "--configuration", required=True)
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("--trainer", default="unet")
    p.add_argument("--tta", action="store_true", help="with test-time mirroring (default off: twice as fast)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import tempfile

    import numpy as np

    from autoseg.atomic import read_json
    from autoseg.dataset.imageio import read_channels, write_image
    from autoseg.dataset.layout import load_dataset
    from autoseg.evaluation.evaluate import evaluate_case
    from autoseg.inference import predictor as predictor_module
    from autoseg.inference.predictor import Predictor, predict_case
    from autoseg.workspace import resolve_dataset

    ws = resolve_dataset(args.dataset, args.workspace)
    spec = load_dataset(read_json(ws.source_file)["raw_path"])
    cases = {c.case_id: c for c in spec.cases}
    val = read_json(ws.splits_file)[int(args.fold)]["val"]
    predictor = Predictor.from_model_folder(ws.results_dir(args.trainer, args.configuration), folds=[args.fold],
                                            device="cpu", tta=args.tta, precision="fp32")
    labels = [v for v in predictor.label_values if v != 0]
    dice = {"whole": [], "streamed": []}
    differing = 0
    voxels = 0
    default = predictor_module.STREAM_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        for cid in val:
            image, geometry = read_channels(cases[cid].image_files)
            segs = {}
            for path, limit in (("whole", 1 << 62), ("streamed", 0)):
                predictor_module.STREAM_BYTES = limit
                seg = predict_case([predictor], image, geometry).segmentation
                out = Path(tmp) / f"{cid}_{path}{spec.file_ending}"
                write_image(seg, geometry, out)
                result = evaluate_case(cases[cid].label_file, out, labels)
                dice[path].append([result["metrics"][str(v)]["Dice"] for v in labels])
                segs[path] = seg
            differing += int(np.sum(segs["whole"] != segs["streamed"]))
            voxels += segs["whole"].size
    predictor_module.STREAM_BYTES = default
    whole, streamed = (np.array(dice[k], dtype=np.float64) for k in ("whole", "streamed"))
    report = {
        "dataset": args.dataset, "configuration": args.configuration, "fold": args.fold, "cases": len(val),
        "tta": args.tta, "label_values": labels,
        "mean_dice_whole": np.nanmean(whole, 0).round(5).tolist(),
        "mean_dice_streamed": np.nanmean(streamed, 0).round(5).tolist(),
        "max_case_dice_difference": float(np.nanmax(np.abs(whole - streamed))),
        "voxels_differing": differing, "voxel_fraction_differing": differing / voxels,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
