"""Benchmark: CPU inference time of one model on one image, torch vs onnxruntime.

    python benchmarks/bench_onnx.py [--plans documentation/examples/plans_Task04_Hippocampus.json]
        [--configuration 3d_fullres] [--model-folder results/unet__3d_fullres] [--folds 0]
        [--shape Z Y X] [--repeats 5] [--threads N] [--exporter auto] [--json out.json]
    python benchmarks/bench_onnx.py --tiny --repeats 1     # a seconds-long check that it runs

Same model, same image, same code path: both engines are a ``Predictor`` whose
``predict_preprocessed`` runs autoseg's sliding window (gaussian weighting, fold averaging, the
mirrored copies of each tile in one batch); only the network call differs (torch fp32 vs an
onnxruntime session of the exported fold). Timed: ``predict_preprocessed`` on the preprocessed
image, TTA off and on, engines alternating per repeat so load from other jobs falls on both;
medians. Not timed: reading, preprocessing and export to the original grid, which are the same
code for both (``benchmarks/bench_predict.py`` times whole prediction runs).

The model: ``--model-folder`` (a trained ``results/<trainer>__<configuration>``), else the
``--plans`` configuration's network with random weights (speed does not depend on the weights).
The image: random data of ``--shape`` (default: the configuration's median shape). Both engines
use ``--threads`` threads (default: all cores). Prints the times, the torch/onnxruntime ratio
(> 1: onnxruntime is faster) and the largest probability difference between the engines.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autoseg.inference.onnx_engine import export_onnx, onnx_predictor  # noqa: E402
from autoseg.inference.predictor import Predictor  # noqa: E402
from autoseg.networks import build_network  # noqa: E402
from autoseg.planners.plans import NetworkTopology, Plans  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plans", type=Path, default=REPO / "documentation" / "examples" / "plans_Task04_Hippocampus.json")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--model-folder", type=Path, default=None,
                   help="a trained model folder (default: the plans' network with random weights)")
    p.add_argument("--folds", nargs="+", default=["0"], help="folds averaged per tile (default 0)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="preprocessed image size (default: the configuration's median shape)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per engine and TTA setting (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads for both engines (default: all cores)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto")
    p.add_argument("--tiny", action="store_true", help="a tiny network and image: checks the script in seconds")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def random_model(plans: Plans, configuration: str, folds: list[str], root: Path) -> Path:
    """A model folder laid out as training leaves it, with random weights."""
    folder = root / f"unet__{configuration}"
    plans.save(folder / "plans.json")
    config = plans.configuration(configuration)
    for f in folds:
        torch.manual_seed(int(f) if f.isdigit() else 0)
        net = build_network(plans, config)
        (folder / f"fold_{f}").mkdir(parents=True, exist_ok=True)
        torch.save({"format": 1, "trainer": "unet", "architecture": config.architecture,
                    "configuration": configuration, "fold": f, "network": net.state_dict()},
                   folder / f"fold_{f}" / "checkpoint_final.pt")
    return folder


def tiny(plans: Plans, configuration: str) -> Plans:
    config = plans.configuration(configuration)
    d = config.dim
    topology = NetworkTopology([4, 8], [[3] * d] * 2, [[1] * d, [2] * d])
    plans.configurations[configuration] = dataclasses.replace(config, patch_size=[8] * d, inference_patch_size=None,
                                                              network=topology)
    return plans


def timed(fn, *a) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as scratch:
        scratch = Path(scratch)
        if args.model_folder is not None:
            folder = args.model_folder
            plans = Plans.load(folder / "plans.json")
            configuration = folder.name.split("__")[-1]
        else:
            plans = Plans.load(args.plans)
            configuration = args.configuration
            if args.tiny:
                plans = tiny(plans, configuration)
            folder = random_model(plans, configuration, args.folds, scratch)
        config = plans.configuration(configuration)
        shape = args.shape or ([6, 13, 11] if args.tiny else list(config.median_shape))
        if config.dim == 2 and args.shape is None and not args.tiny:
            shape = [min(8, shape[0])] + shape[1:]  # a few slices are representative of a 2D model's speed
        data = np.random.default_rng(0).standard_normal([len(plans.channel_names)] + shape).astype(np.float32)

        export_s, records = timed(lambda: export_onnx(folder, scratch / "onnx", args.folds, exporter=args.exporter,
                                                         progress=False))
        print(f"model {folder.name} ({config.architecture}, patch {config.inference_patch}), folds "
              f"{', '.join(args.folds)}, image {shape}, {threads} thread(s); ONNX export {export_s:.1f} s "
              f"({records[0].exporter} exporter)")
        results = []
        for tta in (False, True):
            engines = {
                "torch": Predictor.from_model_folder(folder, folds=args.folds, device="cpu", tta=tta, precision="fp32"),
                "onnxruntime": onnx_predictor(scratch / "onnx", args.folds, device="cpu", tta=tta, num_threads=threads),
            }
            torch.set_num_threads(threads)  # the Predictor sets all cores; both engines get the same
            outputs = {name: p.predict_preprocessed(data) for name, p in engines.items()}  # warm-up, untimed
            times: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(args.repeats):
                for name, p in engines.items():
                    seconds, outputs[name] = timed(p.predict_preprocessed, data)
                    times[name].append(seconds)
            med = {name: statistics.median(t) for name, t in times.items()}
            diff = float((outputs["torch"] - outputs["onnxruntime"]).abs().max())
            row = {"tta": tta, "torch_s": med["torch"], "onnxruntime_s": med["onnxruntime"],
                   "ratio_torch_over_onnxruntime": med["torch"] / med["onnxruntime"], "max_probability_diff": diff,
                   "repeats": args.repeats}
            results.append(row)
            print(f"TTA {'on ' if tta else 'off'}: torch {med['torch']:.3f} s, onnxruntime {med['onnxruntime']:.3f} s, "
                  f"ratio torch/onnxruntime {row['ratio_torch_over_onnxruntime']:.2f}, max |p diff| {diff:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"model": folder.name, "architecture": config.architecture,
                                         "shape": shape, "threads": threads, "export_s": export_s,
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
