"""Strong augmentation of the unlabeled batch, on the batch's device (SPEC section 4, step 3).

The engine calls :func:`strong_augment` after the teacher produced pseudo-labels. It works on
tensors only (no PIL, no numpy, no host copies) and moves the image and every per-pixel map
together:

* ``img``: float ``[B, 3, H, W]`` in ``[0, 1]``, not normalised (the engine normalises later);
* ``maps``: per-pixel maps ``[B, H, W]`` of any dtype (``y_cls`` int64 with -1 = ignore,
  ``conf_cls`` float, ...), each padded / cut out with its own value from ``fills``.

Every random number comes from ``generator`` (a ``torch.Generator`` on the batch's device), or
from the default generator of that device when it is ``None``, so a run is reproducible from the
RNG state. Differences from the paper code (all deliberate):

* it ran PIL per image after a GPU -> CPU copy and stored confidences as 8-bit images; here
  everything stays in tensors, confidences unquantised;
* mixing pairs image ``g`` with ``(g + 1) mod N`` over the batch gathered from all processes
  (the paper wrapped the partner index inside one process's batch);
* ClassMix pastes half of the *partner's* classes (ignore excluded) onto image ``i``; the paper
  kept half of image ``i``'s classes (ignore counted as a class) over the partner;
* the colour-jitter order is drawn once per batch (torchvision draws it per image); the blur is a
  true 9-tap Gaussian (PIL approximates it with box filters); bilinear downscaling does not
  antialias (PIL's does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dataset.transforms import BLUR_SIGMA_RANGE, HUE_RANGE, IMAGENET_MEAN, JITTER_RANGE
from utils.dist import all_gather_cat, get_rank, get_world_size
from utils.errors import UserError

MIX_MODES = ("cutmix", "cutout", "classmix", "none")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
BLUR_KERNEL_SIZE = 9


# ---------------------------------------------------------------- random draws


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device)


def _uniform(
    n: int, bounds: Sequence[float], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``n`` draws from U(bounds[0], bounds[1])."""
    low, high = float(bounds[0]), float(bounds[1])
    return low + (high - low) * _rand(n, generator, device)


def _randint_below(high: Tensor, generator: torch.Generator | None) -> Tensor:
    """One integer uniform in ``[0, high[b])`` per entry of the int64 tensor ``high`` (>= 1)."""
    u = _rand(high.numel(), generator, high.device).reshape(high.shape)
    return torch.minimum((u * high).floor().long(), high - 1)


# ---------------------------------------------------------------- a. rescale, pad, crop


def _reflect(idx: Tensor, size: Tensor) -> Tensor:
    """Reflect non-negative indices into ``[0, size)`` without repeating the edge (numpy "reflect")."""
    period = (2 * (size - 1)).clamp(min=1)
    m = idx % period
    return torch.where(m < size, m, period - m)


def _nearest_source(idx: Tensor, size: Tensor, src_size: int) -> Tensor:
    """Source index of resized index ``idx`` for a resize ``src_size -> size`` (pixel centres)."""
    return torch.clamp(((2 * idx + 1) * src_size) // (2 * size), max=src_size - 1)


@torch.no_grad()
def random_rescale_crop(
    img: Tensor,
    maps: Sequence[Tensor],
    fills: Sequence[float],
    crop_size: tuple[int, int],
    scale_size: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Rescale each image by its own ``s ~ U(scale_size)``, pad to ``crop_size``, random crop.

    As the paper code: the rescaled size is ``floor(H*s) x floor(W*s)``; padding goes to the
    bottom and right (image reflect-padded, each map padded with its fill); the crop's top-left
    corner is uniform over the valid positions. The image is resampled bilinearly
    (``align_corners=False``), maps by nearest pixel centre. Output is always ``crop_size``.
    """
    _check_maps(img, maps, fills)
    b, _, h, w = img.shape
    crop_h, crop_w = crop_size
    device = img.device
    scale = _uniform(b, scale_size, generator, device)
    size_h = (h * scale).floor().long().clamp(min=1)[:, None]  # [B, 1]
    size_w = (w * scale).floor().long().clamp(min=1)[:, None]
    top = _randint_below((size_h - crop_h).clamp(min=0) + 1, generator)
    left = _randint_below((size_w - crop_w).clamp(min=0) + 1, generator)
    # coordinates of the crop in the rescaled, padded image: [B, crop_h] and [B, crop_w]
    rows = top + torch.arange(crop_h, device=device)
    cols = left + torch.arange(crop_w, device=device)

    img_out = _sample_image(img, _reflect(rows, size_h), size_h, _reflect(cols, size_w), size_w)
    inside = (rows < size_h)[:, :, None] & (cols < size_w)[:, None, :]
    src = (
        _nearest_source(rows.clamp(max=size_h - 1), size_h, h)[:, :, None] * w
        + _nearest_source(cols.clamp(max=size_w - 1), size_w, w)[:, None, :]
    ).reshape(b, -1)
    maps_out = [
        m.reshape(b, -1).gather(1, src).reshape(b, crop_h, crop_w).masked_fill(~inside, fill)
        for m, fill in zip(maps, fills)
    ]
    return img_out, maps_out


def _sample_image(
    img: Tensor, rows: Tensor, size_h: Tensor, cols: Tensor, size_w: Tensor
) -> Tensor:
    """Bilinear resize of ``img`` to ``size_h x size_w`` per image, read at ``rows x cols``.

    A resized pixel ``r`` reads the source at ``(r + 0.5) * H / size_h - 0.5`` (clamped to the
    border), which in ``grid_sample``'s normalised coordinates is ``(2r + 1) / size_h - 1``.
    """
    b = img.shape[0]
    gy = (2 * rows + 1).to(img.dtype) / size_h.to(img.dtype) - 1  # [B, crop_h]
    gx = (2 * cols + 1).to(img.dtype) / size_w.to(img.dtype) - 1  # [B, crop_w]
    grid = torch.stack(
        (
            gx[:, None, :].expand(b, gy.shape[1], gx.shape[1]),
            gy[:, :, None].expand(b, gy.shape[1], gx.shape[1]),
        ),
        dim=-1,
    )
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------- b. mixing


def cut_box(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Boolean masks ``[B, H, W]``, each a box of about half the image area (ReCo cutout mask).

    Width ``w`` uniform in ``[W//2 + 1, W - 1]`` (both inclusive, as ``randint(W/2 + 1, W)``
    in the paper code; ``w = W`` when ``W <= 2``), height ``h = round(H*W / 2 / w)`` (half to
    even, as ``np.round``) clamped to ``[1, H]``, top-left uniform among positions that fit.
    """
    device = torch.device(device)
    w_low = min(width // 2 + 1, width)
    w_span = max(width - w_low, 1)
    w = w_low + _randint_below(torch.full((batch_size,), w_span, device=device), generator)
    h = _round_half_even_div(height * width, 2 * w).clamp(1, height)
    x0 = _randint_below(width - w + 1, generator)
    y0 = _randint_below(height - h + 1, generator)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    in_rows = (ys >= y0[:, None]) & (ys < (y0 + h)[:, None])
    in_cols = (xs >= x0[:, None]) & (xs < (x0 + w)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def _round_half_even_div(num: int, den: Tensor) -> Tensor:
    """``round(num / den)`` with ties to even, exactly in integers (``den`` > 0, int64)."""
    q = num // den
    r = num - q * den
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up.long()


def class_mask(y: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Boolean ``[B, H, W]``: pixels of ``floor(n/2)`` classes drawn at random per image.

    ``n`` counts the classes present in ``y[b]`` (negative labels, i.e. ignore, excluded).
    Batched without knowing the number of classes: per image, sort the labels, give every
    distinct class a random key, keep the ``floor(n/2)`` smallest keys, spread the choice over
    each class's run of pixels and unsort.
    """
    b = y.shape[0]
    flat = y.reshape(b, -1)
    n_pix = flat.shape[1]
    y_sorted, order = flat.sort(dim=1)
    run_start = torch.ones_like(y_sorted, dtype=torch.bool)
    run_start[:, 1:] = y_sorted[:, 1:] != y_sorted[:, :-1]
    is_class = run_start & (y_sorted >= 0)
    n_classes = is_class.sum(dim=1, keepdim=True)
    keys = torch.rand(flat.shape, generator=generator, device=y.device).masked_fill(~is_class, 2.0)
    key_rank = keys.argsort(dim=1).argsort(dim=1)
    chosen_start = is_class & (key_rank < n_classes // 2)
    pos = torch.arange(n_pix, device=y.device).expand(b, n_pix)
    start_of_run = torch.where(run_start, pos, 0).cummax(dim=1).values
    chosen_sorted = chosen_start.gather(1, start_of_run)
    chosen = torch.empty_like(chosen_sorted).scatter_(1, order, chosen_sorted)
    return chosen.reshape(y.shape)


def partner_batch(img: Tensor, maps: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Each local image's mixing partner: global index ``g = rank*B + i`` pairs with
    ``(g + 1) mod (world_size * B)`` in the batch gathered over all processes.

    Every process must hold the same batch size and shapes. In one process: ``(i + 1) mod B``.
    """
    b = img.shape[0]
    first = get_rank() * b
    partner = (first + torch.arange(b, device=img.device) + 1) % (get_world_size() * b)
    img_p = all_gather_cat(img).index_select(0, partner)
    maps_p = [all_gather_cat(m).index_select(0, partner) for m in maps]
    return img_p, maps_p


@torch.no_grad()
def mix(
    img: Tensor,
    maps: Sequence[Tensor],
    fills: Sequence[float],
    mode: str,
    class_map: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Mix the batch: ``cutmix``, ``cutout``, ``classmix`` or ``none``.

    * ``cutmix``: inside a half-area box (:func:`cut_box`), image and maps come from the partner;
    * ``cutout``: inside the box the image becomes the ImageNet mean colour (0 once normalised,
      as in the paper code) and every map its fill;
    * ``classmix``: the partner's pixels whose ``maps[class_map]`` label belongs to half of the
      partner's classes (:func:`class_mask`) are pasted, image and all maps.

    Partners follow :func:`partner_batch` (collective: every process must call this together,
    except for ``cutout`` / ``none``). Each process draws its own boxes / classes.
    """
    _check_maps(img, maps, fills)
    if mode not in MIX_MODES:
        raise UserError(f"mix_mode: got {mode!r}, expected one of {', '.join(MIX_MODES)}")
    if mode == "none":
        return img, list(maps)
    b, _, h, w = img.shape
    if mode == "cutout":
        box = cut_box(b, h, w, generator, img.device)
        mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
        img_out = torch.where(box[:, None], mean, img)
        return img_out, [m.masked_fill(box, fill) for m, fill in zip(maps, fills)]
    if not 0 <= class_map < len(maps):
        raise ValueError(f"class_map {class_map} does not index the {len(maps)} maps")
    img_p, maps_p = partner_batch(img, maps)
    if mode == "cutmix":
        paste = cut_box(b, h, w, generator, img.device)
    else:
        paste = class_mask(maps_p[class_map], generator)
    img_out = torch.where(paste[:, None], img_p, img)
    return img_out, [torch.where(paste, m_p, m) for m, m_p in zip(maps, maps_p)]


# ---------------------------------------------------------------- c. photometric and flip


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


def color_jitter(img: Tensor, generator: torch.Generator | None = None, p: float = 0.8) -> Tensor:
    """With probability ``p`` per image: brightness, contrast, saturation, hue jitter.

    Factors are drawn per image (``U(0.75, 1.25)``, hue shift ``U(-0.25, 0.25)``); the order of
    the four ops is one random permutation per batch (torchvision draws one per image). Reading
    that permutation is the one host sync of the augmentation.
    """
    b, device = img.shape[0], img.device
    apply = _rand(b, generator, device) < p
    factors = [_uniform(b, JITTER_RANGE, generator, device) for _ in range(3)]
    factors.append(_uniform(b, HUE_RANGE, generator, device))
    ops: list[Callable[[Tensor, Tensor], Tensor]] = [
        adjust_brightness,
        adjust_contrast,
        adjust_saturation,
        adjust_hue,
    ]
    jittered = img
    for k in torch.randperm(4, generator=generator, device=device).tolist():
        jittered = ops[k](jittered, factors[k])
    return torch.where(apply[:, None, None, None], jittered, img)


def random_blur(img: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """With probability ``p`` per image: Gaussian blur with ``sigma ~ U(0.15, 1.15)``."""
    b, device = img.shape[0], img.device
    apply = _rand(b, generator, device) < p
    sigma = _uniform(b, BLUR_SIGMA_RANGE, generator, device)
    return torch.where(apply[:, None, None, None], gaussian_blur(img, sigma), img)


@torch.no_grad()
def photometric_flip(
    img: Tensor,
    maps: Sequence[Tensor],
    generator: torch.Generator | None = None,
    *,
    p_jitter: float = 0.8,
    p_blur: float = 0.5,
    p_flip: float = 0.5,
) -> tuple[Tensor, list[Tensor]]:
    """Colour jitter, Gaussian blur, horizontal flip (maps flipped too); image clamped to [0, 1].

    The probabilities default to the paper's; tests switch stages off with them.
    """
    img = color_jitter(img, generator, p_jitter)
    img = random_blur(img, generator, p_blur)
    flip = _rand(img.shape[0], generator, img.device) < p_flip
    img = torch.where(flip[:, None, None, None], img.flip(-1), img)
    maps = [torch.where(flip[:, None, None], m.flip(-1), m) for m in maps]
    return img.clamp(0, 1), maps


# ---------------------------------------------------------------- the whole chain


@torch.no_grad()
def strong_augment(
    img: Tensor,
    maps: Sequence[Tensor],
    fills: Sequence[float],
    *,
    crop_size: tuple[int, int],
    scale_size: tuple[float, float],
    mix_mode: str,
    class_map: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Rescale-pad-crop, mix across the (gathered) batch, then photometric ops and flip.

    ``maps[class_map]`` is the pseudo-label that ClassMix reads. Collective when mixing with a
    partner: in distributed runs every process must call it with the same shapes.
    """
    img, maps = random_rescale_crop(img, maps, fills, crop_size, scale_size, generator)
    img, maps = mix(img, maps, fills, mix_mode, class_map, generator)
    return photometric_flip(img, maps, generator)


def _check_maps(img: Tensor, maps: Sequence[Tensor], fills: Sequence[float]) -> None:
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"img must be [B, 3, H, W], got {tuple(img.shape)}")
    if len(maps) != len(fills):
        raise ValueError(f"{len(maps)} maps but {len(fills)} fills")
    for m in maps:
        if m.shape != (img.shape[0], *img.shape[2:]):
            raise ValueError(f"map of shape {tuple(m.shape)} does not match img {tuple(img.shape)}")
