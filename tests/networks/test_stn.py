"""The spatial transformer: identity start, affine matrices, scaling and squaring, 2D and 3D warps."""
import math

import pytest
import torch

from autoseg.networks.stn import (SpatialTransformer, affine_matrix, compose_displacements, identity_grid,
                                  invert_affine, scaling_and_squaring, smoothness_loss, warp)


def smooth_field(shape, amplitude=0.08):
    dim = len(shape)
    mesh = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    v = torch.zeros(1, dim, *shape)
    for c in range(dim):
        v[0, c] = amplitude * torch.sin(math.pi * mesh[dim - 1 - c]) * torch.cos(math.pi * mesh[0] / 2)
    return v


@pytest.mark.parametrize("shape", [(20, 24), (10, 12, 14)])
def test_fresh_stn_is_identity(shape):
    torch.manual_seed(0)
    stn = SpatialTransformer(2, len(shape), features=(4, 8, 8, 8))
    target, atlas = torch.rand(2, 2, *shape), torch.rand(1, 2, *shape)
    reg = stn(target, atlas)
    assert torch.allclose(reg.atlas_to_subject(atlas), atlas.expand(2, -1, *shape), atol=1e-5)
    assert torch.allclose(reg.subject_to_atlas(target), target, atol=1e-5)
    assert reg.displacement_a2s().abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(24, 28), (12, 14, 16)])
def test_scaling_and_squaring(shape):
    zero = torch.zeros(1, len(shape), *shape)
    assert torch.equal(scaling_and_squaring(zero), zero)
    v = smooth_field(shape)
    u, u_inv = scaling_and_squaring(v), scaling_and_squaring(-v)
    assert u.abs().max() > 0.05  # a real deformation ...
    assert compose_displacements(u, u_inv).abs().max() < 0.15 * u.abs().max()  # ... that exp(-v) undoes


def test_affine_parameters_to_matrix():
    assert torch.allclose(affine_matrix(torch.zeros(1, 5), 2), torch.eye(2, 3)[None])
    assert torch.allclose(affine_matrix(torch.zeros(1, 9), 3), torch.eye(3, 4)[None])
    p = torch.tensor([[0.1, -0.2, math.pi / 2, math.log(2.0), 0.0]])
    m = affine_matrix(p, 2)[0]
    # rotate by 90 degrees after scaling x by 2: (1, 0) -> (0, 2); translation last column
    assert torch.allclose(m[:, :2] @ torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), atol=1e-6)
    assert torch.allclose(m[:, 2], torch.tensor([0.1, -0.2]))
    p3 = torch.tensor([[0.1, 0.2, 0.3, 0.2, -0.1, 0.4, 0.1, 0.0, -0.2]])
    m3 = affine_matrix(p3, 3)
    lin = m3[0, :, :3]
    assert torch.allclose(torch.det(lin), torch.exp(torch.tensor(-0.1)), atol=1e-5)  # rotations keep volume
    back = invert_affine(m3)
    pt = torch.tensor([0.3, -0.5, 0.2])
    fwd = m3[0, :, :3] @ pt + m3[0, :, 3]
    assert torch.allclose(back[0, :, :3] @ fwd + back[0, :, 3], pt, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_warp_translation(dim):
    shape = (9,) * dim
    img = torch.zeros(1, 1, *shape)
    img[(0, 0) + (4,) * dim] = 1.0
    grid = identity_grid(shape)
    step = 2.0 / (shape[0] - 1)  # one voxel in normalised units
    grid = grid.clone()
    grid[..., 0] += step  # read one voxel further along x: the spot moves one voxel back
    out = warp(img, grid)
    expected = (0, 0) + (4,) * (dim - 1) + (3,)
    assert out[expected] == pytest.approx(1.0, abs=1e-5)


def test_smoothness_penalises_rough_fields():
    smooth = smooth_field((16, 16), 0.05)
    rough = smooth + 0.05 * torch.randn_like(smooth)
    assert smoothness_loss(torch.zeros(1, 2, 16, 16)) == 0
    assert smoothness_loss(rough) > 5 * smoothness_loss(smooth) > 0


def test_stn_inverse_consistency_after_training_step():
    torch.manual_seed(0)
    stn = SpatialTransformer(1, 2, features=(4, 8, 8, 8))
    with torch.no_grad():
        stn.velocity_head.bias.copy_(torch.tensor([0.05, -0.03]))
        stn.affine_head.bias.copy_(torch.tensor([0.05, 0.0, 0.1, 0.05, -0.05]))
    shape = (20, 20)
    reg = stn(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
    # Φ ∘ Φ⁻¹ ≈ id: warping the Φ⁻¹ grid by Φ returns the identity in the interior
    composed = warp(reg.grid_a2s.movedim(-1, 1), reg.grid_s2a).movedim(1, -1)
    ident = identity_grid(shape)
    assert (composed - ident)[:, 4:-4, 4:-4].abs().max() < 0.02


def test_autocast_reaches_only_the_convolutions():
    torch.manual_seed(0)
    stn = SpatialTransformer(2, 3, (8, 8, 8, 8), integration_steps=4)
    with torch.no_grad():  # a non-identity transform, so the grids carry information
        stn.velocity_head.weight.normal_(std=0.05)
        stn.affine_head.bias.copy_(torch.tensor([0.05, -0.03, 0.02, 0.1, 0, 0, 0.05, 0, 0]))
    target, atlas = torch.rand(2, 2, 8, 12, 10), torch.rand(1, 2, 8, 12, 10)
    ref = stn(target, atlas)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = stn(target, atlas)
    for field in ("theta", "velocity", "grid_a2s", "grid_s2a"):
        assert getattr(low, field).dtype == torch.float32, field
    assert torch.allclose(low.theta, ref.theta, atol=1e-6)  # head weights are zero: theta is its fp32 bias
    # the convolutions' bf16 rounding moves the grids by far less than a voxel (0.18 normalised units here)
    assert (low.grid_a2s - ref.grid_a2s).abs().max() < 0.02
