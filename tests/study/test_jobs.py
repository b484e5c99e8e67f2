"""A training job: plain values (picklable), skipped when done, failures captured with their log."""
from __future__ import annotations

import pickle
import threading
import time


from autoseg.atomic import write_json
from autoseg.study.jobs import TrainJob, execute_job, fold_lock, is_done, run_train_job


def _job(tmp_path, **kw) -> TrainJob:
    return TrainJob(workspace_root=str(tmp_path / "Tiny"), trainer="unet", trainer_name="unet",
                    configuration="3d_fullres", fold=1, **kw)


def test_job_is_plain_data(tmp_path):
    job = _job(tmp_path, epochs=2, num_threads=3)
    assert pickle.loads(pickle.dumps(job)) == job
    assert TrainJob.from_dict(job.to_dict()) == job
    assert job.name == "unet__3d_fullres fold 1"
    assert job.fold_dir == tmp_path / "Tiny" / "results" / "unet__3d_fullres" / "fold_1"


def test_a_done_fold_is_skipped_without_training(tmp_path):
    job = _job(tmp_path)
    assert not is_done(job)
    write_json(job.fold_dir / "done.json", {"fold": "1"})
    assert is_done(job)
    # no plans, no data: anything beyond the done check would fail
    assert run_train_job(job)["status"] == "skipped"


def _boom(job: TrainJob) -> dict:
    print("training output goes to the log")
    raise RuntimeError("CUDA out of memory\nmore details")


def test_execute_job_turns_an_error_into_a_result_and_keeps_the_traceback(tmp_path):
    job = _job(tmp_path, log_file=str(tmp_path / "logs" / "job.log"))
    out = execute_job(job, _boom)
    assert out["status"] == "failed" and out["error"] == "RuntimeError: CUDA out of memory"
    assert out["ended"] >= out["started"]
    log = (tmp_path / "logs" / "job.log").read_text()
    assert "training output goes to the log" in log and "Traceback" in log and "more details" in log
    out = execute_job(job, lambda j: {"status": "done", "mean_dice": 0.5})
    assert out["status"] == "done" and out["result"]["mean_dice"] == 0.5 and out["error"] is None


def test_fold_lock_makes_a_second_run_wait(tmp_path, capsys):
    job = _job(tmp_path)
    order = []

    def second():
        with fold_lock(job):
            order.append("second")

    with fold_lock(job):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]
    assert "is being trained by pid" in capsys.readouterr().err
