"""``study_status.json``: where a study stands, rewritten (atomically) on every job change.

A user (or a script) reads it while ``autoseg run`` works, possibly from another machine: which
jobs are pending, running, done, failed or skipped, since when, and how long the rest should
take. The schema is these dataclasses (documentation/study.md).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from datetime import datetime

from autoseg.atomic import read_json, write_json

JOB_STATES = ("pending", "running", "done", "failed", "skipped")
PHASES = ("training", "find-best", "predicting", "finished", "failed", "interrupted")


def timestamp(t: float | None = None) -> str:
    """Local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.fromtimestamp(time.time() if t is None else t).astimezone().isoformat(timespec="seconds")


@dataclass
class JobStatus:
    name: str  # "<trainer>__<configuration> fold <k>"
    trainer: str
    configuration: str
    fold: int
    state: str = "pending"  # one of JOB_STATES
    started: str | None = None
    ended: str | None = None
    elapsed_s: float | None = None
    error: str | None = None  # a failed job's error line; its log has the traceback
    log: str | None = None
    executor_id: str | None = None  # process id or cluster job id
    mean_dice: float | None = None  # the fold's validation mean foreground Dice
    resumed: bool = False  # continued from a checkpoint of an earlier, interrupted attempt
    started_at: float | None = None  # time.time() of ``started``, for the elapsed time of a running job


@dataclass
class StudyStatus:
    dataset: str
    workspace: str  # the dataset's workspace folder
    executor: str
    phase: str = "training"  # one of PHASES
    started: str = field(default_factory=timestamp)
    updated: str = field(default_factory=timestamp)
    elapsed_s: float = 0.0
    estimated_remaining_s: float | None = None  # training jobs still to run; None until one has finished
    counts: dict[str, int] = field(default_factory=dict)
    jobs: list[JobStatus] = field(default_factory=list)
    message: str | None = None
    started_at: float = field(default_factory=time.time)

    def count(self) -> dict[str, int]:
        return {s: sum(j.state == s for j in self.jobs) for s in JOB_STATES}

    def estimate_remaining_s(self, slots: int) -> float | None:
        """Remaining training time from this run's finished jobs: their mean duration for each pending
        job, less what a running job has already spent, shared by ``slots`` jobs at a time."""
        durations = [j.elapsed_s for j in self.jobs if j.state == "done" and j.elapsed_s is not None]
        if not durations:
            return None
        mean = sum(durations) / len(durations)
        now = time.time()
        work = sum(mean for j in self.jobs if j.state == "pending")
        work += sum(max(0.0, mean - (now - (j.started_at or now))) for j in self.jobs if j.state == "running")
        return work / max(1, slots)

    def refresh(self, slots: int) -> None:
        now = time.time()
        self.updated = timestamp(now)
        self.elapsed_s = round(now - self.started_at, 1)
        self.counts = self.count()
        eta = self.estimate_remaining_s(slots)
        self.estimated_remaining_s = None if eta is None else round(eta, 1)
        for j in self.jobs:
            if j.state == "running" and j.started_at is not None:
                j.elapsed_s = round(now - j.started_at, 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudyStatus":
        d = dict(d)
        d["jobs"] = [JobStatus(**j) for j in d.get("jobs", [])]
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StudyStatus":
        return cls.from_dict(read_json(path))


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
