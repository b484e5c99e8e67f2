"""The study's time budget: durations, the decision rule on given step times, run_plan.json,
and one measurement of a tiny planned network."""
import dataclasses
import json
import re
from pathlib import Path

import pytest

from autoseg.atomic import write_json
from autoseg.errors import UserError
from autoseg.fingerprint.fingerprint import CaseFingerprint, ChannelIntensity, Fingerprint
from autoseg.planners.plans import Plans
from autoseg.study import budget
from autoseg.study.budget import RunPlan, measure_step_seconds, parse_duration, plan_budget
from autoseg.workspace import DatasetWorkspace

EXAMPLES = Path(__file__).resolve().parents[2] / "documentation" / "examples"
# Hippocampus 3d_fullres measured 0.47 s/iteration on 2 CPU cores (benchmarks.md); 2d is faster
STEPS = {"3d_fullres": 0.47, "2d": 0.1}


def hippocampus_workspace(tmp_path: Path, num_cases: int = 260, configurations=("2d", "3d_fullres")) -> tuple[DatasetWorkspace, Plans]:
    """The example Hippocampus plans and a fingerprint of ``num_cases`` median-sized cases; no data."""
    ws = DatasetWorkspace(tmp_path / "Hippo")
    ws.root.mkdir(parents=True)
    plans = Plans.load(EXAMPLES / "plans_Task04_Hippocampus.json")
    configs = {n: c for n, c in plans.configurations.items() if n in configurations}
    if "3d_lowres" in configurations:  # a third candidate, as slow as 3d_fullres
        configs["3d_lowres"] = dataclasses.replace(plans.configurations["3d_fullres"], name="3d_lowres",
                                                   data_identifier="3d_lowres_2.00x2.00x2.00")
    plans = dataclasses.replace(plans, configurations=configs)
    plans.save(ws.plans_file)
    cases = [CaseFingerprint(f"hippocampus_{i:03d}", [1.0, 1.0, 1.0], [36, 50, 35], [36, 50, 35],
                             [[0, 36], [0, 50], [0, 35]], {0: 60000, 1: 500, 2: 500}, {1: 1, 2: 1})
             for i in range(num_cases)]
    intensity = ChannelIntensity("MRI", 100, 0.0, 1.0, -3.0, 3.0, -2.5, 0.0, 2.5, 0.0, 1.0)
    Fingerprint(1, "Hippo", ["MRI"], [0, 1, 2], ["background", "Anterior", "Posterior"], False, num_cases,
                [1.0, 1.0, 1.0], [36, 50, 35], 1.0, [intensity], cases).save(ws.fingerprint_file)
    return ws, plans


def plan(ws, plans, minutes, parallel=1, configurations=None, folds=None, steps=STEPS, **kw) -> RunPlan:
    return plan_budget(ws, plans, minutes, parallel, configurations, folds, device="cpu", step_seconds=steps, **kw)


def smallest_budget(message: str) -> float:
    return float(re.search(r"smallest budget that works is ([\d.]+) min", message).group(1))


# ---------------------------------------------------------------- durations

@pytest.mark.parametrize("text, minutes", [
    ("2h", 120), ("90m", 90), ("1h30m", 90), ("45", 45), ("30s", 0.5), ("1.5h", 90), (" 2H ", 120),
    ("90min", 90), ("1h 30m", 90), ("2h30s", 120.5), ("0.5", 0.5), ("1m30s", 1.5)])
def test_parse_duration(text, minutes):
    assert parse_duration(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["", "abc", "2x", "h", "m", "0", "0m", "0h0m", "-5", "-1h", "1h-30m", "nan",
                                  "inf", "30m2h", "2 hours"])
def test_parse_duration_rejects(text):
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


# ---------------------------------------------------------------- the rule

def test_short_budget_one_configuration_all_folds(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    rp = plan(ws, plans, 30)
    assert rp.configurations == ["3d_fullres"] and rp.folds == [0, 1, 2, 3, 4] and not rp.ensemble
    assert rp.iterations_per_fold["3d_fullres"] >= budget.MIN_ITERATIONS["adam"]
    assert rp.estimates["3d_fullres"].selected and not rp.estimates["2d"].selected
    # the primary is 3d_fullres even though the plan lists 2d first
    assert list(plans.configurations) == ["2d", "3d_fullres"]
    text = "\n".join(rp.decisions)
    assert "2d dropped: with it each fold would get" in text and "no ensemble: one configuration fits" in text
    assert rp.estimated_wall_min + rp.margin_min <= 30


def test_very_short_budget_fewer_folds(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    rp = plan(ws, plans, 8)
    assert rp.configurations == ["3d_fullres"] and rp.folds == [0, 1] and not rp.ensemble
    assert rp.iterations_per_fold["3d_fullres"] >= 300
    assert any(d.startswith("5 folds do not fit") and "2 folds instead" in d for d in rp.decisions)
    assert "2d dropped: not even 3d_fullres fits all 5 folds" in rp.decisions
    one = plan(ws, plans, 4.5)
    assert one.folds == [0] and not one.ensemble
    assert any(d.startswith("no ensemble, one fold: find-best decides postprocessing on fold 0") for d in one.decisions)


def test_long_budget_several_configurations_and_ensemble(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path, configurations=("2d", "3d_fullres", "3d_lowres"))
    steps = {**STEPS, "3d_lowres": 0.47}
    rp = plan(ws, plans, 120, steps=steps)
    assert rp.configurations == ["3d_fullres", "2d", "3d_lowres"] and rp.folds == [0, 1, 2, 3, 4] and rp.ensemble
    assert min(rp.iterations_per_fold.values()) >= 300
    assert "ensemble: find-best compares 3d_fullres, 2d, 3d_lowres and their pairs" in rp.decisions
    # each configuration is added only while every one still reaches the minimum
    mid = plan(ws, plans, 45, steps=steps)
    assert mid.configurations == ["3d_fullres", "2d"] and mid.ensemble
    assert any(d.startswith("3d_lowres dropped: with it each fold would get") for d in mid.decisions)
    assert mid.estimates["3d_lowres"].iterations_per_fold > 0 and not mid.estimates["3d_lowres"].selected


def test_too_small_budget_names_the_smallest_that_works(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    with pytest.raises(UserError, match="too small") as e:
        plan(ws, plans, 2)
    need = smallest_budget(str(e.value))
    assert "5 folds:" in str(e.value)
    rp = plan(ws, plans, need)
    assert rp.folds == [0] and rp.iterations_per_fold["3d_fullres"] >= 300
    with pytest.raises(UserError):
        plan(ws, plans, need - 0.2)


def test_parallel_two_doubles_what_fits(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    one, two = plan(ws, plans, 120), plan(ws, plans, 120, parallel=2)
    assert one.configurations == two.configurations == ["3d_fullres", "2d"]  # 10 jobs: 10 rounds, then 5
    assert two.fold_minutes == pytest.approx(2 * one.fold_minutes, abs=0.3)
    assert two.iterations_per_fold["3d_fullres"] > 2 * one.iterations_per_fold["3d_fullres"]
    assert any("2 jobs at a time on a CPU" in d for d in two.decisions)
    # half the budget on two workers buys what the whole one buys on one
    half = plan(ws, plans, 60, parallel=2)
    assert half.configurations == one.configurations and half.fold_minutes == pytest.approx(one.fold_minutes, abs=0.3)
    # and a budget that fits only 3d_fullres on one worker fits 2d too on two
    assert plan(ws, plans, 30).configurations == ["3d_fullres"]
    assert plan(ws, plans, 30, parallel=2).configurations == ["3d_fullres", "2d"]


def test_every_decision_line(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    rp = plan(ws, plans, 120)
    d = rp.decisions
    assert d[0].startswith("budget 120 min on cpu, 1 job at a time; candidates 3d_fullres, 2d (primary 3d_fullres), "
                           "folds 0-4; 260 cases, ~52 validation cases per fold (fingerprint.json)")
    assert d[1].startswith("3d_fullres: 0.47 s/iteration given (unet, batch 4, patch 40x56x40); final validation")
    assert d[2].startswith("2d: 0.1 s/iteration given (unet, batch 16, patch 56x40)")
    assert d[3] == "minimum 300 iterations per fold (adam on cpu; documentation/study_budget.md)"
    assert re.fullmatch(r"3d_fullres: 5 folds x [\d.]+ min = ~[\d,]+ iterations each \(final validation ~\d+ s\)", d[4])
    assert re.fullmatch(r"2d: 5 folds x [\d.]+ min = ~[\d,]+ iterations each \(final validation ~\d+ s\)", d[5])
    assert d[6] == "ensemble: find-best compares 3d_fullres, 2d and their pairs"
    assert re.fullmatch(r"wall time: 10 jobs in 10 rounds of [\d.]+ min \+ find-best ~[\d.]+ min = ~[\d.]+ of 120 min "
                        r"\([\d.]+ min kept as margin\)", d[7])
    assert len(d) == 8
    its = int(re.search(r"~([\d,]+) iterations", d[4]).group(1).replace(",", ""))
    assert its == rp.iterations_per_fold["3d_fullres"]
    assert f"x {rp.fold_minutes:.1f} min" in d[4]


def test_the_trainers_iteration_cap_ends_the_study_early(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    rp = plan(ws, plans, 100 * 60 * 24)
    assert set(rp.iterations_per_fold.values()) == {50_000}  # 1000 epochs x 50 on a CPU
    assert any("iteration cap" in d and "finishes early" in d for d in rp.decisions)
    assert rp.estimated_wall_min < 0.5 * rp.budget_min


def test_cost_model_matches_a_measured_fold(tmp_path):
    """A 20-minute Hippocampus fold at 0.47 s/iteration trained 2,396 iterations (benchmarks.md)."""
    ws, plans = hippocampus_workspace(tmp_path)
    cost = budget._fold_cost(ws, plans, "3d_fullres", budget._Timing(0.47, 0.47 * budget.PATCH_FORWARD_SHARE / 4),
                             False, False, 5)
    assert cost.iterations(20 * 60) == pytest.approx(2396, rel=0.03)


def test_candidates_are_the_callers(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    rp = plan(ws, plans, 120, configurations=["2d"], folds=[1, 3])
    assert rp.configurations == ["2d"] and rp.folds == [1, 3] and list(rp.step_seconds) == ["2d"]
    short = plan(ws, plans, 4, configurations=["3d_fullres"], folds=[4, 2, 0])
    assert short.folds == [4]  # dropped from the end of the caller's order
    with pytest.raises(UserError, match="3d_lowres.*not planned"):
        plan(ws, plans, 60, configurations=["3d_lowres"])
    with pytest.raises(UserError, match="--folds 5: this dataset has folds 0-4"):
        plan(ws, plans, 60, folds=[5])
    with pytest.raises(UserError, match="--parallel"):
        plan(ws, plans, 60, parallel=0)
    with pytest.raises(UserError, match="--time-budget"):
        plan(ws, plans, 0)
    with pytest.raises(UserError, match="positive"):
        plan(ws, plans, 60, steps={"3d_fullres": 0.0, "2d": 0.1})
    # a lower minimum lets more fit
    assert plan(ws, plans, 8, min_iterations=100).folds == [0, 1, 2, 3, 4]


def test_a_2d_dataset_trains_2d_first(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path, configurations=("2d",))
    rp = plan(ws, plans, 30)
    assert rp.configurations == ["2d"] and rp.folds == [0, 1, 2, 3, 4]


def test_folds_come_from_splits_or_the_cases(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path / "a", num_cases=3)
    assert plan(ws, plans, 60).folds == [0, 1, 2]  # fewer cases than 5 folds
    ws, plans = hippocampus_workspace(tmp_path / "b")
    write_json(ws.splits_file, [{"train": [], "val": []}] * 4)
    assert plan(ws, plans, 60).folds == [0, 1, 2, 3]
    ws, plans = hippocampus_workspace(tmp_path / "c", num_cases=1)
    with pytest.raises(UserError, match="too few to cross-validate"):
        plan(ws, plans, 60)


# ---------------------------------------------------------------- run_plan.json

def test_save_load_round_trip_and_checks(tmp_path):
    ws, plans = hippocampus_workspace(tmp_path)
    rp = plan(ws, plans, 120)
    path = tmp_path / "run_plan.json"
    rp.save(path)
    assert not list(tmp_path.glob(".partial*"))
    back = RunPlan.load(path)
    assert back == rp and isinstance(back.estimates["2d"], budget.ConfigurationEstimate)
    assert RunPlan.from_dict(json.loads(json.dumps(rp.to_dict()))) == rp

    d = rp.to_dict()
    write_json(path, {**d, "version": 2})
    with pytest.raises(UserError, match=r"run_plan.json: run plan version 2 is not supported"):
        RunPlan.load(path)
    write_json(path, {k: v for k, v in d.items() if k != "fold_minutes"})
    with pytest.raises(UserError, match="missing field.*fold_minutes"):
        RunPlan.load(path)
    write_json(path, {**d, "extra": 1})
    with pytest.raises(UserError, match="unknown field.*extra"):
        RunPlan.load(path)
    broken = json.loads(json.dumps(d))
    del broken["estimates"]["2d"]["forward_seconds"]
    write_json(path, broken)
    with pytest.raises(UserError, match="estimates entry: missing field.*forward_seconds"):
        RunPlan.load(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="run_plan.json"):
        RunPlan.load(path)
    with pytest.raises(UserError, match="does not exist"):
        RunPlan.load(tmp_path / "none.json")


# ---------------------------------------------------------------- measuring

def test_measure_step_seconds_on_a_tiny_plan(tmp_path):
    from tests.trainers.test_base import make_workspace

    ws = make_workspace(tmp_path, with_2d=True)
    plans = Plans.load(ws.plans_file)
    steps = measure_step_seconds(ws, plans, ["3d_fullres", "2d"], device="cpu", steps=1)
    assert set(steps) == {"3d_fullres", "2d"} and all(0 < s < 30 for s in steps.values())
    with pytest.raises(UserError, match="3d_lowres"):
        measure_step_seconds(ws, plans, ["3d_lowres"], device="cpu")
    # configurations missing from step_seconds are measured; shapes come from the preprocessed
    # cases when there is no fingerprint
    rp = plan_budget(ws, plans, 10, 1, None, None, device="cpu", step_seconds={"3d_fullres": 0.01})
    assert rp.estimates["2d"].step_measured and not rp.estimates["3d_fullres"].step_measured
    assert rp.step_seconds["3d_fullres"] == 0.01 and rp.step_seconds["2d"] > 0
    assert "no fingerprint.json" in rp.decisions[0] and rp.folds == [0, 1, 2, 3, 4]
