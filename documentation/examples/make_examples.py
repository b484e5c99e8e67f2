"""Regenerate the example fingerprints and plans in this folder from the real datasets.

    python documentation/examples/make_examples.py [DATA_DIR]

DATA_DIR defaults to ../shared/data next to the repository. ``plans_<name>.json`` is the CPU
profile (what a machine without a GPU plans); ``plans_<name>_gpu.json`` the GPU profile
with the default 8 GB.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from autoseg.dataset.layout import load_dataset
from autoseg.fingerprint import compute_fingerprint
from autoseg.planners import get_planner

HERE = Path(__file__).resolve().parent
DATASETS = ["Task04_Hippocampus", "ACDC", "DRIVE", "VerSe_sample"]


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"
    planner = get_planner("default")
    for name in DATASETS:
        start = time.perf_counter()
        fingerprint = compute_fingerprint(load_dataset(data / name), num_workers=2)
        seconds = time.perf_counter() - start
        fingerprint.save(HERE / f"fingerprint_{name}.json")
        planner(fingerprint, profile="cpu").plan().save(HERE / f"plans_{name}.json")
        planner(fingerprint, profile="gpu", gpu_memory_gb=8).plan().save(HERE / f"plans_{name}_gpu.json")
        print(f"{name}: {fingerprint.num_cases} cases fingerprinted in {seconds:.1f} s")


if __name__ == "__main__":
    main()
