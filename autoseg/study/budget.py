"""A time budget for a whole study: which configurations, how many folds, how long each fold.

``autoseg run DATASET --time-budget 2h`` asks :func:`plan_budget` what fits: it measures the
seconds per training iteration of each planned configuration on this machine
(:func:`measure_step_seconds`), costs every fold (start-up, training, per-epoch patch validation,
the final sliding-window validation of its cases), adds find-best and a safety margin, and
chooses by one rule (documentation/study_budget.md, "Time budget for a study"):

1. the plan's primary configuration (``3d_fullres`` if planned, else ``2d``) with all folds;
2. fewer folds, down to one, only when all folds of it cannot reach :data:`MIN_ITERATIONS`;
3. further configurations, so an ensemble candidate, only when each still gets the minimum.

The answer is a :class:`RunPlan` (``run_plan.json``): the per-fold ``--time-budget`` every fold
gets, what was estimated, and one human line per decision.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autoseg.atomic import read_json, write_json
from autoseg.errors import UserError
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.workspace import DatasetWorkspace

RUN_PLAN_VERSION = 1

# Iterations a fold needs to be worth training, by the optimizer the trainer picks on the device
# (Trainer.resolve_optimizer: Adam on a CPU, SGD on a GPU). Adam: on Hippocampus it left the
# all-background start by iteration 60 and had both classes above 0.6 training Dice by 200
# (training.md, "Why Adam on a CPU"); a 300-iteration fold reached validation Dice 0.81 against
# 0.89 after 2,400 (benchmarks.md, bf16 and 20-minute runs). SGD with momentum 0.99 was still
# all-background at 200 and in a 213-iteration run, and nothing here measures when it leaves it:
# 2,500 is ten of nnU-Net's 250-iteration GPU epochs, a few minutes on a GPU.
MIN_ITERATIONS = {"adam": 300, "sgd": 2_500}

# Costs outside what each configuration's step time gives. Calibrated on Hippocampus 3d_fullres,
# 2 CPU cores: the model below predicts 2,398 iterations for a 20-minute fold at 0.47 s/iteration,
# the trainer ran 2,396 (benchmarks.md, "With the faster norm and contiguous memory").
JOB_START_S = 5.0  # a fold's process before the trainer's clock starts: imports measured 2.1 s
TRAINER_SETUP_S = 5.0  # inside the fold's budget: network, forward probe, loader thread, warm-up
TRAINER_RESERVE_S = 5.0  # Trainer._replan_for_budget keeps 5 s for the final checkpoint and log
EPOCH_FIXED_S = 0.5  # per epoch: checkpoint_latest (and best), log.json, progress.png
# Forward passes as shares of a measured training step (forward + backward + optimizer) of the
# same batch: measured 0.25-0.32 for a batch, 0.15-0.45 for one patch times the batch size
# (Hippocampus and ACDC 2d and 3d_fullres plans, bf16, 2 cores). The larger values are used, so
# the validation is over- rather than under-estimated; a measured plan times the patch itself.
BATCH_FORWARD_SHARE = 0.3
PATCH_FORWARD_SHARE = 0.45
EXPORT_S_PER_VOXEL_CLASS = 5e-8  # the trainer's own estimate for resampling and metrics
EXPORT_S_PER_CASE = 0.1
# find-best scores every candidate (each configuration, each pair) on every case with and without
# each postprocessing step: 48 ACDC frames x 6 candidates took 22.0 s (evaluation.md), about
# 4e-8 s per original voxel and class per candidate and case.
FIND_BEST_BASE_S = 10.0
FIND_BEST_S_PER_VOXEL_CLASS = 4e-8
# Kept free: jobs start late on a busy machine, find-best and the per-case estimates can be off.
# A fold itself cannot overrun much: the trainer fits its iterations and validation to its budget.
MARGIN_SHARE = 0.05
MARGIN_MIN_S = 30.0

PRIMARY_ORDER = ("3d_fullres", "2d")


# ---------------------------------------------------------------- the plan file


@dataclass
class ConfigurationEstimate:
    """What one candidate configuration costs per fold, and what it would get at the plan's budget."""

    configuration: str
    trainer: str
    step_seconds: float  # one training iteration (batch) on this machine
    step_measured: bool  # False: given by the caller
    forward_seconds: float  # one eval forward pass of one sliding window
    iters_per_epoch: int
    epoch_overhead_s: float  # patch-validation batches + checkpoint and log, per epoch
    validation_cases: int  # per fold (the largest fold)
    validation_windows: int  # sliding windows over those cases
    final_validation_s: float  # estimated, with the trainer's safety factor
    final_validation_tta: bool
    iteration_cap: int  # the trainer's --epochs x --iters-per-epoch default
    selected: bool = False
    iterations_per_fold: int = 0  # at the plan's fold_minutes; also filled in for dropped ones

    @classmethod
    def from_dict(cls, d: dict) -> "ConfigurationEstimate":
        return cls(**_fields_of(cls, d, "estimates entry"))


@dataclass
class RunPlan:
    """What a study trains within its budget, and why (``run_plan.json``)."""

    budget_min: float
    configurations: list[str]  # in order: the primary first
    folds: list[int]
    fold_minutes: float  # --time-budget of every `autoseg train` of the plan
    ensemble: bool  # 2+ configurations: find-best compares their pairs too
    decisions: list[str]
    step_seconds: dict[str, float]  # every candidate's, measured or given
    parallel: int = 1
    device: str = "cpu"
    optimizer: str = "adam"
    min_iterations: int = MIN_ITERATIONS["adam"]
    iterations_per_fold: dict[str, int] = field(default_factory=dict)  # the selected configurations'
    estimated_wall_min: float = 0.0  # measuring + jobs + find-best, without the margin
    measure_min: float = 0.0  # spent measuring step times, part of the budget
    margin_min: float = 0.0
    find_best_min: float = 0.0
    estimates: dict[str, ConfigurationEstimate] = field(default_factory=dict)
    version: int = RUN_PLAN_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunPlan":
        if not isinstance(d, dict):
            raise UserError("run plan: expected a JSON object")
        if d.get("version") != RUN_PLAN_VERSION:
            raise UserError(f"run plan version {d.get('version')!r} is not supported (expected {RUN_PLAN_VERSION}); "
                            "plan the study again")
        values = _fields_of(cls, d, "run plan")
        try:
            values["estimates"] = {str(k): v if isinstance(v, ConfigurationEstimate) else ConfigurationEstimate.from_dict(v)
                                   for k, v in values["estimates"].items()}
            values["budget_min"] = float(values["budget_min"])
            values["fold_minutes"] = float(values["fold_minutes"])
            values["folds"] = [int(k) for k in values["folds"]]
            values["configurations"] = [str(c) for c in values["configurations"]]
            values["step_seconds"] = {str(k): float(v) for k, v in values["step_seconds"].items()}
            values["iterations_per_fold"] = {str(k): int(v) for k, v in values["iterations_per_fold"].items()}
            values["decisions"] = [str(line) for line in values["decisions"]]
        except (AttributeError, TypeError, ValueError) as e:
            raise UserError(f"run plan: a field has the wrong type ({e})") from None
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunPlan":
        if not Path(path).is_file():
            raise UserError(f"{path} does not exist")
        try:
            return cls.from_dict(read_json(path))
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        except ValueError as e:  # not JSON
            raise UserError(f"{path}: not a readable run plan ({e})") from None


def _fields_of(cls: type, d: dict, what: str) -> dict[str, Any]:
    """The dataclass's fields from ``d``; a missing or unknown field is named in a UserError."""
    if not isinstance(d, dict):
        raise UserError(f"{what}: expected a JSON object")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in d]
    if missing:
        raise UserError(f"{what}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise UserError(f"{what}: unknown field(s) {', '.join(unknown)}")
    return {n: d[n] for n in names}


# ---------------------------------------------------------------- durations

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d*)?|\.\d+)h)?(?:(?P<m>\d+(?:\.\d*)?|\.\d+)m(?:in)?)?"
                       r"(?:(?P<s>\d+(?:\.\d*)?|\.\d+)s)?$")


def parse_duration(text: str) -> float:
    """Minutes in ``text``: ``2h``, ``90m``, ``1h30m``, ``30s``, or a bare number of minutes (``45``)."""
    raw = str(text)
    t = re.sub(r"\s+", "", raw.lower())
    hint = "give a duration such as 2h, 90m, 1h30m, 45 (minutes) or 30s"
    try:
        minutes = float(t)
    except ValueError:
        m = _DURATION.match(t)
        if not t or m is None or not any(m.groupdict().values()):
            raise UserError(f"--time-budget {raw!r} is not a duration: {hint}") from None
        parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        minutes = parts["h"] * 60 + parts["m"] + parts["s"] / 60
    if not math.isfinite(minutes) or minutes <= 0:
        raise UserError(f"--time-budget {raw!r} must be a positive duration: {hint}")
    return minutes


# ---------------------------------------------------------------- measuring a step


@dataclass
class _Timing:
    step_s: float
    forward_s: float


def _kind(device: Any) -> str:
    return "gpu" if device.type in ("cuda", "mps") else "cpu"


def _optimizer_name(device: Any) -> str:
    # Trainer.resolve_optimizer's "auto"
    return "sgd" if _kind(device) == "gpu" else "adam"


def _trainer_class(config: ConfigurationPlan) -> type:
    from autoseg.trainers.registry import get_trainer

    return get_trainer(config.trainer)


def _check_configurations(ws: DatasetWorkspace, plans: Plans, names: list[str]) -> None:
    unknown = [n for n in names if n not in plans.configurations]
    if unknown:
        raise UserError(f"configuration(s) {', '.join(unknown)} not planned in {ws.plans_file}; "
                        f"planned: {', '.join(plans.configurations)}")


def _time_configuration(ws: DatasetWorkspace, plans: Plans, name: str, device: Any, steps: int) -> _Timing:
    """Seconds of one training step (the fastest of ``steps`` after a warm-up) and of one
    sliding-window forward pass, as the configuration's planned trainer runs them."""
    import torch

    from autoseg.device import resolve_precision
    from autoseg.networks import build_network, deep_supervision_scales
    from autoseg.trainers.losses import DeepSupervisionLoss, deep_supervision_weights, make_loss

    planned = plans.configuration(name)
    trainer_cls = _trainer_class(planned)
    config = dataclasses.replace(planned, architecture=trainer_cls.architecture)
    net = build_network(plans, config).to(device)
    dtype, use_scaler = resolve_precision("auto", device)
    if _optimizer_name(device) == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=trainer_cls.adam_lr, weight_decay=trainer_cls.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=trainer_cls.initial_lr, momentum=trainer_cls.momentum,
                              weight_decay=trainer_cls.weight_decay, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    # a 2.5D network takes each channel's neighbouring slices as channels
    channels = len(plans.channel_names) * int(getattr(net, "context_slices", 1))
    scales = deep_supervision_scales(config.network)
    x = torch.randn(config.batch_size, channels, *config.patch_size, device=device)
    targets = [torch.randint(0, plans.num_classes,
                             (config.batch_size, 1, *[max(1, int(round(p / s))) for p, s in zip(config.patch_size, sc)]),
                             device=device) for sc in scales]
    loss_fn = DeepSupervisionLoss(make_loss(trainer_cls.default_loss), deep_supervision_weights(len(scales)))

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = net(x)
            out = [out] if isinstance(out, torch.Tensor) else list(out)
            loss = loss_fn(out, targets[:len(out)])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), trainer_cls.grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), trainer_cls.grad_clip)
            opt.step()

    window = torch.randn(1, channels, *config.inference_patch, device=device)

    @torch.no_grad()
    def forward() -> None:
        with autocast():
            net(window)

    def fastest(call: Callable[[], None]) -> float:
        # the fastest, not the median: a step only ever runs slower than training will (a fresh
        # process, kernels chosen on first use, other jobs); call() once first as the warm-up
        times = []
        for _ in range(steps + 1):
            sync()
            t = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - t)
        return float(min(times[1:]))

    net.train()
    step_s = fastest(step)
    net.eval()
    forward_s = fastest(forward)
    del net, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _Timing(step_s, forward_s)


def _measure(ws: DatasetWorkspace, plans: Plans, configurations: list[str], device: str, steps: int) -> dict[str, _Timing]:
    import torch
    from tqdm import tqdm

    from autoseg.device import resolve_device

    _check_configurations(ws, plans, configurations)
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    dev = resolve_device(device)
    # the settings Trainer._setup makes, for the measurement only
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    elif dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        return {name: _time_configuration(ws, plans, name, dev, steps)
                for name in tqdm(configurations, desc="measuring step times", unit="configuration", disable=None)}
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def measure_step_seconds(ws: DatasetWorkspace, plans: Plans, configurations: list[str], device: str = "auto",
                         steps: int = 3) -> dict[str, float]:
    """Seconds per training iteration of each configuration's planned trainer on this machine.

    The configuration's network (its trainer's architecture) takes forward + backward + optimizer
    steps on random data at the planned patch and batch size, under the precision and optimizer
    the trainer would use on ``device``; after one warm-up step, the fastest of ``steps``.
    Data loading is not timed: the trainer's loader thread hides it (documentation/networks.md).
    """
    return {name: t.step_s for name, t in _measure(ws, plans, list(configurations), device, steps).items()}


# ---------------------------------------------------------------- what a fold validates


@dataclass
class _CaseShapes:
    grid: list[list[int]]  # per case (z, y, x) on the configuration's grid
    original_voxels: float  # mean voxels per case in the original geometry (find-best's scoring)
    source: str


def _case_shapes(ws: DatasetWorkspace, plans: Plans, config: ConfigurationPlan) -> _CaseShapes:
    """Every case's shape on ``config``'s grid: from the fingerprint as the planner computes it
    (``Planner.resampled_shapes``), else from the preprocessed cases' properties."""
    if ws.fingerprint_file.is_file():
        from autoseg.fingerprint.fingerprint import Fingerprint

        try:
            fp = Fingerprint.load(ws.fingerprint_file)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{ws.fingerprint_file}: cannot be read ({e}); run 'autoseg plan-and-preprocess' again") from None
        if not fp.cases:
            raise UserError(f"{ws.fingerprint_file} lists no cases")
        shapes = fp.shapes_after_crop * fp.spacings / np.asarray(config.spacing, dtype=float)
        if fp.is_2d:
            shapes[:, 0] = 1
        shapes = np.maximum(np.round(shapes), 1).astype(int)
        original = float(np.mean([np.prod(c.shape) for c in fp.cases]))
        return _CaseShapes([list(map(int, s)) for s in shapes], original, ws.fingerprint_file.name)
    from autoseg.preprocessing.preprocessed import PreprocessedFolder

    folder = PreprocessedFolder(ws.preprocessed_dir(config.data_identifier))
    ids = folder.case_ids()
    if not ids:
        raise UserError(f"neither {ws.fingerprint_file} nor preprocessed cases of '{config.name}' exist; "
                        "run 'autoseg plan-and-preprocess' first")
    props = [folder.load_properties(cid) for cid in ids]
    return _CaseShapes([[int(v) for v in p["shape_after_resampling"]] for p in props],
                       float(np.mean([np.prod(p["original_shape"]) for p in props])),
                       f"preprocessed/{config.data_identifier} (no {ws.fingerprint_file.name})")


def _available_folds(ws: DatasetWorkspace, num_cases: int) -> int:
    """Folds the study can cross-validate on: splits.json's, else the number the trainer will make."""
    from autoseg.trainers.splits import DEFAULT_FOLDS

    if ws.splits_file.is_file():
        splits = read_json(ws.splits_file)
        if not isinstance(splits, list):
            raise UserError(f"{ws.splits_file}: expected a list of folds")
        return len(splits)
    return min(DEFAULT_FOLDS, num_cases) if num_cases >= 2 else 0


# ---------------------------------------------------------------- the cost model


@dataclass
class _FoldCost:
    """One configuration's cost model for a fold of ``T`` seconds (the trainer's --time-budget)."""

    estimate: ConfigurationEstimate
    gpu: bool
    flips: int  # test-time mirrorings the trainer would use
    tta_rule: bool | None  # the trainer's validation_tta (None: its own rule)
    tta_share: float
    margin: float  # the trainer's validation_time_margin
    export_s: float

    def validation_s(self, fold_s: float) -> tuple[float, bool]:
        e = self.estimate
        passes = e.validation_windows * e.forward_seconds
        if self.flips <= 1 or e.validation_cases == 0:
            tta = False
        elif self.tta_rule is not None:
            tta = self.tta_rule
        elif self.gpu:
            tta = True
        else:  # Trainer._tta on a CPU: only when the extra passes cost at most tta_share of the fold
            tta = (self.flips - 1) * passes <= self.tta_share * fold_s
        return self.margin * (passes * (self.flips if tta else 1) + self.export_s), tta

    def iterations(self, fold_s: float) -> int:
        e = self.estimate
        usable = fold_s - TRAINER_SETUP_S - TRAINER_RESERVE_S - self.validation_s(fold_s)[0]
        per_iteration = e.step_seconds + e.epoch_overhead_s / e.iters_per_epoch
        if usable <= 0 or per_iteration <= 0:
            return 0
        return int(min(e.iteration_cap, usable // per_iteration))


def _fold_cost(ws: DatasetWorkspace, plans: Plans, name: str, timing: _Timing, measured: bool, gpu: bool,
               n_folds: int) -> _FoldCost:
    from autoseg.trainers.base import count_sliding_windows

    config = plans.configuration(name)
    trainer_cls = _trainer_class(config)
    kind = "gpu" if gpu else "cpu"
    iters_per_epoch = int(trainer_cls.default_iters_per_epoch[kind])
    val_iters = int(trainer_cls.default_val_iters[kind])
    shapes = _case_shapes(ws, plans, config)
    per_fold = math.ceil(len(shapes.grid) / n_folds)  # the largest fold: folds differ by one patient's cases
    windows = [count_sliding_windows(s, config.inference_patch, config.dim, trainer_cls.validation_overlap)
               for s in shapes.grid]
    voxels = float(np.mean([np.prod(s) for s in shapes.grid]))
    axes = list(range(config.dim)) if config.mirror_axes is None else list(config.mirror_axes)
    estimate = ConfigurationEstimate(
        configuration=name, trainer=config.trainer, step_seconds=timing.step_s, step_measured=measured,
        forward_seconds=timing.forward_s, iters_per_epoch=iters_per_epoch,
        epoch_overhead_s=val_iters * timing.step_s * BATCH_FORWARD_SHARE + EPOCH_FIXED_S,
        validation_cases=per_fold, validation_windows=int(math.ceil(float(np.mean(windows)) * per_fold)),
        final_validation_s=0.0, final_validation_tta=False,
        iteration_cap=int(trainer_cls.default_epochs[kind]) * iters_per_epoch)
    export = per_fold * (voxels * plans.num_classes * EXPORT_S_PER_VOXEL_CLASS + EXPORT_S_PER_CASE)
    cost = _FoldCost(estimate, gpu, 2 ** len(axes), trainer_cls.validation_tta, float(trainer_cls.tta_budget_share),
                     float(trainer_cls.validation_time_margin), export)
    return cost


def _margin_s(budget_s: float) -> float:
    return max(MARGIN_MIN_S, MARGIN_SHARE * budget_s)


class _Study:
    """Wall time of a set of configurations x folds under one budget."""

    def __init__(self, costs: dict[str, _FoldCost], per_fold_cases: int, original_voxels: float, num_classes: int,
                 parallel: int, minimum: int, spent_s: float = 0.0) -> None:
        self.costs = costs
        self.spent_s = spent_s  # already gone from the budget: measuring the step times
        self.per_fold_cases = per_fold_cases
        self.original_voxels = original_voxels
        self.num_classes = num_classes
        self.parallel = parallel
        self.minimum = minimum

    def rounds(self, jobs: int) -> int:
        # jobs of equal length, `parallel` at a time: the last round takes a whole fold even when
        # it is not full, so 5 folds on 2 workers take 3 fold-times, not 2.5
        return math.ceil(jobs / self.parallel)

    def find_best_s(self, configurations: int, folds: int) -> float:
        candidates = configurations + configurations * (configurations - 1) // 2
        cases = folds * self.per_fold_cases
        return FIND_BEST_BASE_S + candidates * cases * self.original_voxels * self.num_classes * FIND_BEST_S_PER_VOXEL_CLASS

    def fold_s(self, budget_s: float, configurations: list[str], folds: int) -> float:
        """The per-fold budget that fills ``budget_s`` with these jobs, find-best and the margin, in
        whole tenths of a minute (what ``fold_minutes`` holds), rounded down so the sum stays inside."""
        free = budget_s - self.spent_s - _margin_s(budget_s) - self.find_best_s(len(configurations), folds)
        return math.floor((free / self.rounds(len(configurations) * folds) - JOB_START_S) / 6) * 6.0

    def iterations(self, budget_s: float, configurations: list[str], folds: int) -> dict[str, int]:
        fold_s = self.fold_s(budget_s, configurations, folds)
        return {c: self.costs[c].iterations(fold_s) for c in configurations}

    def fits(self, budget_s: float, configurations: list[str], folds: int) -> bool:
        return min(self.iterations(budget_s, configurations, folds).values()) >= self.minimum

    def smallest_budget_min(self, configurations: list[str], folds: int) -> float:
        """The smallest budget (minutes, rounded up to 0.1) at which every fold gets the minimum."""
        lo, hi = 0.0, 60.0
        while not self.fits(hi * 60, configurations, folds):
            lo, hi = hi, hi * 2
            if hi > 1e7:
                raise UserError(f"{' + '.join(configurations)}: no budget gives {self.minimum:,} iterations per fold "
                                "(the trainer's iteration cap is below the minimum)")
        while hi - lo > 0.05:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.fits(mid * 60, configurations, folds) else (mid, hi)
        return math.ceil(hi * 10) / 10


# ---------------------------------------------------------------- the decision


def _primary(candidates: list[str]) -> str:
    for name in PRIMARY_ORDER:
        if name in candidates:
            return name
    return candidates[0]


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _minutes(m: float) -> str:
    return f"{m:g} min" + (f" ({m / 60:.1f} h)" if m >= 60 else "")


def _fold_list(folds: list[int]) -> str:
    if len(folds) > 2 and folds == list(range(folds[0], folds[-1] + 1)):
        return f"{folds[0]}-{folds[-1]}"
    return ", ".join(map(str, folds))


def plan_budget(ws: DatasetWorkspace, plans: Plans, budget_min: float, parallel: int,
                configurations: list[str] | None, folds: list[int] | None,
                device: str = "auto", step_seconds: dict[str, float] | None = None, *,
                min_iterations: int | None = None) -> RunPlan:
    """Which configurations and folds fit ``budget_min`` minutes with ``parallel`` jobs at a time,
    and the per-fold budget each gets; see the module docstring and documentation/study_budget.md.

    ``configurations`` and ``folds`` are the candidates, in order of preference (default: every
    planned configuration, the primary first, and every fold); the rule drops from their ends.
    ``step_seconds`` gives seconds per iteration; configurations missing from it are measured.
    ``min_iterations`` overrides :data:`MIN_ITERATIONS` for the device's optimizer.
    """
    from autoseg.device import resolve_device

    if not (isinstance(budget_min, (int, float)) and math.isfinite(budget_min) and budget_min > 0):
        raise UserError(f"--time-budget must be a positive number of minutes, got {budget_min!r}")
    if not isinstance(parallel, int) or parallel < 1:
        raise UserError(f"--parallel must be a whole number of at least 1, got {parallel!r}")
    if not plans.configurations:
        raise UserError(f"{ws.plans_file} plans no configuration")
    if configurations is not None:
        candidates = list(dict.fromkeys(configurations))
        if not candidates:
            raise UserError("--configurations: name at least one configuration")
        _check_configurations(ws, plans, candidates)
    else:
        names = list(plans.configurations)
        first = _primary(names)
        candidates = [first] + [n for n in names if n != first]
    primary = candidates[0]
    dev = resolve_device(device)
    gpu = _kind(dev) == "gpu"
    optimizer = _optimizer_name(dev)
    minimum = int(min_iterations) if min_iterations is not None else MIN_ITERATIONS[optimizer]
    if minimum < 1:
        raise UserError(f"the minimum iterations per fold must be at least 1, got {min_iterations}")

    # how many folds there are, before anything is measured
    first_shapes = _case_shapes(ws, plans, plans.configuration(primary))
    num_cases = len(first_shapes.grid)
    n_folds = _available_folds(ws, num_cases)
    if n_folds < 2:
        raise UserError(f"{ws.root}: {num_cases} case(s) are too few to cross-validate; a study needs at least 2")
    if folds is not None:
        fold_candidates = list(dict.fromkeys(int(k) for k in folds))
        bad = [k for k in fold_candidates if not 0 <= k < n_folds]
        if not fold_candidates or bad:
            raise UserError(f"--folds {' '.join(map(str, folds))}: this dataset has folds 0-{n_folds - 1}")
    else:
        fold_candidates = list(range(n_folds))

    given = {k: float(v) for k, v in (step_seconds or {}).items()}
    bad_steps = [k for k, v in given.items() if not (math.isfinite(v) and v > 0)]
    if bad_steps:
        raise UserError(f"step seconds of {', '.join(bad_steps)} must be positive")
    to_measure = [c for c in candidates if c not in given]
    t0 = time.monotonic()
    timings = _measure(ws, plans, to_measure, device, 3) if to_measure else {}
    measure_s = time.monotonic() - t0 if to_measure else 0.0
    for c in candidates:
        if c not in timings:
            batch = plans.configuration(c).batch_size
            timings[c] = _Timing(given[c], given[c] * PATCH_FORWARD_SHARE / batch)

    costs: dict[str, _FoldCost] = {}
    for c in candidates:
        costs[c] = _fold_cost(ws, plans, c, timings[c], c not in given, gpu, n_folds)
    study = _Study(costs, math.ceil(num_cases / n_folds), first_shapes.original_voxels, plans.num_classes,
                   parallel, minimum, measure_s)
    budget_s = budget_min * 60
    decisions = [f"budget {budget_min:g} min on {dev.type}, {_count(parallel, 'job')} at a time; candidates "
                 f"{', '.join(candidates)} (primary {primary}), folds {_fold_list(fold_candidates)}; "
                 f"{num_cases} cases, ~{_count(study.per_fold_cases, 'validation case')} per fold ({first_shapes.source})"]
    for c in candidates:
        e = costs[c].estimate
        config = plans.configuration(c)
        how = "measured" if e.step_measured else "given"
        decisions.append(f"{c}: {e.step_seconds:.3g} s/iteration {how} ({e.trainer}, batch {config.batch_size}, "
                         f"patch {'x'.join(map(str, config.patch_size))}); final validation "
                         f"{e.validation_windows:,} windows at {e.forward_seconds:.3g} s")
    decisions.append(f"minimum {minimum:,} iterations per fold ({optimizer} on {dev.type}; documentation/study_budget.md)")
    if parallel > 1 and not gpu:
        decisions.append(f"{parallel} jobs at a time on a CPU: step times were measured with the whole machine, so "
                         "side-by-side folds train fewer iterations than estimated (each still keeps its budget)")

    # 1-2: the primary with as many folds as reach the minimum
    n = len(fold_candidates)
    chosen_folds = 0
    for f in range(n, 0, -1):
        if study.fits(budget_s, [primary], f):
            chosen_folds = f
            break
    if chosen_folds == 0:
        need = study.smallest_budget_min([primary], 1)
        got = study.iterations(budget_s, [primary], 1)[primary]
        full = study.smallest_budget_min([primary], len(fold_candidates))
        raise UserError(f"--time-budget {budget_min:g} min is too small: one fold of {primary} would get {got:,} "
                        f"iterations, fewer than the minimum {minimum:,}; the smallest budget that works is "
                        f"{_minutes(need)} (one fold; {_count(len(fold_candidates), 'fold')}: {_minutes(full)})")
    if chosen_folds < n:
        got = study.iterations(budget_s, [primary], n)[primary]
        decisions.append(f"{n} folds do not fit: each {primary} fold would get {got:,} iterations < {minimum:,} "
                         f"minimum ({n} folds need at least {study.smallest_budget_min([primary], n):g} min); "
                         f"{_count(chosen_folds, 'fold')} instead")
    # 3: further configurations, each still at the minimum, only once every fold of the primary fits
    chosen = [primary]
    for c in candidates[1:]:
        if chosen_folds < n:
            decisions.append(f"{c} dropped: not even {primary} fits all {n} folds")
            continue
        trial = chosen + [c]
        if study.fits(budget_s, trial, chosen_folds):
            chosen = trial
            continue
        its = study.iterations(budget_s, trial, chosen_folds)
        worst = min(its.values())
        detail = ", ".join(f"{k} {v:,}" for k, v in its.items())
        decisions.append(f"{c} dropped: with it each fold would get {worst:,} iterations < {minimum:,} minimum "
                         f"({detail}); {' + '.join(trial)} need at least {study.smallest_budget_min(trial, chosen_folds):g} min")
    fold_list = fold_candidates[:chosen_folds]

    fold_s = study.fold_s(budget_s, chosen, chosen_folds)
    # a fold never uses more than the trainer's iteration cap; past it the time is not spent
    needed = max(_seconds_for_cap(costs[c], fold_s) for c in chosen)
    if needed < fold_s:
        fold_s = needed
        decisions.append("every fold reaches the trainer's iteration cap "
                         f"({', '.join(f'{c} {costs[c].estimate.iteration_cap:,}' for c in chosen)}) "
                         "before its share of the budget ends: the study finishes early")
    fold_minutes = round(fold_s / 60, 1)
    for c in candidates:
        e = costs[c].estimate
        e.iterations_per_fold = costs[c].iterations(fold_minutes * 60)
        e.final_validation_s, e.final_validation_tta = costs[c].validation_s(fold_minutes * 60)
        e.final_validation_s = round(e.final_validation_s, 1)
        e.selected = c in chosen
    for c in chosen:
        e = costs[c].estimate
        decisions.append(f"{c}: {_count(chosen_folds, 'fold')} x {fold_minutes:.1f} min = ~{e.iterations_per_fold:,} iterations "
                         f"each (final validation ~{e.final_validation_s:.0f} s{', with mirroring' if e.final_validation_tta else ''})")
    if len(chosen) > 1:
        decisions.append(f"ensemble: find-best compares {', '.join(chosen)} and their pairs")
    elif chosen_folds == 1:
        decisions.append(f"no ensemble, one fold: find-best decides postprocessing on fold {fold_list[0]}'s "
                         f"~{_count(study.per_fold_cases, 'validation case')} only")
    else:
        decisions.append("no ensemble: one configuration fits")
    jobs = len(chosen) * chosen_folds
    rounds = study.rounds(jobs)
    find_best_s = study.find_best_s(len(chosen), chosen_folds)
    wall_s = measure_s + rounds * (fold_minutes * 60 + JOB_START_S) + find_best_s
    margin_s = _margin_s(budget_s)
    measuring = f"measuring {measure_s / 60:.1f} min + " if to_measure else ""
    decisions.append(f"wall time: {measuring}{_count(jobs, 'job')} in {_count(rounds, 'round')} of {fold_minutes:.1f} min "
                     f"+ find-best ~{find_best_s / 60:.1f} min = ~{wall_s / 60:.1f} of {budget_min:g} min "
                     f"({margin_s / 60:.1f} min kept as margin)")
    return RunPlan(
        budget_min=float(budget_min), configurations=chosen, folds=fold_list, fold_minutes=fold_minutes,
        ensemble=len(chosen) > 1, decisions=decisions,
        step_seconds={c: float(f"{timings[c].step_s:.4g}") for c in candidates}, parallel=parallel, device=dev.type,
        optimizer=optimizer, min_iterations=minimum,
        iterations_per_fold={c: costs[c].estimate.iterations_per_fold for c in chosen},
        estimated_wall_min=round(wall_s / 60, 2), measure_min=round(measure_s / 60, 2), margin_min=round(margin_s / 60, 2),
        find_best_min=round(find_best_s / 60, 2), estimates={c: costs[c].estimate for c in candidates})


def _seconds_for_cap(cost: _FoldCost, upper_s: float) -> float:
    """The shortest fold budget (at most ``upper_s``) at which ``cost`` reaches its iteration cap."""
    cap = cost.estimate.iteration_cap
    if cost.iterations(upper_s) < cap:
        return upper_s
    lo, hi = 0, int(upper_s // 6)  # in tenths of a minute, like fold_minutes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cost.iterations(mid * 6.0) >= cap else (mid, hi)
    return hi * 6.0
