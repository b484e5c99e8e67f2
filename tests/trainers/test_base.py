"""The shared training loop, end to end on a tiny synthetic dataset (seconds on a CPU)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.atomic import read_json, write_json
from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans
from autoseg.trainers.base import TrainingSettings, count_sliding_windows, poly_lr
from autoseg.workspace import DatasetWorkspace


def make_workspace(tmp_path: Path, num_cases: int = 5, name: str = "Tiny", with_2d: bool = False) -> DatasetWorkspace:
    """A raw synthetic dataset plus hand-made tiny plans (``3d_fullres``, and ``2d`` if asked),
    preprocessed with the real pipeline."""
    from autoseg.dataset.layout import load_dataset
    from autoseg.preprocessing.runner import preprocess_dataset
    from autoseg.synthetic import make_dataset

    raw = make_dataset(tmp_path / "raw" / name, num_cases=num_cases, shape=(16, 20, 20), seed=0)
    spec = load_dataset(raw)
    ws = DatasetWorkspace(tmp_path / "ws" / name)
    ws.root.mkdir(parents=True)
    write_json(ws.source_file, {"raw_path": str(raw), "layout": spec.layout})
    topo = NetworkTopology(features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]])
    config = ConfigurationPlan(name="3d_fullres", dim=3, data_identifier="tiny_3d", spacing=[1.0, 1.0, 1.0],
                               median_shape=[16, 20, 20], patch_size=[16, 16, 16], batch_size=2, network=topo)
    configurations = {"3d_fullres": config}
    if with_2d:
        topo2d = NetworkTopology(features_per_stage=[4, 8], kernel_sizes=[[3, 3]] * 2, strides=[[1, 1], [2, 2]])
        configurations["2d"] = ConfigurationPlan(name="2d", dim=2, data_identifier="tiny_2d", spacing=[1.0, 1.0, 1.0],
                                                 median_shape=[16, 20, 20], patch_size=[16, 16], batch_size=2,
                                                 network=topo2d)
    plans = Plans(version=1, dataset_name=name, planner="test", profile="cpu", gpu_memory_gb=0,
                  channel_names=["MRI"], label_values=[0, 1, 2], label_names=["background", "inner", "outer"],
                  normalization=[ChannelNormalization("zscore")], configurations=configurations)
    plans.save(ws.plans_file)
    preprocess_dataset(spec, plans, list(configurations), ws, num_workers=1, progress=False)
    return ws


def test_poly_lr_and_window_count():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 100, 100) == 0.0
    assert 0 < poly_lr(0.01, 50, 100) < 0.01 * 0.55
    assert count_sliding_windows([16, 20, 20], [16, 16, 16], 3) == 1 * 2 * 2
    assert count_sliding_windows([10, 64, 64], [32, 32], 2) == 10 * 3 * 3


def test_train_end_to_end(tmp_path):
    from autoseg.cli import main

    ws = make_workspace(tmp_path)
    assert main(["train", "Tiny", "3d_fullres", "0", "--workspace", str(tmp_path / "ws"), "--epochs", "2",
                 "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu", "--num-workers", "0"]) == 0
    fold = ws.fold_dir("unet", "3d_fullres", 0)
    assert (ws.results_dir("unet", "3d_fullres") / "plans.json").is_file()
    assert (fold / "checkpoint_final.pt").is_file() and (fold / "checkpoint_best.pt").is_file()
    assert not (fold / "checkpoint_latest.pt").exists()
    done = read_json(fold / "done.json")
    assert done["validated"] and done["iterations"] == 4 and done["fold"] == "0" and 0 <= done["mean_dice"] <= 1
    assert (fold / "progress.png").stat().st_size > 1000
    log = read_json(fold / "log.json")
    assert [e["epoch"] for e in log["epochs"]] == [0, 1]
    assert log["epochs"][-1]["iterations"] == 4
    assert len(log["epochs"][0]["pseudo_dice"]) == 2 and log["epochs"][0]["lr"] == pytest.approx(1e-3 * (1 - 2 / 4) ** 0.9)
    assert log["optimizer"] == "adam"  # the CPU default; see Trainer.resolve_optimizer
    state = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert state["epoch"] == 2 and state["iteration"] == 4 and state["trainer"] == "unet" and state["fold"] == "0"
    assert state["mirror_axes"] == [0, 1, 2]  # the hand-made plan has no mirror_axes: every axis
    splits = read_json(ws.splits_file)
    assert len(splits) == 5
    val = splits[0]["val"]
    summary = read_json(fold / "validation" / "summary.json")
    assert summary["num_cases"] == len(val) and set(summary["mean"]) == {"1", "2"}
    for cid in val:
        assert (fold / "validation" / f"{cid}.nii.gz").is_file()
        probs = np.load(fold / "validation" / f"{cid}_probabilities.npy")
        assert probs.dtype == np.float16 and probs.shape[0] == 3
    # a second run without --continue refuses to overwrite (in-process: saves a torch import)
    from autoseg.errors import UserError
    from autoseg.trainers.registry import get_trainer

    with pytest.raises(UserError, match="--continue"):
        get_trainer("unet")(ws, "3d_fullres", 0, TrainingSettings(device="cpu")).run()


def test_bad_fold_is_a_clear_error(tmp_path, capsys):
    from autoseg.cli import main

    make_workspace(tmp_path, num_cases=3)
    assert main(["train", "Tiny", "3d_fullres", "4", "--workspace", str(tmp_path / "ws"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "fold 4 does not exist: this dataset has 3 folds" in err and "Traceback" not in err


def test_plan_and_preprocess_then_train_2d_within_time_budget(tmp_path):
    """The real planner's output trains; a time budget bounds training plus final validation."""
    import time

    from autoseg.cli import main
    from autoseg.synthetic import make_dataset

    raw = make_dataset(tmp_path / "raw" / "Synth", num_cases=5, shape=(8, 24, 24), seed=1)
    ws_dir = str(tmp_path / "ws")
    assert main(["plan-and-preprocess", str(raw), "--workspace", ws_dir, "-np", "1", "--profile", "cpu",
                 "-c", "2d"]) == 0
    budget_min = 0.2
    t0 = time.monotonic()
    assert main(["train", str(raw), "2d", "1", "--workspace", ws_dir, "--epochs", "1000", "--iters-per-epoch", "2",
                 "--val-iters", "1", "--device", "cpu", "--num-workers", "0", "--time-budget", str(budget_min)]) == 0
    elapsed = time.monotonic() - t0
    ws = DatasetWorkspace(tmp_path / "ws" / "Synth")
    fold = ws.fold_dir("unet", "2d", 1)
    log = read_json(fold / "log.json")
    # stopped by the budget, far below the 2000-iteration cap, and annealed to lr 0 at its end
    assert log["total_iterations"] < 2000 and log["epochs"][-1]["iterations"] == log["total_iterations"]
    assert log["epochs"][-1]["lr"] == 0.0
    assert elapsed < budget_min * 60 + 8, elapsed  # slack: a loaded 2-core test machine
    assert read_json(fold / "validation" / "summary.json")["num_cases"] == 1
    assert log["budget_plan"]["final_validation_estimate_s"] > 0


def test_budget_stops_inside_the_first_epoch(tmp_path):
    """A budget shorter than one epoch ends training mid-epoch instead of overrunning it."""
    import time

    from autoseg.cli import main

    make_workspace(tmp_path)
    t0 = time.monotonic()
    assert main(["train", "Tiny", "3d_fullres", "0", "--workspace", str(tmp_path / "ws"), "--epochs", "5",
                 "--iters-per-epoch", "100000", "--val-iters", "1", "--device", "cpu", "--num-workers", "0",
                 "--time-budget", "0.1"]) == 0
    elapsed = time.monotonic() - t0
    log = read_json(DatasetWorkspace(tmp_path / "ws" / "Tiny").fold_dir("unet", "3d_fullres", 0) / "log.json")
    # the first epoch stops at the deadline; a probe retaken after it may shrink the validation
    # reserve and leave time for a short second one, which stops at the new deadline
    assert 0 < log["epochs"][0]["iterations"] < 100000
    assert all(e["iterations"] < 100000 for e in log["epochs"])
    assert elapsed < 0.1 * 60 + 8, elapsed


def test_sgd_optimizer_is_selectable(tmp_path):
    from autoseg.cli import main

    make_workspace(tmp_path, num_cases=3)
    assert main(["train", "Tiny", "3d_fullres", "0", "--workspace", str(tmp_path / "ws"), "--epochs", "1",
                 "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu", "--optimizer", "sgd",
                 "--no-validation"]) == 0
    log = read_json(DatasetWorkspace(tmp_path / "ws" / "Tiny").fold_dir("unet", "3d_fullres", 0) / "log.json")
    assert log["optimizer"] == "sgd" and log["initial_lr"] == 0.01


def test_loss_is_selectable_recorded_and_kept_on_resume(tmp_path, capsys):
    from autoseg.cli import main

    ws = make_workspace(tmp_path, num_cases=3)
    args = ["train", "Tiny", "3d_fullres", "0", "--workspace", str(tmp_path / "ws"), "--epochs", "1",
            "--iters-per-epoch", "1", "--val-iters", "1", "--device", "cpu", "--num-workers", "0", "--no-validation"]
    assert main(args + ["--loss", "focal_dice"]) == 0
    fold = ws.fold_dir("unet", "3d_fullres", 0)
    assert read_json(fold / "log.json")["loss"] == "focal_dice"
    assert torch.load(fold / "checkpoint_final.pt", weights_only=True)["loss"] == "focal_dice"
    assert main(args + ["--continue", "--loss", "mse"]) == 2
    assert "trained with --loss focal_dice" in capsys.readouterr().err
    assert main(args + ["--loss", "dice"]) == 2
    assert "unknown loss 'dice'" in capsys.readouterr().err


def test_augmentation_auto_is_light_for_short_runs_only(tmp_path):
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=3)

    def chosen(**kw) -> str:
        return UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", **kw)).augmentation

    assert chosen(time_budget_min=20) == "light"
    assert chosen(time_budget_min=240) == "full"
    assert chosen(epochs=10, iters_per_epoch=50) == "light"
    assert chosen() == "full"  # 1000 epochs: a full-length run
    assert chosen(time_budget_min=20, augmentation="full") == "full"
    from autoseg.errors import UserError
    with pytest.raises(UserError, match="augmentation"):
        chosen(augmentation="heavy")


def test_cpu_final_validation_mirrors_only_when_cheap_within_the_budget(tmp_path):
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=5)

    def trainer(**kw) -> UNetTrainer:
        t = UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", **kw))
        t._forward_time_s = 0.5  # seconds per patch forward, as if measured
        return t

    # one validation case of 1 window: 8 flips cost 7 x 0.5 s extra = 3.5 s
    assert trainer(time_budget_min=20)._tta() is True         # 3.5 s <= 5% of 1200 s
    assert trainer(time_budget_min=1)._tta() is False         # 3.5 s > 5% of 60 s
    assert trainer()._tta() is False                          # unbudgeted CPU run: never
    budgeted = trainer(time_budget_min=20)
    assert budgeted.estimate_final_validation_s() > trainer(time_budget_min=1).estimate_final_validation_s()


def test_mirror_axes_follow_the_plan_into_validation_and_checkpoint(tmp_path):
    """A plan without mirror axes: no mirrored training patches, no test-time flips (not even in
    a budget where they would be cheap), and the checkpoint records the axes for prediction."""
    from autoseg.planners.plans import Plans
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=5)
    plans = Plans.load(ws.plans_file)
    plans.configurations["3d_fullres"].mirror_axes = []
    plans.save(ws.plans_file)
    t = UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", time_budget_min=20))
    t._forward_time_s = 0.5
    assert t.mirror_axes() == [] and t._tta() is False
    plans.configurations["3d_fullres"].mirror_axes = [2]
    plans.save(ws.plans_file)
    t = UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", time_budget_min=20))
    t._forward_time_s = 0.5
    assert t.mirror_axes() == [2] and t._tta() is True
    # one flip axis: 2 forward passes per window, not 8
    assert t.estimate_final_validation_s() == pytest.approx(t._validation_cost_s(2))
    assert t.estimate_final_validation_s() < t._validation_cost_s(8)


def test_the_plans_edge_flush_reaches_the_patch_sampler(tmp_path):
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=5)
    plans = Plans.load(ws.plans_file)
    case = sorted(ws.root.glob("preprocessed/tiny_3d/*_seg.npy"))[0].name[:-len("_seg.npy")]
    assert UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu")).build_sampler([case], 0).edge_flush == 0.0
    plans.configurations["3d_fullres"].edge_flush = 0.2
    plans.save(ws.plans_file)
    assert UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu")).build_sampler([case], 0).edge_flush == 0.2


def test_tta_choice_compares_expected_cost_without_the_safety_margin(tmp_path):
    """The 1.2x margin protects the deadline, not the TTA choice: mirroring whose expected extra
    cost is within 5% of the budget is chosen even when the margined figure is not."""
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=5)
    t = UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", time_budget_min=20))
    t._forward_time_s = 1.0
    flips = 2 ** len(t.mirror_axes())
    expected = t._validation_cost_s(flips, margin=False) - t._validation_cost_s(1, margin=False)
    # a budget whose 5% lies between the expected and the margined extra cost
    t.settings.time_budget_min = expected * 1.1 / (t.tta_budget_share * 60)
    assert expected * t.validation_time_margin > t.tta_budget_share * t.settings.time_budget_min * 60
    assert t._tta() is True
    # the reserve still carries the margin
    assert t.estimate_final_validation_s() == pytest.approx(t._validation_cost_s(flips))
    t = UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", time_budget_min=expected * 0.9 / (t.tta_budget_share * 60)))
    t._forward_time_s = 1.0
    assert t._tta() is False


def test_forward_probe_keeps_the_fastest_of_the_first_epochs_then_settles(tmp_path, monkeypatch):
    """A slow first probe (a fresh process) must not fix the validation reserve: the first
    epochs probe again, the fastest reading wins and the TTA choice follows it; later epochs
    change neither, so the reserve and the final validation agree."""
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=5)
    t = UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", time_budget_min=1))
    readings = iter([2.0, 0.05, 0.3, 0.01])
    monkeypatch.setattr(t, "_measure_forward_time", lambda passes=3: next(readings))
    t._refresh_forward_time()  # no probe yet: the first reading
    assert t._forward_time_s == 2.0 and t._tta() is False  # 7 extra passes x 2 s > 5% of 60 s
    t._refresh_forward_time()
    assert t._forward_time_s == 0.05 and t._tta() is True  # the choice is made again
    t._refresh_forward_time()
    assert t._forward_time_s == 0.05  # a slower reading never raises it
    t.epoch = t.forward_probe_epochs
    t._refresh_forward_time()  # settled: no more probes
    assert t._forward_time_s == 0.05 and t._tta() is True


def test_measure_forward_time_takes_the_fastest_timed_pass(tmp_path, monkeypatch):
    from autoseg.trainers import base
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=5)
    t = UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", time_budget_min=1))
    t._setup()
    clock = iter([0.0, 5.0, 10.0, 10.5, 20.0, 20.25, 30.0, 30.75])  # warm-up 5 s, then 0.5, 0.25, 0.75
    monkeypatch.setattr(base.time, "perf_counter", lambda: next(clock))
    assert t._measure_forward_time(passes=3) == 0.25


def _tiny_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2, 1, 16, 16, 16, generator=g)
    target = [torch.randint(0, 3, (2, 1, 16 // s, 16 // s, 16 // s), generator=g) for s in (1, 2)]
    return {"data": data, "target": target}


def test_a_non_finite_gradient_skips_the_step_and_leaves_weights_and_adam_alone(tmp_path):
    """One bad gradient (torch's CPU bf16 Conv3d backward can return inf/NaN) must not reach
    the weights: Adam would carry the NaN in its moments for the rest of the run."""
    from autoseg.trainers.unet import UNetTrainer

    t = UNetTrainer(make_workspace(tmp_path, num_cases=3), "3d_fullres", 0, TrainingSettings(device="cpu"))
    t._setup()
    before = [p.detach().clone() for p in t.network.parameters()]
    first = next(t.network.parameters())
    hook = first.register_hook(lambda g: g * float("nan"))
    t.train_step(_tiny_batch())
    assert t._skipped_steps == 1
    assert all(torch.equal(a, p) for a, p in zip(before, t.network.parameters()))
    assert not t.optimizer.state  # no moment was updated either
    hook.remove()
    t.train_step(_tiny_batch())
    assert t._skipped_steps == 1 and not torch.equal(before[0], first)
    assert all(torch.isfinite(p).all() for p in t.network.parameters())


def test_an_epoch_of_only_non_finite_steps_stops_with_a_clear_error(tmp_path, monkeypatch):
    import itertools

    from tqdm import tqdm

    from autoseg.trainers.unet import UNetTrainer

    t = UNetTrainer(make_workspace(tmp_path, num_cases=3), "3d_fullres", 0,
                    TrainingSettings(device="cpu", epochs=1, iters_per_epoch=3, val_iters=0))
    t._setup()

    def diverged(batch):
        t._skipped_steps += 1
        return float("nan")

    monkeypatch.setattr(t, "train_step", diverged)
    with pytest.raises(RuntimeError, match="every one of epoch 0's 3 steps had a non-finite gradient"):
        t._run_epoch(itertools.repeat(None), None, {}, lambda it, **kw: tqdm(it, disable=True))
    assert not (t.fold_dir / "checkpoint_latest.pt").exists()


def test_num_threads_sets_torchs_thread_count_for_the_run(tmp_path):
    from autoseg.trainers.unet import UNetTrainer

    ws = make_workspace(tmp_path, num_cases=3)
    before = torch.get_num_threads()
    try:
        UNetTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", num_threads=1))._setup()
        assert torch.get_num_threads() == 1  # a study's job shares the machine's cores with its siblings
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("k", [2, 3, 260])
def test_class_counts_equal_per_class_counting(k):
    from autoseg.trainers.base import class_counts

    g = torch.Generator().manual_seed(k)
    pred, tgt = torch.randint(0, k, (2, 6, 7, 5), generator=g), torch.randint(0, k, (2, 6, 7, 5), generator=g)
    expected = np.array([[float(((pred == c) & (tgt == c)).sum()) for c in range(1, k)],
                         [float(((pred == c) & (tgt != c)).sum()) for c in range(1, k)],
                         [float(((pred != c) & (tgt == c)).sum()) for c in range(1, k)]])
    np.testing.assert_array_equal(class_counts(pred, tgt, k), expected)
