"""Evaluation: a confusion matrix reduced over processes, and the three val protocols.

- ``whole``: the whole image in one forward (the VOC protocol of the field);
- ``sliding``: windows of ``crop`` with stride 2/3 of it, logits averaged (Cityscapes);
- ``crop``: one seeded random crop of ``crop`` per image (the paper code's protocol,
  kept for comparison; deterministic per image index).
``--flip`` and multiple ``scales`` average softmax probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dataset.transforms import normalize
from utils.dist import (
    all_reduce_sum,
    broadcast_,
    get_rank,
    get_world_size,
    is_dist,
    is_main_process,
)
from utils.resize import resize_bilinear

EVAL_MODES = ("whole", "sliding", "crop")


def sync_buffers(*models: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics).

    Without SyncBatchNorm (CPU / gloo, or ``sync_bn: false``) each process updates them from
    its own batches, so the shards of a distributed evaluation would run different models,
    none of them the one rank 0 saves. Training is unaffected: both networks run in train
    mode (batch statistics) and DDP broadcasts the student's buffers before each forward.
    """
    if is_dist():
        for model in models:
            for buf in model.buffers():
                broadcast_(buf)


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class t predicted as p (ignore = -1 skipped)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = (target >= 0) & (target < self.num_classes)
        idx = target[keep] * self.num_classes + pred[keep]
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).view_as(self.mat)

    def reduce(self) -> None:
        all_reduce_sum(self.mat)

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for a class absent from both prediction and target."""
        m = self.mat.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, math.nan))

    def miou(self) -> float:
        return float(torch.nanmean(self.iou()))

    def pixel_acc(self) -> float:
        return float(self.mat.diag().sum() / self.mat.sum().clamp(min=1))


def _forward_probs(model: nn.Module, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    logits, _ = model(img)
    logits = resize_bilinear(logits.float(), size)
    return logits.softmax(1)


def predict_whole(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    return _forward_probs(model, img, img.shape[-2:])


def predict_sliding(model: nn.Module, img: torch.Tensor, crop: Sequence[int]) -> torch.Tensor:
    """Average of window predictions; the image is padded (zeros, i.e. the mean colour
    after normalisation) when smaller than a window."""
    _, _, h, w = img.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = max(1, math.ceil(ch * 2 / 3)), max(1, math.ceil(cw * 2 / 3))
    rows = max(1, math.ceil((h - ch) / sh) + 1)
    cols = max(1, math.ceil((w - cw) / sw) + 1)
    probs, count = None, torch.zeros(1, 1, h, w, device=img.device)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * sh, h - ch), min(c * sw, w - cw)
            window = img[..., y0 : y0 + ch, x0 : x0 + cw]
            p = _forward_probs(model, window, (ch, cw))
            if probs is None:
                probs = torch.zeros(img.shape[0], p.shape[1], h, w, device=img.device)
            probs[..., y0 : y0 + ch, x0 : x0 + cw] += p
            count[..., y0 : y0 + ch, x0 : x0 + cw] += 1
    return probs / count


def crop_box(h: int, w: int, crop: Sequence[int], index: int) -> tuple[int, int, int, int]:
    """The seeded random crop of the ``crop`` protocol for image ``index``."""
    g = torch.Generator().manual_seed(1000003 * index + 17)
    ch, cw = min(crop[0], h), min(crop[1], w)
    y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
    x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    return y0, x0, ch, cw


@torch.no_grad()
def predict(
    model: nn.Module,
    img: torch.Tensor,
    mode: str = "whole",
    crop: Sequence[int] = (512, 512),
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Class probabilities ``[B,C,H,W]`` for a normalised image batch."""
    h, w = img.shape[-2:]
    total = None
    for s in scales:
        x = (
            img
            if s == 1.0
            else F.interpolate(img, scale_factor=s, mode="bilinear", align_corners=True)
        )
        views = [(x, False)] + ([(x.flip(-1), True)] if flip else [])
        for view, flipped in views:
            p = (
                predict_sliding(model, view, crop)
                if mode == "sliding"
                else predict_whole(model, view)
            )
            if flipped:
                p = p.flip(-1)
            if p.shape[-2:] != (h, w):
                p = resize_bilinear(p, (h, w))
            total = p if total is None else total + p
    return total


def same_size_batches(items, batch_size: int):
    """Group consecutive loader items (``batch_size=1`` loader outputs) into batches of equal
    image size, at most ``batch_size`` each; a change of size closes a batch. Whole datasets of
    one size (FashionScenes, Cityscapes) batch fully; VOC's mixed sizes stay correct."""
    imgs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for img, label in items:
        if imgs and (img.shape != imgs[0].shape or len(imgs) == batch_size):
            yield torch.cat(imgs), torch.cat(labels)
            imgs, labels = [], []
        imgs.append(img)
        labels.append(label)
    if imgs:
        yield torch.cat(imgs), torch.cat(labels)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    num_classes: int,
    device: torch.device,
    mode: str = "whole",
    crop: Sequence[int] = (512, 512),
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    batch_size: int = 1,
) -> ConfusionMatrix:
    """Evaluate ``model`` (in eval mode) sharded over processes; returns the reduced matrix.

    Process r takes images r, r + world, ...: no image is duplicated, so the reduced matrix
    equals the one-process result exactly. Consecutive images of equal size go through the
    network together, ``batch_size`` at most (eval-mode BatchNorm treats them independently).
    """
    was_training = model.training
    model.eval()
    indices = list(range(get_rank(), len(dataset), get_world_size()))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=1,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    cm = ConfusionMatrix(num_classes, device)
    bar = tqdm(
        total=len(indices), desc="eval", leave=False, disable=not (progress and is_main_process())
    )

    def items():
        for k, item in enumerate(loader):
            img = item["img"].to(device, non_blocking=True)
            label = item["label"].to(device, non_blocking=True)
            if mode == "crop":
                y0, x0, ch, cw = crop_box(*img.shape[-2:], crop, indices[k])
                img = img[..., y0 : y0 + ch, x0 : x0 + cw]
                label = label[..., y0 : y0 + ch, x0 : x0 + cw]
            yield img, label

    for img, label in same_size_batches(items(), max(1, batch_size)):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            probs = predict(model, normalize(img), mode, crop, flip, scales)
        cm.update(probs.max(1).indices, label)  # max(1) is ~5x faster than argmax(1) on CPU
        bar.update(len(img))
    bar.close()
    cm.reduce()
    model.train(was_training)
    return cm


def format_table(iou: torch.Tensor, class_names: Sequence[str]) -> str:
    """Per-class IoU table (percent) with the mIoU on the last line."""
    width = max(len(n) for n in class_names) + 2
    lines = [f"{'class':<{width}}IoU"]
    for name, v in zip(class_names, iou.tolist()):
        lines.append(f"{name:<{width}}{'  n/a' if math.isnan(v) else f'{100 * v:5.2f}'}")
    lines.append(f"{'mIoU':<{width}}{100 * float(torch.nanmean(iou)):5.2f}")
    return "\n".join(lines)
