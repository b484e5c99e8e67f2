"""Peak memory of predicting one synthetic CT as the number of classes K and the volume grow, old vs new.

    python benchmarks/bench_inference_memory.py                       # segmentation only, about a minute
    python benchmarks/bench_inference_memory.py --save-probabilities  # + CASE_probabilities.npy and entropy
    python benchmarks/bench_inference_memory.py --classes 4 32 100 --shapes 96x160x160 --json out.json

Each run is a fresh subprocess that builds a tiny random U-Net with K output classes and runs
``predict_folder`` (what ``autoseg predict`` runs) on one synthetic CT of 1 mm voxels whose
configuration's spacing is 1.5 mm (the preprocessed grid is 3.4x smaller than the image, as for
TotalSegmentator-style models). The peak is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after
the prediction minus the same after imports, the network and the image read: the prediction's
own peak. Variants:

* ``old``: the code of a git revision (``--old-ref``, default HEAD), extracted with ``git archive``
  and put first on the subprocess's path;
* ``new``: this working tree with its default thresholds;
* ``new-fp16``: this working tree with the float16 accumulator forced
  (``sliding_window.FLOAT16_ACCUMULATOR_BYTES = 0``), i.e. what a case beyond 1 GiB gets;
* ``new-disk``: also the memory-mapped accumulator forced (``DISK_ACCUMULATOR_BYTES = 0``).

The label maps of every variant are compared with ``old``'s (voxels that differ). The network is
tiny on purpose: its activations are negligible, so the figures show what the accumulators and
the export cost (see "Memory" in documentation/inference.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("old", "new", "new-fp16", "new-disk")


def _plans(num_classes: int):
    from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans

    topo = NetworkTopology([4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    cfg = ConfigurationPlan(name="3d_fullres", dim=3, data_identifier="bench", spacing=[1.5, 1.5, 1.5],
                            median_shape=[64, 128, 128], patch_size=[16, 16, 16], batch_size=2, network=topo)
    values = list(range(num_classes))
    return Plans(1, "Bench", "default", "cpu", 8, ["CT"], values, [f"c{v}" for v in values],
                 [ChannelNormalization("ct", clip_low=-1000.0, clip_high=1000.0, mean=0.0, std=300.0)],
                 {"3d_fullres": cfg})


def worker(args: argparse.Namespace) -> None:
    """One prediction in this process; prints a JSON line."""
    import torch

    import autoseg
    from autoseg.inference import sliding_window
    from autoseg.inference.folder import predict_folder
    from autoseg.inference.predictor import Predictor
    from autoseg.networks import build_network

    torch.set_num_threads(args.threads)
    if args.variant in ("new-fp16", "new-disk"):
        sliding_window.FLOAT16_ACCUMULATOR_BYTES = 0
    if args.variant == "new-disk":
        sliding_window.DISK_ACCUMULATOR_BYTES = 0
    plans = _plans(args.k)
    torch.manual_seed(0)
    net = build_network(plans, plans.configuration("3d_fullres"))
    predictor = Predictor(plans, "3d_fullres", [net], device="cpu", tta=False, precision="fp32")
    # a small case first: lazy imports, the network's first-call buffers and the allocator's pools
    # are then in the baseline, which leaves what the case itself costs
    predict_folder([predictor], args.warmup, Path(args.output) / "warmup", save_probabilities=args.save_probabilities,
                   uncertainty=args.save_probabilities, write_volumes=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    predict_folder([predictor], args.input, args.output, save_probabilities=args.save_probabilities,
                   uncertainty=args.save_probabilities, write_volumes=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    print(json.dumps({"variant": args.variant, "module": autoseg.__file__, "baseline_mb": base * scale / 2**20,
                      "peak_mb": peak * scale / 2**20, "prediction_mb": (peak - base) * scale / 2**20,
                      "seconds": seconds}))


def _old_tree(ref: str, folder: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "autoseg"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _image(path: Path, shape: tuple[int, int, int]) -> None:
    import numpy as np

    from autoseg.dataset.imageio import Geometry, write_image

    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    body = (zz ** 2 + yy ** 2 / 0.6 + xx ** 2 / 0.9) < 1  # an ellipsoid "body" in air: nothing to crop
    image = np.where(body, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 20, shape).astype(np.float32)
    write_image(image, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[8, 64], help="numbers of classes K (default 8 64)")
    ap.add_argument("--shapes", nargs="+", default=["32x64x64", "48x96x96"],
                    help="image shapes ZxYxX at 1 mm (default 32x64x64 48x96x96)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["old", "new"],
                    help="default old new; new-fp16 and new-disk force the float16 / on-disk accumulator")
    ap.add_argument("--save-probabilities", action="store_true",
                    help="also write CASE_probabilities.npy and the entropy map (--save-probabilities --uncertainty)")
    ap.add_argument("--old-ref", default="HEAD", help="git revision of the old code (default HEAD)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results there")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="new", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--input", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--output", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np

    from autoseg.dataset.imageio import read_label

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-memory-") as tmp:
        tmp = Path(tmp)
        old = None
        if "old" in args.variants:
            (tmp / "old").mkdir()
            old = _old_tree(args.old_ref, (tmp / "old").resolve())
            # compiled now, so that compiling it is not part of the old variant's figures
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(old)], check=True)
        warmup = tmp / "warmup"
        warmup.mkdir()
        _image(warmup / "small.nii.gz", (16, 24, 24))
        print(f"{'shape':>12} {'K':>4} {'variant':>9} {'peak MB':>9} {'seconds':>8} {'voxels != old':>14}")
        for shape_text in args.shapes:
            shape = tuple(int(s) for s in shape_text.split("x"))
            inp = tmp / f"in_{shape_text}"
            inp.mkdir()
            _image(inp / "ct.nii.gz", shape)
            for k in args.classes:
                segs = {}
                for variant in args.variants:
                    out = tmp / f"out_{shape_text}_{k}_{variant}"
                    env = dict(os.environ)
                    if variant == "old":
                        env["PYTHONPATH"] = os.pathsep.join([str(old), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", variant,
                           "--k", str(k), "--input", str(inp), "--output", str(out), "--warmup", str(warmup),
                           "--threads", str(args.threads)]
                    if args.save_probabilities:
                        cmd.append("--save-probabilities")
                    done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        sys.exit(f"{variant} K={k} {shape_text} failed:\n{done.stderr[-3000:]}")
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    expected_root = old if variant == "old" else REPO
                    if not Path(result["module"]).resolve().is_relative_to(expected_root):
                        sys.exit(f"{variant} imported {result['module']}, not the code under {expected_root}")
                    segs[variant] = read_label(out / "ct.nii.gz")[0]
                    differ = int(np.sum(segs[variant] != segs["old"])) if "old" in segs else None
                    row = {"shape": list(shape), "voxels": int(np.prod(shape)), "classes": k, "variant": variant,
                           "prediction_peak_mb": round(result["prediction_mb"], 1),
                           "seconds": round(result["seconds"], 2), "voxels_differing_from_old": differ,
                           "save_probabilities": args.save_probabilities}
                    rows.append(row)
                    print(f"{shape_text:>12} {k:>4} {variant:>9} {row['prediction_peak_mb']:>9.1f} "
                          f"{row['seconds']:>8.2f} {'' if differ is None else differ:>14}", flush=True)
                    shutil.rmtree(out)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
