"""Pseudo-label strategies on hand-made teacher outputs."""

import math

import pytest
import torch

from engine.config import config_section
from utils.strategies import (
    STRATEGIES,
    Evaluated,
    TeacherPredictions,
    cross_label,
    get_strategy,
    mix_label,
    ori_pseudo,
    teacher_predictions,
)

NO_LOSS_KEYS: dict = {}  # ori_pseudo and mix_label read no Loss key


def softmax2(a: float, b: float) -> tuple[float, float]:
    ea, eb = math.exp(a), math.exp(b)
    return ea / (ea + eb), eb / (ea + eb)


def test_ori_pseudo_is_argmax_and_max_softmax():
    # 1 image, C=3, 1x2 pixels, no resizing
    logits = torch.tensor([[[[2.0, 0.0]], [[1.0, 0.0]], [[0.0, 3.0]]]])
    t = teacher_predictions(logits, None, None, tau=0.5, size=(1, 2), need_rep=False)
    e = [math.exp(v) for v in (2.0, 1.0, 0.0)]
    conf0 = e[0] / sum(e)
    e = [math.exp(v) for v in (0.0, 0.0, 3.0)]
    conf1 = e[2] / sum(e)
    pl = ori_pseudo(t, 0, NO_LOSS_KEYS)
    assert pl.y_u.tolist() == [[[0, 2]]]
    torch.testing.assert_close(pl.conf_u, torch.tensor([[[conf0, conf1]]]))
    assert torch.equal(pl.y_con, pl.y_u) and torch.equal(pl.conf_con, pl.conf_u)
    assert t.y_rep is None and pl.agreement is None


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_logits_upsampled_bilinear_align_corners_before_softmax():
    # 2x2 -> 4x4 with align_corners=True samples at 0, 1/3, 2/3, 1 along each axis;
    # class-0 logit 4 at the top-left corner only, class 1 logit 0 everywhere.
    c0 = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    logits = torch.stack([c0, torch.zeros(2, 2)]).unsqueeze(0)
    t = teacher_predictions(logits, None, None, tau=0.5, size=(4, 4), need_rep=False)
    assert t.conf_cls.shape == (1, 4, 4)
    assert t.conf_cls[0, 0, 0].item() == pytest.approx(sigmoid(4.0), rel=1e-6)
    assert t.conf_cls[0, 0, 1].item() == pytest.approx(sigmoid(4.0 * 2 / 3), rel=1e-6)
    assert t.conf_cls[0, 1, 1].item() == pytest.approx(sigmoid(4.0 * 4 / 9), rel=1e-6)
    assert t.conf_cls[0, 1, 2].item() == pytest.approx(sigmoid(4.0 * 2 / 9), rel=1e-6)
    assert t.y_cls[0, 1, 2].item() == 0


def test_rep_space_similarity_upsampled_before_softmax():
    # prototypes along e0, e1; rep pixels (1,0) and (1,1) -> cos maps (1, 0) and (r, r),
    # r = 1/sqrt2. Upsampled 2 -> 4 (align_corners=True) the similarity difference between
    # the classes is 1, 2/3, 1/3, 0 -> conf_rep = sigmoid(diff / tau). Averaging the end
    # softmaxes instead would give other values in the middle.
    tau = 0.1
    proto = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    rep = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])
    logits = torch.zeros(1, 2, 1, 2)
    t = teacher_predictions(logits, rep, proto, tau=tau, size=(1, 4), need_rep=True)
    expected = [sigmoid(d / tau) for d in (1.0, 2 / 3, 1 / 3)] + [0.5]
    torch.testing.assert_close(t.conf_rep, torch.tensor([[expected]]), rtol=1e-5, atol=1e-6)
    assert t.y_rep[0, 0, :3].tolist() == [0, 0, 0]
    assert t.conf_cls.shape == t.conf_rep.shape == (1, 1, 4)


def hand_teacher() -> TeacherPredictions:
    y_cls = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    y_rep = torch.tensor([[[0, 2, 2], [1, 1, 1]]])
    conf_cls = torch.tensor([[[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]]])
    conf_rep = torch.tensor([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]])
    return TeacherPredictions(y_cls, conf_cls, y_rep, conf_rep)


def test_mix_label_ignores_exactly_disagreeing_pixels():
    t = hand_teacher()
    pl = mix_label(t, 0, NO_LOSS_KEYS)
    expected = torch.tensor([[[0, -1, 2], [-1, 1, -1]]])
    assert torch.equal(pl.y_u, expected)
    assert torch.equal(pl.y_con, expected)
    assert torch.equal(pl.conf_u, t.conf_cls) and torch.equal(pl.conf_con, t.conf_cls)
    assert pl.agreement.item() == pytest.approx(0.5)


def test_cross_label_switches_source_at_warm_up():
    t = hand_teacher()
    loss = config_section("Loss", warm_up=5, rep_un_threshold=0.6)
    before = cross_label(t, 4, loss)
    at = cross_label(t, 5, loss)
    after = cross_label(t, 9, loss)
    assert before.un_threshold is None  # Loss.un_threshold, as ori_pseudo
    assert at.un_threshold == after.un_threshold == 0.6
    assert torch.equal(before.y_u, t.y_cls) and torch.equal(before.conf_u, t.conf_cls)
    for pl in (at, after):
        assert torch.equal(pl.y_u, t.y_rep) and torch.equal(pl.conf_u, t.conf_rep)
    for pl in (before, at, after):
        assert torch.equal(pl.y_con, t.y_cls) and torch.equal(pl.conf_con, t.conf_cls)
    no_warm = cross_label(t, 0, config_section("Loss", warm_up=0))
    assert torch.equal(no_warm.y_u, t.y_rep)


def test_registry_records():
    """Each strategy is one record: what the step does differently is data, checked here."""
    assert list(STRATEGIES) == ["supervised", "ori_pseudo", "mix_label", "cross_label"]
    names = ("semi_supervised", "needs_rep", "use_rep_indicator", "ramps_contrast", "warms_up")
    fields = {
        name: (*(getattr(s, f) for f in names), s.evaluates) for name, s in STRATEGIES.items()
    }
    student, teacher = Evaluated.STUDENT, Evaluated.TEACHER
    assert fields == {
        "supervised": (False, False, False, False, False, student),
        "ori_pseudo": (True, False, False, False, False, teacher),
        "mix_label": (True, True, True, True, False, teacher),
        "cross_label": (True, True, True, True, True, teacher),
    }
    # a record states only what differs: every field takes two values over the records
    for k, name in enumerate((*names, "evaluates")):
        assert len({f[k] for f in fields.values()}) == 2, name
    assert get_strategy("mix_label").pseudo_labels is mix_label
    assert get_strategy("cross_label").pseudo_labels is cross_label
    assert get_strategy("ori_pseudo").pseudo_labels is ori_pseudo
    assert get_strategy("supervised").pseudo_labels is None
    with pytest.raises(ValueError, match="nope"):
        get_strategy("nope")


def test_rep_strategies_require_rep_predictions():
    t = TeacherPredictions(torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2))
    with pytest.raises(ValueError):
        mix_label(t, 0, NO_LOSS_KEYS)
    with pytest.raises(ValueError):
        cross_label(t, 0, config_section("Loss", warm_up=0))


def test_cross_label_rep_threshold_makes_the_rep_direction_live():
    """With C classes and tau, rep-space confidences never reach 1 / (1 + (C-1) e^(-2/tau)):
    0.92 for C = 6 at tau = 0.5: the paper's 0.97 gives every image weight 0 after warm-up;
    a threshold below the bound gives confident pixels a weight."""
    from utils.losses import image_weights

    c, tau = 6, 0.5
    bound = 1 / (1 + (c - 1) * math.exp(-2 / tau))
    t = hand_teacher()
    conf_rep = torch.full_like(t.conf_rep, bound * 0.999)
    t = TeacherPredictions(t.y_cls, t.conf_cls, t.y_rep, conf_rep)
    for threshold, live in ((0.97, False), (0.6, True)):
        pl = cross_label(t, 3, config_section("Loss", warm_up=1, rep_un_threshold=threshold))
        w = image_weights(pl.y_u, pl.conf_u, pl.un_threshold)
        assert bool((w > 0).all()) == live
