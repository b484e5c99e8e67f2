import numpy as np
import pytest
import torch
from torch import nn

from autoseg.inference.sliding_window import (
    gaussian_importance_map,
    mirror_combinations,
    predict_sliding_window,
    tile_starts,
)


def pointwise_net(dim: int, in_ch: int = 1, k: int = 3, seed: int = 0) -> nn.Module:
    """A 1x1 convolution: every tile gives the same logits for a voxel, so the result is exact."""
    torch.manual_seed(seed)
    conv = (nn.Conv3d if dim == 3 else nn.Conv2d)(in_ch, k, 1)
    return conv.eval()


def expected_softmax(net: nn.Module, data: np.ndarray, dim: int) -> torch.Tensor:
    x = torch.from_numpy(data).float()
    w = net.weight.detach().reshape(net.out_channels, -1)
    logits = torch.einsum("kc,czyx->kzyx", w, x) + net.bias.detach()[:, None, None, None]
    return torch.softmax(logits, 0)


@pytest.mark.parametrize("shape", [(1, 5, 6, 7), (1, 8, 8, 8), (1, 19, 23, 17)])
def test_pointwise_net_gives_exact_softmax(shape):
    # smaller than, equal to and larger than the patch
    rng = np.random.default_rng(0)
    data = rng.normal(size=shape).astype(np.float32)
    net = pointwise_net(3)
    out = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=3, tta=False)
    assert out.shape == (3,) + shape[1:]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected_softmax(net, data, 3), atol=1e-5, rtol=1e-5)


class Offsetting(nn.Module):
    """Output depends on absolute position in the tile: tile borders would show if weighting were wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_probabilities_sum_to_one_and_cover_everything():
    torch.manual_seed(0)
    data = np.random.default_rng(1).normal(size=(1, 21, 30, 13)).astype(np.float32)
    out = predict_sliding_window(Offsetting(), data, (8, 10, 8), dim=3, num_classes=2, tta=True, tile_batch_size=3)
    torch.testing.assert_close(out.sum(0), torch.ones(out.shape[1:]), atol=1e-5, rtol=0)
    assert torch.isfinite(out).all()


class FlipEquivariant(nn.Module):
    """A symmetric 3x3(x3) kernel commutes with every flip, so TTA must not change the result."""

    def __init__(self, dim: int):
        super().__init__()
        conv = (nn.Conv3d if dim == 3 else nn.Conv2d)(1, 3, 3, padding=1)
        with torch.no_grad():
            w = conv.weight
            for axes in mirror_combinations(range(2, 2 + dim)):
                w = w + (conv.weight.flip(axes) if axes else 0)
            conv.weight.copy_(w)
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("dim", [2, 3])
def test_tta_with_flip_equivariant_net_is_unchanged(dim):
    torch.manual_seed(0)
    net = FlipEquivariant(dim)
    data = np.random.default_rng(2).normal(size=(1, 9, 20, 18)).astype(np.float32)
    patch = (6, 8, 8) if dim == 3 else (8, 8)
    a = predict_sliding_window(net, data, patch, dim=dim, num_classes=3, tta=False)
    b = predict_sliding_window(net, data, patch, dim=dim, num_classes=3, tta=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class CountingNet(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return self.inner(x)


def test_tta_runs_mirrors_as_one_batch_and_differs_for_asymmetric_net():
    torch.manual_seed(0)
    net = CountingNet(nn.Conv3d(1, 2, 3, padding=1))
    data = np.random.default_rng(3).normal(size=(1, 8, 8, 8)).astype(np.float32)
    b = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=2, tta=True, tile_batch_size=1)
    assert net.batch_sizes == [8]
    a = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=2, tta=False)
    assert not torch.allclose(a, b, atol=1e-4)


def test_2d_path_predicts_slice_by_slice():
    net = pointwise_net(2, in_ch=2, k=4)
    counting = CountingNet(net)
    data = np.random.default_rng(4).normal(size=(2, 5, 11, 30)).astype(np.float32)
    out = predict_sliding_window(counting, data, (16, 16), dim=2, num_classes=4, tta=False, tile_batch_size=6)
    assert out.shape == (4, 5, 11, 30)
    torch.testing.assert_close(out, expected_softmax(net, data, 2), atol=1e-5, rtol=1e-5)
    # 5 slices x 3 tiles along x = 15 tiles in batches of 6 (tiles of different slices share a batch)
    assert counting.batch_sizes == [6, 6, 3]


def test_several_networks_average_probabilities():
    nets = [pointwise_net(3, seed=s) for s in (0, 1)]
    data = np.random.default_rng(5).normal(size=(1, 6, 9, 9)).astype(np.float32)
    out = predict_sliding_window(nets, data, (4, 4, 4), dim=3, num_classes=3, tta=False)
    expect = (expected_softmax(nets[0], data, 3) + expected_softmax(nets[1], data, 3)) / 2
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_is_close_and_float32():
    net = pointwise_net(3)
    data = np.random.default_rng(6).normal(size=(1, 10, 10, 10)).astype(np.float32)
    out = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=3, tta=False, autocast_dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected_softmax(net, data, 3), atol=3e-2, rtol=0)


def test_gaussian_weights():
    g = gaussian_importance_map((9, 15, 7))
    assert g.shape == (9, 15, 7)
    assert float(g.max()) == pytest.approx(1.0)
    assert g[4, 7, 3] == g.max()  # centre
    assert float(g.min()) > 0
    assert g[0, 7, 3] < g[2, 7, 3] < g[4, 7, 3]
    torch.testing.assert_close(g, g.flip(0).flip(1).flip(2))
    # sigma = patch / 8 = 8 voxels; the centre of an even patch lies between voxels 31 and 32
    g2 = gaussian_importance_map((1, 64))
    assert float(g2[0, 31]) == float(g2[0, 32]) == pytest.approx(1.0)
    assert float(g2[0, 40] / g2[0, 32]) == pytest.approx(float(np.exp(-0.5 * ((8.5 / 8) ** 2 - (0.5 / 8) ** 2))), rel=1e-4)
    assert gaussian_importance_map((9, 15, 7)) is g  # cached


def test_tile_starts_cover_the_axis():
    assert tile_starts(5, 8, 0.5) == [0]
    assert tile_starts(8, 8, 0.5) == [0]
    s = tile_starts(23, 8, 0.5)
    assert s[0] == 0 and s[-1] == 15
    assert all(b - a <= 4 for a, b in zip(s, s[1:]))
