"""Per-sample transforms of the labeled and unlabeled loaders (SPEC section 6).

Images stay ``uint8 [3, H, W]`` tensors, labels ``int64 [H, W]`` with ignore = -1; the
engine normalises on the device with :func:`normalize`. ``crop_size`` is ``(height, width)``.

Every random number is drawn from the ``generator`` argument (``None``: torch's default
generator), so an item is reproducible from its sample seed whatever the worker count.
The labeled transform always draws the same random numbers in the same order, whether or
not an optional step applies, so its geometry does not depend on the photometric steps;
those are ``dataset.photometric`` (the one implementation, shared with the unlabeled batch).
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

from dataset.photometric import photometric_flip
from utils.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(img: Tensor) -> Tensor:
    """ImageNet-normalise ``[..., 3, H, W]`` images: uint8 (0-255) or float in [0, 1]."""
    x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A random integer in ``[0, high]``."""
    return int(torch.randint(high + 1, (1,), generator=generator))


# --- geometric steps -------------------------------------------------------------------


def _nearest_index(size_in: int, size_out: int) -> Tensor:
    """Source index of each output pixel for nearest resizing (pixel centres aligned)."""
    src = ((torch.arange(size_out) + 0.5) * (size_in / size_out)).floor().long()
    return src.clamp_(max=size_in - 1)


def rescale(img: Tensor, label: Tensor | None, scale: float) -> tuple[Tensor, Tensor | None]:
    """Resize by ``scale`` to ``(int(H * scale), int(W * scale))``: image bilinear with
    antialias, label nearest."""
    h, w = img.shape[-2:]
    out_h, out_w = max(1, int(h * scale)), max(1, int(w * scale))
    img = TF.resize(img, [out_h, out_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if label is not None:
        label = label[_nearest_index(h, out_h)][:, _nearest_index(w, out_w)]
    return img, label


def _reflect_index(size_in: int, size_out: int) -> Tensor:
    """Indices that extend ``size_in`` pixels to ``size_out`` by mirroring at the far edge
    (without repeating the edge pixel), repeatedly if the pad exceeds the image."""
    idx = torch.arange(size_out)
    if size_in == 1:  # nothing to mirror: replicate
        return torch.zeros_like(idx)
    period = 2 * (size_in - 1)
    idx = idx % period
    return torch.where(idx < size_in, idx, period - idx)


def pad_to(
    img: Tensor, label: Tensor | None, crop_size: tuple[int, int]
) -> tuple[Tensor, Tensor | None]:
    """Pad at the bottom / right to at least ``crop_size``: image reflect, label ignore."""
    h, w = img.shape[-2:]
    out_h, out_w = max(h, crop_size[0]), max(w, crop_size[1])
    if (out_h, out_w) == (h, w):
        return img, label
    img = img[..., _reflect_index(h, out_h), :][..., _reflect_index(w, out_w)]
    if label is not None:
        padded = label.new_full((out_h, out_w), IGNORE_INDEX)
        padded[:h, :w] = label
        label = padded
    return img, label


def random_crop(
    img: Tensor,
    label: Tensor | None,
    crop_size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Crop a random ``crop_size`` window (the input must be at least that large)."""
    h, w = img.shape[-2:]
    top = _randint(h - crop_size[0], generator)
    left = _randint(w - crop_size[1], generator)
    rows, cols = slice(top, top + crop_size[0]), slice(left, left + crop_size[1])
    img = img[..., rows, cols]
    return img, (label[rows, cols] if label is not None else None)


def to_uint8(img01: Tensor) -> Tensor:
    """A [0, 1] float image back to uint8 (rounded), as the loaders hand images over."""
    return img01.mul(255).round_().clamp_(0, 255).to(torch.uint8)


# --- the two loader transforms ---------------------------------------------------------


def labeled_transform(
    img_u8: Tensor,
    label: Tensor,
    crop_size: tuple[int, int],
    scale_size: tuple[float, float],
    generator: torch.Generator | None = None,
    *,
    photometric_aug: bool = True,
) -> tuple[Tensor, Tensor]:
    """Rescale by s ~ U(scale_size), pad, random crop, then colour jitter, blur and flip.

    The photometric ops and the flip are ``dataset.photometric.photometric_flip`` on a batch
    of one (the unlabeled batch goes through the same function on the device).
    ``photometric_aug=False`` skips jitter and blur but draws the same random numbers, so
    the geometry (and the label) is identical to the full transform with the same seed.
    """
    img, lbl = rescale(img_u8, label, _uniform(*scale_size, generator))
    img, lbl = pad_to(img, lbl, crop_size)
    img, lbl = random_crop(img, lbl, crop_size, generator)
    p = {} if photometric_aug else {"p_jitter": 0.0, "p_blur": 0.0}
    img01, (lbl,) = photometric_flip(img[None].float().div_(255), [lbl[None]], generator, **p)
    return to_uint8(img01[0]).contiguous(), lbl[0].contiguous()


def unlabeled_transform(
    img_u8: Tensor, crop_size: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """Reflect-pad if smaller than ``crop_size``, then crop a random window."""
    img, _ = pad_to(img_u8, None, crop_size)
    img, _ = random_crop(img, None, crop_size, generator)
    return img.contiguous()
