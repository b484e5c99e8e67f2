"""Every built-in trainer, through the CLI, in each dimensionality it trains: it builds, trains,
checkpoints, is interrupted, resumes with --continue, and predicts a case in its original
geometry. The plug-in seams (plans, sampler, losses, checkpoints, the one prediction path) are
the same for all of them, so a new architecture is held to the same contract by one registry line."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.atomic import read_json
from autoseg.cli import main
from autoseg.dataset.imageio import read_image, read_label
from autoseg.trainers.registry import BUILTIN_TRAINERS
from tests.trainers.test_base import make_workspace

NEEDS_MONAI = {"swin_unetr", "unetr"}
# Atlas-ISTN's 2D configuration is for datasets of 2D images (tests/trainers/test_atlas_istn.py)
NOT_HERE = {("atlas_istn", "2d")}
# Atlas-ISTN refines every case by default (50 STN steps); two prove the path
PREDICT_ARGS = {"atlas_istn": ["--refine", "2"]}
CASES = [(name, dim) for name, t in BUILTIN_TRAINERS.items() for dim in t.dims if (name, dim) not in NOT_HERE]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("every_trainer"), num_cases=4, with_2d=True)


@pytest.mark.parametrize("trainer,dim", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_trains_resumes_and_predicts_through_the_cli(trainer, dim, workspace, tmp_path, monkeypatch):
    if trainer in NEEDS_MONAI and not all(importlib.util.find_spec(m) for m in ("monai", "einops")):
        pytest.skip('needs MONAI: pip install -e ".[monai]"')
    configuration = "2d" if dim == "2d" else "3d_fullres"
    root = str(workspace.root.parent)
    train = ["train", workspace.name, configuration, "0", "--trainer", trainer, "--workspace", root,
             "--epochs", "2", "--iters-per-epoch", "1", "--val-iters", "1", "--device", "cpu",
             "--num-workers", "0", "--no-validation", "--seed", "3"]

    def interrupt_after_the_first_epoch(*args, **kwargs):
        raise KeyboardInterrupt  # after checkpoint_latest.pt and log.json are written

    monkeypatch.setattr("autoseg.trainers.base.plot_progress", interrupt_after_the_first_epoch)
    assert main(train) == 130
    fold = workspace.fold_dir(trainer, configuration, 0)
    latest = torch.load(fold / "checkpoint_latest.pt", weights_only=True)
    assert latest["epoch"] == 1 and latest["trainer"] == trainer and latest["loss"] == "dice_ce"
    assert not (fold / "checkpoint_final.pt").exists()
    monkeypatch.undo()

    assert main(train + ["--continue"]) == 0
    final = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert final["epoch"] == 2 and final["iteration"] == 2
    assert not (fold / "checkpoint_latest.pt").exists()
    assert (fold / "progress.png").is_file()

    raw = Path(read_json(workspace.source_file)["raw_path"])
    source = sorted((raw / "imagesTr").glob("*.nii.gz"))[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(source, inputs / source.name)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(inputs), "-o", str(out), "-d", workspace.name, "-c", configuration,
                 "--trainer", trainer, "-f", "0", "--no-tta", "--device", "cpu", "--workspace", root,
                 *PREDICT_ARGS.get(trainer, [])]) == 0
    seg, seg_geometry = read_label(out / source.name)
    image, geometry = read_image(source)
    assert seg.shape == image.shape[1:] and np.allclose(seg_geometry.spacing, geometry.spacing)
    assert set(np.unique(seg)) <= {0, 1, 2}
