"""Executors behind one interface, on stand-in jobs (no training): order, failures, resources."""
from __future__ import annotations

import json
import os
import sys

import pytest

from autoseg.errors import UserError
from autoseg.study.executors import LocalExecutor, SlurmProfile, SubmititExecutor, make_executor
from autoseg.study.jobs import TrainJob, available_cores


def _jobs(tmp_path, n: int) -> list[TrainJob]:
    return [TrainJob(str(tmp_path / "Tiny"), "unet", "unet", "3d_fullres", k, device="cpu",
                     log_file=str(tmp_path / "logs" / f"fold_{k}.log")) for k in range(n)]


# Targets are module-level: spawned workers and submitit's processes import them by name.
def report(job: TrainJob) -> dict:
    return {"status": "done", "threads": job.num_threads, "pid": os.getpid()}


def fail_fold_0_crash_fold_2(job: TrainJob) -> dict:
    if job.fold == 0:
        raise ValueError("bad patch size")
    if job.fold == 2:
        os._exit(9)  # a worker killed outright (out of memory, a segfault)
    return report(job)


def fail_fold_0(job: TrainJob) -> dict:
    if job.fold == 0:
        raise ValueError("bad patch size")
    return report(job)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, result):
        self.events.append((result.index, result.status))

    def max_running(self) -> int:
        running, peak = set(), 0
        for i, status in self.events:
            (running.add if status == "running" else running.discard)(i)
            peak = max(peak, len(running))
        return peak


def test_local_sequential_runs_in_this_process_in_order(tmp_path):
    rec = Recorder()
    results = LocalExecutor(1, target=fail_fold_0).run(_jobs(tmp_path, 3), rec)
    assert [r.status for r in results] == ["failed", "done", "done"]
    assert results[0].error == "ValueError: bad patch size"
    assert rec.events == [(0, "running"), (0, "failed"), (1, "running"), (1, "done"), (2, "running"), (2, "done")]
    assert results[1].result["pid"] == os.getpid()


def test_local_parallel_workers_fail_alone_and_share_the_cores(tmp_path):
    rec = Recorder()
    ex = LocalExecutor(2, target=fail_fold_0_crash_fold_2, poll_s=0.2)
    results = ex.run(_jobs(tmp_path, 4), rec)
    assert [r.status for r in results] == ["failed", "done", "failed", "done"]
    assert results[0].error == "ValueError: bad patch size"
    assert "exit code 9" in results[2].error
    assert rec.max_running() == 2  # never more than --parallel at once
    assert {r.result["pid"] for r in results if r.status == "done"}.isdisjoint({os.getpid()})
    assert results[1].result["threads"] == max(1, available_cores() // 2)
    assert "Traceback" in (tmp_path / "logs" / "fold_0.log").read_text()
    assert ex.slots_for(5) == 2 and ex.slots_for(1) == 1


def test_submitit_debug_reports_failures_without_a_debugger(tmp_path):
    pytest.importorskip("submitit")  # the [slurm] extra
    rec = Recorder()
    ex = SubmititExecutor("debug", folder=tmp_path / "submitit", target=fail_fold_0, poll_s=0.1)
    results = ex.run(_jobs(tmp_path, 2), rec)
    assert [r.status for r in results] == ["failed", "done"]
    assert results[0].error == "ValueError: bad patch size"
    assert rec.events == [(0, "running"), (0, "failed"), (1, "running"), (1, "done")]


def test_submitit_local_runs_each_job_in_its_own_process(tmp_path):
    pytest.importorskip("submitit")  # the [slurm] extra
    rec = Recorder()
    ex = SubmititExecutor("local", folder=tmp_path / "submitit", target=fail_fold_0, poll_s=0.2)
    results = ex.run(_jobs(tmp_path, 2), rec)
    assert [r.status for r in results] == ["failed", "done"]
    assert results[1].result["pid"] != os.getpid()
    assert results[1].result["threads"] == max(1, available_cores() // 2)  # both jobs run at once here
    assert list((tmp_path / "submitit").glob("*_0_log.out"))


def test_slurm_options_become_sbatch_parameters(tmp_path, monkeypatch):
    pytest.importorskip("submitit")  # the [slurm] extra
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    profile = SlurmProfile(partition="gpu", gpus_per_node=1, cpus_per_task=8, timeout_min=600, array_parallelism=3,
                           mem_gb=32, additional_parameters={"account": "lab"}, setup=["module load cuda"])
    ex = SubmititExecutor("slurm", folder=tmp_path / "submitit", profile=profile)
    params = ex._executor()._executor.parameters
    assert params["partition"] == "gpu" and params["gpus_per_node"] == 1 and params["cpus_per_task"] == 8
    assert params["time"] == 600 and params["array_parallelism"] == 3 and params["mem"] == "32GB"
    assert params["additional_parameters"] == {"account": "lab"} and params["setup"] == ["module load cuda"]
    assert ex.slots_for(10) == 3
    jobs = ex._resources(_jobs(tmp_path, 2))
    assert all(j.num_threads == 8 for j in jobs)


def test_slurm_without_slurm_says_so(monkeypatch):
    pytest.importorskip("submitit")  # the [slurm] extra
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="sbatch and srun are not on PATH"):
        SubmititExecutor("slurm")


def test_without_submitit_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an absent package looks like to import
    with pytest.raises(UserError, match=r"pip install submitit \(or pip install 'autoseg\[slurm\]'\)"):
        SubmititExecutor("local")


def test_slurm_profile_is_validated(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"partition": "gpu", "gpus_per_node": 2, "timeout_min": 120}))
    profile = SlurmProfile.load(good)
    assert profile.partition == "gpu" and profile.gpus_per_node == 2
    assert profile.merged(partition="a100", gpus_per_node=None).to_dict()["partition"] == "a100"
    assert profile.merged(partition="a100", gpus_per_node=None).gpus_per_node == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"partition": "gpu", "gpus": 2, "walltime": 5}))
    with pytest.raises(UserError, match=r"bad\.json: unknown key\(s\) gpus, walltime"):
        SlurmProfile.load(bad)
    bad.write_text(json.dumps({"timeout_min": "2h"}))
    with pytest.raises(UserError, match="'timeout_min' must be int"):
        SlurmProfile.load(bad)
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        SlurmProfile.load(bad)
    with pytest.raises(UserError, match="no such file"):
        SlurmProfile.load(tmp_path / "missing.json")


def test_make_executor_and_bad_parallelism():
    assert isinstance(make_executor("local", parallel=3), LocalExecutor)
    with pytest.raises(UserError, match="--parallel must be at least 1"):
        LocalExecutor(0)
    with pytest.raises(UserError, match="--executor nowhere"):
        make_executor("nowhere")
