"""Hybrid 2D/3D U-Net: shapes, slice mixing, ablation, planning of 3d_hybrid, end-to-end training."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from autoseg.networks import ARCHITECTURES, deep_supervision_scales
from autoseg.networks.hybrid_unet import (
    HybridUNet,
    HybridUNetNo3d,
    NeighbourhoodAggregation,
    ResidualBlock3d,
    SkipModule,
)
from autoseg.networks.layers import InstanceNorm
from autoseg.planners.plans import NetworkTopology, Plans

TOPO = NetworkTopology([8, 16, 32], [[1, 3, 3]] * 3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]])


def test_shapes_and_deep_supervision():
    net = HybridUNet(2, 3, TOPO)
    x = torch.randn(2, 2, 8, 64, 64)
    out = net(x)
    assert isinstance(out, list) and len(out) == 2
    scales = deep_supervision_scales(TOPO)
    for o, s in zip(out, scales):
        assert o.shape == (2, 3, 8, int(64 / s[1]), int(64 / s[2]))
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, 8, 64, 64)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 2, 8, 30, 64))


def test_ablation_has_no_3d_modules():
    full, ablation = HybridUNet(1, 3, TOPO), HybridUNetNo3d(1, 3, TOPO)
    assert ARCHITECTURES["hybrid_no3d"] is HybridUNetNo3d
    kinds = {type(m) for m in ablation.modules()}
    assert ResidualBlock3d not in kinds and NeighbourhoodAggregation not in kinds
    # every conv of the ablation is in-plane (kernel 1 along z)
    for m in ablation.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            assert m.kernel_size[0] == 1
    n_full = sum(p.numel() for p in full.parameters())
    n_abl = sum(p.numel() for p in ablation.parameters())
    assert n_full > n_abl
    assert any(isinstance(m, ResidualBlock3d) for m in full.modules())


def _without_norms(net: torch.nn.Module) -> torch.nn.Module:
    """Instance norm pools statistics over the whole volume in both variants (a global, not a
    local, exchange between slices); without it, what remains is the convolutions' reach."""
    for name, m in list(net.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, InstanceNorm):
                setattr(m, child_name, torch.nn.Identity())
    return net


def _slice_influence(net: torch.nn.Module, k: int) -> np.ndarray:
    """Per output slice: max change of the output when input slice k changes."""
    _without_norms(net)
    net.eval()
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 32, 32)
    y = x.clone()
    y[:, :, k] += 3 * torch.randn_like(y[:, :, k])
    with torch.no_grad():
        d = (net(x) - net(y)).abs().amax(dim=(0, 1, 3, 4))
    return d.numpy()


def _activate_skip_modules(net: torch.nn.Module) -> None:
    # both skip blocks start as the identity (zero-initialised scale); give them weight for the test
    for m in net.modules():
        last = m.project if isinstance(m, NeighbourhoodAggregation) else m.restore if isinstance(m, ResidualBlock3d) else None
        if last is not None:
            last[0].weight.data.normal_(0, 0.1)
            last[1].weight.data.fill_(1.0)


def test_skip_modules_start_as_the_identity():
    torch.manual_seed(0)
    net = HybridUNet(1, 2, TOPO)
    skips = [m for m in net.skips if isinstance(m, SkipModule)]
    assert len(skips) == 1
    # the encoder hands on LeakyReLU outputs; on non-negative ones the fresh module changes nothing
    x = torch.rand(2, TOPO.features_per_stage[2], 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(skips[0](x), x)
    _activate_skip_modules(net)
    with torch.no_grad():
        assert not torch.allclose(skips[0](x), x)


def test_skip_modules_mix_slices_and_ablation_does_not():
    torch.manual_seed(0)
    full = HybridUNet(1, 2, TOPO)
    _activate_skip_modules(full)
    d = _slice_influence(full, 3)
    assert d[4] > 1e-4 and d[2] > 1e-4  # neighbours see the change
    torch.manual_seed(0)
    ablation = HybridUNetNo3d(1, 2, TOPO)
    d = _slice_influence(ablation, 3)
    assert d[3] > 1e-4
    assert d[4] == 0 and d[2] == 0 and np.all(np.delete(d, 3) == 0)


def test_neighbourhood_block_shape_and_reach():
    torch.manual_seed(0)
    block = NeighbourhoodAggregation(4)
    block.eval()
    x = torch.randn(2, 4, 9, 12, 12)
    assert block(x).shape == x.shape
    _without_norms(block)
    y = x.clone()
    y[:, :, 4] += 5.0
    with torch.no_grad():
        d = (block(x) - block(y)).abs().amax(dim=(0, 1, 3, 4)).numpy()
    # n = 1, 3, 5: slice 4 reaches slices 2..6 and no further
    assert np.all(d[2:7] > 1e-5)
    assert d[0] == 0 and d[1] == 0 and d[7] == 0 and d[8] == 0
    with pytest.raises(ValueError):
        NeighbourhoodAggregation(4, thicknesses=(2,))


def test_large_kernel_option():
    net = HybridUNet(1, 2, TOPO, large_kernel=True, deep_supervision=False)
    assert any(isinstance(m, torch.nn.Conv3d) and m.kernel_size == (1, 7, 7) and m.groups > 1 for m in net.modules())
    assert net(torch.randn(1, 1, 4, 16, 16)).shape == (1, 2, 4, 16, 16)


# ---------------------------------------------------------------- planning

def _fingerprint(tmp_path, spacing, shape=(6, 32, 32)):
    from autoseg.dataset.layout import load_dataset
    from autoseg.fingerprint.fingerprint import compute_fingerprint
    from autoseg.synthetic import make_dataset

    raw = make_dataset(tmp_path / "raw", 4, shape=shape, spacing=spacing, seed=3)
    return compute_fingerprint(load_dataset(raw), 1)


def test_planner_emits_3d_hybrid_on_anisotropic_and_when_forced(tmp_path):
    from autoseg.planners.default import DefaultPlanner

    fp = _fingerprint(tmp_path / "a", (5.0, 1.0, 1.0))
    plans = DefaultPlanner(fp, profile="cpu").plan()
    hyb = plans.configuration("3d_hybrid")
    assert hyb.trainer == "hybrid" and hyb.anisotropic
    assert hyb.patch_size[0] == min(hyb.median_shape[0], 5)  # the aggregation's thickest window
    assert all(k[0] == 1 for k in hyb.network.kernel_sizes) and all(s[0] == 1 for s in hyb.network.strides)

    iso = _fingerprint(tmp_path / "i", (1.0, 1.0, 1.0), shape=(30, 24, 24))
    assert "3d_hybrid" not in DefaultPlanner(iso, profile="cpu").plan().configurations
    planner = DefaultPlanner(iso, profile="cpu", force_hybrid=True)
    forced = planner.plan().configuration("3d_hybrid")
    assert forced.patch_size[0] == 5 and all(s[0] == 1 for s in forced.network.strides)


def test_patch_slices_match_the_thickest_neighbourhood():
    from autoseg.networks.hybrid_unet import NEIGHBOURHOOD_THICKNESSES
    from autoseg.planners.default import HYBRID_PATCH_SLICES

    assert HYBRID_PATCH_SLICES == max(NEIGHBOURHOOD_THICKNESSES)


def test_planner_costs_the_skip_modules_the_network_builds():
    """MACs per voxel of a stride-1 conv = its weight count: the planner's skip-module FLOPs must
    follow the network's skip modules (a change to either shows up here)."""
    from autoseg.planners.default import hybrid_skip_flops
    from autoseg.planners.topology import HYBRID_FIRST_SKIP_STAGE

    topo = NetworkTopology([16, 32, 64, 128], [[1, 3, 3]] * 4, [[1, 1, 1]] + [[1, 2, 2]] * 3)
    patch, batch = [5, 64, 64], 2
    net = HybridUNet(1, 2, topo)
    macs, size = 0, list(patch)
    for s, (stride, module) in enumerate(zip(topo.strides, net.skips)):
        size = [a // b for a, b in zip(size, stride)]
        weights = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Conv3d))
        assert (weights > 0) == (s >= HYBRID_FIRST_SKIP_STAGE)
        macs += weights * int(np.prod(size))
    assert hybrid_skip_flops(topo, patch, batch) == pytest.approx(2 * 3 * macs * batch)


def test_hybrid_cost_shrinks_patch_in_plane_only(tmp_path):
    from autoseg.planners.default import DefaultPlanner

    fp = _fingerprint(tmp_path, (5.0, 1.0, 1.0))
    planner = DefaultPlanner(fp, profile="cpu")
    fullres = planner.configuration_3d_fullres()
    cheap = copy.copy(planner)
    cheap.budget = lambda dim: 2e8  # a tiny budget: the patch must shrink, but keep its slices
    hyb = cheap.configuration_3d_hybrid(fullres)
    assert hyb.patch_size[0] == min(fullres.median_shape[0], 5)
    assert hyb.patch_size[1] * hyb.patch_size[2] < fullres.median_shape[1] * fullres.median_shape[2]


def test_cli_plan_only_with_hybrid_flag(tmp_path):
    from autoseg.cli import main
    from autoseg.synthetic import make_dataset

    raw = make_dataset(tmp_path / "raw", 4, shape=(12, 16, 16), spacing=(1.0, 1.0, 1.0), seed=2)
    assert main(["plan-and-preprocess", str(raw), "--workspace", str(tmp_path / "ws"), "-np", "1",
                 "--plan-only", "--profile", "cpu", "--hybrid"]) == 0
    plans = json.loads((tmp_path / "ws" / "raw" / "plans.json").read_text())
    assert plans["configurations"]["3d_hybrid"]["trainer"] == "hybrid"


def test_find_best_picks_up_3d_hybrid(tmp_path):
    from autoseg.atomic import write_json
    from autoseg.dataset.imageio import read_label, write_image
    from autoseg.postprocessing.find_best import find_best_configuration
    from autoseg.synthetic import make_dataset
    from autoseg.workspace import DatasetWorkspace

    raw = make_dataset(tmp_path / "raw", num_cases=5, shape=(8, 16, 16), seed=5)
    ws = DatasetWorkspace(tmp_path / "ws" / "raw")
    ws.root.mkdir(parents=True)
    write_json(ws.source_file, {"raw_path": str(raw), "layout": "msd"})
    cases = [f"case_{i:03d}" for i in range(5)]
    splits = [{"train": [c for c in cases if c != cases[k]], "val": [cases[k]]} for k in range(5)]
    write_json(ws.splits_file, splits)
    for trainer, config, shift in (("unet", "3d_fullres", 2), ("hybrid", "3d_hybrid", 0)):
        write_json(ws.results_dir(trainer, config) / "plans.json", {"label_values": [0, 1, 2]})
        for k in range(5):
            val = ws.fold_dir(trainer, config, k) / "validation"
            for c in splits[k]["val"]:
                lab, geo = read_label(raw / "labelsTr" / f"{c}.nii.gz")
                pred = np.roll(lab, shift, axis=2)
                write_image(pred.astype(np.uint8), geo, val / f"{c}.nii.gz")
                onehot = np.stack([pred == v for v in (0, 1, 2)]).astype(np.float16)
                np.save(val / f"{c}_probabilities.npy", onehot)
    result = find_best_configuration(ws, progress=False).to_dict()
    text = json.dumps(result)
    assert "hybrid__3d_hybrid" in text and "unet__3d_fullres" in text
    assert result["selected"]["configurations"][0]["configuration"] == "3d_hybrid"


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def aniso_workspace(tmp_path_factory):
    from autoseg.cli import main
    from autoseg.synthetic import make_dataset

    root = tmp_path_factory.mktemp("aniso")
    raw = make_dataset(root / "raw", 6, shape=(6, 32, 32), spacing=(5.0, 1.0, 1.0), seed=4)
    assert main(["plan-and-preprocess", str(raw), "--workspace", str(root / "ws"), "-np", "1", "--profile", "cpu"]) == 0
    return root, raw


def test_train_hybrid_then_predict(aniso_workspace):
    from autoseg.cli import main
    from autoseg.checkpoint import load_checkpoint

    root, raw = aniso_workspace
    ws = str(root / "ws")
    assert main(["train", "raw", "3d_hybrid", "0", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1",
                 "--workspace", ws, "--seed", "1"]) == 0
    fold = root / "ws" / "raw" / "results" / "hybrid__3d_hybrid" / "fold_0"
    state = load_checkpoint(fold / "checkpoint_final.pt")
    assert state["trainer"] == "hybrid"
    assert Plans.load(fold.parent / "plans.json").configuration("3d_hybrid").architecture == "hybrid"
    assert json.loads((fold / "log.json").read_text())["epochs"]
    assert (fold / "validation" / "summary.json").is_file()
    out = root / "pred_hybrid"
    assert main(["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "raw", "-c", "3d_hybrid",
                 "--trainer", "hybrid", "-f", "0", "--no-tta", "--workspace", ws]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 6


@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 6), (1, 2, 2, 5, 4), (1, 1, 1, 3, 3)])
def test_neighbourhood_pool_equals_torch_pools(shape):
    """The separable shifted-window pooling is exactly torch's stride-1 pools with same padding,
    the mean counting only voxels inside the volume; a patch thinner than n pools what it has."""
    from autoseg.networks.hybrid_unet import neighbourhood_pool

    torch.manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    means, maxes = neighbourhood_pool(x, (1, 5, 3))
    for n, mean, mx in zip((1, 5, 3), means, maxes):
        k = min(n, shape[2] if shape[2] % 2 else shape[2] - 1)
        ref_mean = torch.nn.functional.avg_pool3d(x, (k, 3, 3), 1, (k // 2, 1, 1), count_include_pad=False)
        ref_max = torch.nn.functional.max_pool3d(x, (k, 3, 3), 1, (k // 2, 1, 1))
        if k == n:  # torch cannot pool a window thicker than the patch; then compare with the plain z extent
            torch.testing.assert_close(mean, ref_mean)
            torch.testing.assert_close(mx, ref_max)
    assert torch.autograd.gradcheck(lambda t: torch.stack(neighbourhood_pool(t, (1, 3))[0]).sum(0),
                                    (x.detach()[:, :, :, :4, :4].clone().requires_grad_(),))
