"""``autoseg mesh``: surface meshes (and per-structure statistics) of a folder of label maps."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

_CHANNEL_FILE = re.compile(r"^(.*)_(\d{4})$")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mesh",
        help="write one surface mesh per label (STL/VTK/OBJ, LPS mm) of label maps",
        description="For every label map in LABEL_MAPS (a folder, or one file; any format autoseg reads), write "
                    "one closed surface per label, CASE_VALUE_NAME.stl, in the image's physical LPS "
                    "coordinates (spacing, origin and direction applied), so it overlays the image in 3D "
                    "Slicer without a transform, then CASE_meshes.json (the index). With --images or --stats "
                    "also structures.csv/json: volume, surface area, intensity mean/std, connected "
                    "components and bounding box per case and label. Cases whose index was written with the "
                    "same settings are skipped unless --overwrite. See documentation/meshes.md.",
    )
    p.add_argument("labels_path", metavar="LABEL_MAPS", help="folder of label maps, or one label map file")
    p.add_argument("-o", "--output", required=True, help="folder for the meshes (created if needed)")
    p.add_argument("--format", default="stl", choices=("stl", "vtk", "obj"),
                   help="mesh file format (default stl: binary STL; vtk: legacy VTK; obj: Wavefront)")
    p.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA_MM",
                   help="Gaussian-smooth each label's mask with this sigma in mm before marching cubes "
                        "(default 0: none; 1-2 mm removes the voxel steps)")
    p.add_argument("--decimate", type=float, default=0.0, metavar="FRACTION",
                   help="remove about this fraction of the triangles (0.9 keeps 10%%) by quadric decimation; "
                        "needs pip install \"autoseg[meshes]\" (default 0: none)")
    p.add_argument("-l", "--labels", type=int, nargs="+", default=None, metavar="VALUE",
                   help="label values to mesh (default: every nonzero value in each map)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("-d", "--dataset", default=None,
                       help="take label names from this dataset's plans.json in the workspace")
    names.add_argument("--labels-json", default=None, metavar="DATASET_JSON",
                       help="take label names from a dataset.json (MSD or nnU-Net v2 'labels')")
    p.add_argument("--images", default=None, metavar="FOLDER",
                   help="images of the same cases (CASE<ending> or CASE_0000<ending>, ...): also write "
                        "structures.csv/json with each channel's intensity mean and std inside each label")
    p.add_argument("--stats", action="store_true",
                   help="write structures.csv/json without intensities (implied by --images)")
    p.add_argument("--overwrite", action="store_true", help="write the meshes of every case again")
    p.add_argument("--workspace", default=None,
                   help="workspace folder for -d (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.set_defaults(func=run)


def label_names_from_dataset_json(path: str | Path) -> dict[int, str]:
    """``{value: name}`` from a dataset.json: MSD ``{"1": "liver"}`` or nnU-Net v2 ``{"liver": 1}``."""
    from autoseg.atomic import read_json
    from autoseg.errors import UserError

    path = Path(path)
    try:
        labels = read_json(path).get("labels")
    except FileNotFoundError:
        raise UserError(f"--labels-json: {path} does not exist") from None
    except (ValueError, AttributeError) as e:
        raise UserError(f"--labels-json: {path} is not a JSON object ({e})") from None
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"--labels-json: {path} has no 'labels' object")

    def as_int(x) -> int | None:
        try:
            f = float(x)
        except (TypeError, ValueError):
            return None
        return int(f) if f == int(f) else None

    if all(as_int(k) is not None for k in labels):  # MSD: value -> name
        return {as_int(k): str(v) for k, v in labels.items()}
    names = {}
    for name, value in labels.items():  # nnU-Net v2: name -> value; a region (a list) has no single value
        if as_int(value) is not None:
            names[as_int(value)] = str(name)
    return names


def label_names_from_plans(dataset: str, workspace: str | None) -> dict[int, str]:
    from autoseg.errors import UserError
    from autoseg.planners.plans import Plans
    from autoseg.workspace import resolve_dataset

    ws = resolve_dataset(dataset, workspace)
    if not ws.plans_file.is_file():
        raise UserError(f"-d {dataset}: no plans in {ws.plans_file}; check -d and --workspace, or use --labels-json")
    plans = Plans.load(ws.plans_file)
    return dict(zip(plans.label_values, plans.label_names))


def find_label_files(path: str | Path) -> dict[str, Path]:
    """``{case_id: file}`` of the label maps at ``path`` (a folder, or one file)."""
    from autoseg.dataset.imageio import SUPPORTED_ENDINGS, split_ending
    from autoseg.errors import UserError

    path = Path(path)
    if path.is_file():
        parts = split_ending(path.name)
        if parts is None:
            raise UserError(f"{path}: not a label file autoseg reads ({', '.join(SUPPORTED_ENDINGS)})")
        return {parts[0]: path}
    if not path.is_dir():
        raise UserError(f"{path}: no such file or folder")
    files = {}
    for f in sorted(path.iterdir()):
        parts = split_ending(f.name)
        if f.is_file() and not f.name.startswith(".") and parts is not None:
            files[parts[0]] = f
    if not files:
        raise UserError(f"{path}: holds no label files ({', '.join(SUPPORTED_ENDINGS)})")
    return files


def find_image_files(folder: str | Path, case_ids: list[str]) -> dict[str, list[Path]]:
    """Each case's image files: ``CASE<ending>``, else its channel files ``CASE_0000<ending>``, ... in order."""
    from autoseg.dataset.imageio import split_ending
    from autoseg.errors import UserError

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--images: {folder} is not a folder")
    single: dict[str, Path] = {}
    channels: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        parts = split_ending(f.name)
        if f.name.startswith(".") or parts is None:
            continue
        single[parts[0]] = f
        m = _CHANNEL_FILE.match(parts[0])
        if m:
            channels.setdefault(m.group(1), {})[int(m.group(2))] = f
    out, missing = {}, []
    for cid in case_ids:
        if cid in single:
            out[cid] = [single[cid]]
        elif cid in channels and 0 in channels[cid]:
            g = channels[cid]
            n = 0
            while n in g:
                n += 1
            out[cid] = [g[i] for i in range(n)]
        else:
            missing.append(cid)
    if missing:
        raise UserError(f"--images: {folder} has no image for {len(missing)} case(s): " + ", ".join(missing[:10])
                        + (" ..." if len(missing) > 10 else "") + " (expected CASE<ending> or CASE_0000<ending>)")
    return out


def check_images_match(label_files: dict[str, Path], image_files: dict[str, list[Path]]) -> None:
    """Each case's image files have its label map's grid: same size, spacing, origin and direction."""
    import numpy as np

    from autoseg.dataset.imageio import read_header
    from autoseg.errors import UserError

    for cid, label_file in label_files.items():
        _, size, spacing, origin, direction, _ = read_header(label_file)
        for f in image_files[cid]:
            _, isize, ispacing, iorigin, idirection, _ = read_header(f)
            if isize != size:
                raise UserError(f"{f}: size {isize} differs from its label map {label_file} {size}")
            if (not np.allclose(ispacing, spacing, rtol=1e-3, atol=1e-3) or not np.allclose(iorigin, origin, atol=1e-2)
                    or not np.allclose(idirection, direction, atol=1e-3)):
                raise UserError(f"{f}: spacing, origin or direction differ from its label map {label_file}; "
                                "the image and the labels must share one grid")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from autoseg.atomic import remove_partials
    from autoseg.dataset.imageio import read_channels, read_header, read_label
    from autoseg.errors import UserError
    from autoseg.evaluation.structure_stats import as_label_map, structure_statistics, write_structure_statistics
    from autoseg.inference.meshes import check_mesh_options, meshes_done, write_case_meshes

    check_mesh_options(args.format, args.smooth, args.decimate)
    if args.labels is not None and any(v <= 0 for v in args.labels):
        raise UserError(f"--labels: values must be positive (0 is background), got {args.labels}")
    names: dict[int, str] = {}
    if args.labels_json:
        names = label_names_from_dataset_json(args.labels_json)
    elif args.dataset:
        names = label_names_from_plans(args.dataset, args.workspace)
    label_files = find_label_files(args.labels_path)
    # autoseg predict --uncertainty writes CASE_entropy beside CASE: a float map, not labels
    entropy = [cid for cid in label_files if cid.endswith("_entropy") and cid[:-len("_entropy")] in label_files]
    for cid in entropy:
        del label_files[cid]
    dims = {}
    for cid, f in label_files.items():
        header = read_header(f)
        if header[5] != 1:
            raise UserError(f"{f}: has {header[5]} channels; a label map has one")
        dims[cid] = header[0]
    stats = bool(args.stats or args.images)
    if not stats and all(d == 2 for d in dims.values()):
        raise UserError(f"{args.labels_path}: the label maps are 2D and surface meshes are 3D only; "
                        "--stats gives their area and perimeter")
    image_files = {}
    if args.images:
        image_files = find_image_files(args.images, list(label_files))
        check_images_match(label_files, image_files)

    skipped: list[str] = []

    def load(cid: str) -> tuple[np.ndarray, object] | None:
        seg, geometry = read_label(label_files[cid])
        try:
            return as_label_map(seg), geometry
        except ValueError as e:
            if cid not in skipped:
                skipped.append(cid)
                print(f"warning: skipping {label_files[cid]}: {e}")
            return None

    if args.labels is not None:  # a value no map holds is a typo: say so before the long part
        found: set[int] = set()
        for cid in tqdm(label_files, desc="check labels", dynamic_ncols=True, disable=None):
            loaded = load(cid)
            if loaded is not None:
                found |= set(np.unique(loaded[0]).tolist())
        absent = sorted(set(args.labels) - found)
        if absent:
            raise UserError(f"--labels: value(s) {', '.join(map(str, absent))} occur in none of the "
                            f"{len(label_files)} label map(s) in {args.labels_path}")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    remove_partials(out)
    rows, n_files, n_meshed, n_kept = [], 0, 0, 0
    for cid in tqdm(label_files, desc="mesh", dynamic_ncols=True, disable=None):
        wants_mesh = dims[cid] == 3
        if wants_mesh and not args.overwrite and meshes_done(out, cid, args.format, args.smooth, args.decimate,
                                                             args.labels):
            wants_mesh = False
            n_kept += 1
        if not (wants_mesh or stats):
            continue
        loaded = load(cid)
        if loaded is None:
            continue
        seg, geometry = loaded
        if wants_mesh:
            index = write_case_meshes(out, cid, seg, geometry, args.labels, names, args.format, args.smooth,
                                      args.decimate)
            n_files += len(index.meshes)
            n_meshed += 1
        if stats:
            image = None
            if args.images:
                image, _ = read_channels(image_files[cid])
            rows += structure_statistics(cid, seg, geometry, image, args.labels, names)

    print(f"wrote {n_files} {args.format.upper()} mesh file(s) for {n_meshed} case(s) into {out} (LPS, mm)"
          + (f"; {n_kept} case(s) already done" if n_kept else ""))
    flat = [cid for cid, d in dims.items() if d == 2]
    if flat:
        print(f"note: {len(flat)} 2D label map(s) have no mesh (meshes are 3D only): " + ", ".join(flat[:5]))
    if stats:
        csv_path, json_path = write_structure_statistics(out, rows)
        print(f"wrote {csv_path} and {json_path.name} ({len(rows)} row(s))")
    return 0
