"""A tiny raw dataset shared by the study tests (each test plans it into its own workspace)."""
from __future__ import annotations

from pathlib import Path

import pytest

from autoseg.synthetic import make_dataset

# the fastest settings a study runs with: one iteration per fold, one validation batch
FAST = dict(epochs=1, iters_per_epoch=1, val_iters=1, profile="cpu", device="cpu", num_workers=1, progress=False)


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw") / "Tiny", num_cases=5, shape=(16, 20, 20), seed=0)


@pytest.fixture(scope="session")
def new_images(tmp_path_factory) -> Path:
    """Two unseen cases to predict."""
    return make_dataset(tmp_path_factory.mktemp("new") / "TinyNew", num_cases=2, shape=(16, 20, 20), seed=1) / "imagesTr"
