"""Cross-validation table from runs of ``bench_acdc_configs.py`` made under several tags.

    python benchmarks/acdc_cv_table.py --runs ROW:FOLD:TAG [ROW:FOLD:TAG ...] [--scratch DIR]

A 20-minute run takes the whole 2-core machine, so one table's runs are made over several
sessions, under several tags (``bench_acdc_configs.py --tag``). This gathers them: for every
run, the raw validation scores that ``bench_acdc_configs.py`` recorded in
``SCRATCH/TAG/table.json``, and the same validation with each class reduced to its largest
connected component (``autoseg postprocess -i VALIDATION -o VALIDATION_lcc --per-class-lcc 1 2
3``, then ``autoseg evaluate LABELS VALIDATION_lcc -l 1 2 3``; skipped where that summary
exists). Prints the mean over folds per configuration (per-class Dice, mean Dice and HD95, raw
and postprocessed, iterations) and one line per run. ``--compare A B`` adds a paired count per
fold: in how many validation frames row A's mean Dice over the classes beats row B's, raw and
postprocessed.

``--recorded FILE`` adds runs whose scratch folders are gone (the scratch cache does not outlive
a machine), as written by ``--save`` or kept in ``benchmarks/acdc_cv_recorded.json``: one
record per run with the same fields as the per-run line (``dice`` = RV, MYO, LV). They enter
the means, not the paired counts, which need the predictions. ``--save FILE`` writes every run
of the table, recorded and measured, so that file alone regenerates the means. ``--frames
PREFIX ...`` adds, per measured run, the mean Dice over the frames whose case id starts with a
prefix (e.g. the size outliers ``patient057 patient038``) and over the other frames.

A fold trained more than once is refused (it would count twice in a mean) unless
``--average-reruns``: then each fold's runs are averaged first, so every fold weighs the same,
and the means are over those fold averages. ``--compare A B`` also prints, from the records
alone, the per-fold difference of A's and B's (fold-averaged) mean Dice, raw and
postprocessed, with its mean and standard error over the folds both rows have: the unit is
the fold, because frames of one fold share a trained model. (The paired frame counts use a
fold's last measured run.) With reruns it also prints the retraining noise: the standard
deviation between runs of one row on one fold, pooled over the pairs run more than once.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_acdc_configs import ROWS, fold_row  # noqa: E402


def parse_run(text: str) -> tuple[str, int, str]:
    try:
        row, fold, tag = text.split(":")
        if row not in ROWS:
            raise ValueError(f"unknown row {row!r} (one of {', '.join(ROWS)})")
        return row, int(fold), tag
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROW:FOLD:TAG ({e})") from None


def validation_folder(scratch: Path, dataset: str, row: str, fold: int, tag: str) -> Path:
    """Where ``bench_acdc_configs.py --tag TAG`` left one row and fold's validation predictions."""
    config, trainer = ROWS[row]
    return scratch / tag / "workspace" / dataset / "results" / f"{trainer}__{config}" / f"fold_{fold}" / "validation"


def postprocessed_summary(validation: Path, labels: Path) -> dict:
    """``summary.json`` of the validation with every class reduced to its largest component."""
    out = validation.parent / "validation_lcc"
    summary = out / "summary.json"
    if not summary.is_file():
        run = [sys.executable, "-m", "autoseg"]
        subprocess.run(run + ["postprocess", "-i", str(validation), "-o", str(out), "--per-class-lcc", "1", "2", "3"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(run + ["evaluate", str(labels), str(out), "-l", "1", "2", "3", "-np", "2",
                              "--file-ending", ".nii.gz"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def case_dice(summary: Path) -> dict[str, float]:
    """Mean Dice over the classes, per case, from an ``autoseg evaluate`` summary."""
    cases = json.loads(summary.read_text())["per_case"]
    return {c["case_id"]: float(np.mean([m["Dice"] for m in c["metrics"].values()])) for c in cases}


def paired_lines(a: str, b: str, folders: dict[tuple[str, int], Path]) -> list[str]:
    lines = []
    for fold in sorted({f for r, f in folders if r == a} & {f for r, f in folders if r == b}):
        cells = []
        for sub in ("validation", "validation_lcc"):
            da = case_dice(folders[a, fold] / sub / "summary.json")
            db = case_dice(folders[b, fold] / sub / "summary.json")
            diff = np.array([da[k] - db[k] for k in sorted(da.keys() & db.keys())])
            cells += [f"{int((diff > 0).sum())} / {len(diff)}", f"{diff.mean():+.3f}"]
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    return lines


def subset_line(row: str, fold: int, folder: Path, prefixes: tuple[str, ...]) -> str:
    cells = []
    for chosen in (True, False):  # the prefixed frames, raw then postprocessed; then the others
        for sub in ("validation", "validation_lcc"):
            dice = [v for k, v in case_dice(folder / sub / "summary.json").items() if k.startswith(prefixes) == chosen]
            cells.append(f"{np.mean(dice):.3f} ({len(dice)})" if dice else "-")
    return f"| {row} | {fold} | " + " | ".join(cells) + " |"


NUMERIC = ("dice", "mean_dice", "hd95", "iterations", "pp_dice", "pp_hd95")


def by_row_and_fold(runs: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """The runs of each (row, fold), in the order of first appearance."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["row"], r["fold"]), []).append(r)
    return groups


def average_reruns(runs: list[dict]) -> list[dict]:
    """One record per (row, fold): the mean of that fold's runs, ``runs`` saying how many, and
    ``tag`` listing their tags; the order of first appearance is kept."""
    out = []
    for (row, fold), rs in by_row_and_fold(runs).items():
        avg = {k: np.mean([r[k] for r in rs], axis=0).tolist() for k in NUMERIC}
        out.append({"row": row, "fold": fold, "tag": "+".join(r["tag"] for r in rs), "runs": len(rs), **avg})
    return out


def rerun_spread(runs: list[dict], key: str) -> tuple[float, int]:
    """Retraining noise: the standard deviation of ``key`` between runs of the same row and fold,
    pooled (root of the mean sample variance) over the (row, fold) pairs run more than once;
    returns it and how many pairs it pools (NaN, 0 without reruns)."""
    variances = [np.var([r[key] for r in rs], ddof=1) for rs in by_row_and_fold(runs).values() if len(rs) > 1]
    return (float(np.sqrt(np.mean(variances))), len(variances)) if variances else (float("nan"), 0)


def fold_differences(runs: list[dict], a: str, b: str, key: str) -> tuple[dict[int, float], float, float]:
    """Per fold, row ``a``'s ``key`` minus row ``b``'s (one record per row and fold), over the
    folds both have; then the mean difference and its standard error (NaN with one fold)."""
    va = {r["fold"]: r[key] for r in runs if r["row"] == a}
    vb = {r["fold"]: r[key] for r in runs if r["row"] == b}
    diffs = {f: float(va[f] - vb[f]) for f in sorted(va.keys() & vb.keys())}
    d = np.array(list(diffs.values()))
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return diffs, float(d.mean()) if len(d) else float("nan"), se


def difference_lines(runs: list[dict], a: str, b: str) -> list[str]:
    lines = []
    for key, label in (("mean_dice", "mean Dice"), ("pp_dice", "postprocessed mean Dice")):
        diffs, mean, se = fold_differences(runs, a, b, key)
        cells = ", ".join(f"{f}: {d:+.3f}" for f, d in diffs.items())
        lines.append(f"| {label} | {cells} | {mean:+.4f} | {se:.4f} |")
    return lines


def run_line(run: dict, recorded: bool = False) -> str:
    tag = f"`{run['tag']}`" + (" (recorded)" if recorded else "")
    return (f"| {run['row']} | {run['fold']} | {tag} | {run['mean_dice']:.3f} | {run['hd95']:.1f} | "
            f"{run['pp_dice']:.3f} | {run['pp_hd95']:.1f} | {run['iterations']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", type=parse_run, default=[], help="ROW:FOLD:TAG, e.g. 3d_hybrid:0:fold0_20min_s8")
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "ACDC")
    p.add_argument("--scratch", type=Path, default=None)
    p.add_argument("--recorded", type=Path, nargs="+", default=[], help="JSON lists of earlier runs' records (see above)")
    p.add_argument("--save", type=Path, default=None, help="write every run's record to this JSON file")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), choices=list(ROWS),
                   help="per fold, frames where row A's mean Dice beats row B's")
    p.add_argument("--frames", nargs="+", default=None, metavar="PREFIX",
                   help="per measured run, mean Dice over the frames whose case id starts with a PREFIX, and over the rest")
    p.add_argument("--average-reruns", action="store_true",
                   help="average the runs of a fold trained more than once before the means over folds")
    args = p.parse_args(argv)
    if not args.runs and not args.recorded:
        p.error("give --runs, --recorded or both")
    data = harness.dataset_folder(args.data)
    if data is None:
        return 2
    scratch = harness.scratch_folder(args.scratch, "acdc_configs", data)
    recorded = [r for f in args.recorded for r in json.loads(f.read_text())]
    measured: list[dict] = []
    folders: dict[tuple[str, int], Path] = {}
    for row, fold, tag in args.runs:
        table = json.loads((scratch / tag / "table.json").read_text())
        key = f"{row}/fold_{fold}"
        if key not in table or "mean_dice" not in table[key]:
            print(f"error: {scratch / tag / 'table.json'} has no finished run {key}", file=sys.stderr)
            return 2
        raw = table[key]
        validation = validation_folder(scratch, data.name, row, fold, tag)
        folders[row, fold] = validation.parent
        pp = fold_row(postprocessed_summary(validation, data / "labelsTr"))
        measured.append({"row": row, "fold": fold, "tag": tag, "dice": [raw["per_class"][c]["Dice"] for c in ("1", "2", "3")],
                         "mean_dice": raw["mean_dice"], "hd95": raw["mean_hd95"], "iterations": raw["iterations"],
                         "pp_dice": pp["mean_dice"], "pp_hd95": pp["mean_hd95"]})
    every = recorded + measured
    twice = sorted(k for k, rs in by_row_and_fold(every).items() if len(rs) > 1)
    if twice and not args.average_reruns:
        print(f"error: more than one run for {twice}; a fold must count once in a mean "
              "(--average-reruns averages each fold's runs first)", file=sys.stderr)
        return 2
    if args.save:
        args.save.write_text(json.dumps(every, indent=1) + "\n")
    if args.average_reruns:
        spread = {key: rerun_spread(every, key) for key in ("mean_dice", "pp_dice")}
        every = average_reruns(every)
    order = [row for row in ROWS if any(r["row"] == row for r in every)]  # the order, ablation last
    every.sort(key=lambda r: (order.index(r["row"]), r["fold"]))
    runs = {row: [r for r in every if r["row"] == row] for row in order}
    print("| row (trainer) | folds | RV Dice | MYO Dice | LV Dice | mean Dice | HD95 (mm) | "
          "postprocessed mean Dice | postprocessed HD95 (mm) | iterations (mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, rs in runs.items():
        dice = np.mean([r["dice"] for r in rs], axis=0)
        folds = ", ".join(f"{r['fold']}" + (f" (x{r['runs']})" if r.get("runs", 1) > 1 else "") for r in rs)
        print(f"| {row} ({ROWS[row][1]}) | {folds} | " + " | ".join(f"{d:.3f}" for d in dice)
              + f" | {np.mean([r['mean_dice'] for r in rs]):.3f} | {np.mean([r['hd95'] for r in rs]):.1f}"
              f" | {np.mean([r['pp_dice'] for r in rs]):.3f} | {np.mean([r['pp_hd95'] for r in rs]):.1f}"
              f" | {np.mean([r['iterations'] for r in rs]):.0f} |")
    print("\n| row | fold | tag | mean Dice | HD95 (mm) | postprocessed mean Dice | postprocessed HD95 (mm) | iterations |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(run_line(r, recorded=any(r is o for o in recorded)) for r in every))
    if args.compare:
        a, b = args.compare
        print(f"\n| {a} minus {b} | per fold | mean | standard error |")
        print("|---|---|---|---|")
        print("\n".join(difference_lines(every, a, b)))
    if args.average_reruns and spread["mean_dice"][1]:
        (raw_sd, pairs), (pp_sd, _) = spread["mean_dice"], spread["pp_dice"]
        print(f"\nretraining noise: runs of one row on one fold differ by a standard deviation of {raw_sd:.4f} "
              f"raw, {pp_sd:.4f} postprocessed (pooled over {pairs} row-fold pairs run more than once)")
    if args.compare and folders:
        print(f"\n| fold | frames where {a} beats {b} | mean difference | the same, postprocessed | mean difference |")
        print("|---|---|---|---|---|")
        print("\n".join(paired_lines(a, b, folders)))
    if args.frames:
        print(f"\n| row | fold | {' '.join(args.frames)} (frames) | the same, postprocessed | other frames | "
              "the same, postprocessed |")
        print("|---|---|---|---|---|---|")
        print("\n".join(subset_line(row, fold, folder, tuple(args.frames)) for (row, fold), folder in folders.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
