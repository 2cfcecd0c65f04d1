"""Stages of the training step (engine/step.py) called alone on hand-made tensors."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from dataset import photometric
from engine.config import Section, config_section
from engine.step import (
    UnlabeledBatch,
    augment_unlabeled,
    contrastive_pixels,
    contrastive_term,
    contrastive_weight,
    diagnostics,
    unsupervised_loss,
)
from utils.labels import IGNORE_INDEX
from utils.prototypes import Prototypes
from utils.strategies import STRATEGIES, PseudoLabels

# The Loss section of the paper's config (few queries / negatives: the tests are small).
LOSS = config_section("Loss", num_queries=16, num_negatives=8)


def data_cfg(mix_mode: str, size: int) -> Section:
    return dataset_section(crop_size=[size, size], scale_size=[1.0, 1.0], mix_mode=mix_mode)


def dataset_section(**keys) -> Section:
    """The Dataset keys the augmentation reads (the others, required ones too, do not matter)."""
    return config_section("Dataset", name="voc", data_dir="-", txt_dir="-", num_labels=1, **keys)


def test_classmix_chooses_classes_from_the_contrastive_pseudo_label_after_cross_label_warm_up():
    """cross_label after warm-up: y_u is y_rep, y_con is y_cls. ClassMix pastes half of the
    partner's y_cls classes (the paper code), not half of its y_rep classes.

    Here y_rep holds one class per image (half of one class is none: nothing would be
    pasted), y_cls two classes per image, different ones in the two images: the mixed y_con
    of each image must then hold one class of its partner.
    """
    size = 8
    y_cls = torch.zeros(2, size, size, dtype=torch.int64)
    y_cls[0, :, size // 2 :] = 1
    y_cls[1] = 3
    y_cls[1, size // 2 :] = 4
    y_rep = torch.full_like(y_cls, 2)
    conf = torch.ones(2, size, size)
    pl = PseudoLabels(y_u=y_rep, conf_u=conf * 0.5, y_con=y_cls, conf_con=conf)
    for seed in range(5):
        torch.manual_seed(seed)
        img = torch.rand(2, 3, size, size)
        _, maps = augment_unlabeled(img, pl, data_cfg("classmix", size))
        own = ({0, 1}, {3, 4})
        for k in range(2):
            values = set(maps["y_con"][k].unique().tolist()) - {IGNORE_INDEX}
            pasted = values - own[k]
            assert len(pasted) == 1 and pasted <= own[1 - k], (seed, k, values)
            # y_u travels with the image: its partner pixels come along (still class 2)
            assert set(maps["y_u"][k].unique().tolist()) == {2}


# --------------------------------------------------------------------------- the weak mask


def test_weak_threshold_selects_the_unlabeled_pixels_of_the_contrastive_branch():
    """``Loss.weak_threshold``: labeled pixels take part when labeled, unlabeled ones when their
    contrastive pseudo-label is not ignored and its confidence is >= the threshold (0.7 itself
    counts). Maps are read at the representation's size, nearest: at 4x4 -> 2x2 the pixels
    (0,0), (0,2), (2,0), (2,2); every other pixel holds a value that would change the result.
    """
    junk_label, junk_conf = 5, 0.0

    def at_4x4(values, junk):
        out = torch.full((1, 4, 4), junk, dtype=torch.tensor(values).dtype)
        out[0, ::2, ::2] = torch.tensor(values)
        return out

    y_l = at_4x4([[0, 1], [IGNORE_INDEX, 1]], junk_label)
    y_con = at_4x4([[0, 1], [IGNORE_INDEX, 1]], junk_label)
    conf_con = at_4x4([[0.7, 0.69], [0.99, 0.71]], junk_conf)
    y, valid = contrastive_pixels(y_l, y_con, conf_con, (2, 2), weak_threshold=0.7)
    assert y.tolist() == [[[0, 1], [-1, 1]], [[0, 1], [-1, 1]]]
    # the labeled pixel (0,1) stays valid where the unlabeled confidence is low
    assert valid.tolist() == [[[True, True], [False, True]], [[True, False], [False, True]]]


def test_prototypes_are_updated_from_the_valid_pixels_only():
    """From zero prototypes the update gives each class the mean rep of its valid pixels:
    class 0 = mean(L00, U00) = (2, 3), class 1 = mean(L01, L11, U11) = (5, 6). The unlabeled
    pixel below weak_threshold (U01, class 1) and the ignored ones (L10, U10) hold a rep of
    100 that must not count; class 2 is absent and stays 0."""
    y_l = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    y_con = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    conf_con = torch.tensor([[[0.9, 0.69], [0.99, 0.71]]])
    rep_l = torch.tensor([[[1.0, 3.0], [100.0, 5.0]], [[2.0, 4.0], [100.0, 6.0]]])[None]
    rep_u = torch.tensor([[[3.0, 100.0], [100.0, 7.0]], [[4.0, 100.0], [100.0, 8.0]]])[None]
    pred = torch.zeros(1, 3, 2, 2)
    protos = Prototypes(3, 2, alpha=0.99)
    maps = {"y_con": y_con, "conf_con": conf_con}
    contrastive_term(
        (pred, rep_l), y_l, (pred, rep_u), maps, protos, STRATEGIES["ori_pseudo"], LOSS
    )
    assert protos.proto.tolist() == [[2.0, 3.0], [5.0, 6.0], [0.0, 0.0]]


# --------------------------------------------------------------------------- hard anchors


def _logits(p_own: list[list[float]], y: list[list[int]]) -> Tensor:
    """2-class logits ``[1,2,h,w]`` whose softmax gives probability ``p_own`` to class ``y``."""
    p = torch.tensor(p_own, dtype=torch.float64)
    p0 = torch.where(torch.tensor(y) == 0, p, 1 - p)
    return torch.stack([p0.log(), (1 - p0).log()]).float()[None]


def _unit(*angles_xy: tuple[float, float]) -> Tensor:
    return torch.tensor(angles_xy).T.reshape(2, 2, 2)


def test_hard_anchors_are_valid_pixels_below_strong_threshold_of_the_strategys_indicator():
    """Anchors are the only pixels whose rep gets a gradient (negatives and prototypes are
    detached). strong_threshold 0.5; prototypes (1,0) for class 0, (0,1) for class 1, temp
    0.5, so a rep (x, y) gives its class 0 the rep-space probability 1 / (1 + e^(2(y - x))):
    (1,0) 0.88, (0.8,0.6) 0.60, (0.6,0.8) 0.40, (0,1) 0.12, (1,1) exactly 0.5.

    pixel  class  softmax p_own  rep        rep p_own   ori_pseudo  mix_label
    L00    0      0.9            (0.6,0.8)  0.40        -           anchor
    L01    0      0.3            (1,0)      0.88        anchor      -
    L10    1      0.5 (= bound)  (1,1)      0.5 (bound) -           -
    L11    1      0.2            (0.8,0.6)  0.40        anchor      anchor
    U00    0      0.1            (0.8,0.6)  0.60        anchor      -
    U01    1      0.95           (1,0)      0.12        -           anchor
    U10    0      0.1            (0,1)      0.12        -  (conf 0.5 < weak_threshold 0.7)
    U11    ignored
    """
    y_l, y_u = [[0, 0], [1, 1]], [[0, 1], [0, IGNORE_INDEX]]
    pred_l = _logits([[0.9, 0.3], [0.5, 0.2]], y_l)
    pred_u = _logits([[0.1, 0.95], [0.1, 0.5]], [[0, 1], [0, 0]])
    maps = {
        "y_con": torch.tensor([y_u]),
        "conf_con": torch.tensor([[[1.0, 1.0], [0.5, 1.0]]]),
    }
    expected = {
        "ori_pseudo": {(0, 0, 1), (0, 1, 1), (1, 0, 0)},
        "mix_label": {(0, 0, 0), (0, 1, 1), (1, 0, 1)},
        "cross_label": {(0, 0, 0), (0, 1, 1), (1, 0, 1)},
    }
    for name, anchors in expected.items():
        torch.manual_seed(0)
        rep_l = _unit((0.6, 0.8), (1, 0), (1, 1), (0.8, 0.6))[None].requires_grad_()
        rep_u = _unit((0.8, 0.6), (1, 0), (0, 1), (1, 0))[None].requires_grad_()
        protos = Prototypes(2, 2, alpha=0.99)
        protos.proto.copy_(torch.eye(2))
        loss = replace(LOSS, strong_threshold=0.5, num_queries=64)
        strategy = STRATEGIES[name]
        loss = contrastive_term(
            (pred_l, rep_l), torch.tensor([y_l]), (pred_u, rep_u), maps, protos, strategy, loss
        )
        loss.backward()
        grads = torch.cat([rep_l.grad, rep_u.grad]).norm(dim=1)  # [2, 2, 2]
        found = {tuple(ix) for ix in torch.nonzero(grads > 1e-6).tolist()}
        assert found == anchors, name


# --------------------------------------------------------------------------- lambda_t


RAMP = config_section("Ramp_Scheduler", begin_epoch=2, max_epoch=10, min_value=0.1)


def test_contrastive_weight_ramps_down_per_epoch_for_the_rep_space_strategies():
    """0 before begin_epoch 2; 1 at it; exp(-5 (4/8)^2) = exp(-1.25) = 0.2865 at epoch 6;
    exp(-5 (7/8)^2) = 0.02175 at epoch 9, clamped to min_value 0.1 (or not, with min_value
    0); min_value from max_epoch 10 on (exp(-5) = 0.0067 would be the formula's value)."""
    expected = {0: 0.0, 1: 0.0, 2: 1.0, 6: 0.2865048, 9: 0.1, 10: 0.1, 50: 0.1}
    unclamped = {**expected, 9: 0.02175036, 10: 0.0, 50: 0.0}
    for name in ("mix_label", "cross_label"):
        got = {e: contrastive_weight(STRATEGIES[name], RAMP, e) for e in expected}
        assert got == pytest.approx(expected, rel=1e-6), name
        ramp0 = replace(RAMP, min_value=0.0)
        got = {e: contrastive_weight(STRATEGIES[name], ramp0, e) for e in unclamped}
        assert got == pytest.approx(unclamped, rel=1e-6, abs=0), name


def test_contrastive_weight_is_one_for_ori_pseudo_at_every_epoch():
    for epoch in (0, 1, 2, 6, 9, 10, 50):
        assert contrastive_weight(STRATEGIES["ori_pseudo"], RAMP, epoch) == 1.0


# --------------------------------------------------------------------------- unsupervised weight


@pytest.mark.parametrize("counts_ignored", [True, False])
def test_unsupervised_weight_is_the_share_of_confident_pixels(counts_ignored: bool):
    """Zero logits over 3 classes: every labeled pixel's CE is log 3. un_threshold 0.97
    (0.97 itself counts).

    image 0: labels (0, 1, -, -), conf (0.99, 0.5, 0.98, 0.97): confident pixels 0, 2, 3, of
      which 0 is labeled; 2 labeled pixels -> w0 = 3/2 (paper: ignored pixels count) or 1/2;
    image 1: labels (2, 2, 2, 2), conf (0.99, 0.99, 0.96, 0.1) -> w1 = 2/4.
    Loss = mean over the 6 labeled pixels of w * log 3 = (2 w0 + 4 w1) / 6 * log 3:
    5/6 log 3 or 1/2 log 3. The logged unsup_weight is mean(w0, w1): 1.0 or 0.5.
    """
    y = torch.tensor([[[0, 1, -1, -1]], [[2, 2, 2, 2]]])
    conf = torch.tensor([[[0.99, 0.5, 0.98, 0.97]], [[0.99, 0.99, 0.96, 0.1]]])
    maps = {"y_u": y, "conf_u": conf, "y_con": y, "conf_con": conf}
    unlabeled = UnlabeledBatch(torch.zeros(2, 3, 1, 4), maps, None, 0.97)
    loss = replace(LOSS, weight_counts_ignored=counts_ignored)
    pred_u = torch.zeros(2, 3, 1, 2, requires_grad=True)  # upsampled to 1 x 4
    unsup = unsupervised_loss(pred_u, unlabeled, loss)
    w0 = 3 / 2 if counts_ignored else 1 / 2
    assert unsup.item() == pytest.approx((2 * w0 + 4 * 0.5) / 6 * math.log(3), rel=1e-6)
    logged = diagnostics(unsup, unsup, 1.0, unlabeled, loss)
    assert logged["unsup_weight"].item() == pytest.approx((w0 + 0.5) / 2)
    assert logged["mask_ratio"].item() == pytest.approx(3 / 8)  # confident and labeled


def test_unsupervised_weight_uses_the_batchs_threshold():
    """cross_label after warm-up counts rep-space confidences against Loss.rep_un_threshold:
    the threshold travels in UnlabeledBatch, not Loss.un_threshold. At 0.5 image 0 has 4
    confident pixels of 2 labeled (w0 = 2), image 1 has 3 of 4 (w1 = 3/4)."""
    y = torch.tensor([[[0, 1, -1, -1]], [[2, 2, 2, 2]]])
    conf = torch.tensor([[[0.99, 0.5, 0.98, 0.97]], [[0.99, 0.99, 0.96, 0.1]]])
    maps = {"y_u": y, "conf_u": conf, "y_con": y, "conf_con": conf}
    unlabeled = UnlabeledBatch(torch.zeros(2, 3, 1, 4), maps, None, 0.5)
    unsup = unsupervised_loss(torch.zeros(2, 3, 1, 4), unlabeled, LOSS)
    assert unsup.item() == pytest.approx((2 * 2 + 4 * 0.75) / 6 * math.log(3), rel=1e-6)


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("mix_mode", ["none", "cutmix", "cutout", "classmix"])
@pytest.mark.parametrize("crop", [6, 10, 14])
def test_augmentation_moves_the_image_and_every_map_together(
    mix_mode: str, crop: int, monkeypatch: pytest.MonkeyPatch
):
    """The image holds its own coordinates (channel 0: row, 1: column, 2: image), each map a
    distinct function of them; after rescale (scale 1) + crop / pad, mixing and flip, every
    pixel of every map must come from the pixel the image says it came from, or be the fill
    of all maps together (padding, cut-out). Colour jitter and blur change colours only, not
    where a pixel goes: they are switched off to read the coordinates back."""
    monkeypatch.setattr(photometric, "color_jitter", lambda img, generator, p: img)
    monkeypatch.setattr(photometric, "random_blur", lambda img, generator, p: img)
    b, h, w = 2, 10, 10
    rows = torch.arange(h).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(w).view(1, 1, w).expand(b, h, w)
    imgs = torch.arange(b).view(b, 1, 1).expand(b, h, w)
    img = torch.stack([(rows + 0.5) / h, (cols + 0.5) / w, (imgs + 0.5) / b], dim=1)
    source = (imgs * h + rows) * w + cols  # [B,H,W] int64
    pl = PseudoLabels(
        y_u=source.clone(),
        conf_u=source / 1000 + 0.001,
        y_con=source + 500,  # another tensor: cross_label's y_cls beside y_u = y_rep
        conf_con=1 - source / 1000,
    )
    moved = 0
    for seed in range(4):
        torch.manual_seed(seed)
        out, maps = augment_unlabeled(img, pl, replace(data_cfg(mix_mode, crop), scale_size=(1, 1)))
        assert out.shape == (b, 3, crop, crop)
        came_from = ((out[:, 2] * b).floor().long() * h + (out[:, 0] * h).floor().long()) * w + (
            out[:, 1] * w
        ).floor().long()
        kept = maps["y_u"] != IGNORE_INDEX
        assert torch.equal(maps["y_u"][kept], came_from[kept])
        assert torch.equal(maps["y_con"][kept], came_from[kept] + 500)
        assert torch.equal(maps["conf_u"][kept], (came_from / 1000 + 0.001)[kept])
        assert torch.equal(maps["conf_con"][kept], (1 - came_from / 1000)[kept])
        filled = ~kept  # fills travel together: ignore in labels, 0 in confidences
        assert (maps["y_con"][filled] == IGNORE_INDEX).all()
        assert (maps["conf_u"][filled] == 0).all() and (maps["conf_con"][filled] == 0).all()
        if crop <= h:
            assert kept.any()
        if mix_mode == "cutout":
            assert filled.any()
        here = (torch.arange(b).view(b, 1, 1) * h + torch.arange(crop).view(1, crop, 1)) * w
        moved += int((came_from[kept] != (here + torch.arange(crop))[kept]).sum())
    assert moved > 0  # the test is not vacuous: pixels did move
