"""Benchmark: CPU prediction time per case, with and without test-time mirroring, autoseg vs nnU-Net v2.

    python benchmarks/bench_predict.py [--data ../shared/data/Task04_Hippocampus] [--cases 20]

Identical network and patch size: both models are the ones bench_train_throughput.py leaves in
its scratch folder (nnU-Net's 3d_fullres topology for both: patch 40x56x40, 32-256 features on
Hippocampus; each trained a few iterations with its own trainer). If they are missing, that
benchmark is run first (``--train-iterations`` iterations). One fold (fold 0) each.

Same cases: the first ``--cases`` cases of fold 0's validation set (autoseg's folds, which the
throughput benchmark handed to nnU-Net too), linked as ``CASE_0000.nii.gz`` into one input folder
that both tools read. Timed (fresh output folder every run; tools alternate per repeat):
- nnU-Net: ``nnUNetv2_predict -i IN -o OUT -d ID -c 3d_fullres -f 0 -tr nnUNetTrainer_Budget -device cpu``
  with TTA (its default) and with ``--disable_tta``;
- autoseg: ``autoseg predict -i IN -o OUT -d DATASET -c 3d_fullres -f 0 --device cpu``, with TTA
  (default; bf16 autocast on this CPU) and ``--no-tta``.
Wall time includes start-up, reading, preprocessing, export and writing: what a user waits for.
Peak memory is the whole process tree's (RSS and PSS, harness.run_measured).

"Dice unchanged": autoseg also predicts the same cases with ``--precision fp32`` (TTA on); all
outputs are scored against the reference labels with ``autoseg evaluate``, and the bf16 and fp32
segmentations are compared with each other (Dice of one against the other).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_throughput as throughput  # noqa: E402
import harness  # noqa: E402

BENCHMARK = "predict"
CONFIG = throughput.CONFIG


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "Task04_Hippocampus",
                   help="MSD-style dataset folder (default: ../shared/data/Task04_Hippocampus)")
    p.add_argument("--cases", type=int, default=20, help="first N validation cases of fold 0 (default 20)")
    p.add_argument("--repeats", type=int, default=1, help="runs per tool and variant, alternating; medians (default 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="background workers for both (nnU-Net -npp/-nps, autoseg -np); default: each tool's own")
    p.add_argument("--models-scratch", type=Path, default=None,
                   help="scratch folder of bench_train_throughput.py holding both models "
                        f"(default: {harness.DEFAULT_SCRATCH}/train_throughput_<dataset>)")
    p.add_argument("--train-iterations", type=int, default=20,
                   help="iterations for bench_train_throughput.py when the models are missing (default 20)")
    p.add_argument("--no-fp32-check", action="store_true", help="skip autoseg's fp32 prediction (Dice unchanged)")
    p.add_argument("--scratch", type=Path, default=None,
                   help=f"scratch folder for inputs and outputs (default: {harness.DEFAULT_SCRATCH}/predict_<dataset>)")
    p.add_argument("--nnunet-venv", type=Path, default=None,
                   help=f"nnU-Net v2 environment (default: $NNUNET_VENV or {harness.DEFAULT_NNUNET_VENV})")
    p.add_argument("--dataset-id", type=int, default=None)
    p.add_argument("--tools", nargs="+", choices=["nnunet", "autoseg"], default=["nnunet", "autoseg"])
    p.add_argument("--timeout", type=float, default=3600)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = harness.dataset_folder(args.data)
    if data is None:
        return 2
    dataset_id = harness.dataset_id_for(data, args.dataset_id)
    models_scratch = (args.models_scratch or harness.DEFAULT_SCRATCH / f"train_throughput_{data.name}").expanduser().resolve()
    scratch = harness.scratch_folder(args.scratch, "predict", data)
    scratch.mkdir(parents=True, exist_ok=True)
    logs, results_file = scratch / "logs", scratch / "results.jsonl"
    tools = list(dict.fromkeys(args.tools))
    try:
        venv = harness.nnunet_venv(args.nnunet_venv)
    except harness.BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    nn_dataset = harness.nnunet_dataset_name(dataset_id, harness._msd_name(data, json.loads((data / "dataset.json").read_text())))
    models = throughput.model_folders(models_scratch, data.name, nn_dataset)
    have = {"autoseg": (models["autoseg"] / "fold_0" / "checkpoint_final.pt").is_file(),
            "nnunet": (models["nnunet"] / "fold_0" / "checkpoint_final.pth").is_file()}
    missing = [t for t in tools if not have[t]]
    if missing:
        print(f"no trained model for {', '.join(missing)} in {models_scratch}: running bench_train_throughput.py first",
              flush=True)
        rc = throughput.main(["--data", str(data), "--scratch", str(models_scratch), "--iterations",
                              str(args.train_iterations), "--tools", *missing,
                              *(["--nnunet-venv", str(args.nnunet_venv)] if args.nnunet_venv else []),
                              *(["--dataset-id", str(args.dataset_id)] if args.dataset_id is not None else [])])
        if rc != 0:
            print("error: training the models failed", file=sys.stderr)
            return 1
    dataset_ws = models_scratch / "autoseg_workspace" / data.name
    plans = json.loads((models["autoseg"] / "plans.json").read_text())["configurations"][CONFIG] \
        if (models["autoseg"] / "plans.json").is_file() else None
    splits = json.loads((dataset_ws / "splits.json").read_text())
    cases = sorted(splits[0]["val"])[: args.cases]
    input_dir = scratch / "input"
    absent = harness.link_cases(data / "imagesTr", cases, input_dir, suffix="_0000")
    if absent:
        print(f"error: {data / 'imagesTr'} lacks {absent}", file=sys.stderr)
        return 1
    print(f"{len(cases)} cases (first of fold 0's validation set) linked into {input_dir}")
    if plans:
        print(f"autoseg model: patch {plans['patch_size']}, features {plans['network']['features_per_stage']}")
    harness.warm_page_cache(input_dir)

    folders = harness.NnunetFolders.under(models_scratch)
    variants = [("tta", True), ("no_tta", False)]
    context = {"dataset": str(data), "configuration": CONFIG, "cases": cases, "folds": [0],
               "models": {k: str(v) for k, v in models.items()}, "workers": args.workers,
               "machine": harness.machine_info()}
    runs: dict[tuple[str, str], list[harness.RunResult]] = {}
    outputs: dict[tuple[str, str], Path] = {}
    failed = False

    def run(tool: str, variant: str, command: list, env, repeat: int) -> None:
        nonlocal failed
        out_dir = scratch / f"out_{tool}_{variant}"
        harness.remove_tree(out_dir)
        command = [*command, "-o", out_dir]
        log = logs / f"{tool}_{variant}_{repeat}.log"
        print(f"[{repeat + 1}/{args.repeats}] {tool} {variant}: {' '.join(map(str, command))}", flush=True)
        r = harness.run_measured(command, benchmark=BENCHMARK, tool=tool, env=env, log_file=log,
                                 timeout_s=args.timeout, repeat=repeat)
        r.extra["variant"] = variant
        produced = len(list(out_dir.glob("*.nii.gz")))
        if r.ok and produced < len(cases):
            r.returncode = 1 if r.returncode == 0 else r.returncode
            r.extra["error"] = f"only {produced} of {len(cases)} segmentations written"
        harness.append_result(results_file, r, **context)
        runs.setdefault((tool, variant), []).append(r)
        outputs[tool, variant] = out_dir
        if r.ok:
            print(f"    {r.wall_s:.1f} s ({r.wall_s / len(cases):.2f} s/case), peak RSS {r.peak_rss_bytes / 2**30:.2f} GB, "
                  f"PSS {r.peak_pss_bytes / 2**30:.2f} GB", flush=True)
        else:
            failed = True
            print(f"    FAILED (exit {r.returncode}; {r.extra.get('error', '')}), log {log}:\n{harness.tail(log)}",
                  flush=True)

    for repeat in range(args.repeats):
        for variant, tta in variants:
            for tool in tools:
                if tool == "nnunet":
                    env = harness.nnunet_env(folders, venv, extra_trainers=True)
                    command = [harness.nnunet_command(venv, "nnUNetv2_predict"), "-i", input_dir, "-d", str(dataset_id),
                               "-c", CONFIG, "-f", "0", "-tr", throughput.NNUNET_TRAINER, "-device", "cpu",
                               *([] if tta else ["--disable_tta"]),
                               *(["-npp", str(args.workers), "-nps", str(args.workers)] if args.workers else [])]
                else:
                    env = None
                    command = [sys.executable, "-m", "autoseg", "predict", "-i", input_dir, "-d", data.name,
                               "-c", CONFIG, "-f", "0", "--device", "cpu", "--workspace", dataset_ws.parent,
                               "--overwrite", *([] if tta else ["--no-tta"]),
                               *(["-np", str(args.workers)] if args.workers else [])]
                run(tool, variant, command, env, repeat)
    if "autoseg" in tools and not args.no_fp32_check:
        run("autoseg", "tta_fp32", [sys.executable, "-m", "autoseg", "predict", "-i", input_dir, "-d", data.name,
                                    "-c", CONFIG, "-f", "0", "--device", "cpu", "--workspace", dataset_ws.parent,
                                    "--overwrite", "--precision", "fp32",
                                    *(["-np", str(args.workers)] if args.workers else [])], None, 0)

    # Dice of every output against the labels, and bf16 vs fp32 agreement, with the same metric code.
    dice: dict[str, float] = {}
    for (tool, variant), out_dir in outputs.items():
        if all(r.ok for r in runs[tool, variant]):
            try:
                s = harness.score_predictions(data / "labelsTr", out_dir, cases, scratch / f"score_{tool}_{variant}")
                dice[f"{tool} {variant}"] = s["mean_foreground_dice"]
            except harness.BenchmarkError as e:
                print(f"scoring {tool} {variant} failed: {e}", file=sys.stderr)
                failed = True
    agreement = None
    if ("autoseg", "tta") in outputs and ("autoseg", "tta_fp32") in outputs and "autoseg tta_fp32" in dice:
        agreement = harness.score_predictions(outputs["autoseg", "tta_fp32"], outputs["autoseg", "tta"], cases,
                                              scratch / "score_bf16_vs_fp32")["mean_foreground_dice"]

    print()
    print(f"Prediction, {data.name} {CONFIG}, {len(cases)} cases, fold 0, CPU, identical network "
          f"(models of bench_train_throughput.py); medians of {args.repeats} run(s); ratio = autoseg / nnU-Net "
          f"(goal <= 0.5 with TTA, memory no higher)")
    print()
    print(harness.comparison_table([(f"predict {len(cases)} cases, TTA", runs.get(("nnunet", "tta"), []),
                                     runs.get(("autoseg", "tta"), [])),
                                    (f"predict {len(cases)} cases, no TTA", runs.get(("nnunet", "no_tta"), []),
                                     runs.get(("autoseg", "no_tta"), []))]))
    rows = []
    for variant in ("tta", "no_tta"):
        per_case = {}
        for tool in ("nnunet", "autoseg"):
            wall = harness.median_of(runs.get((tool, variant), []), "wall_s")
            per_case[tool] = wall / len(cases) if wall is not None else None
        rows.append([variant.replace("_", " ").upper() if variant == "tta" else "no TTA",
                     *(f"{per_case[t]:.2f} s" if per_case[t] is not None else "n/a" for t in ("nnunet", "autoseg")),
                     f"{per_case['autoseg'] / per_case['nnunet']:.2f}" if per_case["autoseg"] and per_case["nnunet"] else "n/a"])
    print()
    print(harness.markdown_table(["variant", "nnU-Net v2 s/case", "autoseg s/case", "ratio"], rows))
    print()
    print(harness.markdown_table(["prediction", "mean foreground Dice vs labels"],
                                 [[k, f"{v:.4f}"] for k, v in sorted(dice.items())]))
    if "autoseg tta" in dice and "autoseg tta_fp32" in dice:
        print(f"\nDice unchanged: autoseg bf16 TTA {dice['autoseg tta']:.4f} vs fp32 TTA {dice['autoseg tta_fp32']:.4f} "
              f"(difference {dice['autoseg tta'] - dice['autoseg tta_fp32']:+.4f}); bf16 vs fp32 segmentation "
              f"agreement Dice {agreement:.4f}")
    print(f"results appended to {results_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
