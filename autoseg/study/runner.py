"""A whole study as one resumable call: plan and preprocess, train every selected configuration x
fold as independent jobs on an executor, find the best configuration, optionally predict.

Every step resumes: preprocessing skips finished cases, the plans of an earlier run are kept, a
fold with ``done.json`` is skipped and a fold with a checkpoint continues from it. So rerunning
the same call after a crash, a kill or a pre-emption finishes the study without redoing work.
Progress is in ``<dataset workspace>/study_status.json`` (rewritten on every job change) and a
bar over the jobs; the result in ``study_summary.json`` (schemas: documentation/study.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from autoseg.atomic import read_json, write_json
from autoseg.checkpoint import DONE
from autoseg.errors import UserError
from autoseg.locks import STUDY_LOCK, LockBusy, file_lock
from autoseg.study.executors import Executor, JobResult, LocalExecutor
from autoseg.study.jobs import TrainJob, is_done
from autoseg.study.status import JobStatus, StudyStatus, format_duration, timestamp
from autoseg.workspace import DatasetWorkspace, workspace_root

DEFAULT_FOLDS = [0, 1, 2, 3, 4]
STATUS_FILE = "study_status.json"
SUMMARY_FILE = "study_summary.json"
RUN_PLAN_FILE = "run_plan.json"
LOG_DIR = "study_logs"


@dataclass
class StudyOptions:
    """What to run and how; ``None`` means the default written beside each field."""

    configurations: list[str] | None = None  # None: every planned configuration
    trainers: list[str] | None = None  # None: each configuration's planned trainer
    folds: list[int] | None = None  # None: 0-4
    epochs: int | None = None  # None: the trainer's defaults
    iters_per_epoch: int | None = None
    val_iters: int | None = None
    fold_minutes: float | None = None  # wall-clock budget of each fold (training + validation)
    time_budget: str | float | None = None  # budget of the whole study ("2h", "90m", minutes): autoseg.study.budget
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    num_workers: int = 1  # preprocessing processes
    planner: str = "default"
    profile: str = "auto"
    gpu_memory_gb: float = 8.0
    name: str | None = None  # dataset name in the workspace (default: the raw folder's name)
    predict: tuple[str, str] | None = None  # (input folder, output folder) to segment with the chosen model
    progress: bool = True

    def validate(self) -> None:
        """Every option a user can get wrong, checked before any long work."""
        for flag, value in (("--epochs", self.epochs), ("--iters-per-epoch", self.iters_per_epoch)):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        if self.val_iters is not None and self.val_iters < 0:
            raise UserError(f"--val-iters must be at least 0, got {self.val_iters}")
        if self.time_budget is not None and self.fold_minutes is not None:
            raise UserError("--time-budget and --fold-minutes: give one; the study's budget sets each fold's minutes")
        if self.time_budget is not None and self.trainers is not None:
            # the budget's estimates are of each configuration's planned trainer, one per configuration
            raise UserError("--time-budget plans each configuration's planned trainer; with --trainers give "
                            "--fold-minutes instead")
        if self.fold_minutes is not None and not self.fold_minutes > 0:
            raise UserError(f"the per-fold time budget must be positive, got {self.fold_minutes}")
        if self.num_workers < 1:
            raise UserError(f"-np must be at least 1, got {self.num_workers}")
        if self.folds is not None:
            bad = [k for k in self.folds if not 0 <= int(k) <= 4]
            if bad or not self.folds:
                raise UserError(f"--folds: folds are 0-4, got {' '.join(map(str, self.folds)) or 'none'}")
            if len(set(self.folds)) != len(self.folds):
                raise UserError(f"--folds: fold listed twice in {' '.join(map(str, self.folds))}")
        for flag, values in (("--configurations", self.configurations), ("--trainers", self.trainers)):
            if values is not None and len(set(values)) != len(values):
                raise UserError(f"{flag}: a name is listed twice in {' '.join(values)}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise UserError(f"--device {self.device}: choose auto, cpu, cuda or mps")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"--precision {self.precision}: choose auto, fp32, bf16 or fp16")
        if self.predict is not None:
            source, target = (Path(p).expanduser() for p in self.predict)
            if not source.is_dir():
                raise UserError(f"--predict: input folder {source} does not exist")
            if source.resolve() == target.resolve():
                raise UserError("--predict: the output folder must differ from the input folder")


@dataclass
class StudySummary:
    """``study_summary.json``: how the study ended, the chosen model and where everything is."""

    dataset: str
    workspace: str  # the dataset's workspace folder
    status: str  # "finished" or "failed"
    started: str
    ended: str
    elapsed_s: float
    executor: str
    jobs: dict[str, int]  # state -> number of jobs
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"name", "error", "log"} per failed job
    message: str | None = None
    selected: str | None = None  # the chosen configuration or ensemble, e.g. "unet__3d_fullres"
    selected_models: list[str] = field(default_factory=list)  # its model folders
    folds: list[int] = field(default_factory=list)
    cv_dice: float | None = None  # cross-validated mean foreground Dice after its postprocessing
    cv_dice_raw: float | None = None  # ... before postprocessing
    postprocessing: dict | None = None
    best_configuration: str | None = None  # best_configuration.json
    report: str | None = None  # find_best_report.md
    results: list[str] = field(default_factory=list)  # every model folder the study trained
    predictions: str | None = None
    predicted_cases: int | None = None
    status_file: str | None = None
    run_plan: str | None = None  # run_plan.json, with --time-budget

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudySummary":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StudySummary":
        return cls.from_dict(read_json(path))

    def lines(self) -> list[str]:
        """What ``autoseg run`` prints at the end."""
        counts = ", ".join(f"{n} {state}" for state, n in self.jobs.items() if n)
        out = [f"study {self.status} in {format_duration(self.elapsed_s)}: jobs {counts or 'none'}"]
        if self.message:
            out.append(f"  {self.message}")
        for f in self.failed:
            out.append(f"  FAILED {f['name']}: {f['error']}" + (f" (log: {f['log']})" if f.get("log") else ""))
        if self.selected:
            dice = f"{self.cv_dice:.4f}" if self.cv_dice is not None else "?"
            raw = f" ({self.cv_dice_raw:.4f} before postprocessing)" if self.cv_dice_raw is not None else ""
            out.append(f"  chosen model       {self.selected}, folds {' '.join(map(str, self.folds))}, "
                       f"cross-validation Dice {dice}{raw}")
            for m in self.selected_models:
                out.append(f"  model folder       {m}")
            out.append(f"  selection, report  {self.best_configuration}, {self.report}")
        if self.predictions:
            out.append(f"  predictions        {self.predictions} ({self.predicted_cases} case(s))")
        if self.run_plan:
            out.append(f"  time-budget plan   {self.run_plan}")
        out.append(f"  status, summary    {self.status_file}, {Path(self.workspace) / SUMMARY_FILE}")
        return out


# ----------------------------------------------------------------------------- helpers


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def resolve_raw_dataset(raw_or_name: str | os.PathLike, workspace: str | os.PathLike | None,
                        name: str | None) -> Path:
    """The raw dataset folder: ``raw_or_name`` itself, or the one a workspace dataset was made from."""
    p = Path(raw_or_name).expanduser()
    if p.is_dir():
        return p
    ws = DatasetWorkspace.create(workspace, name or str(raw_or_name))
    if ws.source_file.is_file():
        raw = Path(read_json(ws.source_file)["raw_path"])
        if not raw.is_dir():
            raise UserError(f"{ws.source_file}: its raw dataset folder {raw} no longer exists")
        return raw
    raise UserError(f"{raw_or_name}: neither a raw dataset folder nor a dataset in the workspace {workspace_root(workspace)}")


@contextlib.contextmanager
def study_lock(ws: DatasetWorkspace) -> Iterator[None]:
    """One study per dataset at a time: a second would train the same folds."""
    try:
        with file_lock(ws.root / STUDY_LOCK, wait=False):
            yield
    except LockBusy as e:
        raise UserError(f"another 'autoseg run' ({e.holder}) is working on {ws.root}; wait for it or stop it") from None


def _absolute_trainer(spec: str) -> str:
    """A ``file.py:Class`` trainer as an absolute path: jobs may run in another folder or on another node."""
    module, sep, attr = spec.rpartition(":")
    if sep and (module.endswith(".py") or "/" in module or "\\" in module):
        return f"{Path(module).expanduser().resolve()}:{attr}"
    return spec


def _trainer_fits(trainer: str, dim: int) -> bool:
    from autoseg.trainers.registry import BUILTIN_TRAINERS

    builtin = BUILTIN_TRAINERS.get(trainer)
    return builtin is None or f"{dim}d" in builtin.dims


def build_jobs(ws: DatasetWorkspace, plans: Any, configurations: Sequence[str], trainers: Sequence[str] | None,
               folds: Sequence[int], options: StudyOptions, fold_minutes: float | None) -> list[TrainJob]:
    """Every (configuration, trainer, fold) to train; a built-in trainer is paired only with the
    configurations of its dimension."""
    from autoseg.trainers.registry import get_trainer

    classes: dict[str, Any] = {}

    def results_name(spec: str) -> str:
        if spec not in classes:
            classes[spec] = get_trainer(spec)  # an unknown name fails here, before any training
        return classes[spec].results_name()

    for spec in trainers or []:
        results_name(spec)
    jobs, used, left_out = [], set(), []
    for c in configurations:
        config = plans.configuration(c)
        for spec in trainers or [config.trainer]:
            if not _trainer_fits(spec, config.dim):
                left_out.append(f"{spec} x {c}")
                continue
            used.add(spec)
            absolute = _absolute_trainer(spec)
            for k in folds:
                jobs.append(TrainJob(
                    workspace_root=str(ws.root), trainer=absolute, trainer_name=results_name(spec), configuration=c,
                    fold=int(k), epochs=options.epochs, iters_per_epoch=options.iters_per_epoch,
                    val_iters=options.val_iters, time_budget_min=fold_minutes, device=options.device,
                    precision=options.precision, seed=options.seed))
    unused = [t for t in trainers or [] if t not in used]
    if unused:
        raise UserError(f"--trainers: {', '.join(unused)} train(s) none of the configurations {', '.join(configurations)}")
    if left_out:
        _say(f"not trained (the trainer does not train that dimension): {', '.join(left_out)}")
    return jobs


# ----------------------------------------------------------------------------- the study


class _Progress:
    """The study's status file, job lines and bar, kept in step with the executor's updates."""

    def __init__(self, status: StudyStatus, status_file: Path, executor: Executor, todo: list[int],
                 progress: bool) -> None:
        from tqdm import tqdm

        self.status, self.file = status, status_file
        self.todo = todo  # the executor's job index -> index in status.jobs
        self.slots = executor.slots_for(len(todo))
        self.bar = tqdm(total=len(todo), desc="study", unit="job", disable=None if progress else True,
                        dynamic_ncols=True, file=sys.stderr)

    def save(self) -> None:
        self.status.refresh(self.slots)
        self.status.save(self.file)

    def __call__(self, r: JobResult) -> None:
        j = self.status.jobs[self.todo[r.index]]
        j.state = r.status
        j.executor_id = r.executor_id or j.executor_id
        if r.started is not None:
            j.started, j.started_at = timestamp(r.started), r.started
        if r.status == "running":
            _say(f"started  {j.name}" + (f" (log: {j.log})" if j.log else ""))
        else:
            j.ended = timestamp(r.ended)
            j.elapsed_s = None if r.elapsed_s is None else round(r.elapsed_s, 1)
            j.error = r.error
            j.mean_dice = r.result.get("mean_dice")
            j.resumed = bool(r.result.get("resumed"))
            took = format_duration(r.elapsed_s)
            if r.status == "done":
                dice = f", validation Dice {j.mean_dice:.4f}" if j.mean_dice is not None else ""
                _say(f"done     {j.name} in {took}{dice}" + (", resumed from its checkpoint" if j.resumed else ""))
            elif r.status == "skipped":
                _say(f"skipped  {j.name}: {r.result.get('reason', 'already done')}")
            else:
                _say(f"FAILED   {j.name} after {took}: {r.error}" + (f" (log: {j.log})" if j.log else ""))
            self.bar.update(1)
        self.save()
        c = self.status.counts
        self.bar.set_postfix_str(f"{c['running']} running, {c['failed']} failed, "
                                 f"ETA {format_duration(self.status.estimated_remaining_s)}")

    def close(self) -> None:
        self.bar.close()


def _time_budget(options: StudyOptions):
    try:
        from autoseg.study import budget
    except ImportError as e:
        if e.name not in ("autoseg.study.budget", None):
            raise
        raise UserError("--time-budget: autoseg.study.budget is missing from this installation") from None
    value = options.time_budget
    return budget, (float(value) if isinstance(value, (int, float)) else budget.parse_duration(str(value)))


def run_study(raw_or_name: str | os.PathLike, workspace: str | os.PathLike | None,
              options: StudyOptions | None = None, executor: Executor | None = None) -> StudySummary:
    """Run (or resume) the whole study of one dataset; see the module docstring.

    ``raw_or_name``: the raw dataset folder, or the name of a dataset already in the workspace.
    Returns the summary (also written to ``study_summary.json``); ``summary.status`` is
    ``"failed"`` when a job failed, and find-best then does not run. Bad options raise
    :class:`~autoseg.errors.UserError` before any long work.
    """
    from autoseg.preprocessing.plan_and_preprocess import plan_and_preprocess

    options = options or StudyOptions()
    executor = executor or LocalExecutor()
    options.validate()
    budget = budget_min = None
    if options.time_budget is not None:
        budget, budget_min = _time_budget(options)
        if not budget_min > 0:
            raise UserError(f"--time-budget must be positive, got {options.time_budget}")
    raw = resolve_raw_dataset(raw_or_name, workspace, options.name)
    started = time.time()

    def planned(prepared) -> None:
        if prepared.reused_plans:
            _say(f"using the plans in {prepared.workspace.plans_file} (planned by an earlier run)")
        for line in prepared.describe():
            _say(line)

    prepared = plan_and_preprocess(raw, workspace, name=options.name, num_workers=options.num_workers,
                                   planner=options.planner, gpu_memory_gb=options.gpu_memory_gb, profile=options.profile,
                                   configurations=options.configurations, reuse_plans=True, progress=options.progress,
                                   on_planned=planned)
    ws, plans = prepared.workspace, prepared.plans
    for line in prepared.preprocessing_lines():
        _say(line)

    with study_lock(ws):
        return _train_and_select(ws, plans, prepared.configurations, options, executor, budget, budget_min, started)


def _train_and_select(ws: DatasetWorkspace, plans: Any, configurations: list[str], options: StudyOptions,
                      executor: Executor, budget: Any, budget_min: float | None, started: float) -> StudySummary:
    folds = list(options.folds if options.folds is not None else DEFAULT_FOLDS)
    fold_minutes = options.fold_minutes
    run_plan_file = None
    if budget is not None:
        slots = executor.slots_for(len(configurations) * len(folds))
        # the budget is for the whole study: what planning and preprocessing took is spent
        remaining = budget_min - (time.time() - started) / 60.0
        if remaining <= 0:
            raise UserError(f"--time-budget {options.time_budget}: planning and preprocessing took it all; "
                            "the preprocessed data is kept, so a rerun with a larger budget starts training")
        run_plan = budget.plan_budget(ws, plans, remaining, slots, options.configurations, options.folds,
                                      device=options.device)
        run_plan_file = ws.root / RUN_PLAN_FILE
        run_plan.save(run_plan_file)
        for decision in run_plan.decisions:
            _say(f"time budget: {decision}")
        configurations, folds, fold_minutes = list(run_plan.configurations), list(run_plan.folds), run_plan.fold_minutes

    executor.bind(ws.root)
    jobs = build_jobs(ws, plans, configurations, options.trainers, folds, options, fold_minutes)
    log_dir = ws.root / LOG_DIR
    jobs = [dataclasses.replace(j, log_file=str(log_dir / f"{j.model}__fold_{j.fold}.log")) for j in jobs]
    status = StudyStatus(dataset=ws.name, workspace=str(ws.root), executor=executor.describe(), phase="training",
                         started_at=started, started=timestamp(started),
                         jobs=[JobStatus(j.name, j.trainer_name, j.configuration, j.fold, log=j.log_file) for j in jobs])
    todo = []
    for i, job in enumerate(jobs):
        if is_done(job):
            status.jobs[i].state = "skipped"
            done = job.fold_dir / DONE
            status.jobs[i].mean_dice = read_json(done).get("mean_dice")
            _say(f"skipping {job.name}: already trained ({done}, {timestamp(done.stat().st_mtime)})")
        else:
            todo.append(i)
    status_file = ws.root / STATUS_FILE
    _say(f"{len(jobs)} training job(s), {len(todo)} to run on {executor.describe()}; status in {status_file}")
    progress = _Progress(status, status_file, executor, todo, options.progress)
    progress.save()
    try:
        executor.run([jobs[i] for i in todo], progress)
    except BaseException as e:
        for j in status.jobs:
            if j.state == "running":
                j.state = "pending"
        status.phase = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        status.message = None if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        progress.save()
        raise
    finally:
        progress.close()

    summary = StudySummary(dataset=ws.name, workspace=str(ws.root), status="finished", started=status.started,
                           ended=timestamp(), elapsed_s=0.0, executor=executor.describe(), jobs={}, folds=folds,
                           status_file=str(status_file), run_plan=str(run_plan_file) if run_plan_file else None,
                           results=sorted({str(ws.results_dir(j.trainer_name, j.configuration)) for j in jobs}))
    failed = [j for j in status.jobs if j.state == "failed"]
    unfinished = [j for j in status.jobs if j.state not in ("done", "skipped", "failed")]
    try:
        if failed or unfinished:
            summary.status = "failed"
            summary.failed = [{"name": j.name, "error": j.error, "log": j.log} for j in failed]
            summary.message = (f"find-best-configuration not run: {len(failed) + len(unfinished)} of {len(jobs)} "
                               "fold(s) did not finish; fix the cause and rerun the same command (finished folds "
                               "are kept)")
        else:
            _select(ws, status, progress, configurations, jobs, folds, summary, options.progress)
            if options.predict is not None:
                _predict(ws, status, progress, options, summary)
    except BaseException as e:
        status.phase = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        status.message = None if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        progress.save()
        raise
    status.phase = "finished" if summary.status == "finished" else "failed"
    status.message = summary.message
    progress.save()
    summary.jobs = status.count()
    summary.ended = timestamp()
    summary.elapsed_s = round(time.time() - started, 1)
    summary.save(ws.root / SUMMARY_FILE)
    return summary


def _select(ws: DatasetWorkspace, status: StudyStatus, progress: _Progress, configurations: list[str],
            jobs: list[TrainJob], folds: list[int], summary: StudySummary, bars: bool) -> None:
    from autoseg.postprocessing.find_best import find_best_configuration

    status.phase = "find-best"
    progress.save()
    _say("finding the best configuration")
    selection = find_best_configuration(ws, configurations, sorted({j.trainer_name for j in jobs}), folds,
                                        progress=bars)
    for c in selection.ranked_candidates():
        mark = "  <- selected" if c.name == selection.selected.name else ""
        _say(f"  {c.mean_dice:.4f} raw, {c.postprocessed_mean_dice:.4f} postprocessed  {c.name}{mark}")
    chosen = next((c for c in selection.candidates if c.name == selection.selected.name), None)
    summary.selected = selection.selected.name
    summary.selected_models = [str(ws.results_dir(m.trainer, m.configuration)) for m in selection.models]
    summary.postprocessing = selection.selected.postprocessing
    summary.cv_dice = chosen.postprocessed_mean_dice if chosen else selection.dice_after_postprocessing.get("mean")
    summary.cv_dice_raw = chosen.mean_dice if chosen else selection.dice_before_postprocessing.get("mean")
    summary.best_configuration = str(ws.best_configuration_file)
    summary.report = str(ws.root / "find_best_report.md")


def _predict(ws: DatasetWorkspace, status: StudyStatus, progress: _Progress, options: StudyOptions,
             summary: StudySummary) -> None:
    from autoseg.inference.folder import predict_folder
    from autoseg.inference.predictor import Predictor
    from autoseg.postprocessing.selection import models_to_predict

    status.phase = "predicting"
    progress.save()
    source, target = options.predict
    members, folds, post = models_to_predict(ws, None, "unet", None)
    _say(f"predicting {source} with {' + '.join(f'{t}__{c}' for t, c in members)} into {target}")
    predictors = [Predictor.from_model_folder(ws.results_dir(t, c), folds=folds, device=options.device,
                                              precision=options.precision) for t, c in members]
    done = predict_folder(predictors, source, target, postprocessing=post)
    summary.predictions = str(Path(target).expanduser().resolve())
    summary.predicted_cases = len(done)
