import pytest
import torch
from torch import nn

from autoseg.networks import build_network, deep_supervision_scales
from autoseg.networks.resunet_aniso import ResidualPair, ResUNetAniso, inplane_kernel, slice_axis
from autoseg.planners.plans import ConfigurationPlan, NetworkTopology, Plans

# thick slices: kernel 1 along z and no z pooling at the first two stages, 3x3x3 deeper
TOPO_3D = NetworkTopology([4, 8, 12, 16], [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
                          [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]])
TOPO_2D = NetworkTopology([4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 1]])
CASES = [(TOPO_3D, 3, (4, 16, 8)), (TOPO_2D, 2, (8, 12))]


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_deep_supervision_shapes_follow_scales_and_eval_returns_one_tensor(topo, dim, shape):
    torch.manual_seed(0)
    net = ResUNetAniso(2, 3, topo, dim)
    out = net(torch.randn(2, 2, *shape))
    scales = deep_supervision_scales(topo)
    assert isinstance(out, list) and len(out) == len(scales) == topo.n_stages - 1
    for o, s in zip(out, scales):
        assert o.shape == (2, 3) + tuple(int(n // f) for n, f in zip(shape, s))
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3) + shape


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_no_deep_supervision_returns_tensor_in_training(topo, dim, shape):
    net = ResUNetAniso(1, 2, topo, dim, deep_supervision=False)
    y = net(torch.randn(1, 1, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2) + shape


def _convs_by_stage(net: ResUNetAniso):
    """(topology stage, conv) for every conv of the stage blocks, encoder and decoder."""
    n = len(net.encoder)
    for s, stage in enumerate(net.encoder):
        yield from ((s, m) for m in stage.modules() if isinstance(m, nn.Conv3d))
    for d, block in enumerate(net.decoder.blocks):
        yield from ((n - 2 - d, m) for m in block.modules() if isinstance(m, nn.Conv3d))


def test_no_conv_mixes_slices_where_the_topology_kernel_along_z_is_1():
    net = ResUNetAniso(1, 2, TOPO_3D, 3)
    assert net.slice_axis == 0
    seen = {s: [] for s in range(TOPO_3D.n_stages)}
    for s, c in _convs_by_stage(net):
        seen[s].append(c.kernel_size)
        if TOPO_3D.kernel_sizes[s][0] == 1:
            assert c.kernel_size[0] == 1 and c.padding[0] == 0, (s, c)
    # every stage: the in-plane conv first (1 across slices), then the topology's kernel in the pair
    assert seen[0][:3] == [(1, 5, 5), (1, 3, 3), (1, 3, 3)]
    assert seen[2][:3] == [(1, 3, 3), (3, 3, 3), (3, 3, 3)]
    # the last stage pools along z: its strided conv sees the slices it pools instead of skipping one
    assert seen[3][0] == (3, 3, 3)
    # the 1x1 heads and the z-stride-1 transposed convs of the thick-slice stages do not mix slices
    for d, up in enumerate(net.decoder.up):
        assert up.kernel_size[0] == TOPO_3D.strides[TOPO_3D.n_stages - 1 - d][0]
    assert all(h.kernel_size == (1, 1, 1) for h in net.decoder.heads)


def test_slices_stay_independent_through_the_thick_slice_stages():
    # a thick-slice topology convolves and pools in-plane only: with the norms (whose statistics
    # span the volume) taken out, slice i of the output depends on slice i of the input alone
    from autoseg.networks.resunet_aniso import ConvNormELU

    topo = NetworkTopology([4, 8], [[1, 3, 3], [1, 3, 3]], [[1, 1, 1], [1, 2, 2]])
    net = ResUNetAniso(1, 2, topo, 3).eval()
    for m in net.modules():
        if isinstance(m, ConvNormELU):
            m[1] = nn.Identity()
    x = torch.randn(1, 1, 3, 8, 8, requires_grad=True)
    net(x)[0, :, 1].sum().backward()
    g = x.grad[0, 0].abs().sum(dim=(1, 2))
    assert g[1] > 0 and g[0] == 0 and g[2] == 0


def test_slice_axis_is_the_thick_one_wherever_it_is():
    topo = NetworkTopology([4, 8], [[3, 1, 3], [3, 1, 3]], [[1, 1, 1], [2, 1, 2]])
    assert slice_axis(topo) == 1
    net = ResUNetAniso(1, 2, topo, 3)
    assert all(m.kernel_size[1] == 1 for m in net.modules() if isinstance(m, nn.Conv3d))
    assert net(torch.randn(1, 1, 8, 3, 8))[0].shape == (1, 2, 8, 3, 8)
    assert slice_axis(NetworkTopology([4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])) == 0
    assert slice_axis(TOPO_2D) is None
    assert inplane_kernel([3, 3], [1, 1], 5, None) == [5, 5]
    assert inplane_kernel([3, 3, 3], [2, 2, 2], 3, 0) == [3, 3, 3]
    assert inplane_kernel([3, 3, 3], [1, 2, 2], 3, 0) == [1, 3, 3]


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_backward_gives_finite_grads_to_every_parameter(topo, dim, shape):
    torch.manual_seed(0)
    net = ResUNetAniso(1, 3, topo, dim)
    out = net(torch.randn(2, 1, *shape))
    sum(o.square().mean() for o in out).backward()
    bad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "heads" not in n)


@pytest.mark.parametrize("dim", [2, 3])
def test_residual_pair_adds_the_identity(dim):
    torch.manual_seed(0)
    pair = ResidualPair(dim, 4, [3] * dim)
    x = torch.randn(2, 4, *([5] * dim))
    # with the last norm's affine zeroed the residual branch is 0: only the identity is left
    with torch.no_grad():
        pair.conv2[1].weight.zero_()
        pair.conv2[1].bias.zero_()
        assert torch.allclose(pair(x.clone()), nn.functional.elu(x))
    net = ResUNetAniso(1, 2, TOPO_3D if dim == 3 else TOPO_2D, dim)
    pairs = [m for m in net.modules() if isinstance(m, ResidualPair)]
    assert len(pairs) == 2 * len(net.decoder.up) + 1  # one per encoder and decoder stage


def test_bad_input_raises():
    net = ResUNetAniso(1, 2, TOPO_3D, 3)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 3, 16, 8))
    with pytest.raises(ValueError, match="axes"):
        ResUNetAniso(1, 2, TOPO_3D, 2)


@pytest.mark.parametrize("architecture", ["resunet_aniso", "autoseg.networks.resunet_aniso:ResUNetAniso"])
def test_build_network_by_name_and_module_path(architecture):
    config = ConfigurationPlan(name="3d_fullres", dim=3, data_identifier="x", spacing=[4, 1, 1],
                               median_shape=[4, 16, 8], patch_size=[4, 16, 8], batch_size=2, network=TOPO_3D,
                               architecture=architecture)
    plans = Plans(version=1, dataset_name="d", planner="p", profile="cpu", gpu_memory_gb=0, channel_names=["a"],
                  label_values=[0, 1], label_names=["bg", "x"], normalization=[],
                  configurations={"3d_fullres": config})
    net = build_network(plans, config, deep_supervision=False)
    assert isinstance(net, ResUNetAniso)
    assert net(torch.randn(1, 1, 4, 16, 8)).shape == (1, 2, 4, 16, 8)
