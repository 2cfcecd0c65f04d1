"""Prototype contrastive loss: equality with a loop-based reference making the same draws,
sampler distributions and supports, degenerate cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils import contrastive
from utils.contrastive import (
    class_sorted_pixels,
    prototype_contrastive_loss,
    sample_negative_classes,
    sample_pixels,
)

STRONG = 0.8
TEMP = 0.5


def make_case(seed: int = 0):
    """2 images, D=5, 4x4 pixels, C=4 classes; class 3 absent, class 2 has no hard pixel."""
    g = torch.Generator().manual_seed(seed)
    n, d, h, w, c = 2, 5, 4, 4, 4
    rep = torch.randn(n, d, h, w, generator=g)
    y = torch.randint(0, 3, (n, h, w), generator=g)
    valid = torch.rand(n, h, w, generator=g) > 0.25
    y[~valid] = -1
    y[0, 0, 0], valid[0, 0, 0] = 2, True  # make sure class 2 is present
    prob = torch.softmax(torch.randn(n, c, h, w, generator=g) * 2, dim=1)
    prob[:, 2] = torch.where(y == 2, torch.tensor(0.9), prob[:, 2])  # class 2: never hard
    proto = torch.randn(c, d, generator=g)
    proto[3] = 0.0
    return rep, y, valid, prob, proto


def reference_loss(rep, y, valid, prob, proto, q, nn_, seed):
    """Straightforward loops, replaying the documented draw order with the same seed."""
    n, d, h, w = rep.shape
    rep_flat = rep.permute(0, 2, 3, 1).reshape(-1, d)
    y_l = y.flatten().tolist()
    valid_l = valid.flatten().tolist()
    prob_flat = prob.permute(0, 2, 3, 1).reshape(-1, prob.shape[1])
    present = sorted({y_l[i] for i in range(len(y_l)) if valid_l[i]})
    npres = len(present)
    valid_pix = {c: [i for i in range(len(y_l)) if valid_l[i] and y_l[i] == c] for c in present}
    hard_pix = {c: [i for i in valid_pix[c] if prob_flat[i, c].item() < STRONG] for c in present}

    # negative-class probabilities, one class pair at a time
    probs = torch.zeros(npres, npres)
    for a in range(npres):
        sims = {}
        for b in range(npres):
            if b != a:
                cos = F.cosine_similarity(proto[present[a]], proto[present[b]], dim=0).item()
                sims[b] = math.exp(cos / TEMP)
        total = sum(sims.values())
        for b, v in sims.items():
            probs[a, b] = v / total

    g = torch.Generator().manual_seed(seed)
    u_anchor = torch.rand(npres, q, generator=g)
    neg_cls = torch.multinomial(probs, q * nn_, replacement=True, generator=g).view(npres, q, nn_)
    u_neg = torch.rand(npres, q, nn_, generator=g)

    loss = rep.new_zeros(())
    for a, c in enumerate(present):
        hard = hard_pix[c]
        if not hard:
            continue
        ces = []
        for qi in range(q):
            anchor = rep_flat[hard[int(u_anchor[a, qi].item() * len(hard))]]
            keys = [proto[c]]
            for ni in range(nn_):
                neg_c = present[neg_cls[a, qi, ni].item()]
                pool = valid_pix[neg_c]
                keys.append(rep_flat[pool[int(u_neg[a, qi, ni].item() * len(pool))]].detach())
            logits = torch.stack([F.cosine_similarity(anchor, k, dim=0) for k in keys]) / TEMP
            ces.append(torch.logsumexp(logits, 0) - logits[0])
        loss = loss + torch.stack(ces).mean()
    return loss / npres


@pytest.mark.parametrize("block", ["one block", "several blocks"])
def test_loss_equals_loop_reference_with_same_draws(block, monkeypatch):
    """The negative similarities, from one dense anchor x pixel block or several, give the
    reference loss and gradient."""
    if block == "several blocks":
        monkeypatch.setattr(contrastive, "_SIM_BLOCK", 64)
    rep, y, valid, prob, proto = make_case()
    q, nn_, seed = 4, 6, 123
    rep_a = rep.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    loss = prototype_contrastive_loss(rep_a, y, valid, prob, proto, STRONG, TEMP, q, nn_, gen)
    loss.backward()

    rep_b = rep.clone().requires_grad_(True)
    ref = reference_loss(rep_b, y, valid, prob, proto, q, nn_, seed)
    ref.backward()

    assert ref.item() > 0
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rep_a.grad, rep_b.grad, rtol=1e-4, atol=1e-6)


def test_gradient_only_on_hard_anchor_pixels():
    rep, y, valid, prob, proto = make_case(seed=1)
    rep = rep.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    loss = prototype_contrastive_loss(rep, y, valid, prob, proto, STRONG, TEMP, 64, 8, gen)
    loss.backward()
    p_own = prob.gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1)
    hard = valid & (p_own < STRONG)
    has_grad = rep.grad.abs().sum(1) > 0
    assert has_grad.any()
    assert not (has_grad & ~hard).any()  # anchors only from hard pixels; negatives detached
    for c in (0, 1):  # every class with hard pixels got anchors
        assert (has_grad & (y == c)).any()


def test_hand_value_without_randomness_and_denominator():
    """One valid pixel per class: every draw is forced, so the loss is a closed form.

    Pixel a (class 0) = (1, 0), pixel b (class 1) = (0, 1); prototypes (1, 1) and (-1, 1).
    cos(a, proto0) = 1/sqrt2, cos(a, b) = 0; cos(b, proto1) = 1/sqrt2, cos(b, a) = 0.
    """
    rep = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]).t().reshape(1, 2, 1, 3)
    y = torch.tensor([[[0, 1, -1]]])
    valid = torch.tensor([[[True, True, False]]])
    proto = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
    prob = torch.full((1, 3, 1, 3), 0.5)
    num_neg = 7
    s_pos = (1 / math.sqrt(2)) / TEMP
    ce_one = -s_pos + math.log(math.exp(s_pos) + num_neg * math.exp(0.0))
    both_hard = prototype_contrastive_loss(rep, y, valid, prob, proto, STRONG, TEMP, 3, num_neg)
    assert both_hard.item() == pytest.approx((ce_one + ce_one) / 2, rel=1e-5)
    prob[0, 1, 0, 1] = 0.9  # class 1 has no hard anchor but still counts as present
    one_hard = prototype_contrastive_loss(rep, y, valid, prob, proto, STRONG, TEMP, 3, num_neg)
    assert one_hard.item() == pytest.approx(ce_one / 2, rel=1e-5)


def test_single_class_gives_connected_zero():
    rep, y, valid, prob, proto = make_case()
    y = torch.zeros_like(y)
    rep = rep.requires_grad_(True)
    loss = prototype_contrastive_loss(rep, y, valid, prob, proto, STRONG, TEMP, 4, 6)
    assert loss.item() == 0.0
    loss.backward()
    assert rep.grad is not None and torch.count_nonzero(rep.grad) == 0


def test_no_valid_pixel_gives_connected_zero():
    rep, y, valid, prob, proto = make_case()
    rep = rep.requires_grad_(True)
    loss = prototype_contrastive_loss(rep, y, torch.zeros_like(valid), prob, proto, 0.8, 0.5, 4, 6)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(rep.grad) == 0


def test_no_hard_pixel_at_all_gives_zero_not_nan():
    rep, y, valid, prob, proto = make_case()
    rep = rep.requires_grad_(True)
    loss = prototype_contrastive_loss(rep, y, valid, prob, proto, 0.0, TEMP, 4, 6)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(rep.grad).all()


def test_negative_class_frequencies_follow_similarity_softmax():
    # cos(p0,p1) = cos(p1,p2) = 1/sqrt(2), cos(p0,p2) = 0
    proto = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    gen = torch.Generator().manual_seed(0)
    draws = sample_negative_classes(proto, 0.5, num_queries=100, num_negatives=200, generator=gen)
    assert draws.shape == (3, 100, 200)
    freq = torch.stack([torch.bincount(draws[p].flatten(), minlength=3) for p in range(3)]).float()
    freq = freq / freq.sum(1, keepdim=True)
    e = math.exp(math.sqrt(2.0))  # exp((1/sqrt 2) / 0.5)
    expected = torch.tensor(
        [[0.0, e / (e + 1), 1 / (e + 1)], [0.0, 0.0, 0.0], [1 / (e + 1), e / (e + 1), 0.0]]
    )
    expected[1] = torch.tensor([0.5, 0.0, 0.5])
    assert torch.all(freq.diagonal() == 0)  # never the anchor's own class
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def test_sample_pixels_stays_within_each_class_block():
    counts = torch.tensor([3, 0, 1, 5])
    offsets = torch.tensor([0, 3, 3, 4])
    class_idx = torch.tensor([0, 2, 3]).repeat_interleave(2000).view(3, 2000)
    pos = sample_pixels(counts, offsets, class_idx, torch.Generator().manual_seed(0))
    for row, c in enumerate((0, 2, 3)):
        values = set(pos[row].tolist())
        assert values == set(range(offsets[c].item(), offsets[c].item() + counts[c].item()))


def test_sampled_negative_pixels_belong_to_requested_other_class():
    y = torch.tensor([2, 0, 2, 1, 0, 2, 1, 1, 0, 2])
    valid = torch.tensor([True, True, False, True, True, True, True, False, True, True])
    order, counts, offsets = class_sorted_pixels(y, valid, num_classes=3)
    torch.testing.assert_close(counts, torch.tensor([3, 2, 3]))
    # valid pixels grouped by class, raster order inside each class
    assert order[:8].tolist() == [1, 4, 8, 3, 6, 0, 5, 9]
    proto = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    neg_cls = sample_negative_classes(proto, 0.5, 16, 32, gen)
    pix = order[sample_pixels(counts, offsets, neg_cls, gen)]
    assert torch.all(valid[pix])
    assert torch.equal(y[pix], neg_cls)  # here present index == class id
    anchor_cls = torch.arange(3).view(3, 1, 1)
    assert not torch.any(y[pix] == anchor_cls)


@pytest.mark.parametrize("seed", [0, 1])
def test_reproducible_with_generator(seed):
    rep, y, valid, prob, proto = make_case(seed)
    args = (rep, y, valid, prob, proto, STRONG, TEMP, 8, 8)
    a = prototype_contrastive_loss(*args, torch.Generator().manual_seed(9))
    b = prototype_contrastive_loss(*args, torch.Generator().manual_seed(9))
    c = prototype_contrastive_loss(*args, torch.Generator().manual_seed(10))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
