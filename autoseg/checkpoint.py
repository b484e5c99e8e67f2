"""Checkpoints: plain types and tensors only, written atomically, loadable with ``weights_only=True``.

A checkpoint holds everything needed to resume exactly: network and optimizer state, grad
scaler state, epoch/iteration counters, the planned total (which fixes the LR schedule),
the log history and all RNG states. numpy's and Python's RNG states are converted to
tensors and lists because ``weights_only`` loading refuses arbitrary objects (that is the
point: loading a checkpoint never runs code).
"""
from __future__ import annotations

import os
import pickle
import random
from typing import Any

import numpy as np
import torch

from autoseg.atomic import atomic_path
from autoseg.errors import CheckpointError

LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"
# Written last, when a fold has trained and (unless skipped) validated: a study skips folds that have it.
DONE = "done.json"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's state; :class:`CheckpointError` for anything but plain types and tensors.

    ``weights_only`` unpickling allows only tensors, containers and plain values, so a file that
    would call a function when unpickled (a planted payload, or a checkpoint of a tool that pickles
    its objects) is refused without running anything.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused: the file holds objects other than tensors and plain values, and "
                              f"loading them could run code ({first[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file: "
                              f"{type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an autoseg checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def rng_state() -> dict[str, Any]:
    """All global RNG states (torch CPU/CUDA, numpy legacy, Python) as weights_only-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "state": [int(x) for x in py_state],
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
