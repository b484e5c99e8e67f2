"""The cases of an input folder: which files make one case, checked before any work starts.

A folder holds either one file per case (``CASE.nii.gz``, possibly multi-channel: a 4D volume
or an RGB PNG) or nnU-Net-style channel files ``CASE_0000.nii.gz``, ``CASE_0001...``.

A :class:`FolderPart` stands for a folder where one of several processes predicts only its
share of the cases (``autoseg predict --part K --num-parts N``).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg.dataset.dicom import DicomSeries, find_dicom_series, is_dicom_folder
from autoseg.dataset.imageio import SUPPORTED_ENDINGS, read_header, split_ending
from autoseg.errors import UserError

_CHANNEL_FILE = re.compile(r"^(.*)_(\d{4})$")


@dataclass
class InputCase:
    case_id: str
    files: list[Path]  # one multi-channel file, or one file per channel in channel order
    ending: str  # the input's file ending; the prediction is written in the same format
    dicom: DicomSeries | None = None  # a DICOM series (files: its slices in order); written as NIfTI


@dataclass(frozen=True)
class FolderPart:
    """Part ``part`` of ``num_parts`` of an input folder: its cases number ``part``, ``part + num_parts``,
    ... of the folder's cases in case-id order.

    N processes given parts 0 to N-1 of one folder (one per GPU) predict every case exactly once,
    whatever order they run in, and a rerun gives each the same cases. It is a path (``os.PathLike``:
    the folder) wherever a folder is expected; :func:`find_input_cases` keeps the part's cases.
    """

    folder: Path
    part: int = 0
    num_parts: int = 1

    def __post_init__(self) -> None:
        if self.num_parts < 1:
            raise UserError(f"--num-parts must be at least 1, got {self.num_parts}")
        if not 0 <= self.part < self.num_parts:
            raise UserError(f"--part must be 0 to {self.num_parts - 1} with --num-parts {self.num_parts}, "
                            f"got {self.part}")
        object.__setattr__(self, "folder", Path(self.folder))

    def __fspath__(self) -> str:
        return os.fspath(self.folder)

    def select(self, cases: Sequence[InputCase]) -> list[InputCase]:
        """This part's cases of the folder's ``cases`` (sorted by case id, as found)."""
        return sorted(cases, key=lambda c: c.case_id)[self.part::self.num_parts]

    @property
    def volumes_name(self) -> str:
        """The volume table of this part: ``volumes.csv`` unsplit, else ``volumes_part{K}of{N}.csv``,
        so parts writing into one output folder never overwrite each other's table."""
        return "volumes.csv" if self.num_parts == 1 else f"volumes_part{self.part}of{self.num_parts}.csv"


def find_input_cases(folder: str | os.PathLike | FolderPart, num_channels: int,
                     dicom_identifiers: str = "series") -> list[InputCase]:
    """The cases in ``folder``: nnU-Net-style ``CASE_XXXX`` channel files, else one file per case.

    For a :class:`FolderPart` only the part's cases, after checking the whole folder as above.
    """
    if isinstance(folder, FolderPart):
        return folder.select(find_input_cases(folder.folder, num_channels, dicom_identifiers))
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"input folder {folder} does not exist")
    files = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        parts = split_ending(f.name)
        if parts is not None:
            files.append((f, parts[0], parts[1]))
    if not files and is_dicom_folder(folder):
        return dicom_input_cases(folder, dicom_identifiers)
    if not files:
        raise UserError(f"input folder {folder} holds no image files ({', '.join(SUPPORTED_ENDINGS)})")

    groups: dict[str, dict[int, tuple[Path, str]]] = {}
    all_channel_files = True
    for f, stem, ending in files:
        m = _CHANNEL_FILE.match(stem)
        if not m:
            all_channel_files = False
            break
        groups.setdefault(m.group(1), {})[int(m.group(2))] = (f, ending)
    if all_channel_files and all(set(g) == set(range(num_channels)) for g in groups.values()):
        return [InputCase(cid, [g[i][0] for i in range(num_channels)], g[0][1]) for cid, g in sorted(groups.items())]
    if all_channel_files and num_channels > 1:
        # channel files, but some case lacks a channel: name it rather than guess
        for cid, g in sorted(groups.items()):
            missing = [i for i in range(num_channels) if i not in g]
            if missing:
                raise UserError(f"{folder}: case {cid} lacks channel file(s) "
                                f"{', '.join(f'{cid}_{i:04d}' for i in missing)} (the model expects {num_channels} channels)")
            extra = [i for i in g if i >= num_channels]
            if extra:
                raise UserError(f"{folder}: {g[extra[0]][0].name} is channel {extra[0]} but the model expects {num_channels} channel(s)")
    return [InputCase(stem, [f], ending) for f, stem, ending in files]


def dicom_input_cases(folder: Path, identifiers: str = "series") -> list[InputCase]:
    """One case per DICOM series below ``folder`` (checked: see autoseg.dataset.dicom), named by ``identifiers``."""
    scan = find_dicom_series(folder)
    for note in scan.notes:
        print(f"{folder}: {note}", file=sys.stderr)
    return [InputCase(cid, list(s.files), ".nii.gz", dicom=s) for cid, s in zip(scan.case_ids(identifiers), scan.series)]


def _header_channels(path: Path) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial size) from the file header only, without reading pixels."""
    _, size, _, _, _, channels = read_header(path)
    return channels, size


def check_input_cases(cases: Sequence[InputCase], num_channels: int) -> None:
    """Fail before any work if a file is unreadable or a case has the wrong number of channels."""
    for case in cases:
        if case.dicom is not None:
            if num_channels != 1:
                raise UserError(f"{case.dicom.describe()}: a DICOM series is one channel but the model was trained "
                                f"on {num_channels}")
            continue
        total, sizes = 0, set()
        for f in case.files:
            ch, size = _header_channels(f)
            total += ch
            sizes.add(size)
        if total != num_channels:
            what = case.files[0] if len(case.files) == 1 else f"case {case.case_id} ({len(case.files)} files)"
            raise UserError(f"{what}: has {total} channel(s) but the model was trained on {num_channels}")
        if len(sizes) > 1:
            raise UserError(f"case {case.case_id}: channel files differ in size {sorted(sizes)}")
