"""Cross-validation splits: five folds, seeded, made once per dataset and reused.

Cases of one patient (e.g. ACDC's ``patient001_frame01`` and ``patient001_frame12``) must
stay in one fold, or validation scores leak. The patient ("group") of a case id comes from,
in order: a user-given regex (``autoseg train --group-regex``, remembered in the workspace's
``grouping.json``), the raw ``dataset.json``'s ``group_regex``, else automatic detection of
ids like ``<patient>_frame01`` / ``<patient>-visit2`` / ``<patient>_ses3``. A regex's first
capturing group names the patient; a case id it does not match is its own patient.

``splits.json`` keeps nnU-Net's format, a list of ``{"train": [...], "val": [...]}``, and
``grouping.json`` records how cases were grouped, so both are readable and editable.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from autoseg.atomic import read_json, write_json
from autoseg.errors import SplitError
from autoseg.workspace import DatasetWorkspace

DEFAULT_FOLDS = 5
SPLIT_SEED = 12345
AUTO_GROUP_REGEX = r"^(.+?)[_-](?:frame|time|tp|timepoint|visit|scan|ses|session|phase)[_-]?\d+$"


def case_groups(case_ids: list[str], group_regex: str | None = None) -> dict[str, str]:
    """Map each case id to its patient; ``group_regex=None`` uses automatic detection."""
    if group_regex is None:
        pattern = re.compile(AUTO_GROUP_REGEX, re.IGNORECASE)
    else:
        try:
            pattern = re.compile(group_regex)
        except re.error as e:
            raise SplitError(f"group regex '{group_regex}' is not a valid regular expression ({e})") from None
        if pattern.groups < 1:
            raise SplitError(f"group regex '{group_regex}' needs one capturing group naming the patient")
    groups = {}
    for cid in case_ids:
        m = pattern.search(cid)
        groups[cid] = m.group(1) if m and m.group(1) else cid
    return groups


def make_splits(case_ids: list[str], groups: dict[str, str] | None = None, n_folds: int = DEFAULT_FOLDS,
                seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """Group-aware k-fold: patients are shuffled (seeded) and each goes to the fold with fewest cases.

    With fewer patients than ``n_folds`` there are as many folds as patients (so VerSe_sample's
    4 cases give 4 folds); with a single patient there is no split at all (an empty list).
    """
    groups = groups or {c: c for c in case_ids}
    members: dict[str, list[str]] = {}
    for cid in sorted(case_ids):
        members.setdefault(groups.get(cid, cid), []).append(cid)
    names = sorted(members)
    n_folds = min(n_folds, len(names))
    if n_folds < 2:
        return []
    random.Random(seed).shuffle(names)
    # Larger patients first so the greedy fill balances fold sizes; the shuffle breaks ties.
    names.sort(key=lambda g: -len(members[g]))
    fold_cases: list[list[str]] = [[] for _ in range(n_folds)]
    for g in names:
        k = min(range(n_folds), key=lambda i: (len(fold_cases[i]), i))
        fold_cases[k].extend(members[g])
    all_ids = sorted(case_ids)
    splits = []
    for k in range(n_folds):
        val = sorted(fold_cases[k])
        val_set = set(val)
        splits.append({"train": [c for c in all_ids if c not in val_set], "val": val})
    return splits


def _dataset_json_group_regex(ws: DatasetWorkspace) -> str | None:
    """``group_regex`` from the raw dataset.json that this workspace was made from, if any."""
    if not ws.source_file.is_file():
        return None
    raw = read_json(ws.source_file).get("raw_path")
    if not raw:
        return None
    djson = Path(raw) / "dataset.json"
    if not djson.is_file():
        return None
    try:
        return read_json(djson).get("group_regex")
    except ValueError:
        return None


def grouping_file(ws: DatasetWorkspace) -> Path:
    return ws.root / "grouping.json"


def load_or_create_splits(ws: DatasetWorkspace, case_ids: list[str], group_regex: str | None = None,
                          n_folds: int = DEFAULT_FOLDS) -> list[dict[str, list[str]]]:
    """Read ``splits.json``, or make and write it (with ``grouping.json``) on first use.

    Once splits exist they are reused as they are, so every configuration and trainer is
    cross-validated on the same folds; a ``group_regex`` different from the stored one is an
    error rather than a silent re-split.
    """
    gfile = grouping_file(ws)
    stored = read_json(gfile) if gfile.is_file() else None
    if stored is not None and group_regex is not None and stored.get("group_regex") != group_regex:
        raise SplitError(
            f"{gfile} records group regex {stored.get('group_regex')!r}, not {group_regex!r}; "
            f"delete {ws.splits_file} and {gfile} to split again with the new regex")
    if ws.splits_file.is_file():
        splits = read_json(ws.splits_file)
        known = {c for s in splits for c in s["train"] + s["val"]}
        missing = sorted(set(case_ids) - known)
        if splits and missing:
            raise SplitError(
                f"{ws.splits_file} does not list {len(missing)} preprocessed case(s) (e.g. {missing[0]}); "
                "delete it to make new splits")
        return splits
    source = "option"
    if group_regex is None:
        group_regex = _dataset_json_group_regex(ws)
        source = "dataset.json"
    if group_regex is None:
        source = "automatic"
    groups = case_groups(case_ids, group_regex)
    splits = make_splits(case_ids, groups, n_folds)
    write_json(gfile, {
        "group_regex": group_regex if source != "automatic" else None,
        "source": source,
        "automatic_regex": AUTO_GROUP_REGEX if source == "automatic" else None,
        "n_groups": len(set(groups.values())),
        "groups": groups,
    })
    write_json(ws.splits_file, splits)
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: int | str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) case ids of ``fold``; ``"all"`` trains on every case and validates on them too."""
    if str(fold) == "all":
        return sorted(case_ids), sorted(case_ids)
    k = int(fold)
    if not splits:
        raise SplitError(f"only {len(case_ids)} case(s)/patient(s): too few to cross-validate; train fold 'all'")
    if not 0 <= k < len(splits):
        raise SplitError(f"fold {k} does not exist: this dataset has {len(splits)} folds (0-{len(splits) - 1})"
                         + (" because it has fewer patients than 5" if len(splits) < DEFAULT_FOLDS else "")
                         + ", or train fold 'all'")
    return list(splits[k]["train"]), list(splits[k]["val"])
