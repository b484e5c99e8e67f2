"""Atlas-ISTN vs U-Net on Task04_Hippocampus (or any MSD dataset): the Must-show table of issue 6.

    nice -n 19 python benchmarks/bench_atlas_istn.py --raw ../shared/data/Task04_Hippocampus \
        --workspace /tmp/ws_atlas --folds 0 1 2 --budget-min 60 [--refine 50] [--seed 0]

Per fold: `autoseg train` of `unet` and `atlas_istn` with the same --time-budget, then the
fold's validation images are predicted clean and corrupted (benchmarks/corruption.py,
seed = --seed + case index), with the U-Net, and with Atlas-ISTN one-pass (--refine 0, which
also gives the ITN output) and refined (--refine N). Writes into the workspace:

* ``atlas_istn_table.json``: settings, command line, the table over all folds, one table per
  fold, the wall time of every step (training, prediction per method and condition) and the total;
* ``atlas_istn_table.md``: the same table as markdown, with the settings and command line, ready
  for documentation/benchmarks.md;
* ``atlas_bench/fold_F/cases.json``: every case's metrics (written after each method and
  condition, so a crash late in the run keeps what was done);

and renders the first fold's atlas to --png. Rerunning with the same workspace resumes: trained
folds, prediction folders holding every case and already-scored cases are not redone.

Empty predictions: when a foreground class is missing from a prediction (but present in the
reference), its Dice is 0 and counts in the Dice mean, but it has no surface, so its HD95/ASSD
are left out of the distance means (autoseg's metrics would put the image diagonal there, which
would dominate the mean); the table counts such cases per row. Non-finite distances are left out
and counted the same way.
"""
from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

ROWS = [("U-Net", "unet", ""), ("ITN", "itn", "_itn"), ("Atlas-ISTN 1-pass", "onepass", ""),
        ("Atlas-ISTN refined", "refined", "")]
CONDITIONS = ("clean", "corrupted")
_T0 = time.monotonic()


def log(msg: str) -> None:
    """A progress line on stderr, with the time since the start."""
    el = time.monotonic() - _T0
    print(f"[atlas-bench {int(el // 60):3d}:{el % 60:04.1f}] {msg}", file=sys.stderr, flush=True)


def autoseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "autoseg", *args], check=True)


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def case_record(ref: np.ndarray, pred: np.ndarray, spacing, labels: list[int]) -> dict[str, Any]:
    """Per-case scores; the empty-prediction rule of the module docstring."""
    from autoseg.evaluation.metrics import compute_case_metrics
    from topology import topology_plausible

    m = compute_case_metrics(ref, pred, spacing, labels)
    fg = [v for v in labels if v != 0]
    # a class missing from the prediction (but not from the reference), or the reverse, has no
    # surface pair to measure: autoseg's metrics put the image diagonal there, which we leave out
    empty = [v for v in fg if m[v]["n_prediction"] == 0 and m[v]["n_reference"] > 0]
    spurious = [v for v in fg if m[v]["n_reference"] == 0 and m[v]["n_prediction"] > 0]
    hd95 = [_finite(m[v]["HD95"]) for v in fg if v not in empty and v not in spurious]
    assd = [_finite(m[v]["ASSD"]) for v in fg if v not in empty and v not in spurious]
    hd95 = [x for x in hd95 if x is not None]
    assd = [x for x in assd if x is not None]
    return {
        "dice": float(np.mean([m[v]["Dice"] for v in fg])),
        "hd95": float(np.mean(hd95)) if hd95 else None,
        "assd": float(np.mean(assd)) if assd else None,
        "plausible": bool(topology_plausible(pred, labels)),
        "empty_classes": empty,
        "spurious_classes": spurious,
        "per_label": {str(v): {k: _finite(m[v][k]) for k in ("Dice", "HD95", "ASSD")} for v in fg},
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{method/condition: {dice, hd95, assd, plausible, n, n_empty, n_no_distance}}`` over ``records``."""
    out = {}
    for _, r, _ in ROWS:
        for cond in CONDITIONS:
            rs = [x for x in records if x["method"] == r and x["condition"] == cond]
            hd = [x["hd95"] for x in rs if x["hd95"] is not None]
            asd = [x["assd"] for x in rs if x["assd"] is not None]
            out[f"{r}/{cond}"] = {
                "dice": float(np.mean([x["dice"] for x in rs])) if rs else None,
                "hd95": float(np.mean(hd)) if hd else None,
                "assd": float(np.mean(asd)) if asd else None,
                "plausible": float(np.mean([x["plausible"] for x in rs])) if rs else None,
                "n": len(rs),
                "n_empty": sum(1 for x in rs if x["empty_classes"]),  # cases with >= 1 missing class
                "n_spurious": sum(1 for x in rs if x.get("spurious_classes")),  # class predicted, not in reference
                "n_no_distance": sum(1 for x in rs if x["hd95"] is None),  # cases with no distance at all
            }
    return out


def markdown_table(table: dict[str, dict[str, Any]]) -> list[str]:
    def fmt(x: float | None, d: int = 3) -> str:
        return "-" if x is None else f"{x:.{d}f}"

    rows = []
    for name, r, _ in ROWS:
        for cond in CONDITIONS:
            t = table[f"{r}/{cond}"]
            plaus = "-" if t["plausible"] is None else f"{100 * t['plausible']:.1f}%"
            rows.append([name, cond, t["n"], fmt(t["dice"]), fmt(t["hd95"], 2), fmt(t["assd"], 2), plaus, t["n_empty"]])
    header = ["method", "condition", "n", "Dice", "HD95 (mm)", "ASSD (mm)", "topologically plausible", "empty class¹"]
    return harness.markdown_table(header, rows).split("\n")


def stale_reason(files: list[Path], checkpoint: Path, atlas: tuple[Path, int, list[str]] | None) -> str | None:
    """None when ``files`` are a complete, current prediction; "" when some are missing; else why to redo all.

    Current: not older than the fold's final checkpoint (a retrained model predicts again) and,
    for atlas_istn, made with the requested number of refinement iterations (atlas_istn.json).
    """
    if not all(f.is_file() for f in files):
        return ""
    if checkpoint.is_file() and min(f.stat().st_mtime for f in files) < checkpoint.stat().st_mtime:
        return f"older than {checkpoint}"
    if atlas is not None:
        from autoseg.atomic import read_json

        report, iterations, case_ids = atlas
        done = read_json(report).get("cases", {}) if report.is_file() else {}
        wrong = [c for c in case_ids if done.get(c, {}).get("refine_iterations") != iterations]
        if wrong:
            return f"{len(wrong)} case(s) not made with --refine {iterations} (per {report.name})"
    return None


def render_atlas(fold_dir: Path, png: Path) -> None:
    """Three orthogonal slices through the labelmap's centre of mass: image, and image + label contours."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from autoseg.atomic import atomic_path

    img_itk = sitk.ReadImage(str(fold_dir / "atlas_image.nii.gz"))
    img = sitk.GetArrayFromImage(img_itk).astype(np.float32)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(fold_dir / "atlas_labelmap.nii.gz")))
    spacing = list(reversed(img_itk.GetSpacing()))  # (z, y, x)
    fg = np.argwhere(lab > 0)
    center = fg.mean(0).round().astype(int) if len(fg) else np.array(lab.shape) // 2
    values = [int(v) for v in np.unique(lab) if v != 0]
    colors = plt.get_cmap("tab10")
    lo, hi = np.percentile(img, [1, 99])
    fig, ax = plt.subplots(2, 3, figsize=(10, 6.5))
    names = ["axial (z)", "coronal (y)", "sagittal (x)"]
    for i in range(3):
        sl: list[Any] = [slice(None)] * 3
        sl[i] = int(center[i])
        im2, lab2 = img[tuple(sl)], lab[tuple(sl)]
        # physical aspect ratio: rows/cols of the slice are the two remaining axes
        rest = [a for a in range(3) if a != i]
        aspect = spacing[rest[0]] / spacing[rest[1]]
        for row in range(2):
            ax[row, i].imshow(im2, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax[row, i].axis("off")
        for k, v in enumerate(values):
            if (lab2 == v).any():
                ax[1, i].contour(lab2 == v, levels=[0.5], colors=[colors(k % 10)], linewidths=1.5)
        ax[0, i].set_title(f"{names[i]} slice {int(center[i])}")
    handles = [matplotlib.patches.Patch(color=colors(k % 10), label=f"label {v}") for k, v in enumerate(values)]
    if handles:
        ax[1, 2].legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.7)
    fig.suptitle(f"Atlas-ISTN atlas ({fold_dir.parent.name}/{fold_dir.name}): image (top), labelmap contours "
                 "(bottom);\nslices through the labelmap's centre of mass")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", required=True)
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--folds", nargs="+", default=["0", "1", "2"])
    ap.add_argument("--budget-min", type=float, default=60, help="autoseg train --time-budget, both trainers")
    ap.add_argument("--refine", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--max-cases", type=int, default=None, help="validation cases per fold (default all)")
    ap.add_argument("--png", default=str(REPO_ROOT / "documentation" / "atlas_istn_atlas.png"))
    ap.add_argument("--render-only", action="store_true", help="only render the first fold's atlas to --png")
    args = ap.parse_args()

    from autoseg.atomic import atomic_path, read_json, write_json
    from autoseg.dataset.imageio import read_image, read_label, write_image
    from autoseg.dataset.layout import load_dataset
    from corruption import corrupt
    from autoseg.workspace import resolve_dataset

    spec = load_dataset(args.raw)
    ws_root = Path(args.workspace)
    ws = resolve_dataset(args.raw, ws_root)
    if args.render_only:
        render_atlas(ws.fold_dir("atlas_istn", args.configuration, args.folds[0]), Path(args.png))
        log(f"atlas rendered to {args.png}")
        return 0
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    timings: dict[str, dict[str, float]] = {}

    def timings_file(fold: str) -> Path:
        return ws_root / "atlas_bench" / f"fold_{fold}" / "timings.json"

    def timed(fold: str, step: str, fn: Callable[[], Any]) -> None:
        log(f"fold {fold}: {step} ...")
        t = time.monotonic()
        fn()
        timings.setdefault(fold, {})[step] = round(time.monotonic() - t, 1)
        log(f"fold {fold}: {step} done in {timings[fold][step]:.1f} s")
        # kept per fold across runs, so a resumed run still reports the steps it skipped
        write_json(timings_file(fold), timings[fold])

    if not ws.plans_file.is_file():
        timed("-", "plan_and_preprocess", lambda: autoseg("plan-and-preprocess", args.raw, "--workspace", str(ws_root)))
    cases = {c.case_id: c for c in spec.cases}
    labels = [int(v) for v in read_json(ws.plans_file)["label_values"]]
    common = ["-d", ws.name, "--workspace", str(ws_root), "-c", args.configuration, "--no-tta"]
    records: list[dict[str, Any]] = []
    per_fold: dict[str, Any] = {}
    for fold in args.folds:
        if timings_file(fold).is_file():
            timings[fold] = read_json(timings_file(fold))
        for trainer in ("unet", "atlas_istn"):
            fold_dir = ws.fold_dir(trainer, args.configuration, fold)
            if (fold_dir / "checkpoint_final.pt").is_file():
                budget = read_json(fold_dir / "log.json").get("time_budget_min") if (fold_dir / "log.json").is_file() \
                    else None
                log(f"fold {fold}: {trainer} already trained ({fold_dir}), not retrained"
                    + ("" if budget == args.budget_min else
                       f"; WARNING: trained with --time-budget {budget}, not {args.budget_min:g}"))
                continue
            cont = ["--continue"] if (fold_dir / "checkpoint_latest.pt").is_file() else []
            timed(fold, f"train_{trainer}", lambda t=trainer, c=cont: autoseg(
                "train", ws.name, args.configuration, fold, "--trainer", t, "--workspace", str(ws_root),
                "--time-budget", str(args.budget_min), "--no-validation", *c))
        val = read_json(ws.splits_file)[int(fold)]["val"][: args.max_cases]
        bench = ws_root / "atlas_bench" / f"fold_{fold}"
        cases_file = bench / "cases.json"
        # scored cases from an earlier run, keyed by what they scored; re-scored if the prediction changed
        cached = {(r["method"], r["condition"], r["case"]): r for r in
                  (read_json(cases_file)["cases"] if cases_file.is_file() else [])}
        fold_records: list[dict[str, Any]] = []
        bench.mkdir(parents=True, exist_ok=True)
        inputs_file = bench / "inputs.json"
        made = read_json(inputs_file) if inputs_file.is_file() else {"seed": args.seed}
        if made.get("seed") != args.seed:
            sys.exit(f"{bench}: the corrupted inputs were made with --seed {made.get('seed')}; "
                     f"use that seed or another --workspace")
        write_json(inputs_file, {"seed": args.seed})
        for cond in CONDITIONS:
            inp = bench / f"input_{cond}"
            inp.mkdir(parents=True, exist_ok=True)
            for i, cid in enumerate(val):
                dst = inp / f"{cid}.nii.gz"
                if dst.is_file():
                    continue
                image, geometry = read_image(cases[cid].image_files[0])
                arr = image[0] if cond == "clean" else corrupt(image[0], args.seed + i)
                write_image(arr.astype(np.float32), geometry, dst)
            out = {r: bench / f"{r}_{cond}" for _, r, _ in ROWS}
            out["itn"] = out["onepass"]
            runs = [("unet", ["--trainer", "unet"], [""]),
                    ("onepass", ["--trainer", "atlas_istn", "--refine", "0"], ["", "_itn", "_displacement"]),
                    ("refined", ["--trainer", "atlas_istn", "--refine", str(args.refine)],
                     ["", "_itn", "_displacement"])]
            for r, extra, suffixes in runs:
                files = [out[r] / f"{cid}{s}.nii.gz" for cid in val for s in suffixes]
                stale = stale_reason(files, ws.fold_dir("unet" if r == "unet" else "atlas_istn", args.configuration,
                                                        fold) / "checkpoint_final.pt",
                                     None if r == "unet" else (out[r] / "atlas_istn.json", int(extra[-1]), val))
                if stale is None:
                    log(f"fold {fold}: predict_{r}_{cond}: all {len(val)} case(s) present in {out[r]}, not recomputed")
                    continue
                if stale:
                    log(f"fold {fold}: predict_{r}_{cond}: {stale}; predicting again")
                timed(fold, f"predict_{r}_{cond}", lambda e=extra, o=out[r], w=bool(stale): autoseg(
                    "predict", "-i", str(inp), "-o", str(o), *common, "-f", fold, *e, *(["--overwrite"] if w else [])))
            t = time.monotonic()
            for cid in val:
                ref, geometry = read_label(cases[cid].label_file)
                for _, r, suffix in ROWS:
                    pred_file = out[r] / f"{cid}{suffix}.nii.gz"
                    mtime = pred_file.stat().st_mtime
                    rec = cached.get((r, cond, cid))
                    if rec is None or rec.get("prediction_mtime") != mtime:
                        pred, _ = read_label(pred_file)
                        rec = {"fold": fold, "case": cid, "method": r, "condition": cond,
                               **case_record(ref, pred, geometry.spacing, labels), "prediction_mtime": mtime}
                    fold_records.append(rec)
            done = {(x["method"], x["condition"], x["case"]) for x in fold_records}
            keep = [x for k, x in cached.items() if k not in done]
            write_json(cases_file, {"fold": fold, "cases": fold_records + keep})
            timings.setdefault(fold, {})[f"metrics_{cond}"] = round(time.monotonic() - t, 1)
            write_json(timings_file(fold), timings[fold])
            log(f"fold {fold}: scored {len(val)} {cond} case(s) x {len(ROWS)} methods "
                f"in {timings[fold][f'metrics_{cond}']:.1f} s -> {cases_file}")
        records += fold_records
        per_fold[fold] = summarise(fold_records)
        log(f"fold {fold} table:\n" + "\n".join(markdown_table(per_fold[fold])))

    table = summarise(records)
    total = round(time.monotonic() - _T0, 1)
    write_json(ws_root / "atlas_istn_table.json", {
        "folds": args.folds, "budget_min": args.budget_min, "refine": args.refine, "seed": args.seed,
        "configuration": args.configuration, "max_cases": args.max_cases, "command": command,
        "empty_prediction_rule": "a foreground class missing from the prediction (present in the reference) has "
                                 "Dice 0 (in the mean) and no HD95/ASSD (left out of the distance means); "
                                 "n_empty counts cases with at least one such class, n_no_distance cases with "
                                 "no distance at all",
        "table": table, "per_fold": per_fold,
        # wall seconds per step (from the run that did it, when resumed) and of this invocation
        "timings_s": timings, "steps_total_s": round(sum(v for st in timings.values() for v in st.values()), 1),
        "total_s": total,
    })
    n_val = sorted({len([x for x in records if x["fold"] == f and x["method"] == "unet" and x["condition"] == "clean"])
                    for f in args.folds})
    lines = [
        f"Atlas-ISTN vs U-Net, {ws.name}, configuration {args.configuration}: folds {' '.join(args.folds)} "
        f"({'/'.join(map(str, n_val))} validation case(s) per fold{'' if args.max_cases is None else f', --max-cases {args.max_cases}'}), "
        f"training budget {args.budget_min:g} min per trainer and fold, {args.refine} refinement iteration(s), "
        f"corruption seed {args.seed} (+ case index), no TTA.",
        "",
        f"Command: `{command}`",
        "",
        *markdown_table(table),
        "",
        "¹ cases where the prediction misses at least one foreground class present in the reference: that class "
        "scores Dice 0 (kept in the Dice mean) and has no HD95/ASSD (left out of the distance means, which are "
        "over the remaining classes and cases). Dice, HD95 and ASSD are the mean over foreground classes per case, "
        "then over cases of all folds; topologically plausible = every foreground class is one connected component "
        "(26-connectivity). ITN = the Atlas-ISTN's own segmentation network.",
        "",
        f"Wall time: {sum(v for st in timings.values() for v in st.values()) / 60:.1f} min over all steps "
        f"(this invocation {total / 60:.1f} min); per step (s): "
        + "; ".join(f"fold {f}: " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items()) for f, steps in timings.items()),
    ]
    with atomic_path(ws_root / "atlas_istn_table.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    t = time.monotonic()
    render_atlas(ws.fold_dir("atlas_istn", args.configuration, args.folds[0]), Path(args.png))
    log(f"atlas rendered to {args.png} in {time.monotonic() - t:.1f} s; total {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
