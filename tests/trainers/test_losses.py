import pytest
import torch

from autoseg.errors import UserError
from autoseg.trainers.losses import (
    LOSSES,
    DeepSupervisionLoss,
    DiceCELoss,
    FocalLoss,
    OneHotMSELoss,
    SoftDiceLoss,
    SquaredDiceLoss,
    deep_supervision_weights,
    make_loss,
)


def _target(shape=(2, 1, 8, 8, 8), k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, shape, generator=g)


def _perfect_logits(target, k=3, scale=20.0):
    return torch.nn.functional.one_hot(target[:, 0], k).movedim(-1, 1).float() * scale


def test_weights_halve_and_drop_lowest():
    w = deep_supervision_weights(4)
    assert abs(sum(w) - 1) < 1e-9 and w[-1] == 0
    assert abs(w[0] / w[1] - 2) < 1e-9 and abs(w[1] / w[2] - 2) < 1e-9
    assert deep_supervision_weights(1) == [1.0]


def test_perfect_prediction_low_loss_and_wrong_high():
    t = _target()
    perfect = DiceCELoss()(_perfect_logits(t), t)
    assert perfect < 1e-3
    wrong = DiceCELoss()(_perfect_logits((t + 1) % 3), t)
    assert wrong > 2.0
    uniform = DiceCELoss()(torch.zeros(2, 3, 8, 8, 8), t)
    assert perfect < uniform < wrong


def test_dice_ignores_background_and_is_batch_dice():
    t = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    t[0, 0, :2] = 1  # foreground only in the first sample
    logits = _perfect_logits(t, 2, scale=3.0)  # right, but not certain: a little foreground everywhere
    assert SoftDiceLoss()(logits, t) < 0.15
    # per-sample Dice scores the empty sample's faint foreground as a total miss; batch Dice does not
    assert SoftDiceLoss(batch_dice=False)(logits, t) > 0.4
    assert SoftDiceLoss(include_background=True)(logits, t) < SoftDiceLoss()(logits, t)


def test_deep_supervision_uses_all_scales():
    t0 = _target((1, 1, 8, 8, 8))
    t1 = t0[:, :, ::2, ::2, ::2]
    t2 = t0[:, :, ::4, ::4, ::4]
    outs = [_perfect_logits(t0), _perfect_logits(t1), torch.zeros(1, 3, 2, 2, 2)]
    loss = DeepSupervisionLoss(DiceCELoss(), deep_supervision_weights(3))
    assert loss(outs, [t0, t1, t2]) < 1e-3  # lowest scale has weight 0
    outs[1] = _perfect_logits((t1 + 1) % 3)
    assert loss(outs, [t0, t1, t2]) > 0.5
    g = torch.zeros(1, 3, 8, 8, 8, requires_grad=True)
    loss([g, torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 2, 2, 2)], [t0, t1, t2]).backward()
    assert g.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dim", [2, 3])
def test_every_registered_loss_orders_perfect_uniform_wrong_and_has_finite_gradients(name, dim):
    t = _target((2, 1) + (8,) * dim)
    loss = make_loss(name)
    perfect, wrong = loss(_perfect_logits(t), t), loss(_perfect_logits((t + 1) % 3), t)
    uniform = torch.zeros((2, 3) + (8,) * dim, requires_grad=True)
    u = loss(uniform, t)
    assert perfect < 1e-3 and perfect < u < wrong
    u.backward()
    assert torch.isfinite(uniform.grad).all() and uniform.grad.abs().sum() > 0
    # under autocast the loss still comes out in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(uniform.bfloat16(), t).dtype == torch.float32


def test_squared_dice_is_v_nets_formula():
    t = torch.tensor([[[0, 1, 1, 0]]])  # (B=1, 1, 4): one foreground class
    logits = torch.tensor([[[0.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]]]).flip(1)
    p = torch.softmax(logits, 1)[0, 1]
    g = (t[0, 0] == 1).float()
    expected = 1 - 2 * (p * g).sum() / ((p * p).sum() + g.sum())
    assert SquaredDiceLoss()(logits, t) == pytest.approx(float(expected), abs=1e-5)


def test_mse_is_the_mean_squared_error_to_the_one_hot_target():
    t = torch.tensor([[[0, 1]]])
    logits = torch.zeros(1, 2, 2)  # softmax 0.5 everywhere: every entry is 0.5 off
    assert OneHotMSELoss()(logits, t) == pytest.approx(0.25)


def test_focal_down_weights_easy_voxels_against_cross_entropy():
    t = _target((1, 1, 8, 8))
    easy = _perfect_logits(t, scale=2.0)
    ce = torch.nn.functional.cross_entropy(easy, t[:, 0])
    assert FocalLoss(gamma=0.0)(easy, t) == pytest.approx(float(ce), rel=1e-5)
    assert FocalLoss()(easy, t) < 0.1 * ce


def test_unknown_loss_names_the_choices():
    with pytest.raises(UserError, match="dice_ce, dice_squared, mse, focal_dice"):
        make_loss("dice")


def _one_hot_reference(logits, target):
    p = torch.softmax(logits.float(), 1)
    g = torch.nn.functional.one_hot(target[:, 0].long(), p.shape[1]).movedim(-1, 1).float()
    return p, g


@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("k", [2, 3, 130])
def test_losses_without_a_one_hot_target_equal_the_one_hot_formulas(batch_dice, k):
    g_ = torch.Generator().manual_seed(k)
    logits = torch.randn(2, k, 6, 5, 4, generator=g_, requires_grad=True)
    target = torch.randint(0, k, (2, 1, 6, 5, 4), generator=g_)
    p, g = _one_hot_reference(logits, target)
    axes = [0, 2, 3, 4] if batch_dice else [2, 3, 4]
    tp, fp, fn = (p * g).sum(axes), (p * (1 - g)).sum(axes), ((1 - p) * g).sum(axes)
    s = 1e-5
    dice = 1 - ((2 * tp + s) / (2 * tp + fp + fn + s))[..., 1:].mean()
    squared = 1 - ((2 * tp + s) / ((p * p).sum(axes) + g.sum(axes) + s))[..., 1:].mean()
    assert SoftDiceLoss(batch_dice=batch_dice)(logits, target).item() == pytest.approx(dice.item(), abs=1e-6)
    assert SquaredDiceLoss(batch_dice=batch_dice)(logits, target).item() == pytest.approx(squared.item(), abs=1e-6)
    assert OneHotMSELoss()(logits, target).item() == pytest.approx(((p - g) ** 2).mean().item(), abs=1e-6)
    # and the same gradient as the one-hot form
    SoftDiceLoss(batch_dice=batch_dice)(logits, target).backward()
    ours = logits.grad.clone()
    logits.grad = None
    dice.backward()
    torch.testing.assert_close(ours, logits.grad, atol=1e-6, rtol=1e-4)
