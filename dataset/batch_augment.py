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
* the photometric ops are ``dataset.photometric`` (the labeled loader uses the same code): the
  colour-jitter order is drawn once per batch (torchvision draws it per image), the blur is a
  true 9-tap Gaussian (PIL approximates it with box filters); bilinear downscaling does not
  antialias (PIL's does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dataset.photometric import photometric_flip, uniform
from dataset.transforms import IMAGENET_MEAN
from utils.dist import all_gather_cat, get_rank, get_world_size
from utils.errors import UserError

MIX_MODES = ("cutmix", "cutout", "classmix", "none")


# ---------------------------------------------------------------- random draws


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device)


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
    scale = uniform(b, scale_size, generator, device)
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
