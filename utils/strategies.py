"""Pseudo-label strategies (SPEC section 5): pure functions of the teacher's predictions.

A strategy turns :class:`TeacherPredictions` into :class:`PseudoLabels`, the targets and
confidences of the unsupervised CE and of the contrastive branch. ``supervised`` is the
baseline without pseudo-labels (its function is ``None``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.prototypes import proto_similarity

IGNORE = -1


@dataclass
class TeacherPredictions:
    """Teacher outputs at input size: logit space always, representation space when asked."""

    y_cls: torch.Tensor  # [B,H,W] int64, argmax of softmax(logits)
    conf_cls: torch.Tensor  # [B,H,W] float, max of softmax(logits)
    y_rep: torch.Tensor | None = None  # [B,H,W] int64, argmax of softmax(cos(rep, proto)/tau)
    conf_rep: torch.Tensor | None = None  # [B,H,W] float, its max


@dataclass
class PseudoLabels:
    """Targets for the unlabeled batch, for the unsupervised CE and the contrastive branch."""

    y_u: torch.Tensor  # unsupervised CE targets, -1 = ignore
    conf_u: torch.Tensor  # confidences for the unsupervised per-image weight
    y_con: torch.Tensor  # contrastive classes of unlabeled pixels, -1 = ignore
    conf_con: torch.Tensor  # confidences compared with weak_threshold
    use_rep_indicator: bool  # hard anchors from rep-space probabilities (else student softmax)
    agreement: torch.Tensor | None = None  # fraction of pixels where y_cls == y_rep


def _max_softmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(argmax, max)`` of ``softmax(scores)`` over dim 1."""
    conf, label = torch.softmax(scores.float(), dim=1).max(dim=1)
    return label, conf


@torch.no_grad()
def teacher_predictions(
    logits_u: torch.Tensor,
    rep_u: torch.Tensor | None,
    proto: torch.Tensor | None,
    tau: float,
    size: tuple[int, int],
    need_rep: bool,
) -> TeacherPredictions:
    """Pseudo-labels and confidences of the teacher in logit space and, if ``need_rep``, rep space.

    Logits ``[B,C,h,w]`` and the cosine-similarity maps of ``rep_u [B,D,h,w]`` to ``proto``
    are upsampled bilinearly (``align_corners=True``) to ``size`` before the softmax.
    """
    logits = F.interpolate(logits_u.float(), size=size, mode="bilinear", align_corners=True)
    y_cls, conf_cls = _max_softmax(logits)
    if not need_rep:
        return TeacherPredictions(y_cls, conf_cls)
    if rep_u is None or proto is None:
        raise ValueError("need_rep=True requires rep_u and proto")
    sim = proto_similarity(rep_u, proto)
    sim = F.interpolate(sim, size=size, mode="bilinear", align_corners=True)
    y_rep, conf_rep = _max_softmax(sim / tau)
    return TeacherPredictions(y_cls, conf_cls, y_rep, conf_rep)


def agreement(t: TeacherPredictions) -> torch.Tensor | None:
    """Fraction of pixels where the two spaces agree (a 0-dim tensor), or None without y_rep."""
    if t.y_rep is None:
        return None
    return (t.y_cls == t.y_rep).float().mean()


def _require_rep(t: TeacherPredictions, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if t.y_rep is None or t.conf_rep is None:
        raise ValueError(f"strategy {name!r} needs teacher_predictions(..., need_rep=True)")
    return t.y_rep, t.conf_rep


def ori_pseudo(t: TeacherPredictions) -> PseudoLabels:
    """Baseline: the logit-space pseudo-label and confidence everywhere."""
    return PseudoLabels(
        y_u=t.y_cls,
        conf_u=t.conf_cls,
        y_con=t.y_cls,
        conf_con=t.conf_cls,
        use_rep_indicator=False,
        agreement=agreement(t),
    )


def mix_label(t: TeacherPredictions) -> PseudoLabels:
    """Keep ``y_cls`` where the two spaces agree, ignore elsewhere; confidences from logits."""
    y_rep, _ = _require_rep(t, "mix_label")
    y_mix = torch.where(t.y_cls == y_rep, t.y_cls, torch.full_like(t.y_cls, IGNORE))
    return PseudoLabels(
        y_u=y_mix,
        conf_u=t.conf_cls,
        y_con=y_mix,
        conf_con=t.conf_cls,
        use_rep_indicator=True,
        agreement=agreement(t),
    )


def cross_label(t: TeacherPredictions, epoch: int, warm_up: int) -> PseudoLabels:
    """Each space supervises the other.

    Contrastive branch: ``y_cls`` / ``conf_cls``. Unsupervised CE: ``y_rep`` / ``conf_rep``
    from epoch ``warm_up`` on, ``y_cls`` / ``conf_cls`` before.
    """
    y_rep, conf_rep = _require_rep(t, "cross_label")
    warm = epoch < warm_up
    return PseudoLabels(
        y_u=t.y_cls if warm else y_rep,
        conf_u=t.conf_cls if warm else conf_rep,
        y_con=t.y_cls,
        conf_con=t.conf_cls,
        use_rep_indicator=True,
        agreement=agreement(t),
    )


STRATEGIES: dict[str, Callable[..., PseudoLabels] | None] = {
    "supervised": None,
    "ori_pseudo": ori_pseudo,
    "mix_label": mix_label,
    "cross_label": cross_label,
}


def needs_rep(name: str) -> bool:
    """Whether strategy ``name`` needs the teacher's representation-space predictions."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    return name in ("mix_label", "cross_label")


def make_pseudo_labels(
    name: str, t: TeacherPredictions, epoch: int = 0, warm_up: int = 0
) -> PseudoLabels:
    """Dispatch to the strategy ``name`` (``cross_label`` also uses ``epoch`` and ``warm_up``)."""
    if name == "cross_label":
        return cross_label(t, epoch, warm_up)
    fn = STRATEGIES.get(name)
    if fn is None:
        raise ValueError(f"strategy {name!r} has no pseudo-labels")
    return fn(t)
