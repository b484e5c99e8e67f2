"""Benchmark: validation Dice after a fixed wall-clock training budget, autoseg vs nnU-Net v2.

    python benchmarks/bench_train_dice.py [--data ../shared/data/Task04_Hippocampus] [--minutes 20]

Both tools train 3d_fullres, fold 0, on the CPU, each with its own plans, for the same wall-clock
budget that *includes* the final validation (sliding-window prediction of the fold's validation
cases). They run one after the other on the same machine; nothing else of the benchmark runs
meanwhile.

- Same fold, same cases: autoseg's five folds (``splits.json``, made by autoseg's own split code)
  are written into nnU-Net's ``splits_final.json`` before it trains; nnU-Net reads that file
  instead of making its own split.
- nnU-Net: ``nnUNetv2_train ID 3d_fullres FOLD -tr nnUNetTrainer_Budget -device cpu`` with
  ``NNUNET_BUDGET_WALL_MINUTES`` = the budget (see benchmarks/nnunet_trainers/nnUNetTrainer_Budget.py:
  epochs of ``--nnunet-iterations`` iterations, re-planned after each epoch so the run and its
  poly LR schedule end in time for its final validation, which it estimates with autoseg's rule).
- autoseg: ``autoseg train DATASET 3d_fullres FOLD --time-budget MINUTES``.
- Both sets of validation predictions (``fold_K/validation/CASE.nii.gz``) are scored against
  the raw labels of the fold's validation cases by the same code (``autoseg evaluate``); the
  mean foreground Dice and the wall time each run really took are reported.

Results: SCRATCH/results.jsonl; a markdown table is printed. Exit code 0 only if both sides ran
and were scored.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BENCHMARK = "train_dice"
CONFIG = "3d_fullres"
NNUNET_TRAINER = "nnUNetTrainer_Budget"
AUTOSEG_TRAINER = "unet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "Task04_Hippocampus",
                   help="MSD-style dataset folder (default: ../shared/data/Task04_Hippocampus)")
    p.add_argument("--minutes", type=float, default=20.0,
                   help="wall-clock budget per tool, final validation included (default 20)")
    p.add_argument("--fold", type=int, default=0, help="cross-validation fold (default 0)")
    p.add_argument("--workers", type=int, default=None,
                   help="augmentation workers for both (nnUNet_n_proc_DA / autoseg --num-workers); "
                        "default: each tool's own default (nnU-Net: one process per core; autoseg: 1 thread on CPU)")
    p.add_argument("--preprocess-workers", type=int, default=2, help="processes for the untimed preprocessing (default 2)")
    p.add_argument("--nnunet-iterations", type=int, default=25,
                   help="nnU-Net iterations per epoch (default 25: ~2 min per epoch here, so the budget "
                        "holds several epochs and the LR schedule can anneal)")
    p.add_argument("--nnunet-val-iterations", type=int, default=5,
                   help="nnU-Net patch-validation iterations per epoch (default 5)")
    p.add_argument("--scratch", type=Path, default=None,
                   help=f"scratch folder (default: {harness.DEFAULT_SCRATCH}/train_dice_<dataset>)")
    p.add_argument("--nnunet-venv", type=Path, default=None,
                   help=f"nnU-Net v2 environment (default: $NNUNET_VENV or {harness.DEFAULT_NNUNET_VENV})")
    p.add_argument("--dataset-id", type=int, default=None, help="nnU-Net dataset id (default: NN of TaskNN_, else 999)")
    p.add_argument("--tools", nargs="+", choices=["nnunet", "autoseg"], default=["nnunet", "autoseg"],
                   help="which side(s) to run (default both)")
    p.add_argument("--autoseg-args", default="", help="extra arguments for autoseg train, one string")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = harness.dataset_folder(args.data)
    if data is None:
        return 2
    dataset_id = harness.dataset_id_for(data, args.dataset_id)
    scratch = harness.scratch_folder(args.scratch, "train_dice", data)
    scratch.mkdir(parents=True, exist_ok=True)
    logs, results_file = scratch / "logs", scratch / "results.jsonl"
    tools = list(dict.fromkeys(args.tools))

    venv = None
    if "nnunet" in tools:
        try:
            venv = harness.nnunet_venv(args.nnunet_venv)
        except harness.BenchmarkError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    # Untimed preparation: both tools' preprocessing, autoseg's folds, the same folds for nnU-Net.
    print("preparing (not timed): autoseg plan-and-preprocess" + (", nnU-Net plan-and-preprocess" if venv else ""),
          flush=True)
    workspace = scratch / "autoseg_workspace"
    dataset_ws = harness.prepare_autoseg(data, workspace, args.preprocess_workers, logs)
    splits = harness.autoseg_splits(dataset_ws, CONFIG)
    val_ids = sorted(splits[args.fold]["val"])
    print(f"fold {args.fold}: {len(splits[args.fold]['train'])} training, {len(val_ids)} validation cases "
          f"(autoseg's {dataset_ws / 'splits.json'})")
    folders = None
    if venv is not None:
        folders = harness.NnunetFolders.under(scratch).make()
        nn_pre = harness.prepare_nnunet(venv, folders, data, dataset_id, args.preprocess_workers, logs)
        print(f"same folds for nnU-Net: {harness.write_nnunet_splits(splits, nn_pre)}")
        nn_dataset = nn_pre.name
    harness.warm_page_cache(data)

    context = {"dataset": str(data), "configuration": CONFIG, "fold": args.fold, "budget_minutes": args.minutes,
               "workers": args.workers, "machine": harness.machine_info()}
    timeout = args.minutes * 60 * 2 + 600
    runs: dict[str, harness.RunResult] = {}
    failed: list[str] = []
    for tool in tools:
        if tool == "nnunet":
            fold_dir = folders.results / nn_dataset / f"{NNUNET_TRAINER}__nnUNetPlans__{CONFIG}" / f"fold_{args.fold}"
            harness.remove_tree(fold_dir)
            timing = scratch / "nnunet_timing.json"
            timing.unlink(missing_ok=True)
            extra = {"NNUNET_BUDGET_WALL_MINUTES": str(args.minutes),
                     "NNUNET_BUDGET_ITERATIONS": str(args.nnunet_iterations),
                     "NNUNET_BUDGET_VAL_ITERATIONS": str(args.nnunet_val_iterations),
                     "NNUNET_BUDGET_TIMING_FILE": str(timing)}
            if args.workers is not None:
                extra["nnUNet_n_proc_DA"] = str(args.workers)
            env = harness.nnunet_env(folders, venv, extra=extra, extra_trainers=True)
            command = [harness.nnunet_command(venv, "nnUNetv2_train"), str(dataset_id), CONFIG, str(args.fold),
                       "-tr", NNUNET_TRAINER, "-device", "cpu"]
        else:
            fold_dir = dataset_ws / "results" / f"{AUTOSEG_TRAINER}__{CONFIG}" / f"fold_{args.fold}"
            harness.remove_tree(fold_dir)
            env = None
            command = [sys.executable, "-m", "autoseg", "train", data.name, CONFIG, str(args.fold),
                       "--time-budget", str(args.minutes), "--device", "cpu", "--workspace", str(workspace),
                       *(["--num-workers", str(args.workers)] if args.workers is not None else []),
                       *args.autoseg_args.split()]
        log = logs / f"{tool}_train.log"
        print(f"{tool}: {' '.join(map(str, command))}", flush=True)
        result = harness.run_measured(command, benchmark=BENCHMARK, tool=tool, env=env, log_file=log, timeout_s=timeout)
        if result.ok:
            try:
                result.extra["score"] = harness.score_predictions(data / "labelsTr", fold_dir / "validation", val_ids,
                                                                  scratch / f"score_{tool}")
            except harness.BenchmarkError as e:
                result.extra["score_error"] = str(e)
        if tool == "nnunet" and (scratch / "nnunet_timing.json").is_file():
            t = json.loads((scratch / "nnunet_timing.json").read_text())
            result.extra["training"] = {k: t.get(k) for k in ("epochs_done", "iterations_done", "epoch_seconds",
                                                              "final_validation_estimate_s", "budget_replans",
                                                              "stopped_mid_epoch", "training_end_elapsed_s",
                                                              "patch_size", "batch_size")}
        if tool == "autoseg" and (fold_dir / "log.json").is_file():
            lg = json.loads((fold_dir / "log.json").read_text())
            epochs = lg.get("epochs") or []
            result.extra["training"] = {"epochs_done": len(epochs),
                                        "iterations_done": epochs[-1]["iterations"] if epochs else 0,
                                        "precision": lg.get("precision"), "budget_plan": lg.get("budget_plan")}
        harness.append_result(results_file, result, **context)
        runs[tool] = result
        score = result.extra.get("score")
        if not result.ok or score is None:
            why = result.extra.get("score_error") or f"exit {result.returncode}"
            failed.append(tool)
            print(f"    FAILED ({why}), log {log}:\n{harness.tail(log)}", flush=True)
        else:
            print(f"    {result.wall_s:.0f} s wall, mean foreground Dice {score['mean_foreground_dice']:.4f} "
                  f"on {score['num_cases']} cases", flush=True)

    names = {"nnunet": "nnU-Net v2", "autoseg": "autoseg"}
    rows = []
    for tool, r in runs.items():
        s, tr = r.extra.get("score"), r.extra.get("training", {})
        rows.append([names[tool], f"{r.wall_s:.0f} s", f"{args.minutes * 60:.0f} s",
                     f"{tr.get('iterations_done', '?')} in {tr.get('epochs_done', '?')} epochs",
                     f"{s['mean_foreground_dice']:.4f}" if s else "failed",
                     ", ".join(f"{k}: {v:.4f}" for k, v in s["per_class_dice"].items()) if s else "",
                     f"{r.peak_rss_bytes / 2**30:.2f} GB"])
    print()
    print(f"Dice at a fixed budget: {data.name}, {CONFIG}, fold {args.fold} ({len(val_ids)} validation cases), "
          f"CPU, {args.minutes:g} min including final validation")
    print()
    print(harness.markdown_table(["tool", "wall used", "budget", "training iterations", "mean foreground Dice",
                                  "per-class Dice", "peak RSS"], rows))
    scored = {t: r.extra["score"]["mean_foreground_dice"] for t, r in runs.items() if r.extra.get("score")}
    if len(scored) == 2:
        print()
        print(f"Dice ratio autoseg / nnU-Net: {scored['autoseg'] / scored['nnunet']:.2f}; wall ratio: "
              f"{runs['autoseg'].wall_s / runs['nnunet'].wall_s:.2f}")
    if "autoseg" in scored:
        print(f"goal autoseg >= 0.89: {'met' if scored['autoseg'] >= 0.89 else 'not met'} ({scored['autoseg']:.4f})")
    print(f"results appended to {results_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
