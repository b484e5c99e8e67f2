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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (what is wrong, where the help is), not the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def _disk_error(error: OSError) -> str | None:
    """One line for an OS error that is the disk's or the permissions' (naming the file), else None."""
    import errno

    codes = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if error.errno not in codes or error.filename is None:
        return None
    return f"{error.filename}: {error.strerror or error}"


def main(argv: list[str] | None = None) -> int:
    from autoseg.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (UserError, FileNotFoundError) as e:
        print(f"autoseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # a full, read-only or forbidden disk met outside autoseg.atomic: still the user's to fix
        message = _disk_error(e)
        if message is None:
            raise
        print(f"autoseg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoseg {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
