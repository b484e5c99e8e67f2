"""Recognise a dataset folder's layout and list its cases, as they are on disk.

Three layouts are read in place, with no conversion step:

* **MSD**: ``dataset.json`` with ``modality``, ``labels`` (value -> name) and a
  ``training`` list of ``{"image", "label"}`` paths; multi-channel volumes are 4D files.
* **nnU-Net v2 raw**: ``dataset.json`` with ``channel_names``, ``labels`` (name -> value)
  and ``file_ending``; ``imagesTr/CASE_0000<ending>`` holds one file per channel and
  ``labelsTr/CASE<ending>`` the label map.
* **2D**: either of the above with PNG/TIFF files; an RGB file gives three channels.

Reading the layout never raises on a bad case: problems are collected on
:attr:`DatasetSpec.problems` so the integrity check can report all of them at once.
Only a missing or unparseable ``dataset.json`` raises :class:`DatasetError` directly.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from autoseg.dataset.imageio import IMAGE_2D_ENDINGS, split_ending
from autoseg.errors import DatasetError, Problem


@dataclass
class Case:
    case_id: str
    image_files: list[Path]  # one file per channel, or one multi-channel file
    label_file: Path | None


@dataclass
class DatasetSpec:
    """What a dataset folder declares and holds."""

    root: Path
    name: str
    layout: str  # "msd" or "nnunetv2"
    channel_names: list[str]
    labels: dict[int, str]  # label value -> name, background included
    file_ending: str
    cases: list[Case]
    is_2d: bool
    # Regex whose first group names the patient of a case id (dataset.json "group_regex");
    # cases of one patient are kept in one cross-validation fold.
    group_regex: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> list[int]:
        """Declared label values, sorted; index in this list is the class index used in training."""
        return sorted(self.labels)


def _file_ending(name: str) -> str:
    parts = split_ending(name)
    return parts[1] if parts else Path(name).suffix


def _inside(root: Path, rel: str, problems: list[Problem], case_id: str | None) -> Path | None:
    """Resolve a dataset.json path, refusing anything that escapes the dataset folder.

    The check is on the path as written (``..``, absolute paths), not on where symlinks
    lead: ``imagesTr`` linked to another disk is a common, legitimate setup.
    """
    p = _lexical(root / rel)
    try:
        p.relative_to(root)
    except ValueError:
        problems.append(Problem(f"path '{rel}' in dataset.json points outside the dataset folder", case_id, "dataset.json"))
        return None
    return p


def _lexical(path: Path) -> Path:
    """``path`` with ``.``/``..`` collapsed but symlinks left alone."""
    return Path(os.path.normpath(path))


def _strip_ending(name: str) -> str:
    return name[: len(name) - len(_file_ending(name))]


def _parse_labels(raw: dict, name_to_value: bool, problems: list[Problem]) -> dict[int, str]:
    labels: dict[int, str] = {}
    if not isinstance(raw, dict) or not raw:
        shape = "{name: value}" if name_to_value else "{value: name}"
        problems.append(Problem(f"'labels' must be a non-empty object {shape}", None, "dataset.json"))
        return labels
    for k, v in raw.items():
        key, val = (v, k) if name_to_value else (k, v)
        if isinstance(key, (list, tuple)):
            problems.append(Problem(f"label '{val}' is a region (list of values); regions are not supported", None, "dataset.json"))
            continue
        try:
            f = float(key)
            if f != int(f):
                raise ValueError
            if f < 0:
                problems.append(Problem(f"label value {int(f)} for '{val}' is negative; label values must be 0 or "
                                        "positive integers", None, "dataset.json"))
                continue
            labels[int(f)] = str(val)
        except (TypeError, ValueError, OverflowError):
            problems.append(Problem(f"label value '{key}' for '{val}' is not an integer", None, "dataset.json"))
    if labels and 0 not in labels:
        problems.append(Problem("labels must declare the background value 0", None, "dataset.json"))
    return labels


_JSON_TYPES = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false",
               type(None): "null"}


def _read_dataset_json(djson: Path, root: Path) -> dict:
    """The parsed ``dataset.json``; any reason it cannot be used raises, naming the place in it."""
    def fail(message: str) -> NoReturn:
        raise DatasetError([Problem(message, None, str(djson))], root)

    try:
        raw = djson.read_bytes()
    except OSError as e:
        fail(f"dataset.json cannot be read ({e.strerror or e})")
    if not raw.strip():
        fail("dataset.json is empty")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark from Windows editors is harmless
    except UnicodeDecodeError as e:
        fail(f"dataset.json is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} cannot be "
             "decoded; save the file as UTF-8")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"dataset.json is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")
    if not isinstance(meta, dict):
        fail(f"dataset.json must hold a JSON object {{...}} at its top level, not {_JSON_TYPES.get(type(meta), 'that')}")
    return meta


def load_dataset(root: str | os.PathLike) -> DatasetSpec:
    """Read ``dataset.json`` and list the cases; see the module docstring for the layouts."""
    root = Path(root).expanduser().resolve()
    djson = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError([Problem("dataset folder does not exist", None, str(root))], root)
    if not djson.is_file():
        raise DatasetError([Problem("dataset.json is missing", None, str(djson))], root)
    meta = _read_dataset_json(djson, root)

    problems: list[Problem] = []
    if "channel_names" in meta and "file_ending" in meta:
        spec = _load_nnunetv2(root, meta, problems)
    elif "training" in meta and "modality" in meta:
        spec = _load_msd(root, meta, problems)
    else:
        raise DatasetError([Problem(
            "dataset.json is neither MSD (needs 'modality' and 'training') nor nnU-Net v2 "
            "(needs 'channel_names' and 'file_ending')", None, str(djson))], root)
    if not spec.cases and not any("no cases" in p.message for p in problems):
        problems.append(Problem("dataset has no training cases", None, "dataset.json"))
    ids = [c.case_id for c in spec.cases]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(Problem(f"case id appears {ids.count(dup)} times", dup, "dataset.json"))
    problems.extend(_shared_files(root, spec.cases))
    problems.extend(_link_problems(root, spec.cases))
    group_regex = meta.get("group_regex")
    if group_regex is not None:
        try:
            if re.compile(group_regex).groups < 1:
                problems.append(Problem("group_regex needs one capturing group naming the patient", None, "dataset.json"))
        except re.error as e:
            problems.append(Problem(f"group_regex is not a valid regular expression ({e})", None, "dataset.json"))
    spec.group_regex = group_regex
    spec.problems = problems
    return spec


def _shared_files(root: Path, cases: list[Case]) -> list[Problem]:
    """One file used by cases with different ids: the same scan twice, in training and validation."""
    users: dict[Path, list[str]] = {}
    for case in cases:
        for f in [*case.image_files, *([case.label_file] if case.label_file else [])]:
            ids = users.setdefault(Path(os.path.realpath(f)), [])
            if case.case_id not in ids:
                ids.append(case.case_id)
    problems = []
    for real, ids in users.items():
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            problems.append(Problem(f"the same file is used by {len(ids)} cases ({shown}); each case needs its own "
                                    "files", None, _relative(real, root)))
    return problems


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _link_problems(root: Path, cases: list[Case]) -> list[Problem]:
    """Case files that are symlinks leading out of the dataset folder, or nowhere.

    A linked ``imagesTr``/``labelsTr`` folder (data on another disk) is a deliberate setup, so a
    file link may lead anywhere inside the folder that really holds it; a link to a file elsewhere
    would read data nobody listed, and a broken link is a file that is gone.
    """
    problems = []
    for case in cases:
        for f in [*case.image_files, *([case.label_file] if case.label_file else [])]:
            if not f.is_symlink():
                continue
            target = Path(os.path.realpath(f))
            rel = _relative(f, root)
            if not target.exists():
                problems.append(Problem(f"broken symlink: it points to {os.readlink(f)}, which does not exist",
                                        case.case_id, rel))
            elif not any(_within(target, base) for base in (root, Path(os.path.realpath(f.parent)))):
                problems.append(Problem(f"symlink points outside the dataset folder, to {target}; copy the file "
                                        "in, or link the whole folder", case.case_id, rel))
    return problems


def _within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _channel_list(raw, key: str, problems: list[Problem]) -> list[str]:
    if not isinstance(raw, dict) or not raw:
        problems.append(Problem(f"'{key}' must be a non-empty object {{index: name}}", None, "dataset.json"))
        return []
    try:
        return [str(raw[k]) for k in sorted(raw, key=lambda s: int(s))]
    except ValueError:
        problems.append(Problem(f"'{key}' keys must be channel indices 0, 1, ...", None, "dataset.json"))
        return [str(v) for v in raw.values()]


def _load_msd(root: Path, meta: dict, problems: list[Problem]) -> DatasetSpec:
    channel_names = _channel_list(meta.get("modality"), "modality", problems)
    labels = _parse_labels(meta.get("labels"), name_to_value=False, problems=problems)
    cases: list[Case] = []
    training = meta.get("training")
    if not isinstance(training, list):
        problems.append(Problem("'training' must be a list of {image, label} entries", None, "dataset.json"))
        training = []
    endings = set()
    listed_images: set[Path] = set()
    listed_labels: set[Path] = set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            problems.append(Problem(f"training entry {i} has no 'image'", None, "dataset.json"))
            continue
        name = Path(str(entry["image"])).name
        case_id = _strip_ending(name)
        endings.add(_file_ending(name))
        img = _inside(root, str(entry["image"]), problems, case_id)
        lab = _inside(root, str(entry["label"]), problems, case_id) if entry.get("label") else None
        if entry.get("label") is None:
            problems.append(Problem("training entry has no 'label'", case_id, "dataset.json"))
        if img is None or (entry.get("label") and lab is None):
            continue
        listed_images.add(img)
        if lab is not None:
            listed_labels.add(lab)
        cases.append(Case(case_id, [img], lab))
    _report_unlisted(root, "imagesTr", listed_images, problems)
    _report_unlisted(root, "labelsTr", listed_labels, problems)
    ending = min(endings) if endings else ".nii.gz"
    is_2d = str(meta.get("tensorImageSize", "")).upper() == "2D" or ending.lower() in IMAGE_2D_ENDINGS
    return DatasetSpec(root, str(meta.get("name") or root.name), "msd", channel_names, labels, ending, cases, is_2d)


def _report_unlisted(root: Path, sub: str, listed: set[Path], problems: list[Problem],
                     why: str = "not listed in dataset.json 'training'") -> None:
    folder = root / sub
    if not folder.is_dir():
        return
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or _lexical(f) in listed:
            continue
        problems.append(Problem(f"extra file in {sub}/ {why}", None, str(f.relative_to(root))))


def _load_nnunetv2(root: Path, meta: dict, problems: list[Problem]) -> DatasetSpec:
    channel_names = _channel_list(meta.get("channel_names"), "channel_names", problems)
    labels = _parse_labels(meta.get("labels"), name_to_value=True, problems=problems)
    ending = str(meta["file_ending"])
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        problems.append(Problem("imagesTr/ folder is missing", None, str(images_dir)))
        return DatasetSpec(root, str(meta.get("name") or root.name), "nnunetv2", channel_names, labels, ending, [], ending.lower() in IMAGE_2D_ENDINGS)
    pattern = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")
    by_case: dict[str, dict[int, Path]] = {}
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith("."):
            continue
        m = pattern.match(f.name)
        if not m:
            problems.append(Problem(f"extra file in imagesTr/: name is not CASE_XXXX{ending}", None, str(f.relative_to(root))))
            continue
        by_case.setdefault(m.group(1), {})[int(m.group(2))] = f
    cases = []
    n_ch = len(channel_names)
    for case_id, chans in sorted(by_case.items()):
        missing = [i for i in range(n_ch) if i not in chans]
        extra = [i for i in chans if i >= n_ch]
        for i in missing:
            problems.append(Problem(f"channel file {case_id}_{i:04d}{ending} is missing", case_id, f"imagesTr/{case_id}_{i:04d}{ending}"))
        for i in extra:
            problems.append(Problem(f"channel {i} exists but dataset.json declares {n_ch} channel(s)", case_id, str(chans[i].relative_to(root))))
        label = labels_dir / f"{case_id}{ending}"
        cases.append(Case(case_id, [chans[i] for i in sorted(chans) if i < n_ch], label))
    if labels_dir.is_dir():
        known = {_lexical(c.label_file) for c in cases if c.label_file}
        _report_unlisted(root, "labelsTr", known, problems, f"has no image CASE_0000{ending} in imagesTr/")
    n_declared = meta.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(cases):
        problems.append(Problem(f"numTraining says {n_declared} but imagesTr holds {len(cases)} case(s)", None, "dataset.json"))
    is_2d = ending.lower() in IMAGE_2D_ENDINGS
    return DatasetSpec(root, str(meta.get("name") or root.name), "nnunetv2", channel_names, labels, ending, cases, is_2d)
