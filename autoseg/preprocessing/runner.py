"""Preprocess a whole dataset into ``<workspace>/<dataset>/preprocessed/<data_identifier>/``.

Per case and data identifier three files are written, each atomically, the properties last
(:class:`~autoseg.preprocessing.preprocessed.PreprocessedFolder`). A rerun skips done cases,
so a killed run resumes where it stopped; leftovers of interrupted writes (``.partial-*``)
are removed first. documentation/preprocessing.md has the measurements against blosc2
behind plain ``.npy``.

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

from autoseg.atomic import remove_partials, write_json
from autoseg.dataset.imageio import read_channels, read_label
from autoseg.dataset.layout import Case, DatasetSpec
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.pipeline import preprocess_case
from autoseg.preprocessing.preprocessed import SETTINGS_FILE, PreprocessedFolder
from autoseg.workspace import DatasetWorkspace


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
        image, geometry = read_channels(case.image_files)
        label = read_label(case.label_file)[0] if case.label_file is not None else None
        if _STATE["n4"]:
            from autoseg.preprocessing.bias_field import correct_mri_channels

            image = correct_mri_channels(image, geometry.spacing, plans.channel_names, [n.scheme for n in plans.normalization])
        for config_name, folder in job.outputs:
            config: ConfigurationPlan = plans.configurations[config_name]
            data, seg, properties = preprocess_case(image, label, geometry, plans, config, case_id=case.case_id,
                                                    bias_field_corrected=_STATE["n4"])
            PreprocessedFolder(folder).write_case(case.case_id, data, seg, properties)
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
        todo = [(identifiers[i], f) for i, f in folders.items() if not PreprocessedFolder(f).is_done(case.case_id, case.label_file is not None)]
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
