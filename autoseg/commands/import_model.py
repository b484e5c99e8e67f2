"""``autoseg import-model``: unpack a model archive into the workspace, after checking all of it."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-model",
        help="unpack a model archive (autoseg export-model) into the workspace",
        description="Check ARCHIVE completely (every member's path, size and sha256 against its manifest; "
                    "no path outside the target, no symlink, no unlisted member) before writing anything, "
                    "then unpack it as the dataset's workspace folder, all at once. Afterwards "
                    "'autoseg predict -d NAME' predicts with it as with a model trained here. "
                    "See documentation/sharing.md.",
    )
    p.add_argument("archive", help="the model archive (model.zip)")
    p.add_argument("--name", default=None, help="dataset folder name to import as (default: the archive's dataset)")
    p.add_argument("--workspace", default=None, help="workspace folder (default $AUTOSEG_HOME or ~/autoseg_workspace)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoseg.inference.model_archive import IMPORT_RECORD, ImportRecord, archive_summary, import_model

    ws = import_model(args.archive, args.workspace, name=args.name)
    print(archive_summary(ImportRecord.load(ws.root / IMPORT_RECORD).manifest))
    where = f" --workspace {args.workspace}" if args.workspace else ""
    print(f"imported into {ws.root}; predict with: autoseg predict -d {ws.name}{where} -i INPUT -o OUTPUT")
    return 0
