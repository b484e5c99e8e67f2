"""run_study on a tiny synthetic dataset: every executor ends with best_configuration.json; reruns
skip finished folds; a failed job is reported and stops nothing but find-best; bad options fail early."""
from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import pytest

import autoseg.study
from autoseg.atomic import read_json, write_json
from autoseg.errors import UserError
from autoseg.study.executors import Executor, JobResult, LocalExecutor, SubmititExecutor
from autoseg.study.runner import StudyOptions, StudySummary, run_study, study_lock
from autoseg.study.status import StudyStatus
from autoseg.workspace import DatasetWorkspace

from tests.study.conftest import FAST


def _options(**kw) -> StudyOptions:
    return StudyOptions(**{"configurations": ["3d_fullres"], "folds": [0, 1], **FAST, **kw})


def test_parallel_study_selects_predicts_and_a_rerun_skips_everything(raw_dataset, new_images, tmp_path, capsys):
    out = tmp_path / "predictions"
    summary = run_study(raw_dataset, tmp_path / "ws", _options(predict=(str(new_images), str(out))), LocalExecutor(2))
    ws = DatasetWorkspace(tmp_path / "ws" / "Tiny")
    assert summary.status == "finished" and ws.best_configuration_file.is_file()
    assert summary.selected == "unet__3d_fullres" and summary.folds == [0, 1] and 0 <= summary.cv_dice <= 1
    assert summary.jobs["done"] == 2 and summary.predicted_cases == 2
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_000.nii.gz", "case_001.nii.gz"]
    assert StudySummary.load(ws.root / "study_summary.json") == summary
    status = StudyStatus.load(ws.root / "study_status.json")
    assert status.phase == "finished" and [j.state for j in status.jobs] == ["done", "done"]
    assert all(j.elapsed_s > 0 and j.started and j.ended and Path(j.log).is_file() for j in status.jobs)
    assert status.estimated_remaining_s == 0
    assert "started  unet__3d_fullres fold 0" in capsys.readouterr().out

    done = {k: ws.fold_dir("unet", "3d_fullres", k) / "done.json" for k in (0, 1)}
    stamps = {k: p.stat().st_mtime_ns for k, p in done.items()}
    plans_stamp = ws.plans_file.stat().st_mtime_ns
    # by name this time: the workspace remembers the raw folder
    again = run_study("Tiny", tmp_path / "ws", _options(), LocalExecutor(2))
    printed = capsys.readouterr().out
    assert again.status == "finished" and again.jobs["skipped"] == 2 and again.jobs["done"] == 0
    assert "skipping unet__3d_fullres fold 0: already trained" in printed and "using the plans" in printed
    assert {k: p.stat().st_mtime_ns for k, p in done.items()} == stamps
    assert ws.plans_file.stat().st_mtime_ns == plans_stamp


def test_study_on_submitits_local_executor(raw_dataset, tmp_path):
    pytest.importorskip("submitit")  # the [slurm] extra
    executor = SubmititExecutor("local", poll_s=0.5)
    summary = run_study(raw_dataset, tmp_path / "ws", _options(), executor)
    ws = tmp_path / "ws" / "Tiny"
    assert summary.status == "finished" and (ws / "best_configuration.json").is_file()
    assert summary.executor.startswith("submitit-local")
    assert list((ws / "submitit").glob("*_0_log.out"))  # submitit's own logs, beside the study's


FLAKY = '''
from autoseg.trainers.unet import UNetTrainer


class FlakyTrainer(UNetTrainer):
    def __init__(self, workspace, configuration, fold, settings=None):
        if str(fold) == "0":
            raise RuntimeError("fold 0 always fails")
        super().__init__(workspace, configuration, fold, settings)
'''


def test_a_failed_job_is_reported_and_the_others_finish(raw_dataset, tmp_path, capsys):
    trainer = tmp_path / "flaky.py"
    trainer.write_text(FLAKY)
    summary = run_study(raw_dataset, tmp_path / "ws", _options(trainers=[f"{trainer}:FlakyTrainer"]), LocalExecutor(2))
    ws = DatasetWorkspace(tmp_path / "ws" / "Tiny")
    assert summary.status == "failed" and summary.jobs["failed"] == 1 and summary.jobs["done"] == 1
    assert summary.failed[0]["name"] == "FlakyTrainer__3d_fullres fold 0"
    assert summary.failed[0]["error"] == "RuntimeError: fold 0 always fails"
    assert "Traceback" in Path(summary.failed[0]["log"]).read_text()
    assert "find-best-configuration not run" in summary.message
    assert not ws.best_configuration_file.exists()
    assert (ws.fold_dir("FlakyTrainer", "3d_fullres", 1) / "done.json").is_file()
    status = read_json(ws.root / "study_status.json")
    assert status["phase"] == "failed" and [j["state"] for j in status["jobs"]] == ["failed", "done"]
    assert "FAILED   FlakyTrainer__3d_fullres fold 0" in capsys.readouterr().out


class RecordingExecutor(Executor):
    """Runs nothing: records the jobs it was given and reports them failed."""

    name = "recording"

    def __init__(self):
        self.jobs = []

    def run(self, jobs, on_update):
        self.jobs = list(jobs)
        results = [JobResult(i, j.name, "failed", 0.0, 0.0, "not run") for i, j in enumerate(jobs)]
        for r in results:
            on_update(r)
        return results


def test_a_time_budget_decides_configurations_folds_and_fold_minutes(raw_dataset, tmp_path, monkeypatch, capsys):
    calls = {}

    @dataclasses.dataclass
    class RunPlan:
        budget_min: float
        configurations: list
        folds: list
        fold_minutes: float
        ensemble: bool
        decisions: list
        step_seconds: dict

        def save(self, path):
            write_json(path, dataclasses.asdict(self))

    def parse_duration(text):
        return {"90m": 90.0}[text]

    def plan_budget(ws, plans, budget_min, parallel, configurations, folds, device="auto"):
        calls.update(budget_min=budget_min, parallel=parallel, configurations=configurations, folds=folds)
        return RunPlan(budget_min, ["3d_fullres"], [0, 2, 4], 7.5, False, ["3 folds of 3d_fullres, 7.5 min each"], {})

    stub = types.ModuleType("autoseg.study.budget")
    stub.RunPlan, stub.parse_duration, stub.plan_budget = RunPlan, parse_duration, plan_budget
    monkeypatch.setitem(sys.modules, "autoseg.study.budget", stub)
    monkeypatch.setattr(autoseg.study, "budget", stub, raising=False)

    executor = RecordingExecutor()
    summary = run_study(raw_dataset, tmp_path / "ws", _options(folds=None, time_budget="90m"), executor)
    # what planning and preprocessing took (seconds here) is spent from the study's budget
    assert 89.0 < calls.pop("budget_min") < 90.0
    assert calls == {"parallel": 1, "configurations": ["3d_fullres"], "folds": None}
    assert [(j.configuration, j.fold, j.time_budget_min) for j in executor.jobs] == \
        [("3d_fullres", 0, 7.5), ("3d_fullres", 2, 7.5), ("3d_fullres", 4, 7.5)]
    ws = tmp_path / "ws" / "Tiny"
    assert read_json(ws / "run_plan.json")["fold_minutes"] == 7.5 and summary.run_plan == str(ws / "run_plan.json")
    assert "time budget: 3 folds of 3d_fullres, 7.5 min each" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (dict(folds=[0, 7]), "--folds: folds are 0-4"),
    (dict(folds=[1, 1]), "fold listed twice"),
    (dict(epochs=0), "--epochs must be at least 1"),
    (dict(fold_minutes=-1.0), "per-fold time budget must be positive"),
    (dict(predict=("/nonexistent/in", "/tmp/out")), "--predict: input folder /nonexistent/in does not exist"),
])
def test_bad_options_fail_before_anything_is_written(raw_dataset, tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        run_study(raw_dataset, tmp_path / "ws", _options(**change), RecordingExecutor())
    assert not (tmp_path / "ws").exists()


def test_bad_names_fail_before_training(raw_dataset, tmp_path):
    executor = RecordingExecutor()
    with pytest.raises(UserError, match="neither a raw dataset folder nor a dataset"):
        run_study("NoSuchDataset", tmp_path / "ws", _options(), executor)
    with pytest.raises(UserError, match="3d_nonsense not planned"):
        run_study(raw_dataset, tmp_path / "ws", _options(configurations=["3d_nonsense"]), executor)
    with pytest.raises(UserError, match="unknown trainer 'no_such_trainer'"):
        run_study(raw_dataset, tmp_path / "ws", _options(trainers=["no_such_trainer"]), executor)
    with pytest.raises(UserError, match="unet_2p5d train.s. none of the configurations 3d_fullres"):
        run_study(raw_dataset, tmp_path / "ws", _options(trainers=["unet_2p5d"]), executor)
    assert executor.jobs == []


def test_one_study_per_dataset_at_a_time(raw_dataset, tmp_path):
    run_study(raw_dataset, tmp_path / "ws", _options(), RecordingExecutor())  # plans the workspace
    with study_lock(DatasetWorkspace(tmp_path / "ws" / "Tiny")):
        with pytest.raises(UserError, match=r"another 'autoseg run' \(pid \d+ on .+\) is working on"):
            run_study(raw_dataset, tmp_path / "ws", _options(), RecordingExecutor())
