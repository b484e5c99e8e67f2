"""``autoseg postprocess``: apply largest-connected-component postprocessing to a folder."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "postprocess",
        help="keep the largest connected component (of the foreground and/or per class)",
        description="Apply a postprocessing spec to every label map in a folder. The spec is the "
                    "'postprocessing' of best_configuration.json, a JSON file holding it, or given "
                    "with --foreground-lcc / --per-class-lcc.",
    )
    p.add_argument("-i", "--input", required=True, help="folder of label maps")
    p.add_argument("-o", "--output", required=True, help="output folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--spec", help="JSON file: a spec, or best_configuration.json (its selected postprocessing)")
    g.add_argument("--foreground-lcc", action="store_true", help="keep only the largest foreground component")
    g.add_argument("--per-class-lcc", type=int, nargs="+", metavar="LABEL",
                   help="keep only the largest component of each of these label values")
    p.add_argument("--workspace", default=None, help="workspace folder (unused here; accepted for uniformity)")
    p.set_defaults(func=run)


def load_spec(path: str) -> dict:
    """A postprocessing spec from a JSON file (a bare spec or a best_configuration.json)."""
    import json
    from pathlib import Path

    from autoseg.errors import UserError
    from autoseg.postprocessing.connected_components import validate_spec

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and "selected" in data:
        data = data["selected"].get("postprocessing", {})
    try:
        return validate_spec(data)
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: {e}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from autoseg.errors import UserError
    from autoseg.dataset.imageio import read_label, write_image
    from autoseg.evaluation.evaluate import list_label_files
    from autoseg.postprocessing.connected_components import apply_postprocessing

    if args.spec:
        spec = load_spec(args.spec)
    elif args.foreground_lcc:
        spec = {"foreground_largest_component": True, "per_class_largest_component": []}
    else:
        spec = {"foreground_largest_component": False, "per_class_largest_component": args.per_class_lcc}
    src = Path(args.input)
    if not src.is_dir():
        raise UserError(f"{src}: folder does not exist")
    files = list_label_files(src)
    if not files:
        raise UserError(f"{src}: holds no label maps")
    out = Path(args.output)
    for case, f in tqdm(files.items(), desc="postprocess"):
        seg, geometry = read_label(f)
        write_image(apply_postprocessing(seg, spec), geometry, out / f.name)
    print(f"postprocessed {len(files)} case(s) into {out} with {spec}")
    return 0
