"""Atlas-ISTN vs U-Net on Task04_Hippocampus (or any MSD dataset): the Must-show table of issue 6.

    nice -n 19 python benchmarks/bench_atlas_istn.py --raw ../shared/data/Task04_Hippocampus \
        --workspace /tmp/ws_atlas --folds 0 1 2 --budget-min 60 [--refine 50] [--seed 0]

Per fold: `autoseg train` of `unet` and `atlas_istn` with the same --time-budget, then the
fold's validation images are predicted clean and corrupted (autoseg.evaluation.corruption,
seed = --seed + case index), with the U-Net, and with Atlas-ISTN one-pass (--refine 0, which
also gives the ITN output) and refined (--refine N). Writes `<workspace>/atlas_istn_table.json`
and `.md` (rows U-Net, ITN, Atlas-ISTN 1-pass, Atlas-ISTN refined; Dice, HD95, ASSD, %
topologically plausible; clean and corrupted) and renders fold 0's atlas to --png.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROWS = [("U-Net", "unet", ""), ("ITN", "itn", "_itn"), ("Atlas-ISTN 1-pass", "onepass", ""),
        ("Atlas-ISTN refined", "refined", "")]


def autoseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "autoseg", *args], check=True)


def render_atlas(fold_dir: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    img = sitk.GetArrayFromImage(sitk.ReadImage(str(fold_dir / "atlas_image.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(fold_dir / "atlas_labelmap.nii.gz")))
    fig, ax = plt.subplots(2, 3, figsize=(9, 6))
    for i in range(3):
        sl = [slice(None)] * 3
        sl[i] = img.shape[i] // 2
        ax[0, i].imshow(img[tuple(sl)], cmap="gray")
        ax[1, i].imshow(lab[tuple(sl)], cmap="viridis", vmin=0, vmax=max(1, lab.max()))
        for a in ax[:, i]:
            a.axis("off")
        ax[0, i].set_title(["axial (z)", "coronal (y)", "sagittal (x)"][i])
    fig.suptitle("Atlas-ISTN atlas: image (top) and labelmap (bottom), mid slices")
    from autoseg.atomic import atomic_path
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", required=True)
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--folds", nargs="+", default=["0", "1", "2"])
    ap.add_argument("--budget-min", type=float, default=60)
    ap.add_argument("--refine", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--max-cases", type=int, default=None, help="validation cases per fold (default all)")
    ap.add_argument("--png", default=str(Path(__file__).resolve().parents[1] / "documentation" / "atlas_istn_atlas.png"))
    args = ap.parse_args()

    from autoseg.atomic import read_json, write_json
    from autoseg.dataset.imageio import read_image, read_label, write_image
    from autoseg.dataset.layout import load_dataset
    from autoseg.evaluation.corruption import corrupt
    from autoseg.evaluation.metrics import compute_case_metrics
    from autoseg.evaluation.topology import topology_plausible
    from autoseg.workspace import resolve_dataset

    spec = load_dataset(args.raw)
    ws_root = Path(args.workspace)
    ws = resolve_dataset(args.raw, ws_root)
    if not ws.plans_file.is_file():
        autoseg("plan-and-preprocess", args.raw, "--workspace", str(ws_root))
    cases = {c.case_id: c for c in spec.cases}
    labels = [int(v) for v in read_json(ws.plans_file)["label_values"]]
    scores: dict[str, dict[str, list]] = {f"{r}/{cond}": {"dice": [], "hd95": [], "assd": [], "plausible": []}
                                          for _, r, _ in ROWS for cond in ("clean", "corrupted")}
    common = ["--workspace", str(ws_root), "-c", args.configuration]
    for fold in args.folds:
        for trainer in ("unet", "atlas_istn"):
            fold_dir = ws.fold_dir(trainer, args.configuration, fold)
            if not (fold_dir / "checkpoint_final.pt").is_file():
                autoseg("train", ws.name, args.configuration, fold, "--trainer", trainer, "--workspace", str(ws_root),
                        "--time-budget", str(args.budget_min), "--no-validation",
                        *(["--continue"] if (fold_dir / "checkpoint_latest.pt").is_file() else []))
        val = read_json(ws.splits_file)[int(fold)]["val"][: args.max_cases]
        bench = ws_root / "atlas_bench" / f"fold_{fold}"
        for cond in ("clean", "corrupted"):
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
            autoseg("predict", "-i", str(inp), "-o", str(out["unet"]), "-d", ws.name, *common, "-f", fold,
                    "--trainer", "unet", "--no-tta")
            autoseg("predict", "-i", str(inp), "-o", str(out["onepass"]), "-d", ws.name, *common, "-f", fold,
                    "--trainer", "atlas_istn", "--no-tta", "--refine", "0")
            autoseg("predict", "-i", str(inp), "-o", str(out["refined"]), "-d", ws.name, *common, "-f", fold,
                    "--trainer", "atlas_istn", "--no-tta", "--refine", str(args.refine))
            out["itn"] = out["onepass"]
            for cid in val:
                ref, geometry = read_label(cases[cid].label_file)
                for _, r, suffix in ROWS:
                    pred, _ = read_label(out[r] / f"{cid}{suffix}.nii.gz")
                    m = compute_case_metrics(ref, pred, geometry.spacing, labels)
                    fg = [m[v] for v in labels if v != 0]
                    s = scores[f"{r}/{cond}"]
                    for key, name in (("dice", "Dice"), ("hd95", "HD95"), ("assd", "ASSD")):
                        s[key].append(float(np.mean([x[name] for x in fg])))
                    s["plausible"].append(bool(topology_plausible(pred, labels)))
    table = {k: {m: (float(np.mean(v)) if v else None) for m, v in s.items()} for k, s in scores.items()}
    write_json(ws_root / "atlas_istn_table.json", {"folds": args.folds, "budget_min": args.budget_min,
                                                  "refine": args.refine, "seed": args.seed, "table": table})
    lines = ["| method | condition | Dice | HD95 (mm) | ASSD (mm) | topologically plausible |", "|---|---|---|---|---|---|"]
    for name, r, _ in ROWS:
        for cond in ("clean", "corrupted"):
            t = table[f"{r}/{cond}"]
            fmt = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
            plaus = "-" if t["plausible"] is None else f"{100 * t['plausible']:.1f}%"
            lines.append(f"| {name} | {cond} | {fmt(t['dice'])} | {fmt(t['hd95'], 2)} | {fmt(t['assd'], 2)} | {plaus} |")
    (ws_root / "atlas_istn_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    render_atlas(ws.fold_dir("atlas_istn", args.configuration, args.folds[0]), Path(args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
