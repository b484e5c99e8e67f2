"""One fold of one configuration as an independent, idempotent job.

A :class:`TrainJob` holds only plain values, so every executor can ship it to another process
or a cluster node (submitit pickles it). :func:`run_train_job` is the whole job:

* a fold whose ``done.json`` exists (written last, atomically, by the trainer) is not trained
  again;
* a fold with a checkpoint resumes from it, so a killed or pre-empted job loses at most one epoch;
* a lock on the fold (released by the operating system when its holder dies) keeps two studies,
  or a requeued job and its still-running first attempt, from training the same fold at once: the
  second waits, then finds the fold done.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from autoseg.locks import file_lock, fold_lock_path
from autoseg.workspace import DatasetWorkspace


@dataclass
class TrainJob:
    """Train and validate ``fold`` of ``configuration`` with ``trainer`` in one dataset workspace."""

    workspace_root: str  # <workspace>/<dataset>
    trainer: str  # as given: a registered name, module:Class or /absolute/path/file.py:Class
    trainer_name: str  # its results folder name: results/<trainer_name>__<configuration>
    configuration: str
    fold: int
    epochs: int | None = None
    iters_per_epoch: int | None = None
    val_iters: int | None = None
    time_budget_min: float | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    num_threads: int | None = None  # torch threads; None: every core this process may use
    num_workers: int | None = None  # background augmentation workers; None: the trainer's default
    # CUDA_VISIBLE_DEVICES for the job's own process (LocalExecutor gives each worker its GPU)
    visible_devices: str | None = None
    log_file: str | None = None  # the job's stdout and stderr are appended here

    @property
    def model(self) -> str:
        return f"{self.trainer_name}__{self.configuration}"

    @property
    def name(self) -> str:
        return f"{self.model} fold {self.fold}"

    @property
    def workspace(self) -> DatasetWorkspace:
        return DatasetWorkspace(Path(self.workspace_root))

    @property
    def fold_dir(self) -> Path:
        return self.workspace.fold_dir(self.trainer_name, self.configuration, self.fold)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainJob:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def is_done(job: TrainJob) -> bool:
    """The fold has trained and validated: its ``done.json`` exists."""
    # here, not at the top: unpickling a job need not import torch
    from autoseg.checkpoint import DONE

    return (job.fold_dir / DONE).is_file()


def available_cores() -> int:
    """Cores this process may run on (a SLURM allocation or taskset restricts them, os.cpu_count does not)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def fold_lock(job: TrainJob) -> contextlib.AbstractContextManager:
    """Hold the fold's lock; wait (saying so) while another process trains it."""
    def say(holder: str) -> None:
        print(f"{job.name} is being trained by {holder}; waiting for it", file=sys.stderr, flush=True)

    return file_lock(fold_lock_path(job.fold_dir), wait=True, on_wait=say)


def run_train_job(job: TrainJob) -> dict:
    """Train (or resume, or skip) the job's fold; returns ``{"status": "done" | "skipped", ...}``.

    Errors propagate; :func:`execute_job` turns them into a failed result.
    """
    if job.visible_devices is not None:
        # before torch is imported (and initialises CUDA) in this process: the job sees only its GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = job.visible_devices
    import torch

    from autoseg.checkpoint import DONE, FINAL, LATEST

    if is_done(job):
        return {"status": "skipped", "reason": f"{job.fold_dir / DONE} exists"}

    from autoseg.trainers.base import TrainingSettings
    from autoseg.trainers.registry import get_trainer

    threads = job.num_threads or available_cores()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with fold_lock(job):
            if is_done(job):  # trained by whoever held the lock
                return {"status": "skipped", "reason": f"{job.fold_dir / DONE} was written by another run"}
            resume = any((job.fold_dir / name).is_file() for name in (LATEST, FINAL))
            settings = TrainingSettings(
                epochs=job.epochs, iters_per_epoch=job.iters_per_epoch, val_iters=job.val_iters,
                time_budget_min=job.time_budget_min, device=job.device, precision=job.precision,
                num_workers=job.num_workers, continue_training=resume, seed=job.seed, num_threads=threads)
            trainer = get_trainer(job.trainer)(job.workspace, job.configuration, job.fold, settings)
            summary = trainer.run()
    finally:
        torch.set_num_threads(previous_threads)
    dice = summary.get("foreground_mean", {}).get("Dice")
    return {"status": "done", "resumed": resume, "threads": threads,
            "mean_dice": None if dice is None or math.isnan(dice) else float(dice)}


def error_line(error: BaseException) -> str:
    """``Type: first line of the message``: what the study's summary says about a failed job."""
    message = str(error).strip()
    first = message.splitlines()[0] if message else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


@contextlib.contextmanager
def _output_to(log_file: str | None) -> Iterator[None]:
    if log_file is None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8", buffering=1) as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n===== {stamp} pid {os.getpid()}\n")
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield


def execute_job(job: TrainJob, target: Callable[[TrainJob], dict] = run_train_job) -> dict:
    """Run ``target(job)`` with its output in the job's log; never raises for an ordinary error.

    Returns ``{"status", "error", "started", "ended", "result"}`` (times: ``time.time()``), so a
    failed job is a result like any other: the study goes on with the rest (and submitit's
    debug executor, which opens a debugger on an exception, stays non-interactive).
    """
    started = time.time()
    with _output_to(job.log_file):
        try:
            result = dict(target(job) or {})
            status, error = str(result.get("status", "done")), None
        except Exception as e:  # noqa: BLE001 - one job's failure must not stop the others
            traceback.print_exc()
            result, status, error = {}, "failed", error_line(e)
    return {"status": status, "error": error, "started": started, "ended": time.time(), "result": result}
