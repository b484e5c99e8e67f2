"""The one training loop every architecture uses.

A trainer for a new architecture is a few lines::

    @register_trainer("my_net")
    class MyTrainer(Trainer):
        architecture = "my_net"      # a key of autoseg.networks.ARCHITECTURES, or "module:Class"
        # any hyperparameter below can be overridden too

What the loop does (nnU-Net's recipe unless noted):

* SGD, Nesterov momentum 0.99, lr 1e-2 with polynomial decay (exponent 0.9) over the planned
  total number of iterations, weight decay 3e-5, gradient norm clipped at 12; in bf16 and fp32
  a step whose gradient is not finite is skipped and counted (what GradScaler does for fp16);
* Dice + cross-entropy with deep supervision, or another loss by name (``--loss``; see
  :mod:`autoseg.trainers.losses`);
* mixed precision: bf16 autocast on CPUs with native bf16, bf16 (or fp16 + GradScaler) on CUDA;
* epochs of ``iters_per_epoch`` iterations, then ``val_iters`` validation batches of patches
  giving a per-class pseudo-Dice; its moving average picks ``checkpoint_best.pt``;
* with a time budget the total number of iterations is re-planned after every epoch from the
  measured speed, so training *and* the final sliding-window validation fit the budget;
* at the end, the fold's validation cases are predicted in their original geometry and scored.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from autoseg.atomic import remove_partials, write_json
from autoseg.errors import UserError
from autoseg.device import resolve_device, resolve_precision
from autoseg.inference.predictor import Predictor
from autoseg.inference.validation import validate_fold
from autoseg.networks import build_network
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.preprocessed import PreprocessedFolder
from autoseg import checkpoint as ckpt
from autoseg.trainers.distributed import DistributedContext
from autoseg.trainers.losses import DEFAULT_LOSS, DeepSupervisionLoss, deep_supervision_weights, make_loss
from autoseg.trainers.progress import EpochRecord, ProgressLog, plot_progress
from autoseg.trainers.splits import fold_cases, load_or_create_splits
from autoseg.workspace import DatasetWorkspace

CHECKPOINT_FORMAT = 1


@dataclass
class TrainingSettings:
    """What the user chose on the command line; ``None`` means the device-dependent default."""

    epochs: int | None = None
    iters_per_epoch: int | None = None
    val_iters: int | None = None
    time_budget_min: float | None = None
    device: str = "auto"
    precision: str = "auto"
    num_workers: int | None = None
    final_validation: bool = True
    continue_training: bool = False
    group_regex: str | None = None
    seed: int = 0
    optimizer: str = "auto"
    augmentation: str = "auto"
    loss: str | None = None  # a key of autoseg.trainers.losses.LOSSES; None: the trainer's default_loss
    num_threads: int | None = None  # CPU threads for torch; None: the machine's cores (shared among ranks)


# ---------------------------------------------------------------- helpers

def count_sliding_windows(shape: list[int], patch_size: list[int], dim: int, overlap: float = 0.5) -> int:
    """Number of tiles sliding-window prediction uses for a preprocessed ``(Z, Y, X)`` shape."""
    def n_axis(s: int, p: int) -> int:
        if s <= p:
            return 1
        return int(math.ceil((s - p) / max(1.0, p * (1 - overlap)))) + 1

    if dim == 2:
        return shape[0] * n_axis(shape[1], patch_size[0]) * n_axis(shape[2], patch_size[1])
    return int(np.prod([n_axis(s, p) for s, p in zip(shape, patch_size)]))


def class_counts(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """``(3, K - 1)`` true positives, false positives and false negatives of each foreground class.

    One pass over the voxels through a confusion matrix, not one per class: with a few hundred
    labels a per-class loop reads the patch hundreds of times.
    """
    k = num_classes
    confusion = torch.bincount((target.long().reshape(-1) * k + prediction.long().reshape(-1)),
                               minlength=k * k).reshape(k, k).double().cpu().numpy()  # rows: truth
    tp = np.diag(confusion)
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    return np.stack([tp, fp, fn])[:, 1:]


def poly_lr(initial_lr: float, iteration: int, total: int, exponent: float = 0.9) -> float:
    return initial_lr * (1 - min(iteration, total) / max(total, 1)) ** exponent


class Trainer:
    """Trains one fold of one configuration; subclasses pick the architecture."""

    architecture = "unet"
    trainer_name: str | None = None  # set by @register_trainer
    initial_lr = 1e-2  # SGD's; Adam starts from adam_lr
    momentum = 0.99
    adam_lr = 1e-3
    default_loss = DEFAULT_LOSS
    weight_decay = 3e-5
    grad_clip = 12.0
    lr_exponent = 0.9
    oversample_foreground = 0.33
    # nnU-Net's defaults on a GPU; CPUs get shorter epochs so logs and checkpoints keep coming.
    default_epochs = {"gpu": 1000, "cpu": 1000}
    default_iters_per_epoch = {"gpu": 250, "cpu": 50}
    default_val_iters = {"gpu": 50, "cpu": 5}  # CPU: patch validation only picks checkpoint_best
    # Mirroring at final validation costs 4-8x the forward passes. None: on for CUDA; on a CPU
    # only in a budgeted run where the extra passes are estimated at most tta_budget_share of the
    # budget (small volumes such as Hippocampus: ~1%); otherwise that time is better spent training.
    validation_tta: bool | None = None
    tta_budget_share = 0.05
    validation_overlap = 0.5
    # Safety factor on the estimated final-validation time. With the probe retaken in the first
    # epochs the estimate with this factor was 1.15-1.36x the real time on ACDC, 1.3-2.5x before
    # (documentation/training.md, "Time budget").
    validation_time_margin = 1.2
    forward_probe_epochs = 5  # epochs after which the forward pass is timed again (_refresh_forward_time)
    # ``--augmentation auto`` picks light augmentation below these run lengths (resolve_augmentation).
    short_run_minutes = 60.0
    short_run_iterations = 20_000

    @classmethod
    def results_name(cls) -> str:
        """Folder name in ``results/``: the registered name, else the class name (user trainers)."""
        return cls.__dict__.get("trainer_name") or cls.__name__

    def __init__(self, workspace: DatasetWorkspace, configuration: str, fold: int | str,
                 settings: TrainingSettings | None = None) -> None:
        self.start_time = time.monotonic()
        self.ws = workspace
        self.settings = settings or TrainingSettings()
        self.dist = DistributedContext.from_env()  # one process unless started by torchrun
        self.fold = str(fold)
        if self.fold != "all" and not self.fold.isdigit():
            raise UserError(f"fold '{fold}' must be a number (0-4) or 'all'")
        if not workspace.plans_file.is_file():
            raise UserError(f"{workspace.plans_file} does not exist; run 'autoseg plan-and-preprocess' for this dataset first")
        self.plans = Plans.load(workspace.plans_file)
        try:
            planned = self.plans.configuration(configuration)
        except KeyError as e:
            raise UserError(f"{workspace.plans_file}: {e.args[0]}") from None
        # the model's identity: this trainer's network, recorded in the model's plans copy
        self.config: ConfigurationPlan = dataclasses.replace(planned, architecture=self.architecture)
        self.configuration = configuration
        self.preprocessed_dir = workspace.preprocessed_dir(self.config.data_identifier)
        self.preprocessed = PreprocessedFolder(self.preprocessed_dir)
        self.case_ids = self.preprocessed.case_ids()
        if not self.case_ids:
            raise UserError(f"{self.preprocessed_dir} holds no preprocessed cases; run 'autoseg plan-and-preprocess' first")
        if self.dist.is_distributed and not self.supports_distributed():
            raise UserError(f"trainer '{self.results_name()}' cannot train under torchrun (its training step runs "
                            "networks of its own that DDP does not synchronise); train it in one process")
        # the process group first: under torchrun rank 0 alone writes splits.json, the others read it
        self.device = self.dist.start(resolve_device(self.settings.device))
        splits = self.dist.main_first(
            lambda: load_or_create_splits(workspace, self.case_ids, self.settings.group_regex))
        self.train_ids, self.val_ids = fold_cases(splits, self.fold, self.case_ids)
        missing = sorted(set(self.train_ids + self.val_ids) - set(self.case_ids))
        if missing:
            raise UserError(f"{workspace.splits_file} lists case(s) that are not preprocessed: {', '.join(missing[:5])}")
        self.results_dir = workspace.results_dir(self.results_name(), configuration)
        self.fold_dir = workspace.fold_dir(self.results_name(), configuration, self.fold)
        kind = "gpu" if self.device.type in ("cuda", "mps") else "cpu"
        s = self.settings
        self.max_epochs = s.epochs if s.epochs is not None else self.default_epochs[kind]
        self.iters_per_epoch = s.iters_per_epoch if s.iters_per_epoch is not None else self.default_iters_per_epoch[kind]
        self.val_iters = s.val_iters if s.val_iters is not None else self.default_val_iters[kind]
        if self.max_epochs < 1 or self.iters_per_epoch < 1 or self.val_iters < 0:
            raise UserError("--epochs and --iters-per-epoch must be at least 1, --val-iters at least 0")
        self.optimizer_name = self.resolve_optimizer()
        if self.optimizer_name == "adam":
            self.initial_lr = self.adam_lr
        self.augmentation = self.resolve_augmentation()
        self.loss_name = s.loss or self.default_loss
        make_loss(self.loss_name)  # an unknown name fails here, before any work starts
        self.autocast_dtype, use_scaler = resolve_precision(s.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.num_workers = s.num_workers if s.num_workers is not None else self.default_num_workers()
        self.total_iterations = self.max_epochs * self.iters_per_epoch
        self.iteration = 0
        self.epoch = 0
        self.elapsed_before_s = 0.0  # training wall time of earlier runs of this fold (--continue)
        self.log = ProgressLog()
        self._forward_time_s: float | None = None
        self._tta_choice: bool | None = None
        self._iter_times: list[float] = []
        self._skipped_steps = 0  # steps left out for a non-finite gradient, this epoch
        self._closables: list[Any] = []
        self._budget_info: dict[str, float] | None = None
        self._deadline: float | None = None  # monotonic time when a budgeted run must stop training
        self._epoch_overheads: list[float] = []

    # ------------------------------------------------------------ pieces subclasses may override

    def default_num_workers(self) -> int:
        """Background augmentation workers: enough to feed a GPU; on CPU one thread.

        Measured on 2 cores (documentation/networks.md): one loader thread needs ~10% of a
        core and hides loading (0.44 s/it vs 0.46 inline), while a loader process or giving
        torch one thread fewer is slower (0.48 and 0.75 s/it).
        """
        n = os.cpu_count() or 1
        if self.device.type == "cpu":
            return 1
        return max(1, min(12, n - 2))

    def network_input_channels(self) -> int:
        """Channels of one network input patch (2.5D stacks neighbouring slices as channels)."""
        return len(self.plans.channel_names)

    def resolve_optimizer(self) -> str:
        """``auto``: nnU-Net's SGD on a GPU; Adam on a CPU.

        Measured on Hippocampus (documentation/training.md): after 200 iterations SGD with
        momentum 0.99 still predicts only background (pseudo-Dice 0), Adam is at 0.6. A CPU
        budget is a few thousand iterations, so the slow SGD start costs most of it.
        """
        name = self.settings.optimizer
        if name == "auto":
            return "sgd" if self.device.type in ("cuda", "mps") else "adam"
        if name not in ("sgd", "adam"):
            raise UserError(f"unknown optimizer '{name}': choose auto, sgd or adam")
        return name

    def resolve_augmentation(self) -> str:
        """``auto``: light augmentation for a short run, nnU-Net's full set otherwise.

        A short run (a budget of at most an hour, or fewer than 20,000 planned iterations) is
        still under-fitting when it ends: regularising spatial augmentation only slows it down.
        Measured on Hippocampus at 20 CPU minutes (documentation/benchmarks.md).
        """
        name = self.settings.augmentation
        if name not in ("auto", "full", "light"):
            raise UserError(f"unknown augmentation '{name}': choose auto, full or light")
        if name != "auto":
            return name
        budget = self.settings.time_budget_min
        short = (budget is not None and budget <= self.short_run_minutes) or (
            budget is None and self.total_planned_iterations() < self.short_run_iterations)
        return "light" if short else "full"

    def supports_distributed(self) -> bool:
        """Whether torchrun may train this trainer: DDP synchronises the gradients of ``self.network``
        in the base training step. A trainer whose step trains more (atlas_istn's STN, its atlas)
        overrides this once those are synchronised too."""
        return type(self).train_step is Trainer.train_step

    def total_planned_iterations(self) -> int:
        return self.max_epochs * self.iters_per_epoch

    def build_optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(network.parameters(), lr=self.initial_lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, nesterov=True)

    def deep_supervision_scales(self) -> list[list[float]]:
        from autoseg.networks import deep_supervision_scales

        return deep_supervision_scales(self.config.network)

    def build_loss(self, n_outputs: int) -> nn.Module:
        return DeepSupervisionLoss(make_loss(self.loss_name), deep_supervision_weights(n_outputs))

    def build_sampler(self, case_ids: list[str], seed: int) -> Any:
        """Where patches come from (subclasses change what a sample is, e.g. 2.5D slice stacks)."""
        from autoseg.trainers.patch_sampler import PatchSampler

        return PatchSampler(self.preprocessed_dir, case_ids, self.config.patch_size, self.config.dim,
                            self.config.batch_size, oversample_foreground=self.oversample_foreground, seed=seed,
                            edge_flush=self.config.edge_flush)

    def build_batches(self, case_ids: list[str], train: bool, seed: int) -> Iterator[dict[str, Any]]:
        """Endless batches ``{"data": (B, C, *patch), "target": [full-res first]}``."""
        from autoseg.trainers.augmentation import build_train_transforms, build_val_transforms
        from autoseg.trainers.batch_loader import TrainingBatches

        scales = self.deep_supervision_scales()
        sampler = self.build_sampler(case_ids, seed)
        if self.dist.is_distributed:
            # this rank's share of the plan's batch and of its foreground-forced patches
            sampler.batch_size, sampler.oversample_foreground = self.dist.batch_share(
                sampler.batch_size, sampler.oversample_foreground)
        if train:
            transforms = build_train_transforms(self.config.patch_size, self.config.dim, self.config.anisotropic, scales,
                                                strength=self.augmentation, mirror_axes=self.mirror_axes(),
                                                scale=self.config.scale_range)
        else:
            transforms = build_val_transforms(scales)
        batches = TrainingBatches(sampler, transforms, self.num_workers if train else 0)
        self._closables.append(batches)
        return iter(batches)

    # ------------------------------------------------------------ setup, checkpoints

    def _setup(self) -> None:
        if self.device.type == "cpu":
            # the loader is a thread that mostly waits in numpy/scipy with the GIL released:
            # torch keeps every core (one thread fewer measured 1.7x slower on 2 cores); ranks on
            # one machine share them
            threads = self.settings.num_threads or max(1, (os.cpu_count() or 1) // self.dist.local_world_size)
            torch.set_num_threads(threads)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: autotuned kernels pay off
        self.network = build_network(self.plans, self.config).to(self.device)
        # what training steps call: DDP under torchrun; self.network stays the plain module for
        # checkpoints, patch validation and prediction
        self.training_network = self.dist.wrap(self.network)
        self.optimizer = self.build_optimizer(self.network)
        self.n_outputs = len(self.deep_supervision_scales())
        self.loss = self.build_loss(self.n_outputs)
        self.val_loss = make_loss(self.loss_name)  # comparable with the training loss
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # the one process that writes the fold's files
            remove_partials(self.fold_dir)
            (self.fold_dir / ckpt.DONE).unlink(missing_ok=True)  # present only once this run has finished
            # the model folder must be self-contained for prediction, whatever happens to the workspace
            self.model_plans().save(self.results_dir / "plans.json")
        self.dist.barrier()

    def model_plans(self) -> Plans:
        """The plans with this configuration as trained: what the model folder's ``plans.json`` holds."""
        return dataclasses.replace(self.plans, configurations={**self.plans.configurations, self.configuration: self.config})

    def mirror_axes(self) -> list[int]:
        """Patch axes training mirrors, and so the only ones test-time augmentation may flip: the
        plan's (every axis for plans without ``mirror_axes``). A trainer that never mirrors returns []."""
        axes = self.config.mirror_axes
        return list(range(self.config.dim)) if axes is None else [int(a) for a in axes]

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "trainer": self.results_name(),
            "trainer_class": f"{type(self).__module__}:{type(self).__qualname__}",
            "configuration": self.configuration,
            "fold": self.fold,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "total_iterations": self.total_iterations,
            "iters_per_epoch": self.iters_per_epoch,
            "lr_schedule": {"kind": "poly", "optimizer": self.optimizer_name, "initial_lr": self.initial_lr,
                            "exponent": self.lr_exponent, "total_iterations": self.total_iterations},
            "time_budget_min": self.settings.time_budget_min,
            "augmentation": self.augmentation,
            "loss": self.loss_name,
            "mirror_axes": self.mirror_axes(),
            "elapsed_s": self.elapsed_s(),
            "rng": ckpt.rng_state(),
            "log": self.log.to_dict(),
            **self.extra_checkpoint_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint format {state.get('format')} is not supported by this autoseg version")
        self.network.load_state_dict(state["network"])
        saved = state.get("lr_schedule", {}).get("optimizer", "sgd")
        if saved != self.optimizer_name:
            raise UserError(f"the checkpoint was trained with --optimizer {saved}; resume with --optimizer {saved}")
        saved_loss = state.get("loss", DEFAULT_LOSS)
        if saved_loss != self.loss_name:
            raise UserError(f"the checkpoint was trained with --loss {saved_loss}; resume with --loss {saved_loss}")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.total_iterations = int(state["total_iterations"])
        self.iters_per_epoch = int(state["iters_per_epoch"])
        self.elapsed_before_s = float(state.get("elapsed_s", 0.0))
        self.augmentation = str(state.get("augmentation", self.augmentation))  # a resumed run keeps its recipe
        self.log = ProgressLog.from_dict(state["log"])
        ckpt.set_rng_state(state["rng"])
        self.load_extra_checkpoint_state(state)

    # Hooks for trainers that keep more than one network's state (e.g. atlas_istn's STN and atlas).
    def extra_checkpoint_state(self) -> dict[str, Any]:
        """More checkpoint entries (plain types and tensors only: checkpoints load weights_only)."""
        return {}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_checkpoint_state` saved."""

    def on_train_epoch_end(self) -> None:
        """Called after an epoch's training iterations, before validation and checkpointing."""

    def elapsed_s(self) -> float:
        return self.elapsed_before_s + (time.monotonic() - self.start_time)

    def _save(self, name: str) -> None:
        ckpt.save_checkpoint(self.fold_dir / name, self.state_dict())

    # ------------------------------------------------------------ the loop

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _lr(self) -> float:
        return poly_lr(self.initial_lr, self.iteration, self.total_iterations, self.lr_exponent)

    def _to_device(self, data: torch.Tensor) -> torch.Tensor:
        # contiguous, not channels-last, on a CPU too: channels-last steps measured 6% (2D) to
        # 26% (hybrid) slower, and no faster for 3D (documentation/networks.md)
        return data.to(self.device, non_blocking=True)

    def train_step(self, batch: dict[str, Any]) -> float:
        data = self._to_device(batch["data"])
        target = [t.to(self.device, non_blocking=True) for t in batch["target"]]
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.training_network(data)
            loss = self.loss(output, target)
        self._backward_and_step(loss)
        return float(loss.detach())

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``, clip the network's gradient and step its optimizer."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            # one decision for all ranks, or their weights drift apart
            if self.dist.all_true(bool(torch.isfinite(grad_norm))):
                self.optimizer.step()
            else:
                # What GradScaler does for fp16 on a GPU, for bf16 and fp32 too: one non-finite
                # gradient would turn every weight and Adam moment into NaN for good. torch 2.13's
                # CPU bf16 Conv3d backward returns garbage, at times inf/NaN, when z is 2 voxels
                # long under a 3-kernel (documentation/training.md, "Non-finite steps").
                self.optimizer.zero_grad(set_to_none=True)
                self._skipped_steps += 1

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> tuple[float, np.ndarray]:
        """Loss on the full-resolution output and per-class (tp, fp, fn) of its argmax."""
        data = self._to_device(batch["data"])
        target = batch["target"][0].to(self.device, non_blocking=True)
        with self._autocast():
            output = self.network(data)
        if isinstance(output, (list, tuple)):
            output = output[0]
        loss = self.val_loss(output, target)
        return float(loss), class_counts(output.argmax(1), target[:, 0], self.plans.num_classes)

    def run(self) -> dict[str, Any]:
        """Train (or resume) this fold, then validate it; returns the validation summary (or {})."""
        from tqdm import tqdm

        self._closables = []
        self._setup()
        latest = self.fold_dir / ckpt.LATEST
        final = self.fold_dir / ckpt.FINAL
        if self.settings.continue_training:
            # every rank resumes from the file rank 0 found
            source = self.dist.from_main(latest if latest.is_file() else final if final.is_file() else None)
            if source is None:
                if self.dist.is_main:
                    print(f"--continue: no checkpoint in {self.fold_dir}; starting from scratch", file=sys.stderr)
            else:
                self.load_state_dict(ckpt.load_checkpoint(source, map_location=self.device))
                if self.dist.is_main:
                    print(f"resuming {self.fold_dir.name} from {source.name}: epoch {self.epoch}, "
                          f"iteration {self.iteration}/{self.total_iterations}", file=sys.stderr)
        elif latest.is_file() or final.is_file():
            raise UserError(f"{self.fold_dir} already holds a checkpoint; pass --continue to resume it "
                            "(or delete the folder to start over)")
        header = {"trainer": self.results_name(), "architecture": self.architecture,
                  "configuration": self.configuration, "fold": self.fold, "train_cases": len(self.train_ids),
                  "val_cases": len(self.val_ids), "device": str(self.device),
                  "precision": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "fp32",
                  "optimizer": self.optimizer_name, "initial_lr": self.initial_lr,
                  "augmentation": self.augmentation, "loss": self.loss_name, "mirror_axes": self.mirror_axes(),
                  "scale_range": self.config.scale_range, "time_budget_min": self.settings.time_budget_min}
        if self.dist.is_distributed:
            header["world_size"] = self.dist.world_size
            header["batch_size_per_rank"] = self.dist.batch_share(self.config.batch_size, self.oversample_foreground)[0]
        # a resumed run draws fresh, still deterministic, patches; each rank its own
        seed = self.dist.rank_seed(self.settings.seed + self.iteration)
        if self.settings.time_budget_min is not None and self.iteration < self.total_iterations:
            # a first deadline before any epoch ends, so even the first epoch respects the budget
            self._forward_time_s = self._measure_forward_time()
            self._deadline = self._deadline_for(self.estimate_final_validation_s() + 5.0)
        try:
            if self.iteration < self.total_iterations:
                train_batches = self.build_batches(self.train_ids, True, seed)
                val_batches = self.build_batches(self.val_ids, False, seed + 1) if self.val_iters else None
                while self.iteration < self.total_iterations:
                    self._run_epoch(train_batches, val_batches, header, tqdm)
                if self.dist.is_main:
                    self._save(ckpt.FINAL)
                    latest.unlink(missing_ok=True)
        finally:
            for c in self._closables:
                close = getattr(c, "close", None)
                if close is not None:
                    close()
        self.dist.barrier()  # the final checkpoint exists for every rank that returns
        self.training_network = self.network  # DDP's reducer holds the process group: it goes first
        self.dist.close()  # training was the last step the ranks share
        if not self.dist.is_main:
            return {}  # rank 0 alone validates and writes done.json
        summary = {} if self.fold == "all" or not self.settings.final_validation else self.validate()
        fg = summary.get("foreground_mean", {})
        write_json(self.fold_dir / ckpt.DONE, {
            "trainer": self.results_name(), "configuration": self.configuration, "fold": self.fold,
            "iterations": self.iteration, "elapsed_s": round(self.elapsed_s(), 1),
            "validated": bool(summary), "mean_dice": fg.get("Dice")})
        return summary

    def _run_epoch(self, train_batches, val_batches, header: dict, tqdm) -> None:
        t0 = time.monotonic()
        n = min(self.iters_per_epoch, self.total_iterations - self.iteration)
        self.network.train()
        losses = []
        bar = tqdm(range(n), desc=f"epoch {self.epoch}", leave=False, dynamic_ncols=True,
                   disable=None if self.dist.is_main else True)
        for _ in bar:
            losses.append(self.train_step(next(train_batches)))
            self.iteration += 1
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            # rank 0's clock decides for all: every rank must run the same steps
            if self._deadline is not None and self.dist.main_flag(time.monotonic() > self._deadline):
                # the budget ran out inside an epoch (a tiny budget, or the machine slowed down)
                self.total_iterations = self.iteration
                break
        n = len(losses)
        train_time = time.monotonic() - t0
        train_loss = self.dist.mean(float(np.mean(losses)))
        skipped, self._skipped_steps = self._skipped_steps, 0
        if skipped == n:
            raise RuntimeError(f"training diverged: every one of epoch {self.epoch}'s {n} steps had a non-finite "
                               f"gradient (last loss {losses[-1]}), so no weight was updated; checkpoint_latest.pt "
                               f"keeps the weights of the epoch before")
        if skipped and self.dist.is_main:
            print(f"epoch {self.epoch}: {skipped} of {n} steps skipped (non-finite gradient)", file=sys.stderr)
        self._iter_times.append(train_time / n)
        self.on_train_epoch_end()
        val_loss, dice = None, []
        if val_batches is not None:
            self.network.eval()
            vl, counts = [], np.zeros((3, self.plans.num_classes - 1))
            for _ in range(self.val_iters):
                loss, c = self.validation_step(next(val_batches))
                vl.append(loss)
                counts += c
            counts = self.dist.sum(counts)  # every rank's patches: one pseudo-Dice for all
            tp, fp, fn = counts
            # a class absent from every validation patch and never predicted is no error: NaN, not 0
            dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]
            val_loss = self.dist.mean(float(np.mean(vl)))
        finite = [d for d in dice if not math.isnan(d)]
        mean_dice = float(np.mean(finite)) if finite else None
        budgeted = self.settings.time_budget_min is not None
        if budgeted:
            self._refresh_forward_time()  # before the count moves on: epochs 0-4 probe
        self.epoch += 1
        if budgeted:
            self._epoch_overheads.append(time.monotonic() - t0 - train_time)
            self._replan_for_budget()
            self.total_iterations = self.dist.from_main(self.total_iterations)  # rank 0's plan for all
        lr = self._lr()  # after re-planning: the rate the next iteration would use
        record = EpochRecord(epoch=self.epoch - 1, iterations=self.iteration, train_loss=train_loss,
                             val_loss=val_loss, pseudo_dice=dice, mean_pseudo_dice=mean_dice,
                             smoothed_dice=self.log.smoothed(mean_dice), lr=lr,
                             epoch_time_s=0.0, iterations_per_s=n / train_time if train_time > 0 else 0.0,
                             skipped_steps=skipped)
        is_best = self.log.add(record)
        record.epoch_time_s = time.monotonic() - t0
        if not self.dist.is_main:
            return  # the other ranks hold the same weights and log; rank 0 writes them
        self._save(ckpt.LATEST)
        if is_best:
            self._save(ckpt.BEST)
        self.log.save(self.fold_dir / "log.json", {**header, "total_iterations": self.total_iterations,
                                                   "budget_plan": self._budget_info})
        try:
            plot_progress(self.log, self.fold_dir / "progress.png", self.plans.label_names[1:])
        except Exception as e:  # a plotting problem must never stop training
            print(f"progress.png not written: {e}", file=sys.stderr)
        dice_txt = ", ".join(f"{d:.3f}" for d in dice) if dice else "-"
        print(f"epoch {record.epoch}: train loss {record.train_loss:.4f}"
              + (f", val loss {val_loss:.4f}" if val_loss is not None else "")
              + f", pseudo-Dice [{dice_txt}], lr {lr:.2e}, {record.epoch_time_s:.1f} s, "
              f"iteration {self.iteration}/{self.total_iterations}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ time budget

    @torch.no_grad()
    def _measure_forward_time(self, passes: int = 3) -> float:
        """Seconds for one eval forward pass of one patch, as sliding-window prediction runs it:
        the fastest of ``passes`` timed passes after one warm-up. The fastest, not the median: a
        pass only ever runs slower than the validation will (a fresh process, a busy machine)."""
        self.network.eval()
        shape = (1, self.network_input_channels(), *self.config.inference_patch)
        x = torch.randn(shape, device=self.device)
        times = []
        for _ in range(passes + 1):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with self._autocast():
                self.network(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        self.network.train()
        return float(min(times[1:]))

    def _refresh_forward_time(self) -> None:
        """Probe the forward pass again after each of the first epochs and keep the fastest.

        The probe before training runs in a fresh process and read up to 2x the steady time,
        so the reserve was up to twice the real validation (documentation/training.md, "Time
        budget"). Five more single passes are all this costs. Until the probe settles the TTA
        choice is re-made with it; then it stays fixed, so the reserve and the validation agree.
        """
        if self.epoch >= self.forward_probe_epochs:
            return
        reading = self._measure_forward_time(passes=1)
        self._forward_time_s = reading if self._forward_time_s is None else min(self._forward_time_s, reading)
        self._tta_choice = None

    def _tta(self) -> bool:
        if not self.mirror_axes():
            return False  # a network never trained on mirrored patches gains nothing from flipped ones
        if self.validation_tta is not None:
            return self.validation_tta
        if self.device.type == "cuda":
            return True
        if self.settings.time_budget_min is None or not self.settings.final_validation or not self.val_ids:
            return False
        if self._tta_choice is None:  # decided once, so the budget plan and the validation agree
            flips = 2 ** len(self.mirror_axes())
            # expected costs, without the safety margin: the margin keeps the deadline safe (the
            # reserve includes it) but would turn a share of 5% into one of 4.2%
            extra = self._validation_cost_s(flips, margin=False) - self._validation_cost_s(1, margin=False)
            self._tta_choice = extra <= self.tta_budget_share * self.settings.time_budget_min * 60
        return self._tta_choice

    def estimate_final_validation_s(self) -> float:
        if self.fold == "all" or not self.settings.final_validation or not self.val_ids:
            return 0.0
        return self._validation_cost_s(2 ** len(self.mirror_axes()) if self._tta() else 1)

    @functools.cached_property
    def _validation_work(self) -> tuple[int, float]:
        """(sliding windows, export seconds) of the final validation: the cases' shapes are read
        once, not at every epoch's re-plan."""
        windows = 0
        voxels = 0
        for cid in self.val_ids:
            shape = list(self.preprocessed.load_data(cid, mmap=True).shape[1:])
            windows += count_sliding_windows(shape, self.config.inference_patch, self.config.dim, self.validation_overlap)
            voxels += int(np.prod(shape))
        # Export (resampling K probability maps) and metrics: roughly 50 ns per voxel and class.
        return windows, voxels * self.plans.num_classes * 5e-8 + 0.1 * len(self.val_ids)

    def _validation_cost_s(self, flips: int, margin: bool = True) -> float:
        fwd = self._forward_time_s if self._forward_time_s is not None else self._measure_forward_time()
        windows, export = self._validation_work
        return (self.validation_time_margin if margin else 1.0) * (windows * fwd * flips + export)

    def _deadline_for(self, reserve_s: float) -> float:
        """Monotonic time at which training must stop to leave ``reserve_s`` inside the budget."""
        return time.monotonic() + self.settings.time_budget_min * 60 - self.elapsed_s() - reserve_s

    def _replan_for_budget(self) -> None:
        """Fit the remaining iterations (and so the LR schedule) into what is left of the budget."""
        budget_s = self.settings.time_budget_min * 60
        # the first epoch includes warm-up; later epochs measure the steady state
        steady = self._iter_times[1:] or self._iter_times
        per_iter = float(np.mean(steady[-5:]))
        overhead = float(np.mean(self._epoch_overheads[-5:])) if self._epoch_overheads else 0.0
        reserve = self.estimate_final_validation_s() + 5.0  # + final checkpoint and log
        left = budget_s - self.elapsed_s() - reserve
        per_iter_total = per_iter + overhead / self.iters_per_epoch
        more = max(0, int(left / per_iter_total)) if per_iter_total > 0 else 0
        cap = self.max_epochs * self.iters_per_epoch
        self.total_iterations = max(self.iteration, min(cap, self.iteration + more))
        self._deadline = self._deadline_for(reserve)
        self._budget_info = {"seconds_per_iteration": per_iter, "epoch_overhead_s": overhead,
                             "final_validation_estimate_s": reserve - 5.0, "final_validation_tta": self._tta(),
                             "elapsed_s": self.elapsed_s()}

    # ------------------------------------------------------------ end of fold

    def load_best_or_final(self) -> None:
        # nnU-Net validates the final weights; so do we: the best checkpoint is chosen on noisy
        # patch Dice and is kept for users who want it.
        state = ckpt.load_checkpoint(self.fold_dir / ckpt.FINAL, map_location=self.device)
        self.network.load_state_dict(state["network"])

    def validate(self) -> dict[str, Any]:
        """The fold's validation cases through the prediction path ``autoseg predict`` runs."""
        self.load_best_or_final()
        predictor = Predictor(self.model_plans(), self.configuration, [self.network], device=self.device,
                              tta=self._tta(), overlap=self.validation_overlap, precision=self.settings.precision,
                              mirror_axes=self.mirror_axes())
        return validate_fold(predictor, self.ws, self.preprocessed, self.val_ids, self.fold_dir / "validation")
