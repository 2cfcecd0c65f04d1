"""The method: one training step (SPEC section 4), stage by stage, and the contrastive term.

Data flows one way: batch -> teacher -> pseudo-labels -> augmented batch -> student ->
losses -> update. A researcher who changes a loss term reads this module and ``utils/``
(losses, contrastive loss, strategies); the loop around it lives in ``engine/loop.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch_augment import strong_augment
from engine.config import Section
from engine.run import Run
from utils.contrastive import prototype_contrastive_loss
from utils.ema import ema_update
from utils.labels import IGNORE_INDEX
from utils.losses import image_weights, ohem_ce, sup_ce, unsup_ce
from utils.prototypes import Prototypes
from utils.resize import resize_bilinear
from utils.schedules import ramp_down
from utils.strategies import PseudoLabels, Strategy, teacher_predictions

Tensor = torch.Tensor


def no_timer(name: str) -> contextlib.AbstractContextManager:
    """The default ``phase`` argument: no timing (the benchmark passes a timer)."""
    return contextlib.nullcontext()


@dataclass
class UnlabeledBatch:
    """The strongly augmented unlabeled batch and its pseudo-label maps, ready for the student."""

    img: Tensor  # normalised, in the networks' memory format
    maps: dict[str, Tensor]  # y_u, conf_u, y_con, conf_con (see PseudoLabels), augmented
    agreement: Tensor | None  # fraction of pixels where the two spaces agree
    un_threshold: float  # confidence counted in the unsupervised weight


def train_step(run: Run, batch_l: dict, batch_u: dict | None, phase=no_timer) -> dict:
    """One optimiser step; returns the loss terms and diagnostics as 0-dim tensors.

    Composes the stages below from what ``run`` holds (its device, precision and memory
    format stay here and in :func:`pseudo_labeled_batch`); each stage takes only the config
    section, the strategy record, the prototypes, the networks and the tensors it reads.
    ``phase(name)`` is a context manager around each stage (the benchmark times them).
    """
    cfg = run.config
    img_l = run.model_input(batch_l["img"].to(run.device, non_blocking=True))
    y_l = batch_l["label"].to(run.device, non_blocking=True)
    unlabeled = None
    if batch_u is not None:
        unlabeled = pseudo_labeled_batch(run, batch_u, img_l, phase)
    with phase("student_forward"), run.autocast():
        out_l, out_u = run.forward(img_l, unlabeled.img if unlabeled else None)
    pred_l, rep_l = out_l
    stats: dict[str, Tensor] = {}
    if unlabeled is not None and unlabeled.agreement is not None:
        stats["agreement"] = unlabeled.agreement
    with phase("sup_loss"):
        sup = supervised_loss(pred_l, y_l, cfg.loss)
    stats["sup"] = sup.detach()
    if out_u is None:
        # The supervised baseline does not use the representation head; a zero term keeps it
        # in the graph so that DDP (which expects every parameter to get a gradient) is happy.
        total = sup + rep_l.float().sum() * 0
    else:
        with phase("unsup_loss"):
            unsup = unsupervised_loss(out_u[0], unlabeled, cfg.loss)
        contrast = contrastive_term(
            out_l, y_l, out_u, unlabeled.maps, run.prototypes, run.strategy, cfg.loss, phase
        )
        lam = contrastive_weight(run.strategy, cfg.ramp_scheduler, run.epoch)
        total = sup + unsup + lam * contrast
        stats.update(diagnostics(unsup, contrast, lam, unlabeled, cfg.loss))
    stats["total"] = total.detach()
    ema_alpha = cfg.ema.alpha
    update(
        total, run.student, run.teacher, run.optimizer, run.scaler, run.iteration, ema_alpha, phase
    )
    return stats


# --------------------------------------------------------------------------- the teacher side


def pseudo_labeled_batch(run: Run, batch_u: dict, img_l: Tensor, phase=no_timer) -> UnlabeledBatch:
    """Teacher forward on the unlabeled batch, the strategy's pseudo-labels, strong augmentation.

    Part of :func:`train_step`'s composition: the run's device, precision and memory format
    around the teacher and the stages :func:`teacher_pseudo_labels` and
    :func:`augment_unlabeled`.
    """
    cfg = run.config
    with phase("teacher"), torch.no_grad():
        img_u01 = batch_u["img"].to(run.device, non_blocking=True).float().div_(255)
        with run.autocast():
            if cfg.training.teacher_on_labeled:
                run.teacher(img_l)  # paper quirk: only moves the teacher's BN statistics
            logits_t, rep_t = run.teacher(run.model_input(img_u01))
        size = tuple(img_l.shape[-2:])
        pl = teacher_pseudo_labels(
            logits_t, rep_t, run.strategy, run.prototypes, cfg.loss, run.epoch, size
        )
    with phase("augment"), torch.no_grad():
        img_aug, maps = augment_unlabeled(img_u01, pl, cfg.dataset)
    threshold = cfg.loss.un_threshold if pl.un_threshold is None else pl.un_threshold
    return UnlabeledBatch(run.model_input(img_aug), maps, pl.agreement, threshold)


@torch.no_grad()
def teacher_pseudo_labels(
    logits_t: Tensor,
    rep_t: Tensor,
    strategy: Strategy,
    prototypes: Prototypes,
    loss: Section,
    epoch: int,
    size: tuple[int, int],
) -> PseudoLabels:
    """The strategy's pseudo-labels from the teacher's outputs, at ``size`` (the input's);
    ``loss``: the ``Loss`` section."""
    t = teacher_predictions(logits_t, rep_t, prototypes.proto, loss.temp, size, strategy.needs_rep)
    return strategy.pseudo_labels(t, epoch, loss)


def augment_unlabeled(img_u01: Tensor, pl: PseudoLabels, data: Section) -> tuple[Tensor, dict]:
    """Strong augmentation of the unlabeled batch and its per-pixel maps (each distinct map
    once: most strategies use the same tensors for both branches), as the ``Dataset`` section
    ``data`` says (``crop_size``, ``scale_size``, ``mix_mode``)."""
    named = {"y_u": pl.y_u, "conf_u": pl.conf_u, "y_con": pl.y_con, "conf_con": pl.conf_con}
    unique: list[Tensor] = []
    for t in named.values():
        if not any(t is u for u in unique):
            unique.append(t)
    fills = [IGNORE_INDEX if t.dtype == torch.int64 else 0.0 for t in unique]
    # ClassMix chooses its classes from the contrastive branch's pseudo-label: y_cls for
    # cross_label (as the paper code does, also after warm-up, when y_u is y_rep); for the
    # other strategies y_con is y_u.
    class_map = next(k for k, u in enumerate(unique) if u is pl.y_con)
    img, out = strong_augment(
        img_u01,
        unique,
        fills,
        crop_size=data.crop_size,
        scale_size=data.scale_size,
        mix_mode=data.mix_mode,
        class_map=class_map,
    )
    index = {id(t): k for k, t in enumerate(unique)}
    return img, {name: out[index[id(t)]] for name, t in named.items()}


# --------------------------------------------------------------------------- losses


def supervised_loss(pred_l: Tensor, y_l: Tensor, loss: Section) -> Tensor:
    """CE (or OHEM) of the labeled logits, upsampled to the label size, against the labels."""
    pred = resize_bilinear(pred_l.float(), y_l.shape[-2:])
    if loss.sup_loss == "ohem":
        return ohem_ce(pred, y_l, loss.ohem_thresh, loss.ohem_min_kept * len(y_l))
    return sup_ce(pred, y_l)


def unsupervised_loss(pred_u: Tensor, unlabeled: UnlabeledBatch, loss: Section) -> Tensor:
    """The confidence-weighted CE of the unlabeled logits, upsampled to the pseudo-labels'
    size, against them (each image weighted by its share of confident pixels)."""
    maps = unlabeled.maps
    pred_u_large = resize_bilinear(pred_u.float(), maps["y_u"].shape[-2:])
    return unsup_ce(
        pred_u_large,
        maps["y_u"],
        maps["conf_u"],
        unlabeled.un_threshold,
        loss.weight_counts_ignored,
    )


def contrastive_weight(strategy: Strategy, ramp: Section, epoch: int) -> float:
    """lambda_t: 1 for strategies without the ramp, else the ramp-down of the
    ``Ramp_Scheduler`` section ``ramp`` at ``epoch``."""
    if not strategy.ramps_contrast:
        return 1.0
    r = ramp
    return ramp_down(epoch, r.begin_epoch, r.max_epoch, r.max_value, r.min_value, r.ramp_mult)


def downsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest downsampling of a ``[B,H,W]`` map (labels, masks) to ``size``."""
    return F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0].to(x.dtype)


def contrastive_pixels(
    y_l: Tensor, y_con: Tensor, conf_con: Tensor, size: tuple[int, int], weak_threshold: float
) -> tuple[Tensor, Tensor]:
    """``(y, valid)`` ``[B_l + B_u, *size]``: the class of every labeled, then unlabeled pixel,
    and the pixels that take part in the prototype update and the contrastive loss.

    Valid: labeled pixels with a label, unlabeled pixels whose contrastive pseudo-label is not
    ignored and whose confidence is >= ``weak_threshold``; every map is first downsampled
    (nearest) to ``size``, the representation's resolution.
    """
    y = torch.cat([downsample(y_l, size), downsample(y_con, size)])
    weak = downsample(conf_con, size) >= weak_threshold
    valid = y >= 0
    valid[y_l.shape[0] :] &= weak
    return y, valid


def contrastive_term(
    out_l: tuple[Tensor, Tensor],
    y_l: Tensor,
    out_u: tuple[Tensor, Tensor],
    maps: Mapping[str, Tensor],
    prototypes: Prototypes,
    strategy: Strategy,
    loss: Section,
    phase=no_timer,
) -> Tensor:
    """Prototype update from this step's valid pixels (:func:`contrastive_pixels`), then the
    contrastive loss (SPEC 4.5). Hard anchors: valid pixels whose indicator probability of
    their class is below ``strong_threshold``; the indicator is the student's rep-space
    probabilities (prototypes before the update) where the strategy says
    ``use_rep_indicator``, else its softmax. ``out_l`` / ``out_u``: the student's
    ``(pred, rep)`` on the labeled / unlabeled batch.
    """
    (pred_l, rep_l), (pred_u, rep_u) = out_l, out_u
    rep = torch.cat([rep_l, rep_u]).float()
    size = tuple(rep.shape[-2:])
    with phase("proto_update"), torch.no_grad():
        y, valid = contrastive_pixels(
            y_l, maps["y_con"], maps["conf_con"], size, loss.weak_threshold
        )
        if strategy.use_rep_indicator:  # rep-space probabilities, prototypes before update
            prob = prototypes.probs(rep.detach(), loss.temp)
        else:
            prob = torch.cat([pred_l, pred_u]).detach().float().softmax(1)
        prototypes.update(rep.detach(), y.clamp_min(0), valid)
    # A diverged step (non-finite rep) leaves non-finite prototypes, from which negative
    # classes cannot be drawn (torch.multinomial raises); zeros let the step finish with a
    # non-finite loss that the loop reports. Identity while the prototypes are finite.
    proto = torch.nan_to_num(prototypes.proto, nan=0.0, posinf=0.0, neginf=0.0)
    with phase("contrastive"):
        return prototype_contrastive_loss(
            rep,
            y,
            valid,
            prob,
            proto,
            loss.strong_threshold,
            loss.temp,
            loss.num_queries,
            loss.num_negatives,
        )


def diagnostics(
    unsup: Tensor,
    contrast: Tensor,
    lam: float,
    unlabeled: UnlabeledBatch,
    loss: Section,
) -> dict:
    """The logged values of the unlabeled branch (0-dim tensors). ``mask_ratio``: the fraction
    of pixels that are confident and not ignored; ``unsup_weight``: the mean per-image weight
    the unsupervised CE applies (with ``Loss.weight_counts_ignored`` its numerator also counts
    confident ignored pixels, so it can exceed 1)."""
    maps, threshold = unlabeled.maps, unlabeled.un_threshold
    with torch.no_grad():
        confident = (maps["conf_u"] >= threshold) & (maps["y_u"] >= 0)
        weight = image_weights(maps["y_u"], maps["conf_u"], threshold, loss.weight_counts_ignored)
        return {
            "unsup": unsup.detach(),
            "contrast": contrast.detach(),
            "mask_ratio": confident.float().mean(),
            "unsup_weight": weight.mean(),
            "lambda": torch.tensor(lam, device=unsup.device),
        }


# --------------------------------------------------------------------------- the update


def update(
    total: Tensor,
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    ema_alpha: float,
    phase=no_timer,
) -> None:
    """Backward, optimiser step (through the grad scaler), then the teacher's EMA at ``step``."""
    with phase("backward"):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
    with phase("optimizer_ema"):
        scaler.step(optimizer)
        scaler.update()
        ema_update(teacher, student, step, ema_alpha)
