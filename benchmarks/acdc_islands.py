"""Where a run's false islands lie: per class, the components outside the largest, and how far from the heart.

    python benchmarks/acdc_islands.py --runs ROW:FOLD:TAG [ROW:FOLD:TAG ...] [--far 20] [--scratch DIR]
        [--figure OUT.png --slices CASE:Z [CASE:Z ...]]

Reads the validation predictions of runs of ``bench_acdc_configs.py`` (original geometry) and
the reference labels. For every frame and class, the predicted components other than the
largest (26-connectivity, as ``autoseg postprocess --per-class-lcc`` counts them) are the
*islands* that postprocessing removes. Each island is measured by its volume and by its
distance from the reference heart (the nearest voxel of any reference class, in mm). An island
is *far* beyond ``--far`` mm. Far islands are also split by where they sit along z: on a
slice that holds reference heart, or on a slice above or below it. Such islands are what
turns a good Dice into an HD95 of 100 mm, and the split says whether they come from slices
that see the heart or from slices that do not. ``--figure`` draws the named slices: the image,
the reference and each run's prediction side by side (the runs must share the case's fold).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from acdc_cv_table import parse_run, validation_folder  # noqa: E402
from bench_acdc_configs import ROWS  # noqa: E402

CLASSES = {1: "RV", 2: "MYO", 3: "LV"}


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Label array (z, y, x) and its spacing in mm (z, y, x)."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), np.array(image.GetSpacing()[::-1], float)


def islands(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray) -> list[dict]:
    """Every predicted component of a class other than its largest: class, volume, distance to the reference heart."""
    heart = ref > 0
    # distance of every voxel to the nearest reference-heart voxel (mm); an empty reference leaves it undefined
    to_heart = ndi.distance_transform_edt(~heart, sampling=spacing) if heart.any() else None
    heart_slices = np.flatnonzero(heart.any(axis=(1, 2)))
    found = []
    for value, name in CLASSES.items():
        labelled, n = ndi.label(pred == value, structure=np.ones((3, 3, 3), bool))
        if n <= 1:
            continue
        sizes = np.bincount(labelled.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        for comp, objects in enumerate(ndi.find_objects(labelled), start=1):
            if comp == largest:
                continue
            mask = labelled[objects] == comp
            distance = float(to_heart[objects][mask].min()) if to_heart is not None else float("inf")
            z = np.arange(objects[0].start, objects[0].stop)[mask.any(axis=(1, 2))]
            found.append({"class": name, "ml": float(sizes[comp - 1] * np.prod(spacing) / 1000), "mm": distance,
                          "off_heart_slices": bool(len(heart_slices)) and not np.isin(z, heart_slices).any()})
    return found


def slice_figure(out: Path, slices: list[tuple[str, int]], images: Path, labels: Path,
                 runs: list[tuple[str, Path]]) -> None:
    """One row per ``(case, z)``: the image, then the reference and every run's labels over it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0, 0), (0.2, 0.4, 1, 0.6), (0.2, 0.9, 0.2, 0.6), (1, 0.2, 0.2, 0.6)])  # RV, MYO, LV
    columns = [("reference", labels)] + runs
    fig, axes = plt.subplots(len(slices), 1 + len(columns), figsize=(3 * (1 + len(columns)), 3.2 * len(slices)),
                             squeeze=False)
    for row, (case, z) in enumerate(slices):
        image = read(images / f"{case}.nii.gz")[0][z]
        for col, (title, folder) in enumerate([(f"{case}, slice {z}", None)] + columns):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray")
            if folder is not None:
                ax.imshow(read(folder / f"{case}.nii.gz")[0][z], cmap=colours, vmin=0, vmax=3, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=60)
    plt.close(fig)


def parse_slice(text: str) -> tuple[str, int]:
    case, _, z = text.rpartition(":")
    if not case or not z.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected CASE:Z, e.g. patient007_frame01:3")
    return case, int(z)


def run_line(row: str, fold: int, validation: Path, labels: Path, far: float) -> str:
    """The table line of one run: its islands, the far ones by class, frames, volume, slices, distance."""
    per_frame = []
    for case in sorted(validation.glob("*.nii.gz")):
        pred, spacing = read(case)
        per_frame.append(islands(pred, read(labels / case.name)[0], spacing))
    every = [i for found in per_frame for i in found]
    far_ones = [i for i in every if i["mm"] > far]
    frames = sum(any(i["mm"] > far for i in found) for found in per_frame)
    by_class = ", ".join(f"{name} {sum(i['class'] == name for i in far_ones)}" for name in CLASSES.values())
    off = sum(i["off_heart_slices"] for i in far_ones)
    return (f"| {row} | {fold} | {len(every)} | {len(far_ones)} ({by_class}) | {frames} / {len(per_frame)} | "
            f"{sum(i['ml'] for i in far_ones):.1f} | {off} / {len(far_ones)} | "
            f"{np.median([i['mm'] for i in far_ones]) if far_ones else 0:.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=parse_run, required=True, help="ROW:FOLD:TAG, e.g. 3d_hybrid:4:folds34_20min_s10")
    p.add_argument("--data", type=Path, default=harness.DEFAULT_DATA_ROOT / "ACDC")
    p.add_argument("--scratch", type=Path, default=None)
    p.add_argument("--far", type=float, default=20.0, help="an island farther than this from the reference heart (mm) is far")
    p.add_argument("--figure", type=Path, default=None, help="draw --slices of every run to this PNG")
    p.add_argument("--slices", nargs="+", type=parse_slice, default=[], metavar="CASE:Z")
    args = p.parse_args(argv)
    if bool(args.figure) != bool(args.slices):
        p.error("--figure and --slices go together")
    data = harness.dataset_folder(args.data)
    if data is None:
        return 2
    scratch = harness.scratch_folder(args.scratch, "acdc_configs", data)
    print(f"| row | fold | islands | far (> {args.far:g} mm) | frames with a far island | far volume (ml) | "
          "far, on slices without heart | median far distance (mm) |")
    print("|---|---|---|---|---|---|---|---|")
    drawn = []
    for row, fold, tag in args.runs:
        validation = validation_folder(scratch, data.name, row, fold, tag)
        if not validation.is_dir():
            print(f"error: no validation predictions in {validation}", file=sys.stderr)
            return 2
        print(run_line(row, fold, validation, data / "labelsTr", args.far))
        drawn.append((f"{row} ({ROWS[row][1]}), fold {fold}", validation))
    if args.figure:
        slice_figure(args.figure, args.slices, data / "imagesTr", data / "labelsTr", drawn)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
