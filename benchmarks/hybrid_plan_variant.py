"""Write an ACDC workspace's plans with ``3d_hybrid`` replaced by an experimental variant.

    python benchmarks/hybrid_plan_variant.py SCRATCH/autoseg_workspace/ACDC SCRATCH/TAG/workspace/ACDC \
        [--patch 5 96 96] [--batch 8] [--backbone-2d] [--features 16 32 64 128 256] [--edge-flush 0.2]

Copies ``plans.json`` of the first folder to the second with the ``3d_hybrid`` configuration's
patch and batch set as given (default: as planned); ``--edge-flush`` sets the probability that a
random training patch sits flush with a volume end (``ConfigurationPlan.edge_flush``);
``--backbone-2d`` also gives it the ``2d`` configuration's network
(its features and in-plane strides, lifted to 3D with kernel and stride 1 across slices);
``--features`` sets the features per stage (as many as the configuration has stages). Run it
before ``bench_acdc_configs.py --tag TAG``, which keeps a plans.json it finds in its tag
workspace. Used in the sixth session to test what limits the hybrid at a 20-minute budget
(documentation/benchmarks.md, "Thick-slice configurations on ACDC").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.planners.plans import NetworkTopology, Plans


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="dataset workspace holding plans.json")
    p.add_argument("target", type=Path, help="dataset workspace of the benchmark tag")
    p.add_argument("--patch", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--edge-flush", type=float, default=None, help="ConfigurationPlan.edge_flush (0-1)")
    p.add_argument("--backbone-2d", action="store_true", help="use the 2d configuration's network")
    p.add_argument("--features", type=int, nargs="+", default=None, help="features per stage")
    args = p.parse_args(argv)
    plans = Plans.load(args.source / "plans.json")
    hybrid = plans.configuration("3d_hybrid")
    hybrid.patch_size = list(args.patch or hybrid.patch_size)
    hybrid.batch_size = args.batch or hybrid.batch_size
    if args.edge_flush is not None:
        if not 0.0 <= args.edge_flush <= 1.0:
            p.error(f"--edge-flush is a probability, got {args.edge_flush}")
        hybrid.edge_flush = args.edge_flush
    if args.backbone_2d:
        net = plans.configuration("2d").network
        hybrid.network = NetworkTopology(list(net.features_per_stage), [[1] + list(k) for k in net.kernel_sizes],
                                         [[1] + list(s) for s in net.strides], net.n_conv_per_stage)
    if args.features is not None:
        if len(args.features) != hybrid.network.n_stages:
            p.error(f"--features needs {hybrid.network.n_stages} values, one per stage")
        hybrid.network.features_per_stage = list(args.features)
    hybrid.notes = f"{hybrid.notes}; experiment: patch {hybrid.patch_size}, batch {hybrid.batch_size}" + (
        ", 2d backbone" if args.backbone_2d else "") + (f", features {args.features}" if args.features else "") + (
        f", edge_flush {hybrid.edge_flush}" if args.edge_flush is not None else "")
    args.target.mkdir(parents=True, exist_ok=True)
    plans.save(args.target / "plans.json")
    print(f"3d_hybrid: patch {hybrid.patch_size}, batch {hybrid.batch_size}, features "
          f"{hybrid.network.features_per_stage}, edge_flush {hybrid.edge_flush} -> {args.target / 'plans.json'}")


if __name__ == "__main__":
    main()
