"""Where a study's training jobs run, behind one interface: ``Executor.run(jobs, on_update)``.

* :class:`LocalExecutor`: this machine. One job at a time in this process, or ``parallel`` jobs at
  a time, each in its own fresh (spawned) process with ``cores // parallel`` torch threads and,
  with CUDA, its own GPU (worker ``k`` gets visible GPU ``k mod n``).
* :class:`SubmititExecutor`: `submitit <https://github.com/facebookincubator/submitit>`_, one job
  array on SLURM with a concurrency cap (``array_parallelism``); submitit's ``local`` executor
  (every job its own process on this machine, all at once) and ``debug`` executor (in this
  process, one by one) test the same path without a cluster. A job pre-empted or timed out on
  SLURM is requeued by submitit and resumes from its latest checkpoint.

Executors report every change through ``on_update(JobResult)`` (a job started, ended) and return
one final :class:`JobResult` per job, in order. A failed job never stops the others.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Sequence

from autoseg.atomic import read_json
from autoseg.errors import UserError
from autoseg.study.jobs import TrainJob, available_cores, error_line, execute_job, run_train_job

FINAL_STATES = ("done", "failed", "skipped")


@dataclass
class JobResult:
    index: int  # position in the list given to Executor.run
    name: str
    status: str  # running, done, failed, skipped
    started: float | None = None  # time.time()
    ended: float | None = None
    error: str | None = None  # one line; the job's log has the traceback
    result: dict = field(default_factory=dict)  # what the job returned (mean_dice, resumed, ...)
    executor_id: str | None = None  # process id or cluster job id

    @property
    def elapsed_s(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    @classmethod
    def from_outcome(cls, index: int, job: TrainJob, outcome: dict, executor_id: str | None = None) -> "JobResult":
        """From what :func:`autoseg.study.jobs.execute_job` returned."""
        return cls(index, job.name, str(outcome.get("status", "failed")), outcome.get("started"), outcome.get("ended"),
                   outcome.get("error"), dict(outcome.get("result") or {}), executor_id)


OnUpdate = Callable[[JobResult], None]
Target = Callable[[TrainJob], dict]


class Executor(ABC):
    """Runs independent training jobs; see the module docstring."""

    name = "executor"

    def slots_for(self, n_jobs: int) -> int:
        """How many of ``n_jobs`` run at once (the study's time estimate and budget divide by it)."""
        return 1

    def bind(self, workspace_root: Path) -> None:
        """Called by the study before :meth:`run`: the dataset's workspace folder, for the executor's own files."""

    @abstractmethod
    def run(self, jobs: Sequence[TrainJob], on_update: OnUpdate) -> list[JobResult]:
        """Run every job; call ``on_update`` when one starts and when it ends; return the final results in order."""

    def describe(self) -> str:
        return self.name


# ----------------------------------------------------------------------------- local


def _visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names, without initialising CUDA here."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:
        return []
    if count < 1:
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in given.split(",") if d.strip()] if given else []
    return names[:count] if len(names) >= count else [str(k) for k in range(count)]


def _exit_with_parent() -> None:
    """A worker whose study process died stops too rather than train on where nobody watches (and
    beside the rerun's worker); its checkpoints let the next run resume the fold."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_main(job: TrainJob, target: Target, conn: Any) -> None:
    _exit_with_parent()
    outcome = execute_job(job, target)
    conn.send(outcome)
    conn.close()


class LocalExecutor(Executor):
    """This machine: sequentially in this process (``parallel=1``), else ``parallel`` spawned processes."""

    name = "local"

    def __init__(self, parallel: int = 1, target: Target = run_train_job, poll_s: float = 5.0) -> None:
        if parallel < 1:
            raise UserError(f"--parallel must be at least 1, got {parallel}")
        self.parallel = int(parallel)
        self.target = target
        self.poll_s = poll_s

    def slots_for(self, n_jobs: int) -> int:
        return max(1, min(self.parallel, n_jobs))

    def describe(self) -> str:
        return "local, sequential" if self.parallel == 1 else f"local, {self.parallel} processes"

    def run(self, jobs: Sequence[TrainJob], on_update: OnUpdate) -> list[JobResult]:
        if self.parallel == 1:
            return self._run_here(jobs, on_update)
        return self._run_processes(jobs, on_update)

    def _run_here(self, jobs: Sequence[TrainJob], on_update: OnUpdate) -> list[JobResult]:
        results = []
        for i, job in enumerate(jobs):
            on_update(JobResult(i, job.name, "running", started=time.time(), executor_id=str(os.getpid())))
            result = JobResult.from_outcome(i, job, execute_job(job, self.target), str(os.getpid()))
            on_update(result)
            results.append(result)
        return results

    def _resources(self, jobs: Sequence[TrainJob]) -> tuple[list[TrainJob], list[str]]:
        threads = max(1, available_cores() // self.parallel)
        gpus = _visible_gpus() if any(j.device != "cpu" for j in jobs) else []
        out = []
        for job in jobs:
            changes: dict[str, Any] = {}
            if job.num_threads is None:
                changes["num_threads"] = threads
            if gpus and job.num_workers is None:
                # the trainer's GPU default (cores - 2 loader processes) is for a job alone on the machine
                changes["num_workers"] = max(1, threads - 1)
            out.append(dataclasses.replace(job, **changes))
        return out, gpus

    def _run_processes(self, jobs: Sequence[TrainJob], on_update: OnUpdate) -> list[JobResult]:
        ctx = multiprocessing.get_context("spawn")  # fresh processes: no forked torch or CUDA state
        jobs, gpus = self._resources(jobs)
        results: dict[int, JobResult] = {}
        waiting = list(range(len(jobs)))
        running: dict[int, tuple[Any, Any, int, float]] = {}  # index -> (process, connection, slot, started)
        free_slots = list(range(self.parallel))
        try:
            while waiting or running:
                while waiting and free_slots:
                    i, slot = waiting.pop(0), free_slots.pop(0)
                    job = jobs[i]
                    if gpus and job.visible_devices is None:
                        job = dataclasses.replace(job, visible_devices=gpus[slot % len(gpus)])
                    receive, send = ctx.Pipe(duplex=False)
                    process = ctx.Process(target=_worker_main, args=(job, self.target, send),
                                          name=f"autoseg-{job.name}", daemon=False)
                    process.start()
                    send.close()
                    started = time.time()
                    running[i] = (process, receive, slot, started)
                    on_update(JobResult(i, job.name, "running", started=started, executor_id=str(process.pid)))
                # the result pipe as well as the exit: a child blocked sending a result never exits
                ready = set(wait([x for p, r, _, _ in running.values() for x in (p.sentinel, r)], timeout=self.poll_s))
                for i in [i for i, (p, r, _, _) in running.items() if p.sentinel in ready or r in ready]:
                    process, receive, slot, started = running.pop(i)
                    outcome = None
                    try:
                        if receive.poll():
                            outcome = receive.recv()
                    except (EOFError, OSError):
                        pass
                    process.join()
                    receive.close()
                    free_slots.append(slot)
                    if outcome is None:
                        outcome = {"status": "failed", "started": started, "ended": time.time(),
                                   "error": f"worker process {process.pid} ended with exit code {process.exitcode} "
                                            "before reporting (killed, out of memory?)"}
                    results[i] = JobResult.from_outcome(i, jobs[i], outcome, str(process.pid))
                    on_update(results[i])
        finally:
            for process, _, _, _ in running.values():  # interrupted: the next run resumes these
                process.terminate()
            for process, receive, _, _ in running.values():
                process.join(10)
                receive.close()
        return [results[i] for i in range(len(jobs))]


# ----------------------------------------------------------------------------- submitit

SUBMITIT_CLUSTERS = ("slurm", "local", "debug")


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm and submitit executors need submitit: pip install submitit "
                        "(or pip install 'autoseg[slurm]')") from None
    return submitit


class SubmititCall:
    """What submitit runs for each job: :func:`execute_job`. Its ``checkpoint`` method is submitit's
    requeue hook (called on pre-emption or time-out): the same job again, which resumes from the
    fold's latest checkpoint."""

    def __init__(self, target: Target = run_train_job) -> None:
        self.target = target

    def __call__(self, job: TrainJob) -> dict:
        return execute_job(job, self.target)

    def checkpoint(self, job: TrainJob) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job)


@dataclass
class SlurmProfile:
    """Per-job resources for :class:`SubmititExecutor`; ``--slurm-profile FILE.json`` holds these keys."""

    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    timeout_min: int | None = None
    array_parallelism: int | None = None
    mem_gb: float | None = None
    # more sbatch options, e.g. {"account": "lab", "qos": "normal", "constraint": "a100"}
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load, conda activate)

    _TYPES = {"partition": (str,), "gpus_per_node": (int,), "cpus_per_task": (int,), "timeout_min": (int,),
              "array_parallelism": (int,), "mem_gb": (int, float), "additional_parameters": (dict,), "setup": (list,)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "the slurm profile") -> "SlurmProfile":
        if not isinstance(d, dict):
            raise UserError(f"{source}: must be a JSON object with keys {', '.join(cls._TYPES)}")
        unknown = sorted(set(d) - set(cls._TYPES))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(cls._TYPES)}")
        for key, value in d.items():
            types = cls._TYPES[key]
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise UserError(f"{source}: '{key}' must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise UserError(f"{source}: '{key}' must be positive, got {value}")
        if not all(isinstance(s, str) for s in d.get("setup") or []):
            raise UserError(f"{source}: 'setup' must be a list of shell lines (strings)")
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SlurmProfile":
        import json

        if not Path(path).is_file():
            raise UserError(f"--slurm-profile {path}: no such file")
        try:
            d = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"--slurm-profile {path}: not valid JSON ({e})") from None
        return cls.from_dict(d, f"--slurm-profile {path}")

    def merged(self, **overrides: Any) -> "SlurmProfile":
        """This profile with the command line's values where given."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# submitit's job states (SLURM's, and its local executor's) that mean "started and not finished"
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"}
# per job, when neither --slurm-time nor the profile says (submitit's own default is an hour)
DEFAULT_TIMEOUT_MIN = 24 * 60


class SubmititExecutor(Executor):
    """One submitit job array: SLURM (``cluster="slurm"``), or submitit's ``local`` / ``debug`` executors."""

    def __init__(self, cluster: str = "slurm", folder: str | os.PathLike | None = None,
                 profile: SlurmProfile | None = None, target: Target = run_train_job,
                 poll_s: float | None = None) -> None:
        if cluster not in SUBMITIT_CLUSTERS:
            raise UserError(f"submitit cluster must be one of {', '.join(SUBMITIT_CLUSTERS)}, got {cluster!r}")
        require_submitit()  # before any long work: say how to install it
        if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise UserError("--executor slurm: SLURM's sbatch and srun are not on PATH here; run 'autoseg run' "
                            "on a machine that submits SLURM jobs (or test with --executor submitit-local)")
        self.cluster = cluster
        self.folder = Path(folder) if folder is not None else None
        self.profile = profile or SlurmProfile()
        self.target = target
        # each poll of a SLURM job may run sacct: not more than every half minute
        self.poll_s = poll_s if poll_s is not None else (30.0 if cluster == "slurm" else 1.0)
        self.name = "slurm" if cluster == "slurm" else f"submitit-{cluster}"

    def slots_for(self, n_jobs: int) -> int:
        if self.cluster == "debug":
            return 1
        if self.cluster == "slurm" and self.profile.array_parallelism:
            return max(1, min(self.profile.array_parallelism, n_jobs))
        return max(1, n_jobs)

    def describe(self) -> str:
        p = self.profile
        parts = [self.name]
        if self.cluster == "slurm":
            parts += [f"partition {p.partition}" if p.partition else "default partition",
                      f"{p.gpus_per_node or 0} GPU(s)/job", f"{p.timeout_min or DEFAULT_TIMEOUT_MIN} min/job"]
            if p.array_parallelism:
                parts.append(f"at most {p.array_parallelism} at once")
        parts.append(f"logs in {self.folder}")
        return ", ".join(parts)

    def bind(self, workspace_root: Path) -> None:
        if self.folder is None:
            self.folder = Path(workspace_root) / "submitit"

    def _executor(self) -> Any:
        submitit = require_submitit()
        p = self.profile
        folder = self.folder or Path("submitit")
        ex = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster)
        params: dict[str, Any] = {"name": "autoseg", "timeout_min": int(p.timeout_min or DEFAULT_TIMEOUT_MIN)}
        if p.gpus_per_node is not None:
            params["gpus_per_node"] = p.gpus_per_node
        if p.cpus_per_task is not None:
            params["cpus_per_task"] = p.cpus_per_task
        if p.mem_gb is not None:
            params["mem_gb"] = p.mem_gb
        if self.cluster == "slurm":
            if p.partition:
                params["slurm_partition"] = p.partition
            if p.array_parallelism:
                params["slurm_array_parallelism"] = p.array_parallelism
            if p.additional_parameters:
                params["slurm_additional_parameters"] = dict(p.additional_parameters)
            if p.setup:
                params["slurm_setup"] = list(p.setup)
        elif self.cluster == "local":
            if p.setup:
                params["local_setup"] = list(p.setup)
            if p.gpus_per_node is None:
                # submitit's local executor hides every GPU from a job that asks for none
                params["gpus_per_node"] = len(_visible_gpus())
        try:
            ex.update_parameters(**params)
        except (NameError, ValueError, AssertionError) as e:
            raise UserError(f"submitit rejected the job parameters: {e}") from None
        return ex

    def _resources(self, jobs: Sequence[TrainJob]) -> list[TrainJob]:
        if self.cluster == "local":
            # every job of submitit's local executor runs at once on this machine
            threads = max(1, available_cores() // max(1, len(jobs)))
        else:
            threads = self.profile.cpus_per_task  # None: the job's allocation (sched_getaffinity)
        return [dataclasses.replace(j, num_threads=threads) if j.num_threads is None else j for j in jobs]

    def run(self, jobs: Sequence[TrainJob], on_update: OnUpdate) -> list[JobResult]:
        jobs = self._resources(jobs)
        if not jobs:
            return []
        ex = self._executor()
        call = SubmititCall(self.target)
        try:
            submitted = ex.map_array(call, list(jobs))
        except Exception as e:  # sbatch missing or refusing the job (partition, account, limits)
            raise UserError(f"submitting the jobs to {self.name} failed: {error_line(e)}") from None
        print(f"submitted {len(submitted)} job(s) to {self.name}"
              + (f" (array {submitted[0].job_id.split('_')[0]})" if self.cluster == "slurm" else "")
              + f"; submitit logs in {self.folder}", flush=True)
        results: dict[int, JobResult] = {}
        started: dict[int, float] = {}
        try:
            while len(results) < len(jobs):
                for i, sjob in enumerate(submitted):
                    if i in results:
                        continue
                    if self.cluster == "debug":  # runs in this process, when asked for its result
                        started[i] = time.time()
                        on_update(JobResult(i, jobs[i].name, "running", started=started[i], executor_id=sjob.job_id))
                    if sjob.done():
                        results[i] = self._final(i, jobs[i], sjob, started.get(i))
                        on_update(results[i])
                    elif i not in started and str(sjob.state).upper() in RUNNING_STATES:
                        started[i] = time.time()
                        on_update(JobResult(i, jobs[i].name, "running", started=started[i], executor_id=sjob.job_id))
                if len(results) < len(jobs):
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            for i, sjob in enumerate(submitted):
                if i not in results:
                    try:
                        sjob.cancel(check=False)
                    except Exception:
                        pass
            print(f"cancelled {len(jobs) - len(results)} unfinished job(s); rerun to resume them", file=sys.stderr)
            raise
        return [results[i] for i in range(len(jobs))]

    @staticmethod
    def _final(index: int, job: TrainJob, sjob: Any, started: float | None) -> JobResult:
        try:
            outcome = sjob.result()
        except Exception as e:  # the job died outside execute_job: time-out, node failure, cancelled
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            outcome = {"status": "failed", "started": started, "ended": time.time(),
                       "error": f"{type(e).__name__}: {lines[-1] if lines else ''} (see {sjob.paths.stderr})"}
        return JobResult.from_outcome(index, job, outcome, sjob.job_id)


def make_executor(kind: str, parallel: int = 1, profile: SlurmProfile | None = None,
                  folder: str | os.PathLike | None = None) -> Executor:
    """``--executor``: ``local`` (with ``parallel``), ``slurm``, ``submitit-local`` or ``submitit-debug``."""
    if kind == "local":
        return LocalExecutor(parallel)
    clusters = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}
    if kind not in clusters:
        raise UserError(f"--executor {kind}: choose local, slurm, submitit-local or submitit-debug")
    return SubmititExecutor(clusters[kind], folder=folder, profile=profile)
