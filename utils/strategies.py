"""Pseudo-label strategies (SPEC section 5): one registry of :class:`Strategy` records.

A strategy's pure function turns :class:`TeacherPredictions` into :class:`PseudoLabels`, the
targets and confidences of the unsupervised CE and of the contrastive branch; its record says
what else the step needs to know about it (rep-space predictions, the hard-anchor indicator,
the contrastive ramp, which network is the result). ``supervised`` is the baseline without
pseudo-labels. Adding a strategy = one pure function + one record in ``STRATEGIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from utils.labels import IGNORE_INDEX
from utils.prototypes import proto_similarity
from utils.resize import resize_bilinear


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
    # confidence counted in the unsupervised weight; None = Loss.un_threshold
    un_threshold: float | None = None
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
    logits = resize_bilinear(logits_u.float(), size)
    y_cls, conf_cls = _max_softmax(logits)
    if not need_rep:
        return TeacherPredictions(y_cls, conf_cls)
    if rep_u is None or proto is None:
        raise ValueError("need_rep=True requires rep_u and proto")
    sim = proto_similarity(rep_u, proto)
    sim = resize_bilinear(sim, size)
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


def ori_pseudo(t: TeacherPredictions, epoch: int, loss: Any) -> PseudoLabels:
    """Baseline: the logit-space pseudo-label and confidence everywhere."""
    return PseudoLabels(
        y_u=t.y_cls, conf_u=t.conf_cls, y_con=t.y_cls, conf_con=t.conf_cls, agreement=agreement(t)
    )


def mix_label(t: TeacherPredictions, epoch: int, loss: Any) -> PseudoLabels:
    """Keep ``y_cls`` where the two spaces agree, ignore elsewhere; confidences from logits."""
    y_rep, _ = _require_rep(t, "mix_label")
    y_mix = torch.where(t.y_cls == y_rep, t.y_cls, torch.full_like(t.y_cls, IGNORE_INDEX))
    return PseudoLabels(
        y_u=y_mix, conf_u=t.conf_cls, y_con=y_mix, conf_con=t.conf_cls, agreement=agreement(t)
    )


def cross_label(t: TeacherPredictions, epoch: int, loss: Any) -> PseudoLabels:
    """Each space supervises the other.

    Contrastive branch: ``y_cls`` / ``conf_cls``. Unsupervised CE: ``y_rep`` / ``conf_rep``
    from epoch ``loss.warm_up`` on, ``y_cls`` / ``conf_cls`` before. After warm-up the
    unsupervised weight counts rep-space confidences >= ``loss.rep_un_threshold``: with the
    paper's 0.97 (= un_threshold) that direction is dead, since max softmax(cos / tau) is at
    most 1 / (1 + (C - 1) e^(-2 / tau)) < 0.97; a lower value makes it live.
    """
    y_rep, conf_rep = _require_rep(t, "cross_label")
    warm = epoch < loss.warm_up
    return PseudoLabels(
        y_u=t.y_cls if warm else y_rep,
        conf_u=t.conf_cls if warm else conf_rep,
        y_con=t.y_cls,
        conf_con=t.conf_cls,
        un_threshold=None if warm else loss.rep_un_threshold,
        agreement=agreement(t),
    )


PseudoLabelFn = Callable[[TeacherPredictions, int, Any], PseudoLabels]


class Evaluated(Enum):
    """The network a run evaluates, saves as its result and hands to ``evaluate.py`` /
    ``predict.py``; the value is its checkpoint key (and how the logs name it)."""

    TEACHER = "teacher"
    STUDENT = "student"


@dataclass(frozen=True)
class Strategy:
    """What the training step needs to know about a strategy, beyond its name.

    ``pseudo_labels(t, epoch, loss)``: the pure pseudo-label function (``loss`` is the
    config's typed ``Loss`` section, ``engine.config.typed(cfg).loss``: keys as attributes);
    ``None`` for the supervised baseline, which uses no unlabeled data. The other fields hold
    what differs between the records (each differs between at least two of them); the
    defaults are the baselines' values:

    - ``needs_rep``: the teacher's rep-space predictions are computed;
    - ``use_rep_indicator``: hard anchors are chosen with the student's rep-space
      probabilities (else its softmax);
    - ``ramps_contrast``: the contrastive weight follows the ramp-down (else it is 1);
    - ``warms_up``: the pseudo-label function switches its source at ``Loss.warm_up``
      (the run logs the iteration where it does);
    - ``evaluates``: the network that is the run's result (:class:`Evaluated`).

    The first three are set together by the paper's two rep-space strategies today, but they
    are separate choices of the method (the paper's baseline has none of them).
    """

    name: str
    pseudo_labels: PseudoLabelFn | None
    needs_rep: bool = False
    use_rep_indicator: bool = False
    ramps_contrast: bool = False
    warms_up: bool = False
    evaluates: Evaluated = Evaluated.TEACHER

    @property
    def semi_supervised(self) -> bool:
        return self.pseudo_labels is not None


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        # no teacher forward, so no teacher BN statistics: its student is the result
        Strategy("supervised", None, evaluates=Evaluated.STUDENT),
        Strategy("ori_pseudo", ori_pseudo),
        Strategy(
            "mix_label", mix_label, needs_rep=True, use_rep_indicator=True, ramps_contrast=True
        ),
        Strategy(
            "cross_label",
            cross_label,
            needs_rep=True,
            use_rep_indicator=True,
            ramps_contrast=True,
            warms_up=True,
        ),
    )
}


def get_strategy(name: str) -> Strategy:
    """The record of strategy ``name``; an unknown name raises ``ValueError`` listing them."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
