"""Tests of the batched strong augmentation (dataset/batch_augment.py).

Expected values come from independent references (torch.nn.functional.interpolate, numpy.pad,
Python's round) or from invariants: the label of a pixel
must stay the label encoded by its colour, a confidence built as f(label) must stay f(label).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dataset.batch_augment import (
    IMAGENET_MEAN,
    MIX_MODES,
    cut_box,
    mix,
    random_rescale_crop,
    strong_augment,
)
from dataset.photometric import photometric_flip
from utils.errors import UserError

FILLS = (-1, 0.0)
# distinct colours, none of them the ImageNet mean used by CutOut
PALETTE = torch.tensor(
    [
        [0.9, 0.1, 0.1],
        [0.1, 0.9, 0.1],
        [0.1, 0.1, 0.9],
        [0.9, 0.9, 0.1],
        [0.1, 0.9, 0.9],
        [0.9, 0.1, 0.9],
    ]
)


def tv_functional():
    """torchvision's v2 functional ops, imported lazily: spawned workers skip its import time."""
    import torchvision.transforms.v2.functional as tv_f

    return tv_f


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conf_of(y: torch.Tensor) -> torch.Tensor:
    """A confidence that is a function of the label; 0 (its fill) exactly where y is -1."""
    return (y + 1).float() / 10


def block_batch(b: int = 4, h: int = 32, w: int = 40, block: int = 8, seed: int = 0):
    """Random piecewise-constant labels (blocks) and an image whose colour encodes the label."""
    blocks = torch.randint(0, len(PALETTE), (b, h // block, w // block), generator=gen(seed))
    y = blocks.repeat_interleave(block, 1).repeat_interleave(block, 2)
    img = PALETTE[y].permute(0, 3, 1, 2).contiguous()
    return img, y


def assert_colour_encodes_label(img: torch.Tensor, y: torch.Tensor, min_checked: float = 0.3):
    """Wherever the image shows a pure palette colour and y is not ignore, y is that colour's class."""
    dist_to_palette = (img.permute(0, 2, 3, 1)[..., None, :] - PALETTE).abs().amax(-1)
    min_dist, colour_class = dist_to_palette.min(-1)
    checked = (y != -1) & (min_dist < 1e-4)
    assert checked.float().mean() > min_checked, "too few pixels checked"
    assert torch.equal(colour_class[checked], y[checked])


def assert_conf_follows_label(y: torch.Tensor, conf: torch.Tensor):
    assert torch.equal(conf, conf_of(y))


# ---------------------------------------------------------------- a. rescale / pad / crop


def test_rescale_crop_with_scale_one_is_identity():
    img, y = torch.rand(3, 3, 12, 16, generator=gen(1)), torch.randint(-1, 5, (3, 12, 16))
    img_out, (y_out, c_out) = random_rescale_crop(img, [y, conf_of(y)], FILLS, (12, 16), (1.0, 1.0))
    assert torch.equal(y_out, y)
    assert torch.equal(c_out, conf_of(y))
    torch.testing.assert_close(img_out, img, atol=1e-6, rtol=0)


def test_rescale_up_is_interpolate_then_a_crop_at_the_same_offset():
    b, h, w = 4, 12, 16
    img = torch.rand(b, 3, h, w, generator=gen(2))
    y = torch.randint(0, 200, (b, h, w), generator=gen(3))  # per-pixel random: offsets unique
    img_out, (y_out,) = random_rescale_crop(img, [y], [-1], (h, w), (2.0, 2.0), gen(4))
    y_big = y.repeat_interleave(2, 1).repeat_interleave(2, 2)  # nearest x2
    img_big = F.interpolate(img, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    offsets = set()
    for i in range(b):
        found = [
            (top, left)
            for top, left in itertools.product(range(h + 1), range(w + 1))
            if torch.equal(y_out[i], y_big[i, top : top + h, left : left + w])
        ]
        assert len(found) == 1
        top, left = found[0]
        offsets.add(found[0])
        expected = img_big[i, :, top : top + h, left : left + w]
        torch.testing.assert_close(img_out[i], expected, atol=1e-5, rtol=0)
    assert len(offsets) > 1  # each image draws its own crop


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_rescale_down_pads_maps_with_fill_and_image_with_reflection(scale: float):
    b, h, w = 2, 32, 40
    img = torch.rand(b, 3, h, w, generator=gen(5))
    y = torch.randint(0, 21, (b, h, w), generator=gen(6))
    img_out, (y_out, c_out) = random_rescale_crop(
        img, [y, conf_of(y)], FILLS, (h, w), (scale, scale), gen(7)
    )
    hr, wr = int(h * scale), int(w * scale)
    y_small = F.interpolate(y[:, None].float(), size=(hr, wr), mode="nearest-exact")[:, 0].long()
    img_small = F.interpolate(img, size=(hr, wr), mode="bilinear", align_corners=False)
    # padding goes bottom / right, so the crop starts at (0, 0)
    assert torch.equal(y_out[:, :hr, :wr], y_small)
    assert (y_out[:, hr:] == -1).all() and (y_out[:, :, wr:] == -1).all()
    assert (c_out[:, hr:] == 0).all() and (c_out[:, :, wr:] == 0).all()
    assert_conf_follows_label(y_out, c_out)
    pad = ((0, 0), (0, 0), (0, h - hr), (0, w - wr))
    expected = torch.from_numpy(np.pad(img_small.numpy(), pad, mode="reflect"))
    torch.testing.assert_close(img_out, expected, atol=1e-5, rtol=0)


def test_rescale_down_by_half_is_two_by_two_average_in_the_image():
    img = torch.rand(1, 3, 8, 12, generator=gen(8))
    y = torch.arange(96).reshape(1, 8, 12)
    img_out, (y_out,) = random_rescale_crop(img, [y], [-1], (8, 12), (0.5, 0.5))
    torch.testing.assert_close(img_out[..., :4, :6], F.avg_pool2d(img, 2), atol=1e-6, rtol=0)
    assert torch.equal(y_out[:, :4, :6], y[:, 1::2, 1::2])  # nearest pixel centres
    assert torch.equal(img_out[..., 4, :6], img_out[..., 2, :6])  # reflection, no edge repeat


def test_rescale_crop_output_has_crop_size_and_stays_aligned():
    img, y = block_batch(b=4, h=24, w=32, block=4, seed=9)
    img_out, (y_out, c_out) = random_rescale_crop(
        img, [y, conf_of(y)], FILLS, (20, 28), (0.5, 1.5), gen(10)
    )
    assert img_out.shape == (4, 3, 20, 28) and y_out.shape == c_out.shape == (4, 20, 28)
    assert_colour_encodes_label(img_out, y_out)
    assert_conf_follows_label(y_out, c_out)


# ---------------------------------------------------------------- b. mixing


def box_of(mask: torch.Tensor) -> tuple[int, int]:
    """Height and width of the rectangle that ``mask`` [H, W] must be exactly."""
    rows = mask.any(1).nonzero()[:, 0]
    cols = mask.any(0).nonzero()[:, 0]
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    rect = torch.zeros_like(mask)
    rect[top:bottom, left:right] = True
    assert torch.equal(mask, rect), "mixed region is not a rectangle"
    return int(bottom - top), int(right - left)


def assert_half_area_box(mask: torch.Tensor):
    h, w = mask.shape
    box_h, box_w = box_of(mask)
    assert w // 2 + 1 <= box_w <= w - 1
    assert box_h == round(h * w / 2 / box_w)  # Python rounds half to even, as np.round
    assert abs(box_h * box_w - h * w / 2) <= box_w / 2


@pytest.mark.parametrize("size", [(32, 40), (33, 41), (9, 7)])
def test_cut_box_width_range_and_half_area(size: tuple[int, int]):
    h, w = size
    boxes = cut_box(300, h, w, gen(11))
    widths = []
    for mask in boxes:
        assert_half_area_box(mask)
        widths.append(box_of(mask)[1])
    assert min(widths) == w // 2 + 1 and max(widths) == w - 1  # whole range is reached
    corners = {tuple(m.nonzero()[0].tolist()) for m in boxes}
    assert len(corners) > 5  # top-left varies


def test_cutmix_pastes_a_half_area_box_from_the_next_image():
    b, h, w = 4, 32, 40
    img = torch.rand(b, 3, h, w, generator=gen(12))
    y = torch.arange(b)[:, None, None].expand(b, h, w).clone()  # label = image index
    img_out, (y_out, c_out) = mix(img, [y, conf_of(y)], FILLS, "cutmix", 0, gen(13))
    for i in range(b):
        partner = (i + 1) % b
        from_partner = y_out[i] == partner
        assert ((y_out[i] == i) | from_partner).all()
        assert_half_area_box(from_partner)
        expected = torch.where(from_partner, img[partner], img[i])
        assert torch.equal(img_out[i], expected)
    assert_conf_follows_label(y_out, c_out)


def test_cutout_sets_mean_colour_ignore_and_zero_confidence_in_a_box():
    b, h, w = 4, 32, 40
    img = torch.rand(b, 3, h, w, generator=gen(14))
    y = torch.randint(0, 21, (b, h, w), generator=gen(15))
    img_out, (y_out, c_out) = mix(img, [y, conf_of(y)], FILLS, "cutout", 0, gen(16))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    for i in range(b):
        box = y_out[i] == -1
        assert_half_area_box(box)
        assert (c_out[i][box] == 0).all()
        assert torch.equal(img_out[i], torch.where(box, mean, img[i]))
        assert torch.equal(y_out[i][~box], y[i][~box])
        assert torch.equal(c_out[i][~box], conf_of(y)[i][~box])


def classmix_batch():
    """Four 16x20 label maps with known class sets (ignore -1 excluded from the count)."""
    class_sets = [[0, 1, 2, 3, 4], [2, 5, 7], [1], [0, 1, 2, 3, 4, 5]]
    ys = []
    for k, classes in enumerate(class_sets):
        pool = torch.tensor([*classes, -1])
        y = pool[torch.randint(0, len(pool), (16, 20), generator=gen(20 + k))]
        y.view(-1)[: len(pool)] = pool  # every class (and ignore) present
        ys.append(y)
    img = torch.rand(4, 3, 16, 20, generator=gen(30))
    return img, torch.stack(ys), class_sets


def test_classmix_pastes_exactly_half_of_the_partner_classes():
    img, y, class_sets = classmix_batch()
    b = img.shape[0]
    chosen_sets = {i: set() for i in range(b)}
    for seed in range(12):
        img_out, (y_out, c_out) = mix(img, [y, conf_of(y)], FILLS, "classmix", 0, gen(seed))
        for i in range(b):
            p = (i + 1) % b
            pasted = (img_out[i] == img[p]).all(0) & (img_out[i] != img[i]).all(0)
            kept = (img_out[i] == img[i]).all(0)
            assert (pasted | kept).all()
            chosen = torch.unique(y[p][pasted])
            assert -1 not in chosen.tolist()
            assert len(chosen) == len(class_sets[p]) // 2
            assert torch.equal(pasted, torch.isin(y[p], chosen))
            assert torch.equal(y_out[i], torch.where(pasted, y[p], y[i]))
            chosen_sets[i].add(tuple(chosen.tolist()))
        assert_conf_follows_label(y_out, c_out)
    assert len(chosen_sets[3]) > 3  # partner 0 has 5 classes: the pair chosen varies
    assert chosen_sets[1] == {()}  # partner 2 has one class: nothing pasted


def test_mix_none_is_identity_and_bad_mode_is_a_user_error():
    img, y = block_batch()
    img_out, (y_out,) = mix(img, [y], [-1], "none")
    assert torch.equal(img_out, img) and torch.equal(y_out, y)
    with pytest.raises(UserError, match="mix_mode"):
        mix(img, [y], [-1], "mixup")


# ---------------------------------------------------------------- the whole chain


@pytest.mark.parametrize("mode", MIX_MODES)
def test_colour_and_maps_stay_aligned_through_all_stages(mode: str):
    img, y = block_batch(b=4, seed=50)
    maps = [y, conf_of(y)]
    img, maps = random_rescale_crop(img, maps, FILLS, (24, 32), (0.5, 1.5), gen(51))
    assert_colour_encodes_label(img, maps[0])
    img, maps = mix(img, maps, FILLS, mode, 0, gen(52))
    assert_colour_encodes_label(img, maps[0], min_checked=0.2)
    img, maps = photometric_flip(img, maps, gen(53), p_jitter=0.0, p_blur=0.0, p_flip=1.0)
    assert_colour_encodes_label(img, maps[0], min_checked=0.2)
    assert_conf_follows_label(*maps)


@pytest.mark.parametrize("mode", MIX_MODES)
def test_strong_augment_shapes_confidence_follows_label_and_determinism(mode: str):
    img, y = block_batch(b=4, seed=60)
    kwargs = dict(crop_size=(24, 28), scale_size=(0.5, 1.5), mix_mode=mode)
    img_a, (y_a, c_a) = strong_augment(img, [y, conf_of(y)], FILLS, generator=gen(61), **kwargs)
    img_b, (y_b, c_b) = strong_augment(img, [y, conf_of(y)], FILLS, generator=gen(61), **kwargs)
    img_c, (y_c, _) = strong_augment(img, [y, conf_of(y)], FILLS, generator=gen(62), **kwargs)
    assert img_a.shape == (4, 3, 24, 28) and y_a.shape == c_a.shape == (4, 24, 28)
    assert y_a.dtype == torch.int64 and c_a.dtype == torch.float32
    assert_conf_follows_label(y_a, c_a)
    assert torch.equal(img_a, img_b) and torch.equal(y_a, y_b) and torch.equal(c_a, c_b)
    assert not (torch.equal(img_a, img_c) and torch.equal(y_a, y_c))
    assert img_a.min() >= 0 and img_a.max() <= 1


# ---------------------------------------------------------------- two processes


def _images_of(global_index: int) -> torch.Tensor:
    return torch.rand(3, 8, 10, generator=gen(100 + global_index))


def _cutmix_worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        b = 2
        globals_ = [rank * b + i for i in range(b)]
        img = torch.stack([_images_of(g) for g in globals_])
        y = torch.tensor(globals_)[:, None, None].expand(b, 8, 10).clone()
        img_out, (y_out,) = mix(img, [y], [-1], "cutmix", 0, gen(rank))
        torch.save({"img": img_out, "y": y_out}, f"{tmp}/out{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_cutmix_partner_is_next_global_image_across_two_processes(tmp_path):
    world, b = 2, 2
    mp.spawn(_cutmix_worker, args=(world, str(tmp_path)), nprocs=world, join=True)
    n = world * b
    for rank in range(world):
        out = torch.load(tmp_path / f"out{rank}.pt")
        for i in range(b):
            g = rank * b + i
            partner = (g + 1) % n  # rank 0's last image pairs with rank 1's first, and back
            from_partner = out["y"][i] == partner
            assert ((out["y"][i] == g) | from_partner).all()
            assert_half_area_box(from_partner)
            expected = torch.where(from_partner, _images_of(partner), _images_of(g))
            assert torch.equal(out["img"][i], expected)
