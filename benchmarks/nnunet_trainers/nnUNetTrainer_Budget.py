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

Everything else (network, loss, augmentation, optimizer, learning-rate schedule over the reduced
number of epochs) is nnU-Net's own, so the throughput measured is nnU-Net's.
"""
import json
import os
import time

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

    def train_step(self, batch: dict) -> dict:
        # The batch arrives already augmented by the background workers, so this times only the
        # network's forward/backward/step; start-to-start intervals (below) add the wait for data.
        start = time.perf_counter()
        result = super().train_step(batch)
        end = time.perf_counter()
        self._iteration_seconds.append((start, end))
        return result

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
