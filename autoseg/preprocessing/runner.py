"""Preprocess a whole dataset into ``<workspace>/<dataset>/preprocessed/<data_identifier>/``.

Per case and data identifier three files are written, each atomically: ``CASE.npy``
(float32 data), ``CASE_seg.npy`` (int16 class indices) and ``CASE.json`` (properties),
the JSON last: its presence marks the case done. A rerun skips done cases, so a killed
run resumes where it stopped; leftovers of interrupted writes (``.partial-*``) are
removed first.

Arrays are plain ``.npy`` so training can ``np.load(path, mmap_mode="r")`` and read a
random patch without loading the volume; documentation/preprocessing.md has the
measurements against blosc2 behind that choice.

Each case's files are read once, whatever the number of configurations: all data
identifiers of a case are produced by the same worker from the same arrays.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.atomic import atomic_path, remove_partials, write_json
from autoseg.dataset.imageio import Geometry, read_image, read_label
from autoseg.dataset.layout import Case, DatasetSpec
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.pipeline import preprocess_case
from autoseg.workspace import DatasetWorkspace


def read_case_image(image_files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, Geometry]:
    """Read a case's channel files into one float32 ``(C, Z, Y, X)`` array; geometry of the first."""
    arrays, geometry = [], None
    for f in image_files:
        arr, geo = read_image(f)
        arrays.append(arr.astype(np.float32, copy=False))
        geometry = geometry or geo
    if len({a.shape[1:] for a in arrays}) > 1:
        raise ValueError(f"channel files {[str(f) for f in image_files]} have different shapes {[a.shape[1:] for a in arrays]}")
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return image, geometry


def case_files(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    """``CASE.npy``, ``CASE_seg.npy``, ``CASE.json`` in a preprocessed folder."""
    return folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy", folder / f"{case_id}.json"


def is_case_done(folder: Path, case_id: str, has_label: bool = True) -> bool:
    data, seg, props = case_files(folder, case_id)
    return props.is_file() and data.is_file() and (seg.is_file() or not has_label)


def write_properties(path: Path, properties: dict) -> None:
    """Write a case's properties; ``class_locations`` goes on compact lines.

    ``json.dump`` with ``indent`` falls back to the pure-Python encoder, which takes ~60 ms
    for 20,000 coordinates; the C encoder used for the compact part takes ~2 ms.
    """
    head = {k: v for k, v in properties.items() if k != "class_locations"}
    text = json.dumps(head, indent=1)
    if "class_locations" in properties:
        locations = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in properties["class_locations"].items())
        text = text[:-2] + ',\n "class_locations": {\n' + locations + "\n }\n}"
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


SETTINGS_FILE = "preprocessing_settings.json"


def preprocessing_settings(plans: Plans, config: ConfigurationPlan, n4: bool) -> dict:
    """Everything that determines a data identifier's files, besides the raw data itself."""
    return {
        "label_values": list(plans.label_values),
        "normalization": [asdict(n) for n in plans.normalization],
        "spacing": list(config.spacing),
        "dim": config.dim,
        "resampling": asdict(config.resampling),
        "n4": bool(n4),
    }


def _invalidate_if_settings_changed(folder: Path, settings: dict) -> None:
    """Done cases made with other settings (new plans, ``--n4`` toggled) must not be reused."""
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old == settings:
            return
    stale = [p for p in folder.iterdir() if p.suffix in (".npy", ".json") and p.name != SETTINGS_FILE]
    if stale:
        why = "preprocessing settings changed" if path.is_file() else "no record of the settings its files were made with"
        print(f"{folder.name}: {why}; removing {len(stale)} old file(s) and recomputing")
    for p in stale:
        p.unlink()
    write_json(path, settings)


@dataclass
class _Job:
    case: Case
    outputs: list[tuple[str, Path]]  # (configuration name, folder) per data identifier still to do


# Per-worker state set once by the pool initializer, so plans are not pickled per task.
_STATE: dict = {}


def _init_worker(plans_dict: dict, n4: bool) -> None:
    _STATE["plans"] = Plans.from_dict(plans_dict)
    _STATE["n4"] = n4


def _process(job: _Job) -> str:
    plans: Plans = _STATE["plans"]
    case = job.case
    try:
        image, geometry = read_case_image(case.image_files)
        label = read_label(case.label_file)[0] if case.label_file is not None else None
        if _STATE["n4"]:
            from autoseg.preprocessing.bias_field import correct_mri_channels

            image = correct_mri_channels(image, geometry.spacing, plans.channel_names, [n.scheme for n in plans.normalization])
        for config_name, folder in job.outputs:
            config: ConfigurationPlan = plans.configurations[config_name]
            data, seg, properties = preprocess_case(image, label, geometry, plans, config, case_id=case.case_id,
                                                    bias_field_corrected=_STATE["n4"])
            data_path, seg_path, props_path = case_files(folder, case.case_id)
            _save_npy(data_path, data)
            if seg is not None:
                _save_npy(seg_path, seg)
            write_properties(props_path, properties)  # last: marks the case done
    except Exception as e:
        raise RuntimeError(f"preprocessing case {case.case_id} failed: {type(e).__name__}: {e}") from e
    return case.case_id


def preprocess_dataset(
    spec: DatasetSpec,
    plans: Plans,
    configurations: Sequence[str],
    workspace: DatasetWorkspace,
    num_workers: int,
    n4: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Preprocess every case for each distinct data identifier of ``configurations``.

    Returns, per data identifier, how many cases were (re)computed; done cases are skipped.
    """
    from tqdm import tqdm

    identifiers: dict[str, str] = {}  # data identifier -> the configuration that produces it
    # a 3D configuration produces shared data: it needs its exact target spacing, while a 2D
    # network trained on slices of that volume is indifferent to how z was sampled
    for name in sorted(configurations, key=lambda n: -plans.configuration(n).dim):
        identifiers.setdefault(plans.configuration(name).data_identifier, name)
    folders = {ident: workspace.preprocessed_dir(ident) for ident in identifiers}
    for ident, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        remove_partials(folder)
        _invalidate_if_settings_changed(folder, preprocessing_settings(plans, plans.configurations[identifiers[ident]], n4))

    jobs: list[_Job] = []
    counts = {ident: 0 for ident in identifiers}
    for case in spec.cases:
        todo = [(identifiers[i], f) for i, f in folders.items() if not is_case_done(f, case.case_id, case.label_file is not None)]
        for name, _ in todo:
            counts[plans.configurations[name].data_identifier] += 1
        if todo:
            jobs.append(_Job(case, todo))
    if not jobs:
        return counts

    plans_dict = plans.to_dict()
    workers = max(1, min(int(num_workers), len(jobs)))
    if workers == 1:
        _init_worker(plans_dict, n4)
        for job in tqdm(jobs, desc="preprocessing", unit="case", disable=not progress):
            _process(job)
        return counts
    chunksize = max(1, min(8, len(jobs) // (workers * 4)))
    # fork: workers start in milliseconds and inherit the imported modules; the pool is made
    # before tqdm starts its monitor thread
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(plans_dict, n4)) as pool:
        with tqdm(total=len(jobs), desc="preprocessing", unit="case", disable=not progress) as bar:
            for _ in pool.imap_unordered(_process, jobs, chunksize=chunksize):
                bar.update()
    return counts
