"""How close is a budgeted run's final-validation reserve to the validation's real time?

    python benchmarks/validation_estimate.py --workspace SCRATCH/TAG/workspace \
        [--dataset ACDC] [--configuration 3d_hybrid] [--trainer hybrid] [--fold 0] [--probes 8]

Builds the fold's trainer as ``autoseg train --time-budget 20 --device cpu`` would, takes the
forward probe ``--probes`` times in a row in this fresh process (each: one warm-up pass, then
the fastest of three), prints the readings, the sliding-window count and the estimate with
each reading (without the 1.2x margin, so it compares with the real time), then runs the
fold's final validation from its ``checkpoint_final.pt`` into a scratch folder (the fold's own
validation is left alone) and prints its wall time. Run it alone on the machine.
Used in the eighth session to check the probe change (documentation/training.md, "Time budget").
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from autoseg.trainers.base import TrainingSettings
from autoseg.trainers.registry import get_trainer
from autoseg.workspace import resolve_dataset


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="workspace folder (holds DATASET/)")
    ap.add_argument("--dataset", default="ACDC")
    ap.add_argument("--configuration", default="3d_hybrid")
    ap.add_argument("--trainer", default="hybrid")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--probes", type=int, default=8)
    args = ap.parse_args(argv)

    ws = resolve_dataset(args.dataset, args.workspace)
    trainer = get_trainer(args.trainer)(ws, args.configuration, args.fold,
                                        TrainingSettings(time_budget_min=20, device="cpu"))
    trainer._setup()
    readings = [trainer._measure_forward_time() for _ in range(args.probes)]
    windows, export_s = trainer._validation_work
    trainer._forward_time_s = min(readings)  # the TTA choice as the current trainer makes it
    flips = 2 ** len(trainer.mirror_axes()) if trainer._tta() else 1
    print(f"probe readings (s per window): {', '.join(f'{r:.4f}' for r in readings)}")
    print(f"windows: {windows}, mirrored passes per window: {flips}, export term: {export_s:.1f} s")
    for label, r in (("first reading", readings[0]), ("fastest reading", min(readings))):
        trainer._forward_time_s = r
        print(f"estimate without margin, {label}: {trainer._validation_cost_s(flips, margin=False):.1f} s")

    source = trainer.fold_dir
    with tempfile.TemporaryDirectory() as scratch:
        trainer.fold_dir = Path(scratch)
        shutil.copy(source / "checkpoint_final.pt", trainer.fold_dir / "checkpoint_final.pt")
        t0 = time.perf_counter()
        summary = trainer.validate()
        real = time.perf_counter() - t0
    print(f"real validation: {real:.1f} s (mean Dice {summary['foreground_mean']['Dice']:.4f})")


if __name__ == "__main__":
    main()
