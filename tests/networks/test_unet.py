import dataclasses

import pytest
import torch

from autoseg.errors import PluginNotFound
from autoseg.networks import ARCHITECTURES, ResEncUNet, UNet, build_network, deep_supervision_scales
from autoseg.planners.plans import ConfigurationPlan, NetworkTopology, Plans

TOPO_3D = NetworkTopology([4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])
TOPO_2D = NetworkTopology([4, 8, 16, 16], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 1]], n_conv_per_stage=1)


@pytest.mark.parametrize("cls", [UNet, ResEncUNet])
@pytest.mark.parametrize("topo,dim,shape", [(TOPO_3D, 3, (8, 16, 12)), (TOPO_2D, 2, (16, 8))])
def test_deep_supervision_shapes_match_scales(cls, topo, dim, shape):
    torch.manual_seed(0)
    net = cls(2, 3, topo, dim)
    out = net(torch.randn(2, 2, *shape))
    scales = deep_supervision_scales(topo)
    assert isinstance(out, list) and len(out) == len(scales) == topo.n_stages - 1
    for o, s in zip(out, scales):
        assert o.shape == (2, 3) + tuple(int(n // f) for n, f in zip(shape, s))
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3) + shape


def test_scales_are_cumulative_strides():
    assert deep_supervision_scales(TOPO_3D) == [[1, 1, 1], [1, 2, 2]]
    assert deep_supervision_scales(TOPO_2D) == [[1, 1], [2, 2], [4, 4]]


def test_no_deep_supervision_returns_tensor_in_training():
    net = UNet(1, 2, TOPO_3D, 3, deep_supervision=False)
    assert isinstance(net(torch.randn(1, 1, 4, 8, 8)), torch.Tensor)


def test_anisotropic_kernel_has_no_padding_across_z():
    net = UNet(1, 2, TOPO_3D, 3)
    first = net.encoder[0][0][0]
    assert first.kernel_size == (1, 3, 3) and first.padding == (0, 1, 1)


@pytest.mark.parametrize("cls", [UNet, ResEncUNet])
def test_gradients_reach_every_parameter(cls):
    net = cls(1, 3, TOPO_3D, 3)
    out = net(torch.randn(2, 1, 4, 8, 8))
    sum(o.square().mean() for o in out).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "heads" not in n)


@pytest.mark.parametrize("dim", [2, 3])
def test_instance_norm_is_torch_instance_norm(dim):
    from autoseg.networks.layers import InstanceNorm

    torch.manual_seed(0)
    ours, ref = InstanceNorm(5), {2: torch.nn.InstanceNorm2d, 3: torch.nn.InstanceNorm3d}[dim](5, affine=True)
    with torch.no_grad():
        ref.weight.uniform_()
        ref.bias.uniform_()
    ours.load_state_dict(ref.state_dict())  # same parameter names: older checkpoints still load
    x = 3 * torch.randn(2, 5, *([6, 7, 8][:dim])) + 1
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("cls", [UNet, ResEncUNet])
def test_bf16_autocast_and_channels_last(cls):
    torch.manual_seed(0)
    net = cls(1, 3, TOPO_3D, 3).to(memory_format=torch.channels_last_3d)
    # deepest maps 4x4x4: with z 2 voxels long under a 3-kernel, torch 2.13's CPU bf16 Conv3d
    # backward returns garbage at times (inf/NaN in 1-3 runs of 100; training.md, "Non-finite steps")
    x = torch.randn(2, 1, 8, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss = sum(torch.nn.functional.cross_entropy(o.float(), torch.zeros(o.shape[0], *o.shape[2:], dtype=torch.long))
                   for o in out)
    loss.backward()
    assert out[0].dtype == torch.bfloat16 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_resenc_has_more_blocks_deeper():
    net = ResEncUNet(1, 2, NetworkTopology([4, 8, 16, 16], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3), 3)
    assert [len(s) for s in net.encoder] == [1, 2, 2, 3]


def test_bad_input_and_topology_raise_clear_errors():
    net = UNet(1, 2, TOPO_3D, 3)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 5, 8, 8))
    with pytest.raises(ValueError, match="axes"):
        UNet(1, 2, TOPO_3D, 2)
    with pytest.raises(ValueError, match="strides\\[0\\]"):
        UNet(1, 2, NetworkTopology([4, 8], [[3, 3]] * 2, [[2, 2], [2, 2]]), 2)


def test_build_network_from_plans():
    config = ConfigurationPlan(name="3d_fullres", dim=3, data_identifier="x", spacing=[1, 1, 1], median_shape=[8, 16, 16],
                               patch_size=[8, 16, 16], batch_size=2, network=TOPO_3D)
    plans = Plans(version=1, dataset_name="d", planner="p", profile="cpu", gpu_memory_gb=0, channel_names=["a", "b"],
                  label_values=[0, 1, 2], label_names=["bg", "x", "y"], normalization=[], configurations={"3d_fullres": config})
    for arch in ("unet", "resenc_unet"):
        net = build_network(plans, dataclasses.replace(config, architecture=arch))
        assert isinstance(net, ARCHITECTURES[arch])
        assert net(torch.randn(1, 2, 8, 16, 16))[0].shape == (1, 3, 8, 16, 16)
    with pytest.raises(PluginNotFound, match="unknown architecture"):
        build_network(plans, dataclasses.replace(config, architecture="nope"))
