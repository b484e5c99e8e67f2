"""``autoseg demo``: the whole pipeline, end to end, on a small built-in synthetic dataset."""
from __future__ import annotations

import argparse

DESCRIPTION = """Run every stage on synthetic data in a few minutes on a laptop CPU:

  1. write a synthetic dataset (noisy ellipsoids, labels 1 and 2) into <workspace>/demo_data/
  2. run the study on it (what 'autoseg run' does): plan-and-preprocess, train the five folds
     of 3d_fullres briefly, find-best-configuration on the cross-validation predictions and
     predict a held-out set of new synthetic cases (a different seed)
  3. evaluate those predictions

The models are trained for about a minute per fold, not hours: the point is to exercise and
show the pipeline, not to reach good accuracy (raise --fold-minutes and --epochs for that).
With the defaults the demo takes about 3 minutes on two CPU cores (2.7 min measured, 2026-11-22)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on a small synthetic dataset",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.add_argument("--num-cases", type=int, default=20, help="training cases (default 20)")
    p.add_argument("--num-test-cases", type=int, default=5, help="held-out cases to predict (default 5)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per fold (default 10)")
    p.add_argument("--iters-per-epoch", type=int, default=10, help="iterations per epoch (default 10)")
    p.add_argument("--fold-minutes", type=float, default=1.0,
                   help="wall-clock budget per fold including its validation (default 1.0)")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="folds to train (default 0-4)")
    p.set_defaults(func=run)


def _step(title: str, argv: list[str]) -> None:
    from autoseg.cli import main
    from autoseg.errors import UserError

    print(f"\n=== {title}: autoseg {' '.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        raise UserError(f"demo stopped: 'autoseg {' '.join(argv)}' exited with code {code}")


def run(args: argparse.Namespace) -> int:
    import shutil
    import time

    from autoseg.commands import check_at_least
    from autoseg.errors import UserError
    from autoseg.study.runner import StudyOptions, run_study
    from autoseg.synthetic import make_dataset
    from autoseg.workspace import workspace_root

    for flag, value in (("--num-cases", args.num_cases), ("--num-test-cases", args.num_test_cases)):
        check_at_least(flag, value, 1)
    start = time.time()
    root = workspace_root(args.workspace)
    data = root / "demo_data"
    raw = data / "AutosegDemo"
    test = data / "AutosegDemo_test"
    if not (raw / "dataset.json").is_file():
        print(f"writing {args.num_cases} synthetic training cases to {raw}")
        make_dataset(raw, num_cases=args.num_cases, shape=(24, 32, 32), seed=0)
    if not (test / "dataset.json").is_file():
        make_dataset(test, num_cases=args.num_test_cases, shape=(24, 32, 32), seed=1)
    predictions = data / "predictions"
    if predictions.exists():
        shutil.rmtree(predictions)
    # the study skips folds a first demo in this workspace finished and resumes interrupted ones
    print(f"\n=== the study: plan and preprocess, train folds {' '.join(map(str, args.folds))} of 3d_fullres, "
          "find the best configuration, predict the held-out cases", flush=True)
    options = StudyOptions(configurations=["3d_fullres"], folds=list(args.folds), epochs=args.epochs,
                           iters_per_epoch=args.iters_per_epoch, fold_minutes=args.fold_minutes, num_workers=2,
                           predict=(str(test / "imagesTr"), str(predictions)))
    summary = run_study(raw, root, options)
    for line in summary.lines():
        print(line)
    if summary.status != "finished":
        raise UserError(f"demo stopped: {summary.message}")
    _step("evaluate", ["evaluate", str(test / "labelsTr"), str(predictions)])
    dataset_ws = root / "AutosegDemo"
    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min. Where to look:")
    print(f"  training curves      {dataset_ws}/results/*/fold_*/progress.png")
    print(f"  model selection      {dataset_ws}/find_best_report.md, find_best.png, best_configuration.json")
    print(f"  held-out predictions {predictions}/ (summary.json, summary.csv, volumes.csv)")
    print(f"  the study            {dataset_ws}/study_status.json, study_summary.json, study_logs/")
    return 0
