"""``autoseg train``: train one fold of one configuration, then validate it."""
from __future__ import annotations

import argparse
import contextlib
import sys

DESCRIPTION = """Train one cross-validation fold of a planned configuration, then predict the fold's
validation cases in their original geometry and score them.

Results go to <workspace>/<dataset>/results/<trainer>__<configuration>/fold_<k>/:
checkpoint_{latest,best,final}.pt, log.json, progress.png, validation/ (segmentations,
probabilities, summary.json). Splits are made once per dataset (splits.json); cases of one
patient stay in one fold. An interrupted run resumes with --continue.

Several GPUs or nodes: start it under torchrun (torchrun --nproc_per_node N -m autoseg train ...);
it trains with DistributedDataParallel and rank 0 writes everything (documentation/distributed.md)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from autoseg.trainers.registry import trainer_listing

    epilog = ("trainers (--trainer; dimensions of the configurations each trains; parameter counts and "
              "speed in documentation/networks.md):\n" + trainer_listing())
    p = subparsers.add_parser("train", help="train one fold of a configuration", description=DESCRIPTION,
                              epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="dataset name in the workspace, or the raw dataset folder")
    p.add_argument("configuration", metavar="CONFIGURATION", help="a planned configuration, e.g. 3d_fullres or 2d")
    p.add_argument("fold", metavar="FOLD", help="fold 0-4, or 'all' to train on every case")
    p.add_argument("--trainer", default=None,
                   help="registered trainer (unet, resenc_unet), 'module:Class' or 'file.py:Class' "
                        "(default: the configuration's planned trainer)")
    p.add_argument("--epochs", type=int, default=None, help="maximum number of epochs (default 1000)")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="training iterations per epoch (default 250 on GPU, 50 on CPU)")
    p.add_argument("--val-iters", type=int, default=None,
                   help="validation batches of patches after each epoch (default 50 on GPU, 5 on CPU; 0: none)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="wall-clock budget for the whole run including the final validation; "
                        "the number of iterations and the LR schedule are fitted to it")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (default: bf16 on CPUs with native bf16 and on recent GPUs)")
    p.add_argument("--optimizer", choices=["auto", "sgd", "adam"], default="auto",
                   help="sgd: nnU-Net's SGD (Nesterov 0.99, lr 1e-2); adam: Adam lr 1e-3; both with polynomial "
                        "decay. auto: sgd on a GPU, adam on a CPU, where budgets are a few thousand iterations "
                        "and SGD has not left the all-background start yet (documentation/training.md)")
    p.add_argument("--augmentation", choices=["auto", "full", "light"], default="auto",
                   help="full: nnU-Net's set (rotation, scaling, noise, blur, intensity, low resolution, mirroring); "
                        "light: mirroring and intensity only; auto (default): light for runs of at most 60 "
                        "minutes or 20,000 iterations, full otherwise")
    p.add_argument("--loss", default=None, metavar="NAME",
                   help="dice_ce: Dice + cross-entropy (default); dice_squared: V-Net's Dice; mse: MSE on one-hot "
                        "targets; focal_dice: focal loss + Dice (documentation/training.md)")
    p.add_argument("--num-workers", type=int, default=None, help="background augmentation threads (default 1 on CPU: measured fastest on 2 cores)")
    p.add_argument("--continue", dest="continue_training", action="store_true",
                   help="resume from checkpoint_latest.pt (optimizer, LR schedule, epoch, RNG)")
    p.add_argument("--no-validation", action="store_true",
                   help="skip predicting the validation cases at the end")
    p.add_argument("--group-regex", default=None,
                   help="regex whose first group names a case's patient (kept in one fold); "
                        "used when splits are first made and remembered in grouping.json")
    p.add_argument("--seed", type=int, default=0, help="seed for patch sampling and augmentation")
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.set_defaults(func=run)


def _check_numbers(args: argparse.Namespace) -> None:
    """The numeric options, checked before any data or model is loaded."""
    from autoseg.errors import UserError

    for flag, value, least in (("--epochs", args.epochs, 1), ("--iters-per-epoch", args.iters_per_epoch, 1),
                               ("--val-iters", args.val_iters, 0), ("--num-workers", args.num_workers, 0)):
        if value is not None and value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    if args.time_budget is not None and not args.time_budget > 0:
        raise UserError(f"--time-budget must be a positive number of minutes, got {args.time_budget:g}")


def _fold(text: str) -> str:
    """FOLD as the trainer names its folder: a fold number without leading zeros, or 'all'."""
    from autoseg.errors import UserError

    if text == "all":
        return text
    if not text.isdigit():
        raise UserError(f"fold '{text}' must be a fold number (0-4) or 'all'")
    return str(int(text))


def _fold_lock(ws, trainer_cls, configuration: str, fold: str) -> contextlib.AbstractContextManager:
    """The fold's lock (the one 'autoseg run' trains it under), taken at once or refused naming its
    holder. Under torchrun rank 0 alone takes it, for all ranks: the others would be refused by it."""
    from autoseg.errors import BusyError
    from autoseg.locks import LockBusy, file_lock, fold_lock_path
    from autoseg.trainers.distributed import DistributedContext

    if DistributedContext.from_env().rank != 0:
        return contextlib.nullcontext()
    model = f"{trainer_cls.results_name()}__{configuration}"
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(file_lock(fold_lock_path(ws.fold_dir(trainer_cls.results_name(), configuration, fold)),
                                      wait=False))
    except LockBusy as e:
        raise BusyError(f"{model} fold {fold} of {ws.root} is already being trained by {e.holder}; "
                        "wait for it or stop it") from None
    return stack


def run(args: argparse.Namespace) -> int:
    from autoseg.errors import BusyError, UserError
    from autoseg.planners.plans import Plans
    from autoseg.preprocessing.plan_and_preprocess import preprocessing_holder
    from autoseg.trainers.base import TrainingSettings
    from autoseg.trainers.registry import get_trainer
    from autoseg.workspace import resolve_dataset

    _check_numbers(args)
    fold = _fold(args.fold)
    ws = resolve_dataset(args.dataset, args.workspace)
    if not ws.root.is_dir():
        raise UserError(f"{ws.root} does not exist; run 'autoseg plan-and-preprocess {args.dataset}' first")
    holder = preprocessing_holder(ws)
    if holder is not None:
        raise BusyError(f"plan-and-preprocess is running on {ws.root} ({holder}); wait for it, then train")
    if not ws.plans_file.is_file():
        raise UserError(f"{ws.plans_file} does not exist; run 'autoseg plan-and-preprocess' first")
    plans = Plans.load(ws.plans_file)
    try:
        planned_trainer = plans.configuration(args.configuration).trainer
    except KeyError as e:
        raise UserError(f"{ws.plans_file}: {e.args[0]}") from None
    trainer_cls = get_trainer(args.trainer or planned_trainer)
    settings = TrainingSettings(
        epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_iters=args.val_iters,
        time_budget_min=args.time_budget, device=args.device, precision=args.precision,
        num_workers=args.num_workers, final_validation=not args.no_validation,
        continue_training=args.continue_training, group_regex=args.group_regex, seed=args.seed,
        optimizer=args.optimizer, augmentation=args.augmentation, loss=args.loss)
    with _fold_lock(ws, trainer_cls, args.configuration, fold):
        trainer = trainer_cls(ws, args.configuration, fold, settings)
        try:
            summary = trainer.run()
        except KeyboardInterrupt:
            print("autoseg train: interrupted; resume with the same command plus --continue", file=sys.stderr)
            return 130
    if summary:
        fg = summary.get("foreground_mean", {})
        print(f"validation of fold {args.fold}: mean Dice {fg.get('Dice', float('nan')):.4f} over "
              f"{summary.get('num_cases')} case(s); details in {trainer.fold_dir / 'validation' / 'summary.json'}")
    if trainer.dist.is_main:  # under torchrun, rank 0 speaks for all
        print(f"model: {trainer.results_dir}")
    return 0
