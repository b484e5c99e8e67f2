"""One-file models: a trained model (or the chosen ensemble) as one zip that predicts anywhere.

:func:`export_model` packs what prediction needs from a dataset's workspace, laid out as the
workspace lays it out: ``best_configuration.json`` (the selection, its folds and
postprocessing) and, per selected model, ``results/<trainer>__<configuration>/plans.json`` and
``fold_<k>/checkpoint_<name>.pt``. ``manifest.json`` (:class:`Manifest`) lists every member
with its size and sha256, plus versions, the dataset's name, labels and the selection.
Checkpoints stay torch files of tensors and plain values (loaded with ``weights_only``, so
nothing in an archive can run code); the optimizer state and RNG states are left out: an
archive is for predicting, not for resuming training.

:func:`import_model` checks the whole archive before it writes anything: every member's path
(no absolute path, no ``..``, no symlink, nothing the manifest does not list, nothing it lists
missing), the declared sizes against a limit (zip bombs), then every member's size and sha256.
It then extracts into a temporary folder beside the target, checking the bytes again as they
are written, and renames the folder into place, so a workspace is either complete or absent.
:func:`open_model` (``autoseg predict --model``) does the same once into a cache folder keyed by
the archive's sha256 and reuses it while its files still match the manifest.

The checksums detect damage and edits made after export (a truncated download, a flipped
byte, a member replaced); they are not a signature: whoever can rewrite the archive can
rewrite its manifest. What keeps a hostile archive harmless is the rest: paths cannot leave
the target folder and checkpoints cannot carry code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable

from autoseg.atomic import atomic_path, read_json, write_json
from autoseg.errors import UserError
from autoseg.typed_json import from_json
from autoseg.workspace import DatasetWorkspace, workspace_root

ARCHIVE_FORMAT = 1
MANIFEST = "manifest.json"
IMPORT_RECORD = "model_source.json"  # in an imported workspace: which archive it came from
CACHE_FOLDER = ".model_cache"  # under the workspace root: open_model's extractions, one per archive sha256
CHECKPOINTS = ("final", "best", "latest")
# training state an archive leaves out: it is for predicting, and the optimizer alone doubles the size
TRAINING_ONLY_KEYS = ("optimizer", "grad_scaler", "rng")
DEFAULT_MAX_TOTAL_BYTES = 32 * 2**30  # the largest ensemble of 3D U-Net folds is a few GB
MAX_MEMBERS = 10_000
MAX_JSON_BYTES = 64 * 2**20  # manifest, plans, selection: kilobytes in practice
CHUNK = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelArchiveError(UserError):
    """A model archive cannot be exported, imported or opened; the message names the archive
    and, where one is at fault, the member."""


class ArchiveCorruptError(ModelArchiveError):
    """The archive is damaged: truncated, not a zip, a member's bytes or size differ from the manifest."""


class ArchiveUnsafeError(ModelArchiveError):
    """The archive holds something that extracting could abuse: a path leaving the target, a
    symlink, a member the manifest does not list, sizes beyond the limit."""


@dataclass
class ArchiveMember:
    path: str  # relative, "/"-separated: where it lands inside the dataset's workspace folder
    size: int
    sha256: str


@dataclass
class ArchivedModel:
    """One model in the archive: ``results/<trainer>__<configuration>/`` with these folds."""

    trainer: str
    configuration: str
    architecture: str  # a built-in name, or module:Class that the importing machine must have installed
    folds: list[str]
    checkpoint: str


@dataclass
class Manifest:
    format_version: int
    autoseg_version: str
    torch_version: str
    created: str  # ISO 8601, UTC
    dataset: str
    label_values: list[int]
    label_names: list[str]
    channel_names: list[str]
    selection: dict[str, Any]  # best_configuration.json's "selected": models, folds, postprocessing
    models: list[ArchivedModel]
    members: list[ArchiveMember] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Manifest":
        return from_json(cls, data, where)


@dataclass
class ImportRecord:
    """``model_source.json`` in an imported workspace; written last inside the folder before it is renamed in."""

    archive: str
    archive_sha256: str
    imported: str
    manifest: Manifest

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImportRecord":
        return from_json(cls, read_json(path), str(path))


def _autoseg_version() -> str:
    # from the installed distribution: the package's __init__ is the command line's stage, above this one
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoseg")
    except PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_folder_name(name: str, what: str) -> str:
    """A dataset folder name: one plain path component, so it cannot point outside the workspace."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ModelArchiveError(f"{what} '{name}' is not a plain folder name (letters, digits, '.', '_', '-')")
    return name


# ------------------------------------------------------------------ export


def _selection_to_export(ws: DatasetWorkspace, folds: Iterable[int | str] | None, configuration: str | None,
                         trainer: str):
    from autoseg.postprocessing.selection import DEFAULT_FOLDS, ModelRef, Selected, Selection

    if configuration:
        # like ``predict -c``: this model alone, no postprocessing (that is find-best's choice)
        selection = Selection(Selected(f"{trainer}__{configuration}", [ModelRef(trainer, configuration)], {},
                                       list(DEFAULT_FOLDS)))
    else:
        selection = Selection.load(ws.best_configuration_file)
    if folds is not None:
        chosen = []
        for f in folds:
            try:
                chosen.append(int(f))
            except (TypeError, ValueError):
                raise ModelArchiveError(f"fold '{f}': an archive holds numbered folds (0-4), as "
                                        "best_configuration.json records them") from None
        if not chosen:
            raise ModelArchiveError("no fold to export")
        selection.selected.folds = sorted(set(chosen))
    return selection


def _archived_checkpoint(path: Path) -> bytes:
    """The checkpoint without its training-only state, as torch file bytes; refused unless it
    loads with weights_only and holds network weights."""
    import torch

    from autoseg.checkpoint import load_checkpoint

    state = load_checkpoint(path, map_location="cpu")
    if "network" not in state:
        raise ModelArchiveError(f"{path}: not an autoseg checkpoint (no 'network' weights)")
    kept = {k: v for k, v in state.items() if k not in TRAINING_ONLY_KEYS}
    buffer = io.BytesIO()
    torch.save(kept, buffer)
    return buffer.getvalue()


def _zip_info(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = (stat.S_IFREG | 0o644) << 16  # a regular file, whatever umask the importer has
    return info


def export_model(ws: DatasetWorkspace, out_zip: str | os.PathLike, folds: Iterable[int | str] | None = None,
                 configuration: str | None = None, trainer: str = "unet", checkpoint: str = "final",
                 progress: bool = True) -> Manifest:
    """Write ``out_zip`` with what predicting needs: the selection of ``best_configuration.json``
    (or, with ``configuration``, that one model without postprocessing), its models' plans and
    the ``folds`` (default: the selection's) checkpoints. Every file is located and the plans
    are checked before writing starts, each checkpoint as it is packed (weights only); the
    archive appears complete or not at all."""
    import torch
    from tqdm import tqdm

    from autoseg.planners.plans import Plans

    if checkpoint not in CHECKPOINTS:
        raise ModelArchiveError(f"checkpoint '{checkpoint}': choose {', '.join(CHECKPOINTS)}")
    out_zip = Path(out_zip)
    if out_zip.is_dir():
        raise ModelArchiveError(f"{out_zip} is a folder; give the archive's file name (model.zip)")
    if not ws.root.is_dir():
        raise ModelArchiveError(f"dataset workspace {ws.root} does not exist; check the dataset name and --workspace")
    dataset = check_folder_name(ws.name, "dataset name")
    selection = _selection_to_export(ws, folds, configuration, trainer)
    fold_names = [str(f) for f in selection.selected.folds]

    # everything is located and checked before the archive is started
    models, files, plans_first = [], [], None
    for ref in selection.models:
        folder = ws.results_dir(ref.trainer, ref.configuration)
        plans_file = folder / "plans.json"
        if not plans_file.is_file():
            raise ModelArchiveError(f"no trained model in {folder} ({plans_file.name} missing); train it first, "
                                    "or choose another with -c/--trainer")
        plans = Plans.load(plans_file)
        try:
            config = plans.configuration(ref.configuration)
        except KeyError as e:
            raise ModelArchiveError(f"{plans_file}: {e.args[0]}") from None
        if plans_first is None:
            plans_first = plans
        elif list(plans.label_values) != list(plans_first.label_values):
            raise ModelArchiveError(f"{plans_file}: label values {plans.label_values} differ from the other "
                                    f"model's {plans_first.label_values}; an ensemble predicts one label set")
        ckpts = [folder / f"fold_{f}" / f"checkpoint_{checkpoint}.pt" for f in fold_names]
        missing = [str(c) for c in ckpts if not c.is_file()]
        if missing:
            raise ModelArchiveError(f"checkpoint(s) missing: {', '.join(missing)}; train those folds or choose "
                                    "folds with -f")
        models.append(ArchivedModel(ref.trainer, ref.configuration, config.architecture, fold_names, checkpoint))
        base = f"results/{ref.name}"
        files.append((f"{base}/plans.json", plans_file, False))
        files += [(f"{base}/fold_{f}/checkpoint_{checkpoint}.pt", c, True) for f, c in zip(fold_names, ckpts)]
    assert plans_first is not None  # Selection.load refuses a selection of no model

    selection_bytes = (json.dumps(selection.to_dict(), indent=2) + "\n").encode("utf-8")
    manifest = Manifest(ARCHIVE_FORMAT, _autoseg_version(), torch.__version__, _now(), dataset,
                        [int(v) for v in plans_first.label_values], list(plans_first.label_names),
                        list(plans_first.channel_names), asdict(selection.selected), models)
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        def add(name: str, data: bytes, compress: bool) -> None:
            zf.writestr(_zip_info(name, compress), data)
            manifest.members.append(ArchiveMember(name, len(data), hashlib.sha256(data).hexdigest()))

        add("best_configuration.json", selection_bytes, True)
        for name, source, is_checkpoint in tqdm(files, desc=f"export {dataset}", disable=not progress, leave=False):
            # torch files are zips of raw tensors: deflating them again gains little and costs time
            add(name, _archived_checkpoint(source) if is_checkpoint else source.read_bytes(), not is_checkpoint)
        zf.writestr(_zip_info(MANIFEST, True), json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------ checking an archive


def _member_path_problem(name: str) -> str | None:
    """Why a member name could land outside the target folder (or collide), None when it is safe."""
    if not name or "\x00" in name:
        return "an empty name or a NUL byte"
    if "\\" in name:
        return "a backslash (a Windows path separator)"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = name.split("/")
    if any(p == ".." for p in parts):
        return "'..' (a path leaving the target folder)"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' path component"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _open_zip(archive: Path) -> zipfile.ZipFile:
    if not archive.is_file():
        raise ModelArchiveError(f"model archive {archive} does not exist")
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        raise ArchiveCorruptError(f"model archive {archive}: not a readable zip file, truncated or damaged "
                                  f"({type(e).__name__}: {e}); export or download it again") from None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path, limit: int,
                 sink: IO[bytes] | None = None) -> tuple[int, str]:
    """(bytes read, sha256) of a member, streaming; never more than ``limit`` bytes, whatever the
    header claims, so a lying header cannot fill the disk or memory."""
    h = hashlib.sha256()
    n = 0
    try:
        f = zf.open(info)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, zlib.error) as e:
        raise _damaged(archive, info.filename, e) from None
    with f:
        while True:
            try:
                block = f.read(min(CHUNK, limit + 1 - n))
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
                # zipfile checks each member's CRC-32 as its last bytes are read
                raise _damaged(archive, info.filename, e) from None
            if not block:
                break
            n += len(block)
            if n > limit:
                raise ArchiveUnsafeError(f"model archive {archive}: member {info.filename} holds more bytes than "
                                         f"declared ({limit}); refused, nothing was written")
            h.update(block)
            if sink is not None:
                sink.write(block)
    return n, h.hexdigest()


def _damaged(archive: Path, member: str, e: BaseException) -> ArchiveCorruptError:
    return ArchiveCorruptError(f"model archive {archive}: member {member} is damaged ({type(e).__name__}: {e}); "
                               "refused, nothing was written")


def _load_manifest(zf: zipfile.ZipFile, archive: Path, infos: dict[str, zipfile.ZipInfo]) -> Manifest:
    info = infos.get(MANIFEST)
    if info is None:
        raise ArchiveCorruptError(f"model archive {archive}: no {MANIFEST}; not an autoseg model archive "
                                  "(autoseg export-model writes them)")
    if info.file_size > MAX_JSON_BYTES:
        raise ArchiveUnsafeError(f"model archive {archive}: {MANIFEST} declares {info.file_size} bytes; refused")
    buffer = io.BytesIO()
    _read_member(zf, info, archive, MAX_JSON_BYTES, buffer)
    where = f"model archive {archive}: {MANIFEST}"
    try:
        data = json.loads(buffer.getvalue().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArchiveCorruptError(f"{where}: not JSON ({e})") from None
    if isinstance(data, dict) and data.get("format_version") != ARCHIVE_FORMAT:
        raise ModelArchiveError(f"{where}: archive format {data.get('format_version')} is not supported by this "
                                f"autoseg (reads format {ARCHIVE_FORMAT}); update autoseg or export again")
    manifest = Manifest.from_dict(data, where)
    check_folder_name(manifest.dataset, f"{where}: dataset name")
    seen: set[str] = set()
    for m in manifest.members:
        problem = _member_path_problem(m.path)
        if problem:
            raise ArchiveUnsafeError(f"{where}: member {m.path!r} has {problem}; refused, nothing was written")
        if m.path == MANIFEST or m.path.casefold() in seen:
            raise ArchiveUnsafeError(f"{where}: member {m.path!r} is listed twice; refused, nothing was written")
        seen.add(m.path.casefold())
        if m.size < 0 or not _SHA256.fullmatch(m.sha256):
            raise ArchiveCorruptError(f"{where}: member {m.path}: size {m.size} / sha256 {m.sha256!r} are not valid")
    return manifest


def _check_contents(zf: zipfile.ZipFile, archive: Path, manifest: Manifest,
                    infos: dict[str, zipfile.ZipInfo]) -> None:
    """What prediction needs is there: the selection, and each of its models' plans and fold checkpoints."""
    from autoseg.planners.plans import Plans
    from autoseg.postprocessing.selection import Selection

    listed = {m.path for m in manifest.members}

    def parsed(name: str) -> Any:
        if name not in listed:
            raise ArchiveCorruptError(f"model archive {archive}: no member {name}; not a complete model archive")
        buffer = io.BytesIO()
        _read_member(zf, infos[name], archive, MAX_JSON_BYTES, buffer)
        try:
            return json.loads(buffer.getvalue().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ArchiveCorruptError(f"model archive {archive}: member {name} is not JSON ({e})") from None

    try:
        selection = Selection.from_dict(parsed("best_configuration.json"))
    except (KeyError, TypeError, ValueError) as e:
        raise ArchiveCorruptError(f"model archive {archive}: member best_configuration.json is not a selection "
                                  f"({type(e).__name__}: {e})") from None
    for ref in selection.models:
        check_folder_name(ref.name, f"model archive {archive}: model")
        plans = Plans.from_dict(parsed(f"results/{ref.name}/plans.json"),
                                f"model archive {archive}: member results/{ref.name}/plans.json")
        if list(plans.label_values) != list(manifest.label_values):
            raise ArchiveCorruptError(f"model archive {archive}: member results/{ref.name}/plans.json: label values "
                                      f"{plans.label_values} differ from the manifest's {manifest.label_values}")
        for f in selection.selected.folds:
            if not any(p.startswith(f"results/{ref.name}/fold_{f}/checkpoint_") for p in listed):
                raise ArchiveCorruptError(f"model archive {archive}: no checkpoint of {ref.name} fold {f}, which "
                                          "its best_configuration.json selects")


def verify_archive(archive: str | os.PathLike, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> Manifest:
    """The archive's manifest once every check has passed; writes nothing. Raises
    :class:`ArchiveUnsafeError` or :class:`ArchiveCorruptError` naming the archive and the member."""
    archive = Path(archive)
    with _open_zip(archive) as zf:
        return _verify_open(zf, archive, max_total_bytes)


def _verify_open(zf: zipfile.ZipFile, archive: Path, max_total_bytes: int) -> Manifest:
    entries = zf.infolist()
    if len(entries) > MAX_MEMBERS:
        raise ArchiveUnsafeError(f"model archive {archive}: {len(entries)} members (at most {MAX_MEMBERS}); refused")
    infos: dict[str, zipfile.ZipInfo] = {}
    folded: set[str] = set()
    for info in entries:
        name = info.filename
        problem = _member_path_problem(name.rstrip("/") if info.is_dir() else name)
        if problem:
            raise ArchiveUnsafeError(f"model archive {archive}: member {name!r} has {problem}; refused, nothing "
                                     "was written")
        if _is_symlink(info):
            raise ArchiveUnsafeError(f"model archive {archive}: member {name} is a symbolic link; refused, nothing "
                                     "was written")
        if info.flag_bits & 0x1:
            raise ArchiveUnsafeError(f"model archive {archive}: member {name} is encrypted; refused")
        if name.casefold() in folded:
            # a second entry of one name would silently replace the first on extraction
            raise ArchiveUnsafeError(f"model archive {archive}: member {name} appears twice; refused, nothing was "
                                     "written")
        folded.add(name.casefold())
        infos[name] = info
    manifest = _load_manifest(zf, archive, infos)
    listed = {m.path: m for m in manifest.members}
    extra = sorted(n for n in infos if n != MANIFEST and n not in listed)
    if extra:
        raise ArchiveUnsafeError(f"model archive {archive}: member {extra[0]} is not listed in {MANIFEST}"
                                 + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                                 + "; refused, nothing was written")
    missing = sorted(p for p in listed if p not in infos)
    if missing:
        raise ArchiveCorruptError(f"model archive {archive}: member {missing[0]} is listed in {MANIFEST} but "
                                  "missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                  + "; export it again")
    total = 0
    for path, m in listed.items():
        if infos[path].file_size != m.size:
            raise ArchiveCorruptError(f"model archive {archive}: member {path} declares {infos[path].file_size} bytes, "
                                      f"the manifest {m.size}; refused, nothing was written")
        total += m.size
    if total > max_total_bytes:
        raise ArchiveUnsafeError(f"model archive {archive}: members add up to {total} bytes uncompressed, more than "
                                 f"the limit of {max_total_bytes} (a zip bomb, or a larger model than expected: "
                                 "raise the limit); refused, nothing was written")
    for path, m in listed.items():
        n, digest = _read_member(zf, infos[path], archive, m.size)
        if n != m.size or digest != m.sha256:
            raise ArchiveCorruptError(f"model archive {archive}: member {path} does not match its checksum in "
                                      f"{MANIFEST} ({n} bytes, sha256 {digest[:12]}..., expected {m.size} bytes, "
                                      f"{m.sha256[:12]}...): damaged or modified after export; refused, nothing "
                                      "was written")
    _check_contents(zf, archive, manifest, infos)
    return manifest


# ------------------------------------------------------------------ import


def _extract_into(zf: zipfile.ZipFile, archive: Path, manifest: Manifest, folder: Path) -> None:
    """Each member into ``folder`` (fresh), its bytes checked again as they are written: the file
    may have changed since it was verified."""
    root = folder.resolve()
    for m in manifest.members:
        dest = folder.joinpath(*PurePosixPath(m.path).parts)
        if not dest.resolve().is_relative_to(root):  # unreachable after the name checks; kept as the last guard
            raise ArchiveUnsafeError(f"model archive {archive}: member {m.path} would land outside {folder}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "xb") as sink:
            n, digest = _read_member(zf, zf.getinfo(m.path), archive, m.size, sink)
        if n != m.size or digest != m.sha256:
            raise ArchiveCorruptError(f"model archive {archive}: member {m.path} changed while it was extracted "
                                      "(the archive is being rewritten?); refused")


def _check_space(target_parent: Path, manifest: Manifest, archive: Path) -> None:
    need = sum(m.size for m in manifest.members)
    target_parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target_parent).free
    if free < need:
        raise ModelArchiveError(f"model archive {archive}: needs {need / 2**20:.0f} MB, {target_parent} has "
                                f"{free / 2**20:.0f} MB free")


def _import(archive: Path, root: Path, name: str | None, archive_sha256: str, max_total_bytes: int) -> DatasetWorkspace:
    with _open_zip(archive) as zf:
        manifest = _verify_open(zf, archive, max_total_bytes)
        name = check_folder_name(name if name is not None else manifest.dataset, "dataset name")
        target = root / name
        if target.exists():
            raise ModelArchiveError(f"{target} already exists; import under another name (--name) or remove it first")
        _check_space(root, manifest, archive)
        partial = root / f".partialdir-{uuid.uuid4().hex[:8]}-{name}"  # atomic.remove_partials cleans leftovers
        try:
            partial.mkdir(parents=True)
            _extract_into(zf, archive, manifest, partial)
            ImportRecord(str(archive.resolve()), archive_sha256, _now(), manifest).save(partial / IMPORT_RECORD)
            try:
                os.replace(partial, target)
            except OSError:
                if target.exists():
                    raise ModelArchiveError(f"{target} appeared while importing (another import?); remove it or "
                                            "import under another name (--name)") from None
                raise
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return DatasetWorkspace(target)


def import_model(archive: str | os.PathLike, workspace: str | os.PathLike | None = None, name: str | None = None,
                 max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> DatasetWorkspace:
    """Unpack a model archive into ``<workspace>/<name>`` (default name: the dataset's, from the
    manifest) after checking all of it; returns that dataset's workspace, which ``autoseg
    predict -d NAME`` then uses. Refuses an existing target."""
    archive = Path(archive)
    if not archive.is_file():
        raise ModelArchiveError(f"model archive {archive} does not exist")
    return _import(archive, workspace_root(workspace), name, _sha256_file(archive), max_total_bytes)


def _cached_workspace(folder: Path, archive_sha256: str) -> DatasetWorkspace | None:
    """The cached extraction in ``folder`` if it is complete and its files still match the manifest."""
    if not folder.is_dir():
        return None
    for ws_root in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record_file = ws_root / IMPORT_RECORD
        if not record_file.is_file():
            continue
        try:
            record = ImportRecord.load(record_file)
        except (UserError, ValueError, OSError):
            continue
        if record.archive_sha256 != archive_sha256:
            continue
        for m in record.manifest.members:
            f = ws_root.joinpath(*PurePosixPath(m.path).parts)
            if _member_path_problem(m.path) or not f.is_file() or f.stat().st_size != m.size \
                    or _sha256_file(f) != m.sha256:
                return None
        return DatasetWorkspace(ws_root)
    return None


def open_model(archive: str | os.PathLike, workspace: str | os.PathLike | None = None,
               max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> DatasetWorkspace:
    """The dataset workspace of a model archive, for ``autoseg predict --model``: extracted (after
    every check) once into ``<workspace>/.model_cache/<sha256>/<dataset>``, and reused while its
    files still match the manifest; a cache that was tampered with is extracted again."""
    archive = Path(archive)
    if not archive.is_file():
        raise ModelArchiveError(f"model archive {archive} does not exist")
    digest = _sha256_file(archive)
    folder = workspace_root(workspace) / CACHE_FOLDER / digest[:32]
    cached = _cached_workspace(folder, digest)
    if cached is not None:
        return cached
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        return _import(archive, folder, None, digest, max_total_bytes)
    except ModelArchiveError:
        # another process may have extracted the same archive at the same time: use its copy
        cached = _cached_workspace(folder, digest)
        if cached is not None:
            return cached
        raise


def archive_summary(manifest: Manifest) -> str:
    """One line per model for the command line: what an archive holds."""
    lines = [f"dataset {manifest.dataset}, labels "
             + ", ".join(f"{v} {n}" for v, n in zip(manifest.label_values, manifest.label_names))
             + f"; autoseg {manifest.autoseg_version}, torch {manifest.torch_version}, created {manifest.created}"]
    for m in manifest.models:
        lines.append(f"  {m.trainer}__{m.configuration} ({m.architecture}): folds {', '.join(m.folds)}, "
                     f"checkpoint {m.checkpoint}")
    post = manifest.selection.get("postprocessing") or {}
    lines.append(f"  postprocessing: {post if post else 'none'}")
    return "\n".join(lines)
