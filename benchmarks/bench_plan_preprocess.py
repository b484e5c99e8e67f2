"""Benchmark: plan-and-preprocess, autoseg vs nnU-Net v2, on the same copy of one MSD dataset.

    python benchmarks/bench_plan_preprocess.py [--data ../shared/data/Task04_Hippocampus] [--workers 2] [--repeats 1]

Timed for nnU-Net v2 (in its own environment, see benchmarks/setup_nnunet_env.sh):
    nnUNetv2_plan_and_preprocess -d ID -np W -npfp W --verify_dataset_integrity
on a raw copy made by ``harness.convert_msd_to_nnunet`` (not timed). Integrity verification is
included because autoseg always verifies before any work.
Timed for autoseg (the package installed in this Python):
    python -m autoseg plan-and-preprocess DATA --workspace SCRATCH -np W

Both write into fresh folders every run (previous outputs are deleted before the clock starts:
nnU-Net would otherwise reuse its fingerprint and autoseg its finished cases). With
``--repeats N`` the tools alternate (nnU-Net, autoseg, nnU-Net, ...) and medians are reported.
Results go to SCRATCH/results.jsonl; the markdown table is printed at the end.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BENCHMARK = "plan_and_preprocess"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "Task04_Hippocampus",
                   help="MSD-style dataset folder (default: ../shared/data/Task04_Hippocampus)")
    p.add_argument("--workers", "-np", type=int, default=2, help="worker processes for both tools (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs per tool, alternating; medians reported (default 1)")
    p.add_argument("--scratch", type=Path, default=None,
                   help=f"scratch folder (default: {harness.DEFAULT_SCRATCH}/plan_preprocess_<dataset>)")
    p.add_argument("--nnunet-venv", type=Path, default=None,
                   help=f"nnU-Net v2 environment (default: $NNUNET_VENV or {harness.DEFAULT_NNUNET_VENV})")
    p.add_argument("--dataset-id", type=int, default=None,
                   help="nnU-Net dataset id (default: NN of a TaskNN_ folder name, else 999)")
    p.add_argument("--tools", nargs="+", choices=["nnunet", "autoseg"], default=["nnunet", "autoseg"],
                   help="which side(s) to run (default both)")
    p.add_argument("--autoseg-args", default="",
                   help="extra arguments for autoseg plan-and-preprocess, one string (e.g. '--profile gpu')")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed (default 3600)")
    return p.parse_args(argv)


def autoseg_available() -> str | None:
    """None if ``autoseg plan-and-preprocess`` can run here, else why not."""
    if importlib.util.find_spec("autoseg") is None:
        return f"autoseg is not installed in {sys.executable} (pip install -e . in the repository)"
    if importlib.util.find_spec("autoseg.commands.plan_and_preprocess") is None:
        return "autoseg has no plan-and-preprocess command yet (autoseg/commands/plan_and_preprocess.py missing)"
    check = subprocess.run([sys.executable, "-m", "autoseg", "plan-and-preprocess", "--help"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        return f"`autoseg plan-and-preprocess --help` failed:\n{(check.stderr or check.stdout)[-2000:]}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = harness.dataset_folder(args.data)
    if data is None:
        return 2
    match = re.match(r"Task(\d+)_", data.name)
    dataset_id = args.dataset_id if args.dataset_id is not None else (int(match.group(1)) if match else 999)
    scratch = harness.scratch_folder(args.scratch, "plan_preprocess", data)
    scratch.mkdir(parents=True, exist_ok=True)
    results_file = scratch / "results.jsonl"
    logs = scratch / "logs"

    tools = list(dict.fromkeys(args.tools))
    blocked: dict[str, str] = {}
    if "autoseg" in tools:
        reason = autoseg_available()
        if reason:
            blocked["autoseg"] = reason
            print(f"autoseg side cannot run: {reason}", file=sys.stderr)
    venv = folders = nn_env = None
    if "nnunet" in tools:
        try:
            venv = harness.nnunet_venv(args.nnunet_venv)
        except harness.BenchmarkError as e:
            blocked["nnunet"] = str(e)
            print(f"nnU-Net side cannot run: {e}", file=sys.stderr)
        else:
            folders = harness.NnunetFolders.under(scratch).make()
            raw = harness.convert_msd_to_nnunet(data, folders.raw, dataset_id)
            nn_env = harness.nnunet_env(folders, venv)
            print(f"nnU-Net raw copy (links to {data}): {raw}")
    runnable = [t for t in tools if t not in blocked]

    context = {"dataset": str(data), "workers": args.workers, "machine": harness.machine_info()}
    print(f"warming the page cache: {harness.warm_page_cache(data) / 2**20:.0f} MiB read from {data}")
    autoseg_ws = scratch / "autoseg_workspace"
    runs: dict[str, list[harness.RunResult]] = {"nnunet": [], "autoseg": []}
    for repeat in range(args.repeats):
        for tool in runnable:
            if tool == "nnunet":
                out_dir = folders.preprocessed / raw.name
                harness.remove_tree(out_dir)
                command = [harness.nnunet_command(venv, "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id),
                           "-np", str(args.workers), "-npfp", str(args.workers), "--verify_dataset_integrity"]
                env = nn_env
            else:
                out_dir = autoseg_ws / data.name
                harness.remove_tree(out_dir)
                command = [sys.executable, "-m", "autoseg", "plan-and-preprocess", str(data),
                           "--workspace", str(autoseg_ws), "-np", str(args.workers), *args.autoseg_args.split()]
                env = None
            log = logs / f"{tool}_{repeat}.log"
            print(f"[{repeat + 1}/{args.repeats}] {tool}: {' '.join(map(str, command))}", flush=True)
            result = harness.run_measured(command, benchmark=BENCHMARK, tool=tool, env=env, log_file=log,
                                          timeout_s=args.timeout, repeat=repeat)
            result.extra["outputs"] = harness.folder_summary(out_dir)
            harness.append_result(results_file, result, **context)
            runs[tool].append(result)
            status = "ok" if result.ok else f"FAILED (exit {result.returncode}), log {log}:\n{harness.tail(log)}"
            print(f"    {result.wall_s:.1f} s, peak RSS {result.peak_rss_bytes / 2**30:.2f} GB, "
                  f"peak PSS {result.peak_pss_bytes / 2**30:.2f} GB, up to {result.max_processes} processes: "
                  f"{status}", flush=True)
            if result.ok:
                print(f"    outputs: {json.dumps(result.extra['outputs'])}")

    print()
    print(f"plan-and-preprocess, {data.name}, -np {args.workers}, medians of {args.repeats} run(s) "
          f"(ratio = autoseg / nnU-Net v2; goal <= 0.5):")
    print()
    print(harness.comparison_table([(f"plan-and-preprocess {data.name}", runs["nnunet"], runs["autoseg"])]))
    print()
    print(f"results appended to {results_file}")
    for tool, reason in blocked.items():
        print(f"{tool} side not run: {reason}", file=sys.stderr)
    failed = blocked or any(not r.ok for rs in runs.values() for r in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
