"""Spatial transformer network of Atlas-ISTN: affine + stationary velocity field, 2D and 3D.

Conventions (one set for every function here):

* coordinates are *normalised* to [-1, 1] per axis with ``align_corners=True`` (the centre of
  the first voxel is -1, of the last +1), as ``torch.nn.functional.grid_sample`` reads them;
* a sampling grid is ``(N, *spatial, dim)`` with the last axis in grid_sample's order
  ``(x, y[, z])``, i.e. numpy axes reversed; a displacement or velocity field is
  ``(N, dim, *spatial)`` with channels in that same ``(x, y[, z])`` order;
* ``grid_a2s`` (Φ⁻¹) holds, for every voxel of the *subject*, where to read the *atlas*:
  ``atlas ∘ Φ⁻¹ = warp(atlas, grid_a2s)``; ``grid_s2a`` (Φ) is its inverse and brings the
  subject onto the atlas: ``subject ∘ Φ = warp(subject, grid_s2a)``.

Φ⁻¹ = A ∘ exp(v): the stationary velocity field ``v`` is integrated by scaling and squaring,
then the affine ``A`` is applied; the inverse is exp(-v) ∘ A⁻¹. The velocity network sees the
affinely aligned atlas, so the affine does the gross alignment and ``v`` the local one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.networks.layers import conv

ALIGN_CORNERS = True


def identity_grid(shape: tuple[int, ...] | torch.Size, device=None, dtype=torch.float32, batch: int = 1) -> torch.Tensor:
    """``(batch, *shape, dim)`` identity sampling grid for spatial ``shape``."""
    dim = len(shape)
    theta = torch.eye(dim, dim + 1, device=device, dtype=dtype).unsqueeze(0).expand(batch, -1, -1)
    return F.affine_grid(theta, [batch, 1, *shape], align_corners=ALIGN_CORNERS)


def warp(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` (N, C, *spatial) at ``grid`` (N, *out_spatial, dim); borders are repeated."""
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode="border", align_corners=ALIGN_CORNERS)


def _field_to_grid_layout(field: torch.Tensor) -> torch.Tensor:
    """(N, dim, *sp) -> (N, *sp, dim)."""
    return field.movedim(1, -1)


def _grid_to_field_layout(grid: torch.Tensor) -> torch.Tensor:
    return grid.movedim(-1, 1)


def compose_displacements(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Displacement of (id + w) ∘ (id + u): ``u(x) + w(x + u(x))``, fields (N, dim, *sp)."""
    grid = identity_grid(u.shape[2:], u.device, u.dtype, u.shape[0]) + _field_to_grid_layout(u)
    return u + warp(w, grid)


def scaling_and_squaring(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement of exp(v): v / 2^steps composed with itself ``steps`` times."""
    u = velocity / (2 ** steps)
    for _ in range(steps):
        u = compose_displacements(u, u)
    return u


def affine_matrix(params: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, P) parameters -> (N, dim, dim + 1) matrices ``[R·S | t]`` in normalised coordinates.

    2D: ``P = 5`` = translation (x, y), rotation angle, log-scales (x, y).
    3D: ``P = 9`` = translation (x, y, z), rotations about x, y, z (radians), log-scales (x, y, z).
    All zeros is the identity; log-scales keep the scaling positive.
    """
    n = params.shape[0]
    if dim == 2:
        t, ang, logs = params[:, 0:2], params[:, 2], params[:, 3:5]
        c, s = torch.cos(ang), torch.sin(ang)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    elif dim == 3:
        t, angs, logs = params[:, 0:3], params[:, 3:6], params[:, 6:9]
        one, zero = torch.ones_like(angs[:, 0]), torch.zeros_like(angs[:, 0])
        cx, sx = torch.cos(angs[:, 0]), torch.sin(angs[:, 0])
        cy, sy = torch.cos(angs[:, 1]), torch.sin(angs[:, 1])
        cz, sz = torch.cos(angs[:, 2]), torch.sin(angs[:, 2])
        rx = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cx, -sx], -1),
                          torch.stack([zero, sx, cx], -1)], -2)
        ry = torch.stack([torch.stack([cy, zero, sy], -1), torch.stack([zero, one, zero], -1),
                          torch.stack([-sy, zero, cy], -1)], -2)
        rz = torch.stack([torch.stack([cz, -sz, zero], -1), torch.stack([sz, cz, zero], -1),
                          torch.stack([zero, zero, one], -1)], -2)
        rot = rz @ ry @ rx
    else:
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    lin = rot @ torch.diag_embed(torch.exp(logs))
    return torch.cat([lin, t.reshape(n, dim, 1)], dim=2)


def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    lin, t = theta[..., :-1], theta[..., -1:]
    inv = torch.linalg.inv(lin)
    return torch.cat([inv, -inv @ t], dim=-1)


def apply_affine_to_grid(theta: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Map every point of ``grid`` (N, *sp, dim) through ``theta`` (N, dim, dim+1)."""
    n, dim = grid.shape[0], grid.shape[-1]
    pts = grid.reshape(n, -1, dim)
    out = pts @ theta[:, :, :dim].transpose(1, 2) + theta[:, :, dim].unsqueeze(1)
    return out.reshape(grid.shape)


def normalised_to_voxel_scale(shape: tuple[int, ...] | torch.Size) -> list[float]:
    """Voxels per normalised unit for each channel of a field ((x, y[, z]) order)."""
    return [(s - 1) / 2.0 if s > 1 else 1.0 for s in reversed(list(shape))]


def smoothness_loss(field: torch.Tensor) -> torch.Tensor:
    """Mean squared forward differences of a (N, dim, *sp) field, expressed in voxels."""
    scale = torch.tensor(normalised_to_voxel_scale(field.shape[2:]), device=field.device, dtype=field.dtype)
    f = field * scale.view(1, -1, *([1] * (field.ndim - 2)))
    total = field.new_zeros(())
    for ax in range(2, field.ndim):
        if field.shape[ax] > 1:
            total = total + f.diff(dim=ax).pow(2).mean()
    return total


@dataclass
class Registration:
    """What one STN forward pass found for a batch."""

    theta: torch.Tensor  # (N, dim, dim+1) affine A (atlas coordinates = A · point)
    velocity: torch.Tensor  # (N, dim, *sp) stationary velocity field v of the deformable part
    grid_a2s: torch.Tensor  # (N, *sp, dim) Φ⁻¹ = A ∘ exp(v): where each subject voxel reads the atlas
    grid_s2a: torch.Tensor  # (N, *sp, dim) Φ = exp(-v) ∘ A⁻¹: where each atlas voxel reads the subject

    def atlas_to_subject(self, atlas: torch.Tensor) -> torch.Tensor:
        """``atlas ∘ Φ⁻¹`` (atlas broadcast over the batch)."""
        if atlas.shape[0] != self.grid_a2s.shape[0]:
            atlas = atlas.expand(self.grid_a2s.shape[0], *atlas.shape[1:])
        return warp(atlas, self.grid_a2s)

    def subject_to_atlas(self, subject: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """``subject ∘ Φ``."""
        return warp(subject, self.grid_s2a, mode=mode)

    def displacement_a2s(self) -> torch.Tensor:
        """(N, dim, *sp) Φ⁻¹ − id in normalised units (channels x, y[, z])."""
        ident = identity_grid(self.grid_a2s.shape[1:-1], self.grid_a2s.device, self.grid_a2s.dtype, self.grid_a2s.shape[0])
        return _grid_to_field_layout(self.grid_a2s - ident)


def _full_precision(like: torch.Tensor):
    """A context that switches any autocast off on ``like``'s device."""
    return torch.autocast(like.device.type, enabled=False)


def _block(dim: int, cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv(dim)(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True))


class SpatialTransformer(nn.Module):
    """Registers an atlas labelmap to a segmentation: affine head, then an SVF encoder-decoder.

    Inputs are ``target`` (N, F, *sp) and ``atlas`` (1 or N, F, *sp) foreground maps on the
    same grid. The last layer of both heads is zero-initialised, so a fresh network is the
    identity transform.
    """

    def __init__(self, num_channels: int, dim: int, features: tuple[int, ...] = (16, 32, 32, 32),
                 integration_steps: int = 7) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        self.dim = dim
        self.num_channels = num_channels
        self.integration_steps = integration_steps
        f = list(features)
        cin = 2 * num_channels
        # affine: strided encoder + global pooling + linear
        layers, c = [], cin
        for k in f:
            layers.append(_block(dim, c, k, stride=2))
            c = k
        self.affine_encoder = nn.Sequential(*layers)
        self.n_affine = 5 if dim == 2 else 9
        self.affine_head = nn.Linear(c, self.n_affine)
        nn.init.zeros_(self.affine_head.weight)
        nn.init.zeros_(self.affine_head.bias)
        # velocity: a small U-Net (3 levels)
        self.enc0 = _block(dim, cin, f[0])
        self.enc1 = _block(dim, f[0], f[1], stride=2)
        self.enc2 = _block(dim, f[1], f[2], stride=2)
        self.dec1 = _block(dim, f[2] + f[1], f[1])
        self.dec0 = _block(dim, f[1] + f[0], f[0])
        self.velocity_head = conv(dim)(f[0], dim, 3, padding=1)
        nn.init.zeros_(self.velocity_head.weight)
        nn.init.zeros_(self.velocity_head.bias)

    def _mode(self) -> str:
        return "trilinear" if self.dim == 3 else "bilinear"

    def forward(self, target: torch.Tensor, atlas: torch.Tensor) -> Registration:
        """Under a caller's autocast only the convolutions run in low precision: the geometry
        (affine head, sampling grids, integration) is always fp32, because a bf16 grid is off by
        up to half a voxel at 128 voxels."""
        n = target.shape[0]
        target, atlas = target.float(), atlas.float()
        if atlas.shape[0] != n:
            atlas = atlas.expand(n, *atlas.shape[1:])
        shape = target.shape[2:]
        h = self.affine_encoder(torch.cat([target, atlas], 1)).flatten(2).mean(2)
        with _full_precision(target):
            theta = affine_matrix(self.affine_head(h.float()), self.dim)
            ident = identity_grid(shape, target.device, target.dtype, n)
            atlas_affine = warp(atlas, apply_affine_to_grid(theta, ident))
        x = torch.cat([target, atlas_affine], 1)
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([F.interpolate(e2, size=e1.shape[2:], mode=self._mode(), align_corners=False), e1], 1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, size=e0.shape[2:], mode=self._mode(), align_corners=False), e0], 1))
        velocity = self.velocity_head(d0)
        with _full_precision(target):
            return self.transforms(theta, velocity.float())

    def transforms(self, theta: torch.Tensor, velocity: torch.Tensor) -> Registration:
        """Both sampling grids from an affine and a velocity field."""
        n, shape = velocity.shape[0], velocity.shape[2:]
        ident = identity_grid(shape, velocity.device, velocity.dtype, n)
        u = scaling_and_squaring(velocity, self.integration_steps)
        u_inv = scaling_and_squaring(-velocity, self.integration_steps)
        grid_a2s = apply_affine_to_grid(theta, ident + _field_to_grid_layout(u))
        p = apply_affine_to_grid(invert_affine(theta), ident)
        grid_s2a = p + _field_to_grid_layout(warp(u_inv, p))
        return Registration(theta, velocity, grid_a2s, grid_s2a)


def atlas_losses(reg: Registration, y: torch.Tensor, atlas_fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(La2s, Ls2a): per-class mean squared error over voxels (and batch), summed over classes."""
    axes = [0] + list(range(2, y.ndim))
    la2s = (y - reg.atlas_to_subject(atlas_fg)).pow(2).mean(axes).sum()
    ls2a = (reg.subject_to_atlas(y) - atlas_fg.expand_as(y)).pow(2).mean(axes).sum()
    return la2s, ls2a
