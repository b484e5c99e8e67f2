import dataclasses
import sys

import pytest
import torch

from autoseg.errors import UserError
from autoseg.networks.monai_nets import UNETR, SwinUNETR, bf16_conv3d_hazard, swin_feature_size, unetr_size
from autoseg.planners.plans import ConfigurationPlan, NetworkTopology, Plans

TOPO = {
    2: NetworkTopology([16, 32, 64], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]),
    3: NetworkTopology([16, 32, 64], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
}
SHAPE = {2: (20, 28), 3: (10, 20, 28)}  # planned patches are not multiples of 16 or 32


def topo(dim: int, f0: int) -> NetworkTopology:
    return dataclasses.replace(TOPO[dim], features_per_stage=[f0, 2 * f0, 4 * f0])


def build(cls: type, dim: int, f0: int = 16, shape: tuple[int, ...] | None = None, in_channels: int = 2):
    kwargs = {"patch_size": list(shape or SHAPE[dim])} if cls is UNETR else {}
    return cls(in_channels, 3, topo(dim, f0), dim, **kwargs)


def monai_available() -> None:
    pytest.importorskip("monai")
    pytest.importorskip("einops")


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("cls", [SwinUNETR, UNETR])
def test_odd_input_gives_logits_of_its_shape_and_finite_grads(cls, dim):
    monai_available()
    torch.manual_seed(0)
    net = build(cls, dim)
    shape = SHAPE[dim]
    out = net(torch.randn(1, 2, *shape))  # training mode, deep_supervision=True: still one tensor
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3) + shape
    out.square().mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    # MONAI's ViT blocks carry a cross-attention norm that self-attention never uses
    unused = [n for n, p in net.named_parameters() if p.grad is None and "norm_cross_attn" not in n]
    assert not unused
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3) + shape


def test_swin_pads_to_multiples_of_32_with_a_bottleneck_of_more_than_one_voxel():
    monai_available()
    net = build(SwinUNETR, 3)
    assert net.padded_size([10, 80, 96]) == [32, 96, 96]  # anisotropic patch: z padded like the rest
    assert net.padded_size([10, 20, 28]) == [32, 32, 64]
    assert net.padded_size([64, 64, 64]) == [64, 64, 64]


def test_bf16_hazard_is_a_two_slice_map():
    assert bf16_conv3d_hazard(32, 6) and bf16_conv3d_hazard(64, 6)  # SwinUNETR: 2 slices at 1/16, 1/32
    assert not bf16_conv3d_hazard(96, 6) and not bf16_conv3d_hazard(128, 6)
    assert bf16_conv3d_hazard(16, 4) and not bf16_conv3d_hazard(32, 4)  # UNETR: 1/8 is its deepest conv


@pytest.mark.parametrize("dim,shape,dtype", [(3, (10, 16, 16), torch.float32), (3, (20, 16, 16), torch.bfloat16),
                                             (2, (16, 16), torch.bfloat16)])
def test_cpu_bf16_runs_in_float32_where_a_map_would_be_two_slices_deep(dim, shape, dtype):
    monai_available()
    net = build(UNETR, dim, shape=shape)
    x = torch.randn(1, 2, *shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x).dtype == dtype
        with torch.no_grad():  # only the backward pass is affected
            assert net(x).dtype == torch.bfloat16


@pytest.mark.parametrize("f0,expected", [(32, 48), (16, 24), (8, 12), (4, 12), (64, 96)])
def test_swin_feature_size_rule(f0, expected):
    assert swin_feature_size(f0) == expected


@pytest.mark.parametrize("f0", [16, 32])
def test_swin_feature_size_on_the_monai_module(f0):
    monai_available()
    net = build(SwinUNETR, 2, f0=f0)
    assert net.net.swinViT.embed_dim == swin_feature_size(f0) == {16: 24, 32: 48}[f0]
    assert net.net.encoder1.layer.conv1.conv.out_channels == swin_feature_size(f0)


@pytest.mark.parametrize("f0,hidden,heads,mlp,features", [(32, 768, 12, 3072, 16), (64, 768, 12, 3072, 16),
                                                         (16, 384, 6, 1536, 16), (8, 384, 6, 1536, 8)])
def test_unetr_size_on_the_monai_module(f0, hidden, heads, mlp, features):
    monai_available()
    assert unetr_size(f0) == {"hidden_size": hidden, "num_heads": heads, "mlp_dim": mlp, "feature_size": features}
    vit_sizes = UNETR(1, 2, topo(2, f0), 2, patch_size=[16, 16]).net
    assert vit_sizes.hidden_size == hidden and vit_sizes.vit.patch_embedding.patch_embeddings.out_channels == hidden
    block = vit_sizes.vit.blocks[0]
    assert block.attn.num_heads == heads and block.mlp.linear1.out_features == mlp
    assert len(vit_sizes.vit.blocks) == 12
    assert vit_sizes.encoder1.layer.conv1.conv.out_channels == features


def test_unetr_img_size_is_the_patch_padded_to_16():
    monai_available()
    net = build(UNETR, 3, shape=(10, 80, 96))
    assert net.img_size == [16, 80, 96]
    assert tuple(net.net.vit.patch_embedding.patch_embeddings.kernel_size) == (16, 16, 16)
    # smaller inputs (a volume smaller than the patch) are padded; larger ones are refused
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 5, 40, 96)).shape == (1, 3, 5, 40, 96)
    with pytest.raises(ValueError, match="inference_patch_size"):
        net(torch.randn(1, 2, 10, 96, 96))


def test_unetr_needs_the_patch_size():
    with pytest.raises(ValueError, match="patch_size"):
        UNETR(1, 2, TOPO[2], 2)
    with pytest.raises(ValueError, match="patch_size"):
        UNETR(1, 2, TOPO[2], 2, patch_size=[8, 8, 8])


@pytest.mark.parametrize("cls", [SwinUNETR, UNETR])
def test_wrong_ndim_is_a_value_error(cls):
    monai_available()
    net = build(cls, 2)
    with pytest.raises(ValueError, match="spatial axes"):
        net(torch.randn(1, 2, 4, 20, 28))


def test_build_network_passes_the_planned_patch_to_unetr():
    monai_available()
    config = ConfigurationPlan(name="2d", dim=2, data_identifier="x", spacing=[1, 1, 1], median_shape=[1, 20, 28],
                               patch_size=[20, 28], batch_size=2, network=TOPO[2],
                               architecture="autoseg.networks.monai_nets:UNETR")
    plans = Plans(version=1, dataset_name="d", planner="p", profile="cpu", gpu_memory_gb=0, channel_names=["a"],
                  label_values=[0, 1], label_names=["bg", "x"], normalization=[], configurations={"2d": config})
    from autoseg.networks import build_network

    net = build_network(plans, config)
    assert isinstance(net, UNETR) and net.img_size == [32, 32]


@pytest.mark.parametrize("cls,trainer", [(SwinUNETR, "swin_unetr"), (UNETR, "unetr")])
def test_without_monai_the_constructor_says_what_to_install(cls, trainer, monkeypatch):
    # None in sys.modules makes every import of these modules fail, as if they were not installed
    for name in [m for m in sys.modules if m == "monai" or m.startswith("monai.")] + ["monai", "einops"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserError) as err:
        build(cls, 2)
    message = str(err.value)
    assert f"the {trainer} trainer needs MONAI" in message
    assert 'pip install -e ".[monai]"' in message and "pip install monai" in message


def test_trainers_are_registered_with_their_papers_and_dims():
    from autoseg.trainers.monai_transformers import SwinUNETRTrainer, UNETRTrainer

    assert (SwinUNETRTrainer.trainer_name, SwinUNETRTrainer.architecture) == ("swin_unetr", "swin_unetr")
    assert (UNETRTrainer.trainer_name, UNETRTrainer.architecture) == ("unetr", "unetr")
    from autoseg.trainers.registry import BUILTIN_TRAINERS

    assert "BrainLes 2021" in BUILTIN_TRAINERS["swin_unetr"].summary and "WACV 2022" in BUILTIN_TRAINERS["unetr"].summary
    assert BUILTIN_TRAINERS["swin_unetr"].dims == BUILTIN_TRAINERS["unetr"].dims == ("2d", "3d")
