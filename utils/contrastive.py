"""Prototype contrastive loss (ReCo-style, CSS variant), fully vectorised over classes and queries.

For every class present among the valid pixels of the local batch, ``num_queries`` hard
anchors (valid pixels of the class whose indicator probability is below
``strong_threshold``) are contrasted against the class prototype (positive) and
``num_negatives`` valid pixels of other present classes (negatives), the class of each
negative drawn from the softmax of prototype cosine similarities.

Random draws happen in this order, all from ``generator`` when given: anchors
(``torch.rand [P,Q]``), negative classes (one ``torch.multinomial`` over a ``[P,P]`` matrix,
``Q*N`` draws per row), negative pixels (``torch.rand [P,Q,N]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.prototypes import COS_EPS


def class_sorted_pixels(
    y_flat: torch.Tensor, mask_flat: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order pixels by class, keeping raster order within a class.

    Returns ``(order, counts, offsets)``: ``order [M]`` flat pixel indices with the masked
    pixels first, grouped by ascending class (unmasked pixels after them); ``counts [C]``
    masked pixels per class; ``offsets [C]`` where each class's group starts in ``order``.
    """
    key = torch.where(mask_flat, y_flat, torch.full_like(y_flat, num_classes))
    order = torch.sort(key, stable=True).indices
    counts = torch.bincount(key, minlength=num_classes + 1)[:num_classes]
    offsets = torch.cumsum(counts, 0) - counts
    return order, counts, offsets


def sample_pixels(
    counts: torch.Tensor,
    offsets: torch.Tensor,
    class_idx: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform position in ``[offsets[c], offsets[c] + counts[c])`` for each ``c`` of ``class_idx``.

    One ``torch.rand`` of ``class_idx``'s shape: position = offset + floor(u * count). A class
    with count 0 gets its offset (the caller must mask those entries out).
    """
    cnt = counts[class_idx]
    u = torch.rand(class_idx.shape, generator=generator, device=class_idx.device)
    local = torch.floor(u * cnt).long()
    local = torch.minimum(local, (cnt - 1).clamp_min(0))  # guard against u * cnt rounding up
    return offsets[class_idx] + local


def negative_class_probs(proto_present: torch.Tensor, temp: float) -> torch.Tensor:
    """``[P,P]``: row c = softmax over k != c of ``cos(proto_c, proto_k) / temp``; diagonal 0."""
    proto_n = F.normalize(proto_present.float(), dim=1, eps=COS_EPS)
    sim = proto_n @ proto_n.t() / temp
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    return torch.softmax(sim.masked_fill(eye, float("-inf")), dim=1)


def sample_negative_classes(
    proto_present: torch.Tensor,
    temp: float,
    num_queries: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Class (index into the present classes) of every negative: ``[P, num_queries, num_negatives]``.

    Row p is drawn from :func:`negative_class_probs` row p, so it never equals p.
    """
    probs = negative_class_probs(proto_present, temp)
    draws = torch.multinomial(
        probs, num_queries * num_negatives, replacement=True, generator=generator
    )
    return draws.view(-1, num_queries, num_negatives)


# Bound on the elements of one block of the anchor x pixel similarity matrix (~256 MB fp32).
_SIM_BLOCK = 1 << 26


class NegativeSimilarity(torch.autograd.Function):
    """``out[p,q,n] = anchor[p,q] . pixels[idx[p,q,n]]`` with gradient for ``anchor`` only.

    The obvious ``pixels[idx]`` materialises a ``[P,Q,N,D]`` tensor (2.8 GB at the paper's
    21 x 256 x 512 x 256) and keeps it for the backward pass. Instead the forward computes
    blocks of the dense similarity ``anchor @ pixels.T`` and picks the sampled entries, and the
    backward is one ``embedding_bag``: ``grad_anchor[p,q] = sum_n g[p,q,n] *
    pixels[idx[p,q,n]]``. Only ``idx`` is saved. The negatives carry no gradient.

    The dense product writes ``P*Q*M`` similarities where the gather reads ``P*Q*N*D``
    floats; with ``M`` valid pixels below ``~N*D`` (the paper's scale and the demo's) the
    dense product is the faster of the two on the CPU (demo: 3 ms instead of 11 ms).
    """

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, pixels: torch.Tensor, idx: torch.Tensor):
        p, q, n = idx.shape
        ctx.save_for_backward(pixels, idx)
        out = anchor.new_empty(p, q, n)
        rows = max(1, _SIM_BLOCK // max(1, q * pixels.shape[0]))
        for start in range(0, p, rows):
            sim = anchor[start : start + rows] @ pixels.t()  # [rows, Q, M]
            out[start : start + rows] = sim.gather(2, idx[start : start + rows])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pixels, idx = ctx.saved_tensors
        p, q, n = idx.shape
        grad_anchor = F.embedding_bag(
            idx.reshape(p * q, n),
            pixels,
            per_sample_weights=grad.reshape(p * q, n).to(pixels.dtype),
            mode="sum",
        )
        return grad_anchor.view(p, q, -1), None, None


def contrastive_ce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    pixels: torch.Tensor,
    neg_idx: torch.Tensor,
    temp: float,
) -> torch.Tensor:
    """Per-class mean over queries of CE(target 0) on ``cos(anchor, [positive, negatives]) / temp``.

    ``anchor [P,Q,D]`` (with grad), ``positive [P,D]``, ``pixels [M,D]`` unit vectors (no
    grad) of which ``neg_idx [P,Q,N]`` are the negatives -> ``[P]``.
    """
    anchor_n = F.normalize(anchor, dim=-1, eps=COS_EPS)
    pos_n = F.normalize(positive, dim=-1, eps=COS_EPS)
    l_pos = torch.einsum("pqd,pd->pq", anchor_n, pos_n).unsqueeze(-1)
    l_neg = NegativeSimilarity.apply(anchor_n, pixels, neg_idx)
    logits = torch.cat([l_pos, l_neg], dim=-1) / temp
    ce = torch.logsumexp(logits, dim=-1) - logits[..., 0]
    return ce.mean(dim=1)


def pixel_rows(rep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[..., D]``: the vectors of ``rep [N,D,h,w]`` at flat pixel indices ``index`` (raster
    order over ``[N,h,w]``), read in place (no channels-last copy of the whole map)."""
    n, d, h, w = rep.shape
    return rep.reshape(n, d, h * w)[index // (h * w), :, index % (h * w)]


def prototype_contrastive_loss(
    rep: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    prob: torch.Tensor,
    proto: torch.Tensor,
    strong_threshold: float,
    temp: float,
    num_queries: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prototype contrastive loss on ``rep [N,D,h,w]`` (labeled + unlabeled, with grad).

    ``y [N,h,w]`` int64 class per pixel, ``valid [N,h,w]`` bool, ``prob [N,C,h,w]`` the
    indicator probability (no grad), ``proto [C,D]`` the prototypes after this step's update.
    Loss = (sum over present classes with at least one hard anchor of their mean CE) /
    (number of present classes); ``rep.sum() * 0`` when fewer than two classes are present.
    Only anchors carry gradient; no ``[P,Q,N,D]`` tensor is formed (see ``NegativeSimilarity``).
    """
    num_classes = proto.shape[0]
    y_flat = y.reshape(-1)
    valid_flat = valid.reshape(-1)
    order, counts, offsets = class_sorted_pixels(y_flat, valid_flat, num_classes)
    counts_host = counts.cpu()  # the one host sync: which classes are present, how many pixels
    present = torch.nonzero(counts_host > 0).squeeze(1).to(rep.device)
    num_present = present.numel()
    if num_present < 2:
        return rep.sum() * 0

    p_own = prob.detach().gather(1, y.clamp_min(0).unsqueeze(1)).reshape(-1)
    hard_flat = valid_flat & (p_own < strong_threshold)
    hard_order, hard_counts, hard_offsets = class_sorted_pixels(y_flat, hard_flat, num_classes)

    last = y_flat.shape[0] - 1
    anchor_cls = torch.arange(num_present, device=rep.device).unsqueeze(1).expand(-1, num_queries)
    anchor_pos = sample_pixels(hard_counts[present], hard_offsets[present], anchor_cls, generator)
    anchor = pixel_rows(rep, hard_order[anchor_pos.clamp_max(last)]).float()  # [P,Q,D], grad

    proto_present = proto[present].detach().float()
    with torch.no_grad():
        neg_cls = sample_negative_classes(
            proto_present, temp, num_queries, num_negatives, generator
        )
        neg_pos = sample_pixels(counts[present], offsets[present], neg_cls, generator)
        # The valid pixels in class order, as unit vectors; neg_pos indexes them directly.
        num_valid = int(counts_host.sum())
        pixels = pixel_rows(rep.detach(), order[:num_valid]).float()
        pixels = F.normalize(pixels, dim=-1, eps=COS_EPS)

    ce = contrastive_ce(anchor, proto_present, pixels, neg_pos, temp)
    has_anchor = hard_counts[present] > 0
    return torch.where(has_anchor, ce, torch.zeros_like(ce)).sum() / num_present
