"""nnU-Net v2 trainer with a budget, for the baseline side of autoseg's training benchmarks.

Runs ONLY inside the nnU-Net baseline environment (benchmarks/setup_nnunet_env.sh); autoseg never
imports this file. nnU-Net finds it through ``nnUNet_extTrainer`` pointing at this folder
(``harness.nnunet_env(..., extra_trainers=True)`` sets it):

    nnUNet_extTrainer=benchmarks/nnunet_trainers nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainer_Budget -device cpu

nnU-Net's own trainer is fixed at 1000 epochs of 250 iterations (days on a CPU). This subclass
changes only the length of training, read from the environment so one file serves every budget:

    NNUNET_BUDGET_EPOCHS        epochs (default 1)
    NNUNET_BUDGET_ITERATIONS    training iterations per epoch (default 250, nnU-Net's value)
    NNUNET_BUDGET_VAL_ITERATIONS  validation iterations per epoch (default 50, nnU-Net's value)
    NNUNET_BUDGET_TIMING_FILE   if set, a JSON file receiving the wall time of every training
                                iteration, so iterations/s can be computed without process start,
                                data loader warm-up and final validation
    NNUNET_BUDGET_SKIP_FINAL_VALIDATION  if "1", skip the sliding-window prediction of the fold's
                                validation cases after training (a throughput run needs none)
    NNUNET_BUDGET_WALL_MINUTES  if set, a wall-clock budget for the whole run *including* the final
                                validation, handled the way ``autoseg train --time-budget`` handles
                                its own (see "Wall-clock budget" below); NNUNET_BUDGET_EPOCHS is then
                                only an upper bound (default 1000, nnU-Net's value)

Wall-clock budget. The clock starts when the trainer is constructed (after imports, as autoseg's
does). When training starts, one eval forward pass of one patch is timed and the final validation
is estimated with autoseg's rule: sliding-window tiles of every validation case (nnU-Net's own tile
steps, overlap 0.5) x forward time x 8 mirrorings (nnU-Net validates with test-time mirroring) +
50 ns per voxel and class + 0.5 s per case for export, times a margin of 1.5. After every epoch
the number of epochs is re-planned to what fits in the budget left (mean time of the epochs after
the first, which includes warm-up), and the poly learning-rate schedule is stretched or shrunk
to that number of epochs (``lr_scheduler.max_steps``), so the run still anneals. If an epoch in
progress would run into the reserve, training stops after the current iteration. nnU-Net's
final validation then runs as usual.

Everything else (network, loss, augmentation, optimizer, learning-rate schedule over the reduced
number of epochs) is nnU-Net's own, so the throughput measured is nnU-Net's.
"""
import json
import os
import time

import numpy as np

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


class nnUNetTrainer_Budget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("NNUNET_BUDGET_EPOCHS", 1)
        self.num_iterations_per_epoch = _env_int("NNUNET_BUDGET_ITERATIONS", 250)
        self.num_val_iterations_per_epoch = _env_int("NNUNET_BUDGET_VAL_ITERATIONS", 50)
        self._timing_file = os.environ.get("NNUNET_BUDGET_TIMING_FILE", "")
        self._iteration_seconds: list = []
        self._t0 = time.monotonic()
        wall = os.environ.get("NNUNET_BUDGET_WALL_MINUTES", "").strip()
        self._budget_s = float(wall) * 60 if wall else None
        if self._budget_s is not None:
            self.num_epochs = _env_int("NNUNET_BUDGET_EPOCHS", 1000)
        self._max_epochs = self.num_epochs
        self._final_validation_estimate_s = 0.0
        self._epoch_seconds: list = []
        self._budget_log: list = []
        self._stopped_mid_epoch = False

    def train_step(self, batch: dict) -> dict:
        # The batch arrives already augmented by the background workers, so this times only the
        # network's forward/backward/step; start-to-start intervals (below) add the wait for data.
        start = time.perf_counter()
        result = super().train_step(batch)
        end = time.perf_counter()
        self._iteration_seconds.append((start, end))
        return result

    # ------------------------------------------------------------------ wall-clock budget

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    @torch.no_grad()
    def _estimate_final_validation_s(self) -> float:
        """autoseg's estimate of its own final validation, applied to nnU-Net's (see module doc)."""
        if os.environ.get("NNUNET_BUDGET_SKIP_FINAL_VALIDATION", "") == "1":
            return 0.0
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        patch = [int(p) for p in self.configuration_manager.patch_size]
        self.network.eval()
        x = torch.randn((1, self.num_input_channels, *patch), device=self.device)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            self.network(x)
            times.append(time.perf_counter() - t)
        self.network.train()
        forward_s = float(np.median(times[1:]))
        _, val_keys = self.do_split()
        windows = voxels = 0
        try:
            dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
            for k in val_keys:
                data = dataset_val.load_case(k)[0]
                shape = [max(int(a), p) for a, p in zip(data.shape[1:], patch)]
                steps = compute_steps_for_sliding_window(shape, patch, 0.5)
                windows += int(np.prod([len(s) for s in steps]))
                voxels += int(np.prod(data.shape[1:]))
        except Exception as e:  # never let the estimate break training: assume one tile per case
            self.print_to_log_file(f"budget: could not read validation shapes ({e}); assuming 1 tile per case")
            windows = len(val_keys)
            voxels = len(val_keys) * int(np.prod(patch))
        mirrors = 2 ** len(self.inference_allowed_mirroring_axes or ())
        num_classes = self.label_manager.num_segmentation_heads
        export = voxels * num_classes * 5e-8 + 0.5 * len(val_keys)
        estimate = 1.5 * (windows * forward_s * mirrors + export)
        self.print_to_log_file(f"budget: {windows} tiles x {mirrors} mirrorings x {forward_s:.3f} s forward; "
                               f"final validation estimated at {estimate:.1f} s")
        return estimate

    def _left_for_training(self) -> float:
        return self._budget_s - self._elapsed() - self._final_validation_estimate_s - 5.0

    def _replan_epochs(self) -> None:
        steady = self._epoch_seconds[1:] or self._epoch_seconds
        per_epoch = float(np.mean(steady[-5:]))
        more = max(0, int(self._left_for_training() / per_epoch)) if per_epoch > 0 else 0
        self.num_epochs = max(self.current_epoch, min(self._max_epochs, self.current_epoch + more))
        self.lr_scheduler.max_steps = max(self.num_epochs, 1)
        self._budget_log.append({"after_epoch": self.current_epoch, "elapsed_s": round(self._elapsed(), 1),
                                 "seconds_per_epoch": round(per_epoch, 2), "num_epochs": self.num_epochs})
        self.print_to_log_file(f"budget: {per_epoch:.1f} s per epoch, {self._elapsed():.0f} s elapsed, "
                               f"training for {self.num_epochs} epochs in all")

    def run_training(self):
        if self._budget_s is None:
            return super().run_training()
        # nnU-Net's own loop (nnUNetTrainer.run_training), with the number of epochs re-planned
        # after every epoch and a stop once the final-validation reserve is reached.
        self.on_train_start()
        self._final_validation_estimate_s = self._estimate_final_validation_s()
        while self.current_epoch < self.num_epochs:
            t_epoch = time.monotonic()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                if self._left_for_training() <= 0:
                    self._stopped_mid_epoch = True
                    break
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.num_epochs = self.current_epoch + 1 if self._stopped_mid_epoch else self.num_epochs
            self.on_epoch_end()
            self._epoch_seconds.append(time.monotonic() - t_epoch)
            if self._stopped_mid_epoch:
                break
            self._replan_epochs()
        self.on_train_end()

    def on_train_end(self):
        super().on_train_end()
        if self._timing_file and self.local_rank == 0:
            steps = self._iteration_seconds
            record = {
                "trainer": type(self).__name__,
                "configuration": self.configuration_name,
                "patch_size": list(self.configuration_manager.patch_size),
                "batch_size": self.batch_size,
                "epochs": self.num_epochs,
                "iterations_per_epoch": self.num_iterations_per_epoch,
                "step_seconds": [round(e - s, 5) for s, e in steps],
                # start-to-start intervals include waiting for augmented batches
                "interval_seconds": [round(b[0] - a[0], 5) for a, b in zip(steps, steps[1:])],
                "wall_budget_s": self._budget_s,
                "epochs_done": self.current_epoch,
                "iterations_done": len(steps),
                "final_validation_estimate_s": round(self._final_validation_estimate_s, 2),
                "epoch_seconds": [round(t, 2) for t in self._epoch_seconds],
                "budget_replans": self._budget_log,
                "stopped_mid_epoch": self._stopped_mid_epoch,
                "training_end_elapsed_s": round(self._elapsed(), 2),
            }
            tmp = self._timing_file + ".partial"
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self._timing_file)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("NNUNET_BUDGET_SKIP_FINAL_VALIDATION", "") == "1":
            self.print_to_log_file("final validation skipped (NNUNET_BUDGET_SKIP_FINAL_VALIDATION=1)")
            return
        return super().perform_actual_validation(save_probabilities)
