"""A raw dataset to a planned, preprocessed workspace: verify, fingerprint, plan, preprocess.

``autoseg plan-and-preprocess`` and ``autoseg run`` (a whole study) both start here.
Nothing is written before the dataset has passed the integrity check, so a broken dataset
never leaves a half-made workspace. Preprocessing resumes: cases already done are skipped.

With ``reuse_plans`` an existing ``plans.json`` is kept instead of planned again: a study that
resumes must train every fold on the plans its first folds were trained on, and a user may have
edited the file by hand.

One ``plan-and-preprocess`` per dataset at a time: it holds ``<dataset>/.preprocess.lock`` from its
first write to its last, and refuses to start while another holds it or, when it would plan
again, while a fold of the dataset is being trained on the plans it would replace.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.atomic import read_json, write_json
from autoseg.dataset.layout import DatasetSpec, load_dataset
from autoseg.errors import BusyError, DatasetError, UserError
from autoseg.locks import PREPROCESS_LOCK, STUDY_LOCK, LockBusy, file_lock, lock_holder
from autoseg.planners.plans import Plans
from autoseg.preprocessing.preprocessed import PreprocessedFolder
from autoseg.workspace import DatasetWorkspace


@dataclass
class PreparedDataset:
    """What :func:`plan_and_preprocess` made (or found) for one dataset."""

    spec: DatasetSpec
    workspace: DatasetWorkspace
    plans: Plans
    configurations: list[str]  # the configurations whose data was preprocessed
    counts: dict[str, int] = field(default_factory=dict)  # data identifier -> cases preprocessed by this call
    reused_plans: bool = False
    verified: bool = True  # False: every case was preprocessed already, so the check was not repeated

    def describe(self) -> list[str]:
        """The lines ``plan-and-preprocess`` prints about the dataset and its plans."""
        spec, plans = self.spec, self.plans
        lines = [(f"{spec.name}: {len(spec.cases)} cases, {len(plans.channel_names)} channel(s) "
                  f"{plans.channel_names}, label values {plans.label_values}, profile {plans.profile}")]
        for name, config in plans.configurations.items():
            spacing = "x".join(f"{s:.3g}" for s in config.spacing)
            patch = "x".join(str(s) for s in config.patch_size)
            mark = "" if name in self.configurations else "  (not preprocessed)"
            lines.append(f"  {name:<11} spacing {spacing} mm, patch {patch}, batch {config.batch_size}, "
                         f"{config.network.n_stages} stages{mark}")
        return lines

    def preprocessing_lines(self) -> list[str]:
        lines = []
        for ident, n in self.counts.items():
            skipped = len(self.spec.cases) - n
            extra = f" ({skipped} already done)" if skipped else ""
            lines.append(f"preprocessed {n} case(s) into {self.workspace.preprocessed_dir(ident)}{extra}")
        return lines


def _check_configurations(plans: Plans, configurations: Sequence[str] | None) -> list[str]:
    selected = list(configurations or plans.configurations)
    unknown = [c for c in selected if c not in plans.configurations]
    if unknown:
        raise UserError(f"configuration(s) {', '.join(unknown)} not planned; planned: {', '.join(plans.configurations)}")
    return selected


def _all_preprocessed(spec: DatasetSpec, plans: Plans, configurations: Sequence[str], ws: DatasetWorkspace) -> bool:
    folders = {plans.configuration(c).data_identifier for c in configurations}
    return all(PreprocessedFolder(ws.preprocessed_dir(ident)).is_done(case.case_id, case.label_file is not None)
               for ident in folders for case in spec.cases)


def _reusable_plans(ws: DatasetWorkspace, spec: DatasetSpec) -> Plans | None:
    if not (ws.plans_file.is_file() and ws.source_file.is_file()):
        return None
    source = read_json(ws.source_file).get("raw_path")
    if source is not None and Path(source).resolve() != Path(spec.root).resolve():
        raise UserError(f"{ws.root} was made from {source}, not {spec.root}; choose another dataset name "
                        "(--name) or workspace")
    try:
        return Plans.load(ws.plans_file)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ws.plans_file}: cannot be read ({type(e).__name__}: {e}); delete it to plan again") from None


def plan_and_preprocess(
    dataset: str | os.PathLike,
    workspace: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    num_workers: int = 1,
    planner: str = "default",
    gpu_memory_gb: float = 8.0,
    profile: str = "auto",
    configurations: Sequence[str] | None = None,
    force_hybrid: bool = False,
    n4: bool = False,
    plan_only: bool = False,
    reuse_plans: bool = False,
    progress: bool = True,
    on_planned: Callable[[PreparedDataset], None] | None = None,
) -> PreparedDataset:
    """Verify the raw ``dataset`` folder, write its fingerprint and plans into the workspace and
    preprocess ``configurations`` (default: every planned one); see the module docstring.
    ``on_planned`` is called once the plans are known, before the (long) preprocessing.

    Raises :class:`~autoseg.errors.DatasetError` listing every problem of a broken dataset,
    before anything is written.
    """
    from autoseg.dataset.integrity import verify_dataset

    if num_workers < 1:
        raise UserError(f"-np must be at least 1, got {num_workers}")
    spec = load_dataset(dataset)
    ws = DatasetWorkspace.create(workspace, name or Path(spec.root).name)
    plans = _reusable_plans(ws, spec) if reuse_plans else None
    refuse_if_busy(ws, planning=plans is None)  # before the check, which reads every image
    if plans is not None:
        selected = _check_configurations(plans, configurations)
        # re-reading every image only to find what the first run found costs minutes on a large
        # dataset; a case that is not preprocessed yet (one added since) is checked
        verified = not _all_preprocessed(spec, plans, selected, ws)
        if verified:
            problems = verify_dataset(spec, num_workers)
            if problems:
                raise DatasetError(problems, spec.root)
    else:
        planner_cls = _planner_class(planner, force_hybrid)
        problems = verify_dataset(spec, num_workers)
        if problems:
            raise DatasetError(problems, spec.root)
    with preprocess_lock(ws):  # taken only now: a dataset that fails its check leaves no workspace
        if plans is None:
            refuse_if_training(ws)  # again: a training may have started during the check
        if plans is not None:
            prepared = PreparedDataset(spec, ws, plans, selected, reused_plans=True, verified=verified)
        else:
            prepared = _plan(spec, ws, num_workers, planner_cls, gpu_memory_gb, profile, configurations, force_hybrid, n4)
        if on_planned is not None:
            on_planned(prepared)
        if plan_only:
            return prepared

        from autoseg.preprocessing.runner import preprocess_dataset

        prepared.counts = preprocess_dataset(spec, prepared.plans, prepared.configurations, ws, num_workers,
                                             n4=prepared.plans.n4_bias_correction, progress=progress)
    return prepared


def preprocessing_holder(ws: DatasetWorkspace) -> str | None:
    """Who is planning or preprocessing the dataset now (pid, host, since, command), or None."""
    return lock_holder(ws.root / PREPROCESS_LOCK)


def refuse_if_busy(ws: DatasetWorkspace, planning: bool) -> None:
    """Raise :class:`BusyError` naming the holder while another process preprocesses the dataset or,
    when ``planning`` (plans.json is to be written again), while a study or a fold trains on it."""
    holder = preprocessing_holder(ws)
    if holder is not None:
        raise BusyError(f"plan-and-preprocess is already running on {ws.root} ({holder}); wait for it")
    if planning:
        refuse_if_training(ws)


def refuse_if_training(ws: DatasetWorkspace) -> None:
    """Raise :class:`BusyError` naming the holder while a study or a fold trains on the dataset."""
    for lock in [ws.root / STUDY_LOCK, *sorted(ws.root.glob("results/*/.fold_*.lock"))]:
        holder = lock_holder(lock)
        if holder is not None:
            what = "an 'autoseg run' study" if lock.name == STUDY_LOCK else f"{lock.parent.name} {lock.stem[1:]}"
            raise BusyError(f"{what} is training on {ws.root} ({holder}); planning again would replace the plans "
                            "it trains on: wait for it or stop it")


@contextlib.contextmanager
def preprocess_lock(ws: DatasetWorkspace) -> Iterator[None]:
    """Hold the dataset's preprocessing lock, or raise :class:`BusyError` naming its holder."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(ws.root / PREPROCESS_LOCK, wait=False))
        except LockBusy as e:
            raise BusyError(f"plan-and-preprocess is already running on {ws.root} ({e.holder}); wait for it") from None
        yield


def _planner_class(planner: str, force_hybrid: bool) -> type:
    """The planner ``planner`` names, checked to take ``force_hybrid`` if asked (before anything is written)."""
    from autoseg.planners import get_planner

    planner_cls = get_planner(planner)
    if force_hybrid and "force_hybrid" not in inspect.signature(planner_cls).parameters:
        raise UserError(f"--hybrid: planner '{planner}' has no force_hybrid option")
    return planner_cls


def _plan(spec: DatasetSpec, ws: DatasetWorkspace, num_workers: int, planner_cls: type, gpu_memory_gb: float,
          profile: str, configurations: Sequence[str] | None, force_hybrid: bool, n4: bool) -> PreparedDataset:
    from autoseg.fingerprint.fingerprint import compute_fingerprint

    options = {"force_hybrid": True} if force_hybrid else {}
    ws.root.mkdir(parents=True, exist_ok=True)
    write_json(ws.source_file, {"raw_path": str(spec.root), "layout": spec.layout})
    fingerprint = compute_fingerprint(spec, num_workers)
    fingerprint.save(ws.fingerprint_file)
    plans = planner_cls(fingerprint, gpu_memory_gb=gpu_memory_gb, profile=profile, **options).plan()
    plans.n4_bias_correction = bool(n4)
    plans.save(ws.plans_file)
    return PreparedDataset(spec, ws, plans, _check_configurations(plans, configurations))
