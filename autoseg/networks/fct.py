"""Fully Convolutional Transformer (FCT) for 2D, and slice by slice for thick-slice 3D.

Tragakis, Kaul, Murray-Smith, Husmeier, "The Fully Convolutional Transformer for Medical Image
Segmentation", WACV 2023. The layer details follow the authors' TensorFlow notebook behind the
published ACDC result (github.com/Thanos-DB/FullyConvolutionalTransformer,
``TensorFlow/main_ACDC_92.84.ipynb``); their PyTorch port differs (one attention head, ReLU in
the projections, a LayerNorm over the single input channel that zeroes the image) and is not
what the paper reports.

Every level is one *FCT block*: LayerNorm over channels, two 3x3 convs (ReLU), dropout, a max
pool, then the transformer part::

    x  = pooled features
    x2 = x + ReLU(conv3x3(attention(x)))      attention: Q, K, V are depthwise 3x3 convs, each
                                              followed by LayerNorm; K and V with stride 2
    y  = x2 + WideFocus(LayerNorm(x2))        WideFocus: three parallel 3x3 convs with dilations
                                              1, 2, 3 (GELU, dropout 0.1), summed, a fusing 3x3 conv

The attention is the reference's, heads included: Keras ``MultiHeadAttention(2, key_dim=c)``,
so each of the 2 heads has the full width ``c`` (projections ``c -> 2c``, output ``2c -> c``),
not ``c / 2`` as in ``nn.MultiheadAttention``. Queries are every pixel of the block's map; keys
and values come from the stride-2 projection, a quarter as many. Full attention over a 224x224
image would be infeasible; the reference never attends at the input resolution because every
block pools *before* its transformer, the first block included, so the largest attention map is
112x112 queries against 56x56 keys.

Encoder levels 1 .. L-2 also take the *input pyramid*: the input average-pooled to the level's
resolution, through a 3x3 conv (ReLU) to the previous level's width, concatenated before the
convs. Decoder levels: LayerNorm, nearest upsampling, a conv with kernel = the stride (ReLU),
concatenation with the encoder level's output, two 3x3 convs, dropout, the transformer part.
The last three decoder levels have deep-supervision heads: LayerNorm, nearest upsampling by the
first pool, two 3x3 convs (ReLU), a 1x1 conv. The heads return logits (the reference's sigmoid
belongs to its BCE loss; autoseg's losses take logits). The very first op normalises each image
row across its width with one learned scale and shift per column (the reference's LayerNorm on
the ``(N, H, W)`` image), which is why the network needs the patch size for the published count.

Sizing from a plan. The published model is five levels of widths 32-64-128-256-512, each pooling
by 2 (224 -> 7). autoseg's topology has ``strides[0] = 1``; this network uses its first
``L = min(n_stages, 5)`` stages: level ``k`` has ``features_per_stage[k]`` channels, level 0 pools
by :data:`FIRST_POOL` (2 in-plane) and level ``k >= 1`` by ``strides[k]``. Level ``k``'s output is
then at the resolution of plan stage ``k`` divided by the first pool, and its head upsamples by
that pool to the plan stage's resolution, so deep-supervision output ``k`` has the shape the
loss expects (input / prod(strides[0..k])). A plan with features 32..512, 3x3 kernels, strides
2 and 224x224 patches builds exactly the published network (:meth:`FCT.published`,
:data:`REFERENCE_PARAMETERS`). Inputs that the extra first pool does not divide are zero-padded
at the end of each axis and the outputs cropped back. Convolutions use the plan's kernel sizes
per axis (3x3 in 2D plans unless one in-plane axis is far coarser); ``n_conv_per_stage`` is not
used, the block has two convs as published.

Thick-slice 3D (autoseg's extension, like :mod:`autoseg.networks.hybrid_unet`): with ``dim=3``
every FCT block is applied in-plane, slice by slice: kernels are forced to 1 along z, the first
pool and the key/value stride are in-plane only, and attention folds z into the batch (each
slice attends within itself). Slices meet only (a) where the plan pools or upsamples along z,
as its U-Net would, and (b) through a *z-mixing* residual ``x + conv_(kz,1,1)(x)`` after each
encoder and decoder block whose plan stage has kernel ``kz > 1`` along z. Its weights start at
zero, so the network starts as the slice-wise 2D FCT. It costs ``kz * c^2`` MACs per voxel
against ~70 c^2 for the convolutions and projections of the block it follows.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.networks.layers import conv, init_weights
from autoseg.networks.unet import check_input, check_topology, total_stride
from autoseg.planners.plans import NetworkTopology

MAX_LEVELS = 5  # the published depth: 4 encoder levels and the bottleneck
HEADS = 2
N_DEEP_SUPERVISION = 3  # heads on the last three decoder levels, as published
WIDE_FOCUS_DILATIONS = (1, 2, 3)
FIRST_POOL = 2  # in-plane pool of the first level, before any attention
KV_STRIDE = 2
PROJECTION_EPS = 1e-3  # Keras' LayerNormalization default, used in the reference's Q/K/V projections
NORM_EPS = 1e-5
# The published ACDC model (1 input channel, 4 classes, 224x224): the layers of the reference
# notebook (TensorFlow/main_ACDC_92.84.ipynb) counted with Keras' parameter rules.
REFERENCE_PARAMETERS = 31_730_060


def _same_padding(kernel: Sequence[int], dilation: Sequence[int] | int = 1) -> tuple[int, ...]:
    dil = [dilation] * len(kernel) if isinstance(dilation, int) else list(dilation)
    return tuple(d * (k // 2) for k, d in zip(kernel, dil))


def _conv(dim: int, cin: int, cout: int, kernel: Sequence[int], dilation: Sequence[int] | int = 1) -> nn.Module:
    return conv(dim)(cin, cout, tuple(kernel), padding=_same_padding(kernel, dilation), dilation=dilation)


def _cumprod(factors: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per-axis running products: entry ``k`` is the product of ``factors[0..k]``."""
    out, acc = [], [1] * len(factors[0])
    for fac in factors:
        acc = [a * b for a, b in zip(acc, fac)]
        out.append(acc)
    return out


def _max_pool(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    if all(f == 1 for f in factor):
        return x
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, tuple(factor), tuple(factor))


def _upsample(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    if all(f == 1 for f in factor):
        return x
    return F.interpolate(x, scale_factor=tuple(float(f) for f in factor), mode="nearest")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an (N, C, *spatial) map (Keras' default axis)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class RowNorm(nn.Module):
    """Normalise every row of every channel across the last axis; with ``width``, a learned
    scale and shift per column, as the reference's LayerNorm on its ``(N, H, W)`` input.

    Without ``width`` the statistics are the same and there is no affine part (any width works).
    """

    def __init__(self, width: int | None) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.ones(width)) if width else None
        self.bias = nn.Parameter(torch.zeros(width)) if width else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.width and x.shape[-1] != self.width:
            raise ValueError(f"this FCT was built for patches {self.width} voxels wide along the last axis "
                             f"(its input normalisation has a scale per column), got {x.shape[-1]}")
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, NORM_EPS)


class ConvAttention(nn.Module):
    """Multi-head attention whose Q, K, V are depthwise convs + LayerNorm of the map itself.

    ``kernel``: the depthwise kernel per axis; axes where it is 1 (z in the thick-slice variant)
    are folded into the batch, so attention never crosses them. K and V are strided by
    :data:`KV_STRIDE` along the attended axes.
    """

    def __init__(self, dim: int, channels: int, kernel: Sequence[int], heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        folded = [a for a, k in enumerate(kernel) if k == 1] if dim == 3 else []
        kv_stride = tuple(1 if a in folded else KV_STRIDE for a in range(dim))
        # tokens are (N, *folded axes, *attended axes, C): folded axes join the batch
        self.n_folded = len(folded)
        self.order = [0] + [a + 2 for a in folded] + [a + 2 for a in range(dim) if a not in folded] + [1]
        self.inverse = [self.order.index(i) for i in range(dim + 2)]
        pad = _same_padding(kernel)

        def projection(stride: Sequence[int]) -> nn.Module:
            return conv(dim)(channels, channels, tuple(kernel), stride=tuple(stride), padding=pad,
                             groups=channels, bias=False)

        self.proj_q = projection([1] * dim)
        self.proj_k = projection(kv_stride)
        self.proj_v = projection(kv_stride)
        self.norm_q = nn.LayerNorm(channels, eps=PROJECTION_EPS)
        self.norm_k = nn.LayerNorm(channels, eps=PROJECTION_EPS)
        self.norm_v = nn.LayerNorm(channels, eps=PROJECTION_EPS)
        # every head is channels wide (Keras key_dim = channels), as in the reference
        self.to_q = nn.Linear(channels, heads * channels)
        self.to_k = nn.Linear(channels, heads * channels)
        self.to_v = nn.Linear(channels, heads * channels)
        self.out = nn.Linear(heads * channels, channels)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(N, C, *spatial) -> (N * prod(folded sizes), prod(attended sizes), C), and the unfolded layout."""
        x = x.permute(*self.order)
        layout = tuple(x.shape[:-1])
        return x.reshape(math.prod(layout[:1 + self.n_folded]), -1, x.shape[-1]), layout

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, layout = self._tokens(self.proj_q(x))
        k, _ = self._tokens(self.proj_k(x))
        v, _ = self._tokens(self.proj_v(x))
        q = self._heads(self.to_q(self.norm_q(q)))
        k = self._heads(self.to_k(self.norm_k(k)))
        v = self._heads(self.to_v(self.norm_v(v)))
        # memory-efficient kernels: the 112x112 x 56x56 attention map is never materialised
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.out(y.transpose(1, 2).flatten(2))
        return y.reshape(*layout, -1).permute(*self.inverse)


class WideFocus(nn.Module):
    """Parallel 3x3 convs with dilations 1, 2, 3 (GELU, dropout), summed, then a fusing 3x3 conv.

    Dilation applies only along axes the kernel spans (never along a kernel-1 z axis).
    """

    def __init__(self, dim: int, channels: int, kernel: Sequence[int], dropout: float = 0.1,
                 dilations: Sequence[int] = WIDE_FOCUS_DILATIONS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            _conv(dim, channels, channels, kernel, tuple(d if k > 1 else 1 for k in kernel)) for d in dilations)
        self.fuse = _conv(dim, channels, channels, kernel)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = sum(self.drop(F.gelu(b(x))) for b in self.branches)
        return self.drop(F.gelu(self.fuse(y)))


class FCTTransformer(nn.Module):
    """The transformer part of an FCT block: attention + 3x3 conv residual, then LayerNorm + Wide-Focus residual."""

    def __init__(self, dim: int, channels: int, kernel: Sequence[int], wide_focus_dropout: float = 0.1) -> None:
        super().__init__()
        self.attention = ConvAttention(dim, channels, kernel)
        self.conv = _conv(dim, channels, channels, kernel)
        self.norm = ChannelLayerNorm(channels, eps=NORM_EPS)
        self.wide_focus = WideFocus(dim, channels, kernel, wide_focus_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + F.relu(self.conv(self.attention(x)))
        return x + self.wide_focus(self.norm(x))


class ZMix(nn.Module):
    """``x + conv_(kz,1,1)(x)``, zero-initialised: the thick-slice variant's only inter-slice path
    besides the plan's own z pooling."""

    def __init__(self, channels: int, kz: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (kz, 1, 1), padding=(kz // 2, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class EncoderLevel(nn.Module):
    def __init__(self, dim: int, cin: int, cout: int, kernel: Sequence[int], pool: Sequence[int],
                 pyramid_channels: int | None, in_channels: int, first: bool, dropout: float,
                 wide_focus_dropout: float) -> None:
        super().__init__()
        self.pool = tuple(pool)
        # the first level's input is the row-normalised image (FCT.input_norm)
        self.norm = nn.Identity() if first else ChannelLayerNorm(cin, eps=NORM_EPS)
        self.pyramid = _conv(dim, in_channels, pyramid_channels, kernel) if pyramid_channels else None
        width = cin + (pyramid_channels or 0)
        self.conv1 = _conv(dim, width, cout, kernel)
        self.conv2 = _conv(dim, cout, cout, kernel)
        self.drop = nn.Dropout(dropout)
        self.transformer = FCTTransformer(dim, cout, kernel, wide_focus_dropout)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if self.pyramid is not None:
            x = torch.cat((F.relu(self.pyramid(image)), x), dim=1)
        x = self.drop(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return self.transformer(_max_pool(x, self.pool))


class DecoderLevel(nn.Module):
    def __init__(self, dim: int, cin: int, cout: int, kernel: Sequence[int], up: Sequence[int],
                 dropout: float, wide_focus_dropout: float) -> None:
        super().__init__()
        self.up = tuple(up)
        self.norm = ChannelLayerNorm(cin, eps=NORM_EPS)
        # kernel = the upsampling factor (2x2 after a 2x nearest upsampling, as published), padded
        # at the end of each axis as Keras' "same" does for even kernels
        self.up_conv = conv(dim)(cin, cout, self.up)
        self.up_pad = [v for f in reversed(self.up) for v in (0, f - 1)]
        self.conv1 = _conv(dim, 2 * cout, cout, kernel)
        self.conv2 = _conv(dim, cout, cout, kernel)
        self.drop = nn.Dropout(dropout)
        self.transformer = FCTTransformer(dim, cout, kernel, wide_focus_dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.up_conv(F.pad(_upsample(self.norm(x), self.up), self.up_pad)))
        x = torch.cat((skip, x), dim=1)
        return self.transformer(self.drop(F.relu(self.conv2(F.relu(self.conv1(x))))))


class Head(nn.Module):
    """LayerNorm, nearest upsampling by the first pool, two convs (ReLU), 1x1 conv to the classes."""

    def __init__(self, dim: int, channels: int, num_classes: int, kernel: Sequence[int], up: Sequence[int]) -> None:
        super().__init__()
        self.up = tuple(up)
        self.norm = ChannelLayerNorm(channels, eps=NORM_EPS)
        self.conv1 = _conv(dim, channels, channels, kernel)
        self.conv2 = _conv(dim, channels, channels, kernel)
        self.out = conv(dim)(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm is per pixel, so normalising before the nearest upsampling is the same and cheaper
        x = _upsample(self.norm(x), self.up)
        return self.out(F.relu(self.conv2(F.relu(self.conv1(x)))))


class FCT(nn.Module):
    """Fully Convolutional Transformer sized by a plan; same interface as :class:`~autoseg.networks.unet.UNet`.

    ``patch_size`` (the plan's, passed by ``build_network``) sizes the per-column affine of the
    input row normalisation; without it that normalisation has no parameters. ``dropout`` is the
    reference's after each conv pair, ``wide_focus_dropout`` inside Wide-Focus.
    """

    def __init__(self, in_channels: int, num_classes: int, topology: NetworkTopology, dim: int,
                 deep_supervision: bool = True, patch_size: Sequence[int] | None = None,
                 dropout: float = 0.3, wide_focus_dropout: float = 0.1) -> None:
        super().__init__()
        check_topology(topology, dim)
        if patch_size is not None and len(patch_size) != dim:
            raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} axes, the network has {dim}")
        self.dim = dim
        self.deep_supervision = deep_supervision
        self.total_stride = total_stride(topology)
        n = min(topology.n_stages, MAX_LEVELS)
        f = topology.features_per_stage[:n]
        if dim == 3:
            kernels = [[1] + list(k[1:]) for k in topology.kernel_sizes[:n]]
            self.first_pool = [1] + [FIRST_POOL] * (dim - 1)
        else:
            kernels = [list(k) for k in topology.kernel_sizes[:n]]
            self.first_pool = [FIRST_POOL] * dim
        pools = [self.first_pool] + [list(s) for s in topology.strides[1:n]]
        # the network pools by first_pool more than the plan stages it uses: inputs are padded to this
        self.multiple = _cumprod(pools)[-1]
        # level k >= 1 with a pyramid gets the input pooled by pools[0..k-1]
        self.pyramid_pools = pools[:max(n - 2, 0)]
        # output k is at the input's resolution divided by prod(strides[0..k]), as the loss expects
        self.output_scales = _cumprod(topology.strides[:n])

        self.input_norm = RowNorm(int(patch_size[-1]) if patch_size is not None else None)
        self.encoder = nn.ModuleList()
        for k in range(n):
            pyramid = f[k - 1] if 1 <= k <= n - 2 else None
            self.encoder.append(EncoderLevel(dim, in_channels if k == 0 else f[k - 1], f[k], kernels[k], pools[k],
                                             pyramid, in_channels, k == 0, dropout, wide_focus_dropout))
        # decoder[d] serves level n-2-d: deepest first, full resolution last
        self.decoder = nn.ModuleList(
            DecoderLevel(dim, f[k + 1], f[k], kernels[k], pools[k + 1], dropout, wide_focus_dropout)
            for k in range(n - 2, -1, -1))
        self.heads = nn.ModuleList(Head(dim, f[k], num_classes, kernels[k], self.first_pool)
                                   for k in range(min(N_DEEP_SUPERVISION, n - 1)))
        # z-mixing where the plan convolves across slices at that stage (thick-slice variant only)
        zk = [topology.kernel_sizes[k][0] if dim == 3 else 1 for k in range(n)]
        self.encoder_zmix = nn.ModuleList(ZMix(f[k], zk[k]) if zk[k] > 1 else nn.Identity() for k in range(n))
        self.decoder_zmix = nn.ModuleList(ZMix(f[k], zk[k]) if zk[k] > 1 else nn.Identity()
                                          for k in range(n - 2, -1, -1))
        self.apply(_init)

    @classmethod
    def published(cls, in_channels: int = 1, num_classes: int = 4, deep_supervision: bool = True) -> FCT:
        """The paper's ACDC model: widths 32..512, five levels each pooling by 2, 224x224 input."""
        topology = NetworkTopology([32, 64, 128, 256, 512], [[3, 3]] * 5, [[1, 1]] + [[2, 2]] * 4)
        return cls(in_channels, num_classes, topology, dim=2, deep_supervision=deep_supervision, patch_size=(224, 224))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        check_input(x, self.dim, self.total_stride)
        shape = x.shape[2:]
        image = x
        x = self.input_norm(x)
        pad = [(-s) % m for s, m in zip(shape, self.multiple)]
        if any(pad):
            # F.pad lists the last axis first
            spec = [v for p in reversed(pad) for v in (0, p)]
            image, x = F.pad(image, spec), F.pad(x, spec)

        skips = []
        for k, (level, zmix) in enumerate(zip(self.encoder, self.encoder_zmix)):
            if k >= 1 and k - 1 < len(self.pyramid_pools):
                factor = tuple(self.pyramid_pools[k - 1])
                image = (F.avg_pool2d if self.dim == 2 else F.avg_pool3d)(image, factor, factor)
            x = zmix(level(x, image if level.pyramid is not None else None))
            skips.append(x)

        all_heads = self.training and self.deep_supervision
        n_dec = len(self.decoder)
        outputs: list[torch.Tensor] = []
        for d, (level, zmix) in enumerate(zip(self.decoder, self.decoder_zmix)):
            k = n_dec - 1 - d  # the level this decoder stage ends at
            x = zmix(level(x, skips[k]))
            if k < len(self.heads) and (all_heads or k == 0):
                outputs.append(self.heads[k](x))
        outputs = outputs[::-1]

        if any(pad):
            outputs = [o[(slice(None), slice(None), *(slice(0, s // f) for s, f in zip(shape, scale)))]
                       for o, scale in zip(outputs, self.output_scales)]
        return outputs if all_heads else outputs[0]


def _init(module: nn.Module) -> None:
    init_weights(module)
    if isinstance(module, nn.Linear):
        # Keras' glorot-uniform default for the reference's attention projections
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ZMix):
        nn.init.zeros_(module.conv.weight)
        nn.init.zeros_(module.conv.bias)
