"""Losses against hand computations: supervised CE, OHEM, confidence-weighted unsupervised CE."""

import math

import pytest
import torch

from utils.losses import image_weights, ohem_ce, sup_ce, true_class_prob, unsup_ce


def ce(logits, label):
    """-log softmax(logits)[label] in float64."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def as_pred(pixel_logits, b, h, w):
    """[B*H*W][C] nested list -> [B,C,H,W] tensor requiring grad."""
    t = torch.tensor(pixel_logits).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
    return t.requires_grad_(True)


# ---- supervised -----------------------------------------------------------------------


def test_sup_ce_hand_value_ignores_minus_one():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, 1.0, 1.0]]
    pred = as_pred(logits, 1, 1, 3)
    y = torch.tensor([[[0, -1, 2]]])
    expected = (ce(logits[0], 0) + ce(logits[2], 2)) / 2
    assert sup_ce(pred, y).item() == pytest.approx(expected, rel=1e-6)


def test_sup_ce_all_ignored_is_connected_zero():
    pred = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = sup_ce(pred, torch.full((2, 2, 2), -1))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


# ---- OHEM -----------------------------------------------------------------------------

OHEM_P = [0.1, 0.3, 0.5, 0.8, 0.9, 0.95]  # true-class probabilities of the valid pixels


def ohem_case():
    """Two classes, label 0; logits (logit(p), 0) give true-class probability p.

    An extra ignored pixel has a tiny probability for class 0: it must never be kept or ranked.
    """
    logits = [[math.log(p / (1 - p)), 0.0] for p in OHEM_P] + [[-9.0, 0.0]]
    pred = as_pred(logits, 1, 1, 7)
    y = torch.tensor([[[0, 0, 0, 0, 0, 0, -1]]])
    return pred, y


def mean_nll(ps):
    return sum(-math.log(p) for p in ps) / len(ps)


@pytest.mark.parametrize(
    ("min_kept", "kept"),
    [
        (0, OHEM_P),  # min_kept 0: no mining (paper code), every valid pixel
        (1, [0.1, 0.3, 0.5]),  # 1st smallest 0.1 <= 0.7: thresh wins
        (2, [0.1, 0.3, 0.5]),  # 2nd smallest 0.3 <= 0.7: thresh wins
        (3, [0.1, 0.3, 0.5]),
        (4, [0.1, 0.3, 0.5, 0.8]),  # 4th smallest 0.8 > 0.7 becomes the threshold
        (5, [0.1, 0.3, 0.5, 0.8, 0.9]),
        (6, OHEM_P),  # the ignored pixel is not ranked
        (100, OHEM_P),  # fewer valid pixels than min_kept: keep all valid
    ],
)
def test_ohem_keeps_hardest_and_respects_thresh(min_kept, kept):
    pred, y = ohem_case()
    loss = ohem_ce(pred, y, thresh=0.7, min_kept=min_kept)
    assert loss.item() == pytest.approx(mean_nll(kept), rel=1e-5)


def test_ohem_min_kept_zero_is_plain_ce():
    """The paper code applies the hard-pixel mask only when min_kept > 0 (SPEC: Faithful vs.
    fixed); with 0 its OHEM is the plain CE over all valid pixels, whatever the threshold."""
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 5, 6) * 3
    y = torch.randint(-1, 4, (2, 5, 6))
    assert (true_class_prob(pred, y)[y >= 0] > 0.7).any()  # pixels the mask would drop
    for thresh in (0.0, 0.3, 0.7):
        assert torch.equal(ohem_ce(pred, y, thresh=thresh, min_kept=0), sup_ce(pred, y))


def test_ohem_thresh_value_matters():
    pred, y = ohem_case()
    loss = ohem_ce(pred, y, thresh=0.85, min_kept=1)
    assert loss.item() == pytest.approx(mean_nll([0.1, 0.3, 0.5, 0.8]), rel=1e-5)


def test_ohem_all_ignored_is_connected_zero():
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = ohem_ce(pred, torch.full((1, 2, 2), -1), min_kept=3)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(pred.grad) == 0


# ---- unsupervised ---------------------------------------------------------------------

# B=2, H=1, W=3, C=2.
UN_LOGITS = [
    [1.0, 0.0],  # img0 px0, y=0, conf 0.99 (confident)
    [0.0, 2.0],  # img0 px1, y=1, conf 0.50
    [3.0, 0.0],  # img0 px2, ignored, conf 0.98 (confident but ignored)
    [0.5, -0.5],  # img1 px0, y=1, conf 0.98 (confident)
    [2.0, 1.0],  # img1 px1, y=1, conf 0.10
    [0.0, -200.0],  # img1 px2, y=0, conf 0.20: CE is exactly 0 in float32
]
UN_Y = torch.tensor([[[0, 1, -1]], [[1, 1, 0]]])
UN_CONF = torch.tensor([[[0.99, 0.5, 0.98]], [[0.98, 0.1, 0.2]]])


def test_image_weights_hand_values_both_ways():
    # img0: confident {px0, px2} / valid {px0, px1} = 1 (paper) or {px0} / 2 = 0.5
    # img1: confident {px0} / valid 3 = 1/3 either way
    w_paper = image_weights(UN_Y, UN_CONF, 0.97, count_ignored=True)
    w_fixed = image_weights(UN_Y, UN_CONF, 0.97, count_ignored=False)
    torch.testing.assert_close(w_paper, torch.tensor([1.0, 1 / 3]))
    torch.testing.assert_close(w_fixed, torch.tensor([0.5, 1 / 3]))


@pytest.mark.parametrize(("count_ignored", "w0"), [(True, 1.0), (False, 0.5)])
def test_unsup_ce_hand_value(count_ignored, w0):
    pred = as_pred(UN_LOGITS, 2, 1, 3)
    w1 = 1 / 3
    # px (img1, px2) has CE 0: it counts in w1's denominator but not in the mean's.
    numerator = w0 * (ce(UN_LOGITS[0], 0) + ce(UN_LOGITS[1], 1))
    numerator += w1 * (ce(UN_LOGITS[3], 1) + ce(UN_LOGITS[4], 1))
    expected = numerator / 4
    loss = unsup_ce(pred, UN_Y, UN_CONF, un_threshold=0.97, count_ignored=count_ignored)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_unsup_ce_threshold_is_inclusive_and_used():
    pred = as_pred(UN_LOGITS, 2, 1, 3)
    # threshold 0.98: img0 confident {px0, px2} -> w0 = 1; img1 px0 conf 0.98 still counts
    loss_098 = unsup_ce(pred, UN_Y, UN_CONF, un_threshold=0.98)
    # threshold 0.995: nothing is confident -> all weights 0 -> loss 0
    loss_0995 = unsup_ce(pred, UN_Y, UN_CONF, un_threshold=0.995)
    expected = (ce(UN_LOGITS[0], 0) + ce(UN_LOGITS[1], 1)) * 1.0
    expected += (ce(UN_LOGITS[3], 1) + ce(UN_LOGITS[4], 1)) / 3
    assert loss_098.item() == pytest.approx(expected / 4, rel=1e-5)
    assert loss_0995.item() == 0.0


def test_unsup_ce_fully_ignored_image_contributes_nothing():
    pred = as_pred(UN_LOGITS, 2, 1, 3)
    y = UN_Y.clone()
    y[0] = -1  # img0 fully ignored, although two of its pixels are confident
    loss = unsup_ce(pred, y, UN_CONF, un_threshold=0.97)
    expected = (ce(UN_LOGITS[3], 1) + ce(UN_LOGITS[4], 1)) / 3 / 2
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.count_nonzero(pred.grad[0]) == 0
    assert torch.count_nonzero(pred.grad[1]) > 0


def test_unsup_ce_all_ignored_is_connected_zero():
    pred = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = unsup_ce(pred, torch.full((2, 2, 2), -1), torch.ones(2, 2, 2))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


@pytest.mark.parametrize("count_ignored", [True, False])
def test_logged_unsup_weight_is_the_weight_the_loss_applies(count_ignored):
    """engine.step.diagnostics logs ``mask_ratio`` (confident and not ignored, over all pixels)
    and ``unsup_weight`` (the mean image weight of unsup_ce), named apart: with the paper's
    weight the confident ignored pixels count in the second only."""
    from types import SimpleNamespace

    from engine.config import config_section
    from engine.step import diagnostics

    # image 0: 4 pixels, 2 labeled (1 confident), 2 ignored (both confident)
    # image 1: 4 pixels, all labeled, 3 confident
    y = torch.tensor([[[0, 1, -1, -1]], [[2, 2, 2, 2]]])
    conf = torch.tensor([[[0.99, 0.5, 0.98, 0.99]], [[0.99, 0.99, 0.99, 0.1]]])
    loss = config_section("Loss", weight_counts_ignored=count_ignored)
    zero = torch.zeros(())
    unlabeled = SimpleNamespace(maps={"y_u": y, "conf_u": conf}, un_threshold=0.97)
    out = diagnostics(zero, zero, 1.0, unlabeled, loss)
    assert out["mask_ratio"].item() == pytest.approx((1 + 3) / 8)
    w0 = (1 + 2) / 2 if count_ignored else 1 / 2
    assert out["unsup_weight"].item() == pytest.approx((w0 + 3 / 4) / 2)
    # and it is the weight that unsup_ce multiplies the per-pixel CE with
    weights = image_weights(y, conf, 0.97, count_ignored)
    assert out["unsup_weight"].item() == pytest.approx(weights.mean().item())
