"""Benchmark: training iterations per second at identical patch, batch and network, autoseg vs nnU-Net v2.

    python benchmarks/bench_train_throughput.py [--data ../shared/data/Task04_Hippocampus] [--iterations 20]

The network is nnU-Net's own 3d_fullres plan (``nnUNetPlans.json`` after nnU-Net's
plan-and-preprocess: on Hippocampus patch 40x56x40, batch 7, PlainConvUNet 32-64-128-256, 3x3x3
kernels, strides 1-2-2-2, 2 convolutions per stage). autoseg gets exactly that topology: its
own ``plans.json`` (in a workspace of this benchmark only) is rewritten with nnU-Net's patch size,
batch size, features per stage, kernel sizes, strides and convolutions per stage. Both networks
are then conv (+bias) -> instance norm (affine) -> LeakyReLU(0.01) stacks with strided-conv
downsampling, transposed-conv upsampling and deep supervision, so they do the same convolutions.

Timed, one after the other, same fold (autoseg's folds, handed to nnU-Net as splits_final.json):
- nnU-Net: ``nnUNetv2_train ID 3d_fullres 0 -tr nnUNetTrainer_Budget -device cpu``, one epoch of
  ``warmup + iterations`` iterations, final validation skipped; the trainer writes each step's
  start time, and the rate is taken over the start-to-start intervals after the first ``warmup``
  iterations (so it includes any wait for augmented batches, and excludes start-up).
- autoseg: ``autoseg train DATASET 3d_fullres 0 --epochs 2 --iters-per-epoch N --val-iters 0
  --no-validation``; ``log.json`` records each epoch's iterations / training-loop seconds
  (``iterations_per_s``, loading waits included, patch validation and checkpointing excluded);
  epoch 0 is the warm-up, epoch 1 the measurement.

Each tool runs at its own default precision on CPU: nnU-Net fp32 (it autocasts on CUDA only),
autoseg bf16 autocast where the CPU has native bf16. The compute floor: the FLOPs of one training
iteration (forward + backward of every convolution, counted by torch.utils.flop_counter on the
autoseg network built from the shared topology) divided by the machine's measured matmul rate at
that precision (a large torch.matmul on all cores, fp32 and bf16). "share of floor" = floor time /
measured time per iteration.

The trained models stay in the scratch folder: bench_predict.py uses them (identical networks).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BENCHMARK = "train_throughput"
CONFIG = "3d_fullres"
NNUNET_TRAINER = "nnUNetTrainer_Budget"
AUTOSEG_TRAINER = "unet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "Task04_Hippocampus",
                   help="MSD-style dataset folder (default: ../shared/data/Task04_Hippocampus)")
    p.add_argument("--iterations", type=int, default=20, help="measured training iterations per tool (default 20)")
    p.add_argument("--warmup", type=int, default=5,
                   help="nnU-Net iterations excluded before measuring (default 5; autoseg's warm-up is its first epoch)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="augmentation workers for both (nnUNet_n_proc_DA / autoseg --num-workers); default: each tool's own")
    p.add_argument("--preprocess-workers", type=int, default=2, help="processes for the untimed preprocessing (default 2)")
    p.add_argument("--autoseg-precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="autoseg --precision (default auto: bf16 autocast on this CPU)")
    p.add_argument("--matmul-size", type=int, default=2048, help="matrix size for the matmul rate (default 2048)")
    p.add_argument("--scratch", type=Path, default=None,
                   help=f"scratch folder (default: {harness.DEFAULT_SCRATCH}/train_throughput_<dataset>)")
    p.add_argument("--nnunet-venv", type=Path, default=None,
                   help=f"nnU-Net v2 environment (default: $NNUNET_VENV or {harness.DEFAULT_NNUNET_VENV})")
    p.add_argument("--dataset-id", type=int, default=None)
    p.add_argument("--tools", nargs="+", choices=["nnunet", "autoseg"], default=["nnunet", "autoseg"])
    return p.parse_args(argv)


# --------------------------------------------------------------------------- identical topology


def nnunet_topology(nnunet_plans: dict, configuration: str = CONFIG) -> dict:
    """Patch, batch and U-Net topology of an nnU-Net configuration, in autoseg's plan vocabulary."""
    cfg = nnunet_plans["configurations"][configuration]
    arch = cfg["architecture"]
    kw = arch["arch_kwargs"]
    if not arch["network_class_name"].endswith("PlainConvUNet"):
        raise harness.BenchmarkError(f"nnU-Net plans use {arch['network_class_name']}; only PlainConvUNet is mirrored")
    n_conv = set(kw["n_conv_per_stage"]) | set(kw["n_conv_per_stage_decoder"])
    if len(n_conv) != 1:
        raise harness.BenchmarkError(f"nnU-Net plans vary the convolutions per stage ({kw['n_conv_per_stage']}, "
                                     f"{kw['n_conv_per_stage_decoder']}); autoseg's plan has one number")
    return {
        "patch_size": [int(v) for v in cfg["patch_size"]],
        "batch_size": int(cfg["batch_size"]),
        "network": {
            "features_per_stage": [int(v) for v in kw["features_per_stage"]],
            "kernel_sizes": [[int(v) for v in k] for k in kw["kernel_sizes"]],
            "strides": [[int(v) for v in s] for s in kw["strides"]],
            "n_conv_per_stage": n_conv.pop(),
        },
    }


def apply_topology(autoseg_plans: dict, topology: dict, configuration: str = CONFIG) -> dict:
    """A copy of autoseg's plans whose ``configuration`` has ``topology``'s patch, batch and network."""
    plans = json.loads(json.dumps(autoseg_plans))
    cfg = plans["configurations"][configuration]
    cfg["patch_size"] = list(topology["patch_size"])
    cfg["batch_size"] = topology["batch_size"]
    cfg["network"] = {**cfg["network"], **topology["network"]}
    cfg["notes"] = "topology copied from nnU-Net's plans by benchmarks/bench_train_throughput.py"
    return plans


def write_identical_plans(dataset_ws: Path, nnunet_preprocessed: Path) -> dict:
    """Rewrite the benchmark workspace's plans.json with nnU-Net's topology (original kept aside)."""
    from autoseg.atomic import write_json

    original = dataset_ws / "plans.autoseg_original.json"
    if not original.is_file():
        shutil.copyfile(dataset_ws / "plans.json", original)
    topology = nnunet_topology(json.loads((nnunet_preprocessed / "nnUNetPlans.json").read_text()))
    write_json(dataset_ws / "plans.json", apply_topology(json.loads(original.read_text()), topology))
    return topology


# --------------------------------------------------------------------------- compute floor


def training_flops(plans_file: Path, configuration: str = CONFIG) -> float:
    """FLOPs of one training iteration (forward + backward, deep supervision) of autoseg's network.

    Counted by torch's FlopCounterMode (convolutions, transposed convolutions, matmuls; a
    multiply-add is 2 FLOPs) on meta tensors, so nothing is computed.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from autoseg.networks import build_network
    from autoseg.planners.plans import Plans

    plans = Plans.load(plans_file)
    config = plans.configuration(configuration)
    net = build_network(plans, config).to("meta")
    net.train()
    x = torch.zeros((config.batch_size, len(plans.channel_names), *config.patch_size), device="meta")
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().sum() for o in outs).backward()
    return float(counter.get_total_flops())


def matmul_rate(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured FLOP/s of a square torch.matmul on all cores, fp32 and bf16 (best of ``repeats``)."""
    import torch

    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        rates[name] = 2 * size**3 / best
    rates["threads"] = torch.get_num_threads()
    return rates


# --------------------------------------------------------------------------- main


def prepare(args: argparse.Namespace, scratch: Path, logs: Path, venv: Path | None):
    """Both tools' data, identical topology, shared folds (untimed). Returns (data, dataset_ws, folders, nn_pre, topology, id)."""
    data = args.data.expanduser().resolve()
    dataset_id = harness.dataset_id_for(data, args.dataset_id)
    workspace = scratch / "autoseg_workspace"
    dataset_ws = harness.prepare_autoseg(data, workspace, args.preprocess_workers, logs)
    if venv is None:
        venv = harness.nnunet_venv(args.nnunet_venv)  # the topology comes from nnU-Net's planner either way
    folders = harness.NnunetFolders.under(scratch).make()
    nn_pre = harness.prepare_nnunet(venv, folders, data, dataset_id, args.preprocess_workers, logs)
    topology = write_identical_plans(dataset_ws, nn_pre)
    harness.write_nnunet_splits(harness.autoseg_splits(dataset_ws, CONFIG), nn_pre)
    return data, dataset_ws, folders, nn_pre, topology, dataset_id


def model_folders(scratch: Path, data_name: str, nn_dataset: str) -> dict[str, Path]:
    """Where this benchmark leaves each tool's trained model (read by bench_predict.py)."""
    return {"autoseg": scratch / "autoseg_workspace" / data_name / "results" / f"{AUTOSEG_TRAINER}__{CONFIG}",
            "nnunet": scratch / "nnunet" / "nnUNet_results" / nn_dataset / f"{NNUNET_TRAINER}__nnUNetPlans__{CONFIG}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = harness.dataset_folder(args.data)
    if data is None:
        return 2
    if args.iterations < 2:
        print("error: --iterations must be at least 2", file=sys.stderr)
        return 2
    scratch = harness.scratch_folder(args.scratch, "train_throughput", data)
    scratch.mkdir(parents=True, exist_ok=True)
    logs, results_file = scratch / "logs", scratch / "results.jsonl"
    tools = list(dict.fromkeys(args.tools))
    try:
        venv = harness.nnunet_venv(args.nnunet_venv)
        print("preparing (not timed): both tools' preprocessing, nnU-Net's topology into autoseg's plans", flush=True)
        data, dataset_ws, folders, nn_pre, topology, dataset_id = prepare(args, scratch, logs, venv)
    except harness.BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"identical topology: patch {topology['patch_size']}, batch {topology['batch_size']}, "
          f"features {topology['network']['features_per_stage']}, strides {topology['network']['strides']}, "
          f"{topology['network']['n_conv_per_stage']} convs per stage")
    flops = training_flops(dataset_ws / "plans.json")
    rates = matmul_rate(args.matmul_size)
    print(f"one training iteration: {flops / 1e9:.1f} GFLOP; matmul rate on {rates['threads']} threads: "
          f"fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    harness.warm_page_cache(data)

    context = {"dataset": str(data), "configuration": CONFIG, "fold": args.fold, "topology": topology,
               "iteration_flops": flops, "matmul_flops_per_s": rates, "workers": args.workers,
               "machine": harness.machine_info()}
    models = model_folders(scratch, data.name, nn_pre.name)
    measured: dict[str, dict] = {}
    failed = []
    for tool in tools:
        fold_dir = models[tool] / f"fold_{args.fold}"
        harness.remove_tree(fold_dir)
        if tool == "nnunet":
            timing = scratch / "nnunet_timing.json"
            timing.unlink(missing_ok=True)
            extra = {"NNUNET_BUDGET_EPOCHS": "1", "NNUNET_BUDGET_ITERATIONS": str(args.warmup + args.iterations),
                     "NNUNET_BUDGET_VAL_ITERATIONS": "1", "NNUNET_BUDGET_SKIP_FINAL_VALIDATION": "1",
                     "NNUNET_BUDGET_TIMING_FILE": str(timing)}
            if args.workers is not None:
                extra["nnUNet_n_proc_DA"] = str(args.workers)
            env = harness.nnunet_env(folders, venv, extra=extra, extra_trainers=True)
            command = [harness.nnunet_command(venv, "nnUNetv2_train"), str(dataset_id), CONFIG, str(args.fold),
                       "-tr", NNUNET_TRAINER, "-device", "cpu"]
        else:
            env = None
            command = [sys.executable, "-m", "autoseg", "train", data.name, CONFIG, str(args.fold),
                       "--epochs", "2", "--iters-per-epoch", str(args.iterations), "--val-iters", "0",
                       "--no-validation", "--device", "cpu", "--precision", args.autoseg_precision,
                       "--workspace", str(dataset_ws.parent),
                       *(["--num-workers", str(args.workers)] if args.workers is not None else [])]
        log = logs / f"{tool}_train.log"
        print(f"{tool}: {' '.join(map(str, command))}", flush=True)
        result = harness.run_measured(command, benchmark=BENCHMARK, tool=tool, env=env, log_file=log, timeout_s=7200)
        m = None
        try:
            if result.ok and tool == "nnunet":
                t = json.loads(timing.read_text())
                intervals = t["interval_seconds"][args.warmup:]
                m = {"seconds_per_iteration": statistics.mean(intervals), "measured_iterations": len(intervals),
                     "step_only_seconds": statistics.mean(t["step_seconds"][args.warmup:]), "precision": "fp32",
                     "patch_size": t["patch_size"], "batch_size": t["batch_size"]}
            elif result.ok:
                lg = json.loads((fold_dir / "log.json").read_text())
                ep = lg["epochs"][1]
                precision = "bf16" if "bfloat16" in str(lg.get("precision")) else "fp32"
                m = {"seconds_per_iteration": 1.0 / ep["iterations_per_s"], "measured_iterations": args.iterations,
                     "precision": precision, "precision_logged": lg.get("precision")}
        except (OSError, KeyError, IndexError, ValueError, ZeroDivisionError) as e:
            result.extra["measure_error"] = repr(e)
        if m is not None:
            floor = flops / rates[m["precision"]]
            m.update(iterations_per_s=1.0 / m["seconds_per_iteration"], floor_seconds=floor,
                     share_of_floor=floor / m["seconds_per_iteration"])
            result.extra["throughput"] = m
            measured[tool] = m
            print(f"    {m['iterations_per_s']:.3f} it/s ({m['seconds_per_iteration']:.2f} s/it, {m['precision']}), "
                  f"{100 * m['share_of_floor']:.0f}% of the compute floor", flush=True)
        else:
            failed.append(tool)
            print(f"    FAILED (exit {result.returncode} {result.extra.get('measure_error', '')}), log {log}:\n"
                  f"{harness.tail(log)}", flush=True)
        harness.append_result(results_file, result, **context)

    names = {"nnunet": "nnU-Net v2", "autoseg": "autoseg"}
    rows = [[names[t], "x".join(map(str, topology["patch_size"])), topology["batch_size"],
             "-".join(map(str, topology["network"]["features_per_stage"])), m["precision"],
             f"{m['seconds_per_iteration']:.2f}", f"{m['iterations_per_s']:.3f}", f"{flops / 1e9:.1f}",
             f"{m['floor_seconds']:.3f}", f"{100 * m['share_of_floor']:.0f}%"] for t, m in measured.items()]
    print()
    print(f"Training throughput, {data.name} {CONFIG}, nnU-Net's topology for both, CPU ({rates['threads']} threads); "
          f"matmul fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s")
    print()
    print(harness.markdown_table(["tool", "patch", "batch", "features", "precision", "s/iteration", "iterations/s",
                                  "GFLOP/iteration", "floor s/iteration", "share of floor"], rows))
    if len(measured) == 2:
        ratio = measured["autoseg"]["iterations_per_s"] / measured["nnunet"]["iterations_per_s"]
        print()
        print(f"throughput ratio autoseg / nnU-Net: {ratio:.2f} (goal >= 1.3)")
    print(f"models kept for bench_predict.py: {models['autoseg']}, {models['nnunet']}")
    print(f"results appended to {results_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
