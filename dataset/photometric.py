"""The one photometric augmentation (SPEC 4 step 3c and 6): colour jitter, Gaussian blur, flip.

Batched tensors only: ``img`` float ``[B, 3, H, W]`` in ``[0, 1]``. Both pipelines use it —
the labeled loader per sample (a batch of one, in the data-loader workers, see
``dataset.transforms.labeled_transform``) and the unlabeled strong augmentation per batch on
the device (``dataset.batch_augment.strong_augment``) — with the same constants.

Every random number comes from ``generator`` (on the batch's device) or, when it is ``None``,
from that device's default generator; the draws are the same whether or not an op applies:
jitter ``apply [B]``, three factors ``[B]`` each, hue ``[B]``, the op order (one permutation
per batch: per image for the labeled batch of one; torchvision draws one per image), then blur
``apply [B]`` and ``sigma [B]``, then ``flip [B]``.

Semantics follow torchvision's ``adjust_*`` on float images (brightness scales, contrast and
saturation blend with the mean luma / the luma, hue rotates in HSV); the blur is a true
Gaussian of ``BLUR_KERNEL_SIZE`` taps (radius 4 >= 3 sigma for every sigma drawn) with
reflect padding (PIL's in the paper code approximates it with box filters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

JITTER_PROB = 0.8
JITTER_RANGE = (0.75, 1.25)  # brightness, contrast, saturation factors
HUE_RANGE = (-0.25, 0.25)  # hue shift in turns
BLUR_PROB = 0.5
BLUR_SIGMA_RANGE = (0.15, 1.15)
BLUR_KERNEL_SIZE = 9  # radius 4 >= 3 * max(BLUR_SIGMA_RANGE)
FLIP_PROB = 0.5
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device)


def uniform(
    n: int, bounds: Sequence[float], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``n`` draws from U(bounds[0], bounds[1])."""
    low, high = float(bounds[0]), float(bounds[1])
    return low + (high - low) * _rand(n, generator, device)


def _nothing_applies(apply: Tensor) -> bool:
    """Skip the work when no image is drawn; only on the CPU, where asking costs no sync."""
    return apply.device.type == "cpu" and not bool(apply.any())


def _per_image(factor: Tensor) -> Tensor:
    return factor.reshape(-1, 1, 1, 1)


def _grayscale(img: Tensor) -> Tensor:
    """Luma ``[B, 1, H, W]`` of an RGB batch."""
    weights = torch.tensor(GRAY_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * weights).sum(dim=1, keepdim=True)


def _blend(img: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = _per_image(factor).to(img.dtype)
    return (f * img + (1 - f) * other).clamp(0, 1)


def adjust_brightness(img: Tensor, factor: Tensor) -> Tensor:
    """Per-image brightness: ``img * factor[b]``, clamped to [0, 1] (torchvision semantics)."""
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: Tensor, factor: Tensor) -> Tensor:
    """Per-image contrast: blend with the image's mean luma (torchvision semantics)."""
    return _blend(img, _grayscale(img).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(img: Tensor, factor: Tensor) -> Tensor:
    """Per-image saturation: blend with the image's luma (torchvision semantics)."""
    return _blend(img, _grayscale(img), factor)


def adjust_hue(img: Tensor, shift: Tensor) -> Tensor:
    """Per-image hue rotation by ``shift[b]`` turns (in [-0.5, 0.5]) in HSV space."""
    hue, sat, val = _rgb_to_hsv(img).unbind(dim=1)
    hue = (hue + shift.reshape(-1, 1, 1).to(img.dtype)) % 1.0
    return _hsv_to_rgb(hue, sat, val)


def _rgb_to_hsv(img: Tensor) -> Tensor:
    """RGB ``[B, 3, H, W]`` -> HSV with all three channels in [0, 1]."""
    r, g, b = img.unbind(dim=1)
    val = img.amax(dim=1)
    chroma = val - img.amin(dim=1)
    has_chroma = chroma > 0
    safe_chroma = torch.where(has_chroma, chroma, torch.ones_like(chroma))
    sat = torch.where(val > 0, chroma / torch.where(val > 0, val, torch.ones_like(val)), 0.0)
    hue_sector = torch.where(
        val == r,
        ((g - b) / safe_chroma) % 6,
        torch.where(val == g, (b - r) / safe_chroma + 2, (r - g) / safe_chroma + 4),
    )
    hue = torch.where(has_chroma, hue_sector / 6, 0.0)
    return torch.stack((hue, sat, val), dim=1)


def _hsv_to_rgb(hue: Tensor, sat: Tensor, val: Tensor) -> Tensor:
    """HSV maps ``[B, H, W]`` -> RGB ``[B, 3, H, W]`` (closed form with k = (n + 6h) mod 6)."""
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6 * hue) % 6
        ramp = torch.minimum(k, 4 - k).clamp(0, 1)
        channels.append(val - val * sat * ramp)
    return torch.stack(channels, dim=1)


def gaussian_blur(img: Tensor, sigma: Tensor, kernel_size: int = BLUR_KERNEL_SIZE) -> Tensor:
    """Per-image Gaussian blur with std ``sigma[b]``: separable depthwise conv, reflect padding.

    The kernel radius is ``kernel_size // 2``, reduced when the image is too small to reflect.
    """
    b, c, h, w = img.shape
    radius = min(kernel_size // 2, h - 1, w - 1)
    offsets = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.to(img.dtype)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, K]
    x = F.pad(img.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(x, kernel[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def color_jitter(
    img: Tensor, generator: torch.Generator | None = None, p: float = JITTER_PROB
) -> Tensor:
    """With probability ``p`` per image: brightness, contrast, saturation, hue jitter.

    Factors are drawn per image (``JITTER_RANGE``, hue shift ``HUE_RANGE``); the order of the
    four ops is one random permutation per batch. Reading that permutation is the one host
    sync of the augmentation.
    """
    b, device = img.shape[0], img.device
    apply = _rand(b, generator, device) < p
    factors = [uniform(b, JITTER_RANGE, generator, device) for _ in range(3)]
    factors.append(uniform(b, HUE_RANGE, generator, device))
    order = torch.randperm(4, generator=generator, device=device).tolist()
    if _nothing_applies(apply):
        return img
    ops: list[Callable[[Tensor, Tensor], Tensor]] = [
        adjust_brightness,
        adjust_contrast,
        adjust_saturation,
        adjust_hue,
    ]
    jittered = img
    for k in order:
        jittered = ops[k](jittered, factors[k])
    return torch.where(apply[:, None, None, None], jittered, img)


def random_blur(
    img: Tensor, generator: torch.Generator | None = None, p: float = BLUR_PROB
) -> Tensor:
    """With probability ``p`` per image: Gaussian blur with ``sigma ~ U(BLUR_SIGMA_RANGE)``."""
    b, device = img.shape[0], img.device
    apply = _rand(b, generator, device) < p
    sigma = uniform(b, BLUR_SIGMA_RANGE, generator, device)
    if _nothing_applies(apply):
        return img
    return torch.where(apply[:, None, None, None], gaussian_blur(img, sigma), img)


@torch.no_grad()
def photometric_flip(
    img: Tensor,
    maps: Sequence[Tensor],
    generator: torch.Generator | None = None,
    *,
    p_jitter: float = JITTER_PROB,
    p_blur: float = BLUR_PROB,
    p_flip: float = FLIP_PROB,
) -> tuple[Tensor, list[Tensor]]:
    """Colour jitter, Gaussian blur, horizontal flip (``maps [B, H, W]`` flipped too); the image
    clamped to [0, 1]. The probabilities default to the paper's; 0 switches a stage off and
    still draws its numbers."""
    img = color_jitter(img, generator, p_jitter)
    img = random_blur(img, generator, p_blur)
    flip = _rand(img.shape[0], generator, img.device) < p_flip
    img = torch.where(flip[:, None, None, None], img.flip(-1), img)
    maps = [torch.where(flip[:, None, None], m.flip(-1), m) for m in maps]
    return img.clamp(0, 1), maps
