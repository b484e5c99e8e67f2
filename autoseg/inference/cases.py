"""The cases of an input folder: which files make one case, checked before any work starts.

A folder holds either one file per case (``CASE.nii.gz``, possibly multi-channel: a 4D volume
or an RGB PNG) or nnU-Net-style channel files ``CASE_0000.nii.gz``, ``CASE_0001...``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg.dataset.imageio import SUPPORTED_ENDINGS, split_ending
from autoseg.errors import UserError

_CHANNEL_FILE = re.compile(r"^(.*)_(\d{4})$")


@dataclass
class InputCase:
    case_id: str
    files: list[Path]  # one multi-channel file, or one file per channel in channel order
    ending: str  # the input's file ending; the prediction is written in the same format


def find_input_cases(folder: str | os.PathLike, num_channels: int) -> list[InputCase]:
    """The cases in ``folder``: nnU-Net-style ``CASE_XXXX`` channel files, else one file per case."""
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


def _header_channels(path: Path) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial size) from the file header only, without reading pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: unreadable image file ({(first[0] if first else '')[:200]})") from None
    size = reader.GetSize()
    channels = reader.GetNumberOfComponents()
    if len(size) == 4:
        channels *= size[3]
        size = size[:3]
    return channels, tuple(size)


def check_input_cases(cases: Sequence[InputCase], num_channels: int) -> None:
    """Fail before any work if a file is unreadable or a case has the wrong number of channels."""
    for case in cases:
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
