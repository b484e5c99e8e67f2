"""study_status.json: the schema round trip and the remaining-time estimate."""
from __future__ import annotations

import time

import pytest

from autoseg.atomic import read_json
from autoseg.study.status import JobStatus, StudyStatus, format_duration


def _status() -> StudyStatus:
    jobs = [JobStatus(f"unet__3d_fullres fold {k}", "unet", "3d_fullres", k) for k in range(5)]
    return StudyStatus(dataset="Tiny", workspace="/ws/Tiny", executor="local", jobs=jobs)


def test_estimate_comes_from_finished_jobs_and_the_parallelism():
    s = _status()
    assert s.estimate_remaining_s(slots=1) is None  # nothing finished: no basis for an estimate
    s.jobs[0].state, s.jobs[0].elapsed_s = "done", 100.0
    s.jobs[1].state, s.jobs[1].elapsed_s = "done", 200.0
    s.jobs[2].state, s.jobs[2].started_at = "running", time.time() - 50
    s.jobs[3].state = "skipped"  # trained by an earlier run: no time left, and no duration to learn from
    # pending fold 4: the mean 150 s; running fold 2: 150 - 50 s left
    assert s.estimate_remaining_s(slots=1) == pytest.approx(250, abs=2)
    assert s.estimate_remaining_s(slots=2) == pytest.approx(125, abs=1)


def test_round_trip_and_refresh(tmp_path):
    s = _status()
    s.jobs[0].state, s.jobs[0].started_at = "running", time.time() - 3
    s.refresh(slots=1)
    assert s.counts == {"pending": 4, "running": 1, "done": 0, "failed": 0, "skipped": 0}
    assert s.jobs[0].elapsed_s == pytest.approx(3, abs=1)
    s.save(tmp_path / "study_status.json")
    d = read_json(tmp_path / "study_status.json")
    assert d["jobs"][0]["state"] == "running" and d["counts"]["pending"] == 4
    assert StudyStatus.load(tmp_path / "study_status.json") == s


@pytest.mark.parametrize("seconds, text", [(None, "?"), (12.4, "12s"), (245, "4m05s"), (3720, "1h02m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
