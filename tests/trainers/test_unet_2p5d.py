"""2.5D option: neighbouring slices as channels in sampling, inference and end-to-end training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoseg.networks.context_unet import ContextSliceUNet
from autoseg.planners.plans import NetworkTopology

TOPO2 = NetworkTopology([8, 16], [[3, 3], [3, 3]], [[1, 1], [2, 2]])


def _write_case(folder, cid, data, seg):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{cid}.npy", data.astype(np.float32))
    np.save(folder / f"{cid}_seg.npy", seg.astype(np.int16))
    (folder / f"{cid}.json").write_text(json.dumps({"class_locations": {}}))


def test_sampler_stacks_neighbours_and_centre_label(tmp_path):
    from autoseg.trainers.patch_sampler import ContextSlicePatchSampler, PatchLocation

    z = np.arange(5, dtype=np.float32)
    data = np.stack([np.broadcast_to(z[:, None, None], (5, 8, 8)), 100 + np.broadcast_to(z[:, None, None], (5, 8, 8))])
    seg = np.broadcast_to(np.arange(5)[:, None, None], (5, 8, 8)) % 3
    _write_case(tmp_path, "c", data, seg)
    s = ContextSlicePatchSampler(tmp_path, ["c"], (8, 8), 2, context_slices=3, oversample_foreground=0)
    assert s.num_channels == 6
    d, g = s.crop(PatchLocation("c", (0, 4, 4)))
    # channel-major, edge slice repeated: [c0 z-1, c0 z, c0 z+1, c1 ...] with z = 0
    assert d.shape == (6, 8, 8) and list(d[:, 0, 0]) == [0, 0, 1, 100, 100, 101]
    assert g.shape == (1, 8, 8) and np.all(g == seg[0])
    d, g = s.crop(PatchLocation("c", (3, 4, 4)))
    assert list(d[:, 0, 0]) == [2, 3, 4, 102, 103, 104] and np.all(g == seg[3])
    b, t = s.sample_batch(np.random.default_rng(0))
    assert b.shape == (2, 6, 8, 8) and t.shape == (2, 1, 8, 8)


def test_sampler_passes_edge_flush_on(tmp_path):
    from autoseg.trainers.patch_sampler import ContextSlicePatchSampler

    _write_case(tmp_path, "c", np.zeros((1, 5, 20, 20), np.float32), np.zeros((5, 20, 20), np.int16))
    s = ContextSlicePatchSampler(tmp_path, ["c"], (8, 8), 4, context_slices=3, oversample_foreground=0,
                                 edge_flush=1.0)
    rng = np.random.default_rng(0)
    centres = {loc.center[a] for loc in s.sample_locations(rng) for a in (1, 2)}
    # flush with either end of y and x: the patch's centre 4 voxels in from the edge
    assert s.edge_flush == 1.0 and centres <= {4, 16}


def test_sliding_window_equals_manual_stacking():
    from autoseg.inference.sliding_window import predict_sliding_window

    torch.manual_seed(0)
    net = ContextSliceUNet(2, 3, TOPO2, 2, deep_supervision=False, context_slices=3).eval()
    data = np.random.default_rng(0).normal(size=(2, 4, 8, 8)).astype(np.float32)
    probs = predict_sliding_window(net, data, [8, 8], 2, 3, tta=False)
    with torch.no_grad():
        for z in range(4):
            idx = [min(max(z + d, 0), 3) for d in (-1, 0, 1)]
            x = torch.from_numpy(data[:, idx].reshape(6, 8, 8))[None]
            manual = torch.softmax(net(x), 1)[0]
            assert torch.allclose(probs[:, z], manual, atol=1e-5)
    with pytest.raises(ValueError, match="context_slices"):
        predict_sliding_window([net, ContextSliceUNet(2, 3, TOPO2, 2, context_slices=5)], data, [8, 8], 2, 3, tta=False)


def test_train_unet_2p5d_then_predict(tmp_path):
    from autoseg.cli import main
    from autoseg.synthetic import make_dataset
    from autoseg.checkpoint import load_checkpoint
    from autoseg.planners.plans import Plans

    raw = make_dataset(tmp_path / "raw", 6, shape=(6, 32, 32), spacing=(5.0, 1.0, 1.0), seed=4)
    ws = str(tmp_path / "ws")
    assert main(["plan-and-preprocess", str(raw), "--workspace", ws, "-np", "1", "--profile", "cpu", "-c", "2d"]) == 0
    assert main(["train", "raw", "2d", "0", "--trainer", "unet_2p5d", "--epochs", "1", "--iters-per-epoch", "2",
                 "--val-iters", "1", "--workspace", ws, "--time-budget", "1"]) == 0  # the budget times a K-slice forward
    fold = tmp_path / "ws" / "raw" / "results" / "unet_2p5d__2d" / "fold_0"
    state = load_checkpoint(fold / "checkpoint_final.pt")
    assert Plans.load(fold.parent / "plans.json").configuration("2d").architecture == "unet_2p5d"
    assert state["network"]["encoder.0.0.0.weight"].shape[1] == 3  # 1 channel x 3 slices
    assert (fold / "validation" / "summary.json").is_file()
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "raw", "-c", "2d",
                 "--trainer", "unet_2p5d", "-f", "0", "--no-tta", "--workspace", ws]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 6
