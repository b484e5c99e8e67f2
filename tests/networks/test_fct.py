import dataclasses

import pytest
import torch

from autoseg.networks import build_network, deep_supervision_scales
from autoseg.networks.fct import (
    FCT,
    REFERENCE_PARAMETERS,
    ConvAttention,
    WideFocus,
    ZMix,
)
from autoseg.planners.plans import ConfigurationPlan, NetworkTopology, Plans

TOPO_2D = NetworkTopology([8, 16, 32], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]])
# thick slices: in-plane kernels at the first two stages, 3 along z at the bottleneck only
TOPO_3D = NetworkTopology([8, 16, 32], [[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])
CASES = [(TOPO_2D, 2, (32, 32)), (TOPO_3D, 3, (4, 32, 32))]


def expected_shapes(topo, shape, n_outputs, num_classes=3, batch=2):
    return [(batch, num_classes) + tuple(int(n // f) for n, f in zip(shape, s))
            for s in deep_supervision_scales(topo)[:n_outputs]]


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_deep_supervision_and_eval_shapes(topo, dim, shape):
    torch.manual_seed(0)
    net = FCT(2, 3, topo, dim, patch_size=shape)
    out = net(torch.randn(2, 2, *shape))
    # three stages: two decoder levels, each with a head
    assert isinstance(out, list) and len(out) == 2
    assert [tuple(o.shape) for o in out] == expected_shapes(topo, shape, 2)
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3) + shape


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_without_deep_supervision_one_tensor_in_training(topo, dim, shape):
    net = FCT(1, 3, topo, dim, deep_supervision=False)
    y = net(torch.randn(1, 1, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3) + shape


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_backward_gives_finite_gradients_to_every_parameter(topo, dim, shape):
    torch.manual_seed(0)
    net = FCT(1, 3, topo, dim, patch_size=shape)
    out = net(torch.randn(2, 1, *shape))
    sum(o.square().mean() for o in out).backward()
    bad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad
    assert all(p.grad.abs().sum() > 0 for p in net.parameters())


def test_deep_plans_use_the_published_depth_and_three_heads():
    topo = NetworkTopology([4, 8, 8, 8, 8, 8, 8], [[3, 3]] * 7, [[1, 1]] + [[2, 2]] * 6)
    net = FCT(1, 2, topo, 2)
    assert len(net.encoder) == 5 and len(net.decoder) == 4 and len(net.heads) == 3
    out = net(torch.randn(1, 1, 64, 64))
    assert [tuple(o.shape) for o in out] == expected_shapes(topo, (64, 64), 3, num_classes=2, batch=1)


def test_inputs_the_first_pool_does_not_divide_are_padded_and_cropped():
    # total stride (4, 2): the plan allows 12 x 6, the network needs multiples of (8, 4)
    topo = NetworkTopology([4, 8, 8], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 1]])
    net = FCT(1, 2, topo, 2, patch_size=(12, 6))
    out = net(torch.randn(1, 1, 12, 6))
    assert [tuple(o.shape) for o in out] == [(1, 2, 12, 6), (1, 2, 6, 3)]


def test_published_model_matches_the_reference():
    """Widths 32..512, 1 channel, 4 classes, 224x224: the reference notebook's 31,730,060 parameters."""
    torch.manual_seed(0)
    net = FCT.published()
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_PARAMETERS == 31_730_060
    with torch.no_grad():
        out = net(torch.randn(1, 1, 224, 224))
    assert [tuple(o.shape) for o in out] == [(1, 4, 224, 224), (1, 4, 112, 112), (1, 4, 56, 56)]
    # the deepest attention runs at 7x7, the largest at 112x112 (every level pools before attending)
    assert [level.pool for level in net.encoder] == [(2, 2)] * 5
    with torch.device("meta"):  # shapes only: eval mode returns the full-resolution tensor alone
        meta = FCT.published().eval()
        y = meta(torch.empty(1, 1, 224, 224))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 4, 224, 224)


@pytest.mark.parametrize("dim,kernel", [(2, [3, 3]), (3, [1, 3, 3])])
def test_wide_focus_dilations(dim, kernel):
    wf = WideFocus(dim, 4, kernel)
    assert [b.dilation for b in wf.branches] == [tuple(d if k > 1 else 1 for k in kernel) for d in (1, 2, 3)]
    assert [b.padding for b in wf.branches] == [tuple(d if k > 1 else 0 for k in kernel) for d in (1, 2, 3)]
    x = torch.randn(1, 4, *([3, 9, 9][-dim:]))
    assert wf.eval()(x).shape == x.shape


def test_thick_slices_never_mix_where_the_plan_convolves_in_plane():
    topo = NetworkTopology([4, 8, 8], [[1, 3, 3]] * 3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]])
    net = FCT(1, 2, topo, 3, patch_size=(3, 16, 16)).eval()
    assert not any(isinstance(m, ZMix) for m in net.modules())
    x = torch.randn(1, 1, 3, 16, 16)
    x2 = x.clone()
    x2[:, :, 1] += torch.randn(16, 16)
    with torch.no_grad():
        y, y2 = net(x), net(x2)
    assert torch.allclose(y[:, :, [0, 2]], y2[:, :, [0, 2]], atol=1e-5)
    assert not torch.allclose(y[:, :, 1], y2[:, :, 1], atol=1e-3)


def test_z_mixing_only_where_the_plan_kernel_spans_z():
    net = FCT(1, 2, TOPO_3D, 3)
    assert [type(m).__name__ for m in net.encoder_zmix] == ["Identity", "Identity", "ZMix"]
    assert all(isinstance(m, torch.nn.Identity) for m in net.decoder_zmix)  # decoder levels 1, 0
    assert all(lvl.transformer.conv.kernel_size[0] == 1 for lvl in net.encoder)
    # zero-initialised: the 3D network starts as the slice-wise 2D FCT
    assert net.encoder_zmix[2].conv.weight.abs().sum() == 0


def test_bf16_autocast():
    torch.manual_seed(0)
    net = FCT(1, 3, TOPO_2D, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 32, 32))
        loss = sum(o.float().square().mean() for o in out)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_row_normalisation_is_sized_by_the_patch():
    net = FCT(1, 2, TOPO_2D, 2, patch_size=(32, 24))
    assert net.input_norm.weight.shape == (24,)
    with pytest.raises(ValueError, match="24 voxels wide"):
        net(torch.randn(1, 1, 32, 32))
    assert FCT(1, 2, TOPO_2D, 2).input_norm.weight is None  # no patch size: no per-column affine


def test_build_network_passes_the_patch_size():
    config = ConfigurationPlan(name="2d", dim=2, data_identifier="x", spacing=[1, 1, 1], median_shape=[4, 32, 24],
                               patch_size=[32, 24], batch_size=2, network=TOPO_2D,
                               architecture="autoseg.networks.fct:FCT")
    plans = Plans(version=1, dataset_name="d", planner="p", profile="cpu", gpu_memory_gb=0, channel_names=["a"],
                  label_values=[0, 1, 2], label_names=["bg", "x", "y"], normalization=[], configurations={"2d": config})
    net = build_network(plans, config)
    assert isinstance(net, FCT) and net.input_norm.width == 24
    assert net.eval()(torch.randn(1, 1, 32, 24)).shape == (1, 3, 32, 24)
    # a wrongly shaped plan fails when the network is built
    with pytest.raises(ValueError, match="axes"):
        build_network(plans, dataclasses.replace(config, dim=3))


def test_thick_slice_attention_is_the_2d_attention_on_every_slice():
    torch.manual_seed(0)
    att3, att2 = ConvAttention(3, 4, [1, 3, 3]), ConvAttention(2, 4, [3, 3])
    state = {k: (v[:, :, 0] if k.startswith("proj_") else v) for k, v in att3.state_dict().items()}
    att2.load_state_dict(state)
    x = torch.randn(2, 4, 3, 8, 6)
    with torch.no_grad():
        y3 = att3(x)
        y2 = torch.stack([att2(x[:, :, z]) for z in range(3)], dim=2)
    assert y3.shape == x.shape and torch.allclose(y3, y2, atol=1e-5)
