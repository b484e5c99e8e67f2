"""Atlas-ISTN: grid helpers, atlas update, gradient isolation, refinement, end to end; evaluation helpers."""
import shutil

import numpy as np
import pytest
import torch

from autoseg.inference.atlas_refinement import refine_stn, refinement_loss
from autoseg.networks.stn import SpatialTransformer
from autoseg.preprocessing.atlas_grid import (atlas_grid_from_labels, crop_to_box, foreground_center, grid_box,
                                              uncrop_from_box)
from autoseg.trainers.atlas_istn import atlas_train_transforms, atlas_update, sigmoid_rampup

from tests.trainers.test_base import make_workspace


def blob(shape, center, radius):
    mesh = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (sum((m - c) ** 2 for m, c in zip(mesh, center)) <= radius ** 2)


def test_grid_helpers():
    seg = np.zeros((20, 30, 25), np.int16)
    seg[5:11, 10:20, 8:13] = 1
    assert foreground_center(seg) == (8, 14, 10)
    grid = atlas_grid_from_labels([seg, seg], 3, [4, 4, 4], margin=2)
    assert grid == [12, 16, 12]  # (6, 10, 5) + 4, rounded up to 4
    data = np.random.rand(2, 20, 30, 25).astype(np.float32)
    box = grid_box((1, 14, 24), grid, seg.shape)  # sticks out at both ends
    crop = crop_to_box(data, box)
    assert crop.shape == (2, 12, 16, 12) and crop[:, 0].max() == 0  # zero padding outside the volume
    probs = np.zeros((3, 12, 16, 12), np.float32)
    probs[1] = 1
    back = uncrop_from_box(probs, box, seg.shape)
    assert back.shape == (3, 20, 30, 25)
    assert back[1, 0:7, 8:22, 18:25].min() == 1 and back[1].sum() == 7 * 16 * 7
    assert back[0, 10:].min() == 1  # background outside the box
    box2 = grid_box((0, 10, 10), [8, 8], (1, 20, 20))  # 2D grid: z is the whole single slice
    assert box2 == [(0, 1), (6, 14), (6, 14)]


def test_atlas_augmentation_follows_the_setting_and_never_mirrors():
    from autoseg.trainers.augmentation import MirrorTransform, SpatialTransform

    light = atlas_train_transforms([8, 12, 8], 3, False, None, "light")
    full = atlas_train_transforms([8, 12, 8], 3, False, None, "full")
    kinds = lambda c: {type(t) for t in c.transforms}  # noqa: E731
    assert SpatialTransform not in kinds(light) and SpatialTransform in kinds(full)
    assert MirrorTransform not in kinds(light) | kinds(full)
    with pytest.raises(ValueError, match="strong"):
        atlas_train_transforms([8, 12, 8], 3, False, None, "strong")


def test_atlas_update_and_rampup():
    old, new = torch.full((2, 4, 4), 0.2), torch.full((2, 4, 4), 0.7)
    assert torch.allclose(atlas_update(old, new, 0.01), torch.full((2, 4, 4), 0.99 * 0.2 + 0.01 * 0.7))
    assert sigmoid_rampup(0.0) < 0.1 and sigmoid_rampup(0.2) == pytest.approx(0.5) and sigmoid_rampup(1.0) > 0.99


def test_stn_losses_do_not_reach_the_itn(tmp_path):
    from autoseg.trainers.atlas_istn import AtlasISTNTrainer
    from autoseg.trainers.base import TrainingSettings

    ws = make_workspace(tmp_path, num_cases=5)
    tr = AtlasISTNTrainer(ws, "3d_fullres", 0, TrainingSettings(device="cpu", precision="fp32", num_workers=0,
                                                                 epochs=1, iters_per_epoch=1))
    tr._setup()
    tr.loss = lambda out, tgt: 0.0 * sum(o.sum() for o in out)  # only the STN losses remain
    tr.optimizer.step = lambda: None
    before = {k: v.clone() for k, v in tr.stn.state_dict().items()}
    tr.iteration = tr.total_iterations  # ω = its maximum
    batch = next(tr.build_batches(tr.train_ids, True, 0))
    assert list(batch["data"].shape[2:]) == tr.atlas_grid
    tr.train_step(batch)
    itn_grads = [p.grad for p in tr.network.parameters() if p.grad is not None]
    assert all(float(g.abs().max()) == 0 for g in itn_grads)
    stn_grads = [p.grad for p in tr.stn.parameters() if p.grad is not None]
    assert stn_grads and max(float(g.abs().max()) for g in stn_grads) > 0
    assert any(not torch.equal(before[k], v) for k, v in tr.stn.state_dict().items())
    # the atlas moves towards the warped cases by η after the epoch
    old = tr.atlas_labels.clone()
    mean = tr._acc_labels / tr._acc_count
    tr.on_train_epoch_end()
    assert torch.allclose(tr.atlas_labels, 0.99 * old + 0.01 * mean)
    assert (tr.fold_dir / "atlas_labelmap.nii.gz").is_file() and tr._acc_count == 0


def test_refinement_reduces_loss_and_leaves_itn_alone():
    torch.manual_seed(0)
    shape = (12, 12, 12)
    atlas = torch.from_numpy(blob(shape, (6, 6, 6), 3).astype(np.float32))[None, None]
    itn = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        itn.weight.fill_(1.0)
        itn.bias.zero_()
    itn_state = {k: v.clone() for k, v in itn.state_dict().items()}
    subject = torch.from_numpy(blob(shape, (6, 8, 5), 3).astype(np.float32))[None, None]
    target = torch.sigmoid(10 * (itn(subject) - 0.5))  # carries a graph back to the ITN
    stn = SpatialTransformer(1, 3, features=(4, 8, 8, 8))
    stn_state = {k: v.clone() for k, v in stn.state_dict().items()}
    refined, losses = refine_stn(stn, target, atlas, iterations=10, lr=1e-2)
    assert len(losses) == 11 and losses[-1] < 0.8 * losses[0]
    assert refinement_loss(refined, target, atlas, 1, 0, 0.1)[0] < refinement_loss(stn, target, atlas, 1, 0, 0.1)[0]
    assert all(torch.equal(stn_state[k], v) for k, v in stn.state_dict().items())  # the original is untouched
    assert all(p.grad is None for p in itn.parameters())
    assert all(torch.equal(itn_state[k], v) for k, v in itn.state_dict().items())


def test_train_and_predict_end_to_end(tmp_path):
    import SimpleITK as sitk

    from autoseg.cli import main

    ws = make_workspace(tmp_path, num_cases=5)
    assert main(["train", "Tiny", "3d_fullres", "0", "--trainer", "atlas_istn", "--workspace", str(tmp_path / "ws"),
                 "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu",
                 "--num-workers", "0", "--no-validation"]) == 0
    fold = ws.fold_dir("atlas_istn", "3d_fullres", 0)
    state = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    a = state["atlas_istn"]
    grid = a["grid"]
    assert tuple(a["atlas_labels"].shape) == (3, *grid) and torch.allclose(a["atlas_labels"].sum(0), torch.ones(grid))
    atlas_img = sitk.ReadImage(str(fold / "atlas_labelmap.nii.gz"))
    assert atlas_img.GetSize() == tuple(reversed(grid)) and atlas_img.GetSpacing() == (1.0, 1.0, 1.0)
    assert (fold / "atlas_image.nii.gz").is_file()
    inp = tmp_path / "in"
    inp.mkdir()
    src = sorted((tmp_path / "raw" / "Tiny" / "imagesTr").iterdir())[0]
    shutil.copy(src, inp / "case.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "-i", str(inp), "-o", str(out), "-d", "Tiny", "-c", "3d_fullres", "-f", "0",
                 "--trainer", "atlas_istn", "--refine", "5", "--workspace", str(tmp_path / "ws"),
                 "--device", "cpu", "--no-tta"]) == 0
    seg = sitk.ReadImage(str(out / "case.nii.gz"))
    itn = sitk.ReadImage(str(out / "case_itn.nii.gz"))
    assert seg.GetSize() == itn.GetSize() == sitk.ReadImage(str(src)).GetSize()
    disp = sitk.ReadImage(str(out / "case_displacement.nii.gz"))
    assert disp.GetNumberOfComponentsPerPixel() == 3 and disp.GetSize() == tuple(reversed(grid))
    from autoseg.atomic import read_json

    report = read_json(out / "atlas_istn.json")["cases"]["case"]
    assert report["refine_iterations"] == 5 and report["loss_refined"] <= report["loss_one_pass"] + 1e-6
