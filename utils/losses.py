"""Supervised, OHEM and confidence-weighted unsupervised cross-entropy losses (ignore label -1).

``pred`` is ``[B,C,H,W]`` logits, ``y`` int64 ``[B,H,W]`` with -1 = ignore. None of these
losses is ever NaN: with no pixel to average over they return a zero connected to ``pred``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.labels import IGNORE_INDEX

SUP_LOSSES = ("ce", "ohem")  # Loss.sup_loss: plain CE, or OHEM (Cityscapes)


def pixel_ce(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy ``[B,H,W]`` in float32; ignored pixels give exactly 0."""
    return F.cross_entropy(pred.float(), y, ignore_index=IGNORE_INDEX, reduction="none")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ``True`` pixels of ``mask``; a connected 0 when none is."""
    total = torch.where(mask, values, values.new_zeros(())).sum()
    return total / mask.sum().clamp_min(1)


def sup_ce(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over pixels whose label is not ignored."""
    return masked_mean(pixel_ce(pred, y), y != IGNORE_INDEX)


def true_class_prob(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the labelled class per pixel ``[B,H,W]`` (no grad; 0 if ignored)."""
    prob = torch.softmax(pred.detach().float(), dim=1)
    p_true = prob.gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(y != IGNORE_INDEX, p_true, torch.zeros_like(p_true))


def ohem_ce(
    pred: torch.Tensor, y: torch.Tensor, thresh: float = 0.7, min_kept: int = 50000
) -> torch.Tensor:
    """Online hard example mining cross-entropy.

    Keeps the valid pixels whose true-class probability is ``<= threshold``, where
    ``threshold = max(thresh, p_(min_kept))`` and ``p_(k)`` is the k-th smallest true-class
    probability among valid pixels: at least ``min_kept`` hardest pixels are kept. With fewer
    than ``min_kept`` valid pixels every valid pixel is kept. Mean CE over the kept pixels.
    ``min_kept = 0`` turns the mining off, as in the paper code: plain CE over every valid pixel.
    """
    if min_kept <= 0:
        return sup_ce(pred, y)
    valid = y != IGNORE_INDEX
    p_true = true_class_prob(pred, y)
    # Ignored pixels sort last (2 > any probability): if the k-th smallest is one of them,
    # there are fewer than min_kept valid pixels and the threshold keeps all valid ones.
    ranked = torch.where(valid, p_true, torch.full_like(p_true, 2.0)).flatten()
    kth = torch.kthvalue(ranked, min(min_kept, ranked.numel())).values
    threshold = torch.maximum(torch.full((), thresh, device=pred.device), kth)
    kept = valid & (p_true <= threshold)
    return masked_mean(pixel_ce(pred, y), kept)


def image_weights(
    y: torch.Tensor, conf: torch.Tensor, un_threshold: float, count_ignored: bool = True
) -> torch.Tensor:
    """Per-image weight ``[B]``: (# confident pixels) / (# pixels whose label is not ignored).

    Confident means ``conf >= un_threshold``; with ``count_ignored=True`` (paper code) that
    includes pixels whose label is ignored, so the weight can exceed 1. An image without any
    valid pixel gets weight 0.
    """
    valid = (y != IGNORE_INDEX).flatten(1)
    confident = (conf >= un_threshold).flatten(1)
    if not count_ignored:
        confident = confident & valid
    n_valid = valid.sum(1)
    weight = confident.sum(1).float() / n_valid.clamp_min(1).float()
    return torch.where(n_valid > 0, weight, torch.zeros_like(weight))


def unsup_ce(
    pred: torch.Tensor,
    y: torch.Tensor,
    conf: torch.Tensor,
    un_threshold: float = 0.97,
    count_ignored: bool = True,
) -> torch.Tensor:
    """Confidence-weighted unsupervised cross-entropy against pseudo-labels ``y``.

    Each pixel's CE is multiplied by its image's weight (:func:`image_weights`) and the
    result is averaged over the pixels whose *unweighted* CE is > 0 (ignored pixels drop out,
    pixels of a zero-weight image still count as zeros).
    """
    loss = pixel_ce(pred, y)
    weight = image_weights(y, conf, un_threshold, count_ignored)
    counted = loss.detach() > 0
    return masked_mean(weight[:, None, None] * loss, counted)
