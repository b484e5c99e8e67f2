import pytest
import torch
from torch import nn

from autoseg.networks import deep_supervision_scales
from autoseg.networks.vnet import ConvNormPReLU, InputStage, ResidualConvs, VNet, default_convs_per_stage
from autoseg.planners.plans import NetworkTopology

TOPO_3D = NetworkTopology([4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
TOPO_2D = NetworkTopology([4, 8, 16, 16], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 1]])
# thick slices: z is neither convolved nor pooled in the first two stages
TOPO_ANISO = NetworkTopology([4, 8, 16], [[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])
CASES = [(TOPO_3D, 3, (8, 8, 12)), (TOPO_2D, 2, (16, 8))]
CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_deep_supervision_shapes_follow_scales(topo, dim, shape):
    torch.manual_seed(0)
    net = VNet(2, 3, topo, dim)
    out = net(torch.randn(2, 2, *shape))
    scales = deep_supervision_scales(topo)
    assert isinstance(out, list) and len(out) == len(scales)
    for o, s in zip(out, scales):
        assert o.shape == (2, 3) + tuple(int(n // f) for n, f in zip(shape, s))


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_eval_and_no_deep_supervision_return_one_full_resolution_tensor(topo, dim, shape):
    net = VNet(1, 3, topo, dim).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3) + shape
    y = VNet(1, 3, topo, dim, deep_supervision=False)(torch.randn(1, 1, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3) + shape


def test_kernels_are_five_and_stages_follow_the_paper():
    paper = NetworkTopology([16, 32, 64, 128, 256], [[3, 3, 3]] * 5, [[1, 1, 1]] + [[2, 2, 2]] * 4)
    net = VNet(1, 2, paper, 3)
    assert default_convs_per_stage(5) == [1, 2, 3, 3, 3]
    assert [len(s.convs) for s in [net.encoder[0]] + [e.residual for e in net.encoder[1:]]] == [1, 2, 3, 3, 3]
    # decoder from the bottleneck up, at the paper's widths (upsampled + skip)
    assert [len(s.residual.convs) for s in net.decoder.stages] == [3, 3, 2, 1]
    assert [s.residual.act.num_parameters for s in net.decoder.stages] == [256, 128, 64, 32]
    down = net.encoder[1].down[0]
    assert down.kernel_size == (2, 2, 2) and down.stride == (2, 2, 2)
    assert net.encoder[2].residual.convs[0][0].kernel_size == (5, 5, 5)


def test_anisotropic_plan_keeps_thick_slices_unmixed():
    net = VNet(1, 2, TOPO_ANISO, 3)
    # stages 0 and 1 (full resolution and the first down stage): kernel 1 and no padding along z
    for module in list(net.encoder[:2].modules()) + list(net.decoder.stages[1].modules()):
        if isinstance(module, CONVS):
            assert module.kernel_size[0] == 1 and module.padding[0] == 0
    assert net.encoder[2].residual.convs[0][0].kernel_size == (5, 5, 5)
    # a plan that never convolves z gives no conv anywhere a z extent above 1
    flat = NetworkTopology([4, 8, 16], [[1, 3, 3]] * 3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]])
    net = VNet(1, 2, flat, 3)
    kernels = [m.kernel_size for m in net.modules() if isinstance(m, CONVS)]
    assert kernels and all(k[0] == 1 for k in kernels)
    assert net(torch.randn(1, 1, 3, 8, 8))[0].shape == (1, 2, 3, 8, 8)


@pytest.mark.parametrize("topo,dim,shape", CASES)
def test_backward_gives_finite_gradients_everywhere(topo, dim, shape):
    torch.manual_seed(0)
    net = VNet(1, 3, topo, dim)
    sum(o.square().mean() for o in net(torch.randn(2, 1, *shape))).backward()
    bad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "heads" not in n)


@pytest.mark.parametrize("dim", [2, 3])
def test_prelu_activations(dim):
    net = VNet(1, 2, TOPO_3D if dim == 3 else TOPO_2D, dim)
    modules = list(net.modules())
    assert any(isinstance(m, nn.PReLU) for m in modules)
    assert not any(isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ELU)) for m in modules)
    # one slope per channel, as in the paper's Caffe PReLU
    assert all(m.num_parameters > 1 for m in modules if isinstance(m, nn.PReLU))


def _zero_convs(stage: nn.Module) -> None:
    with torch.no_grad():
        for m in stage.convs.modules():
            if isinstance(m, CONVS):
                m.weight.zero_()


@pytest.mark.parametrize("dim", [2, 3])
def test_residual_stage_adds_its_input(dim):
    torch.manual_seed(0)
    stage = ResidualConvs(dim, 4, [5] * dim, n=2)
    x = torch.randn(2, 4, *([6] * dim))
    # with the convolutions silenced only the identity path is left
    _zero_convs(stage)
    assert torch.allclose(stage(x), stage.act(x))
    # and it stays in the sum when they are not: the output minus the conv branch is the input
    torch.manual_seed(1)
    stage = ResidualConvs(dim, 4, [5] * dim, n=2)
    y = stage.convs(x) + x
    assert torch.allclose(stage(x), stage.act(y))


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_input_stage_identity_is_the_image(in_channels):
    stage = InputStage(3, in_channels, 4, [5, 5, 5], n=1)
    x = torch.randn(1, in_channels, 4, 6, 6)
    _zero_convs(stage)
    out = stage(x)
    if 4 % in_channels == 0:
        # the paper's identity: the image repeated across the stage's channels
        assert stage.project is None
        assert torch.allclose(out, stage.act(x.repeat(1, 4 // in_channels, 1, 1, 1)))
    else:
        assert torch.allclose(out, stage.act(stage.project(x)))


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="convs_per_stage"):
        VNet(1, 2, TOPO_3D, 3, convs_per_stage=[1, 2])
    with pytest.raises(ValueError, match="divisible"):
        VNet(1, 2, TOPO_3D, 3)(torch.randn(1, 1, 6, 8, 8))


def test_cpu_bf16_runs_convs_shorter_than_their_z_kernel_in_float32():
    # torch's CPU bf16 Conv3d backward returns garbage when z is shorter than the kernel
    layer = ConvNormPReLU(3, 4, 4, [5, 5, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(1, 4, 4, 8, 8)).dtype == torch.float32
        assert layer(torch.randn(1, 4, 5, 8, 8)).dtype == torch.bfloat16
        assert ConvNormPReLU(3, 4, 4, [1, 5, 5])(torch.randn(1, 4, 1, 8, 8)).dtype == torch.bfloat16
    torch.manual_seed(0)
    net = VNet(1, 3, TOPO_3D, 3)  # deepest maps 2x2x3 under 5x5x5 kernels
    x = torch.randn(2, 1, 8, 8, 12)
    grads = []
    for bf16 in (False, True):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        sum(o.float().square().mean() for o in out).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.isfinite(grads[1]).all()
    assert (grads[1] - grads[0]).abs().max() < 0.1 * grads[0].abs().max()
