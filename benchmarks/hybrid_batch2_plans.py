"""Write an ACDC workspace's plans with ``3d_hybrid`` planned at a smallest batch of 2 (an experiment).

    python benchmarks/hybrid_batch2_plans.py SCRATCH/autoseg_workspace/ACDC SCRATCH/TAG/workspace/ACDC

Reads ``fingerprint.json`` and ``plans.json`` of the first folder, re-plans only ``3d_hybrid``
with :class:`HybridBatch2Planner` (the default planner, except that on the CPU profile the
hybrid's batch is 2 stacks, so the budget grows the in-plane patch instead: ACDC 10x128x128,
6 stages) and writes the result to ``plans.json`` in the second folder. Run it before
``bench_acdc_configs.py --tag TAG``, which keeps a plans.json it finds in its tag workspace.
Measured on ACDC fold 0 (documentation/benchmarks.md): no better than batch 4 of 10x96x96.
"""
from __future__ import annotations

import sys
from pathlib import Path

from autoseg.fingerprint.fingerprint import Fingerprint
from autoseg.planners.default import DefaultPlanner
from autoseg.planners.plans import Plans


class HybridBatch2Planner(DefaultPlanner):
    def batch_limits(self, dim: int, hybrid: bool = False) -> tuple[int, int | None]:
        if self.profile == "cpu" and hybrid:
            return 2, 2
        return super().batch_limits(dim, hybrid)


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    plans = Plans.load(source / "plans.json")
    planner = HybridBatch2Planner(Fingerprint.load(source / "fingerprint.json"), profile=plans.profile)
    hybrid = planner.configuration_3d_hybrid(plans.configuration("3d_fullres"))
    hybrid.data_identifier = plans.configuration("3d_hybrid").data_identifier  # same preprocessed data
    plans.configurations["3d_hybrid"] = hybrid
    target.mkdir(parents=True, exist_ok=True)
    plans.save(target / "plans.json")
    print(f"3d_hybrid: patch {hybrid.patch_size}, batch {hybrid.batch_size} -> {target / 'plans.json'}")


if __name__ == "__main__":
    main()
