"""The ``autoseg`` command: one entry point, one module per subcommand in ``autoseg/commands``.

Command modules import their heavy dependencies (torch, SimpleITK) inside ``run`` so that
``autoseg --help`` stays instant. Errors a user can fix (:class:`autoseg.errors.UserError`:
bad dataset, missing plans, bad arguments) are printed as a message and exit code 2,
never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order in ``autoseg --help``: the pipeline's order.
COMMAND_MODULES = [
    "plan_and_preprocess",
    "train",
    "predict",
    "mesh",
    "evaluate",
    "find_best_configuration",
    "ensemble",
    "postprocess",
    "export_model",
    "import_model",
    "export_onnx",
    "run",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="Self-configuring medical image segmentation: plan, preprocess, train, predict, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"autoseg.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"autoseg.commands.{name}":
                continue  # command not built yet in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from autoseg.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (UserError, FileNotFoundError) as e:
        print(f"autoseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoseg {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
