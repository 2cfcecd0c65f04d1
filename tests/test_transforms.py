"""Per-sample transforms: image and label move together, sizes, padding, randomness."""

import pytest
import torch
import torch.nn.functional as F

from dataset.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    labeled_transform,
    normalize,
    pad_to,
    random_crop,
    rescale,
    unlabeled_transform,
)

# well separated colours: a pixel's nearest colour tells its region
COLORS = torch.tensor(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]],
    dtype=torch.uint8,
)


def block_pattern(
    h: int, w: int, block: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A piecewise-constant image and its label (label = colour index of each block)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(len(COLORS), (h // block + 1, w // block + 1), generator=g)
    label = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w].contiguous()
    img = COLORS[label].permute(2, 0, 1).contiguous()
    return img, label


def coord_image(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image whose channels hold (row, col, 0) and label = row * w + col: every pixel unique."""
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    img = torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8)
    return img, rows * w + cols


def assert_aligned(img: torch.Tensor, label: torch.Tensor, min_fraction: float = 0.3) -> None:
    """Away from region borders, the image colour is the colour of the label there."""
    lab = label.float()[None, None]
    hi = F.max_pool2d(lab, 3, stride=1, padding=1)[0, 0]
    lo = -F.max_pool2d(-lab, 3, stride=1, padding=1)[0, 0]
    interior = (hi == lo) & (label >= 0)
    assert interior.sum() >= min_fraction * (label >= 0).sum(), "too few pixels to check"
    dist = (img.permute(1, 2, 0)[:, :, None, :].float() - COLORS.float()).abs().sum(-1)
    nearest = dist.argmin(-1)
    assert torch.equal(nearest[interior], label[interior])


# --- normalize -------------------------------------------------------------------------


def test_normalize_hand_values_uint8_float_and_batched():
    img = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    img[:, 0] = 255
    img[:, 1] = 0
    img[:, 2] = 51  # 0.2
    out = normalize(img)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    expected = [
        (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
        (0.2 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
    ]
    for c in range(3):
        assert torch.allclose(out[:, c], torch.full((2, 2, 2), expected[c]), atol=1e-6)
    assert torch.allclose(normalize(img.float() / 255), out, atol=1e-6)
    assert torch.allclose(normalize(img[0]), out[0], atol=1e-6)


# --- geometric steps -------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.37, 2.0])
def test_rescale_size_and_alignment(scale):
    img, label = block_pattern(40, 50)
    out_img, out_label = rescale(img, label, scale)
    size = (int(40 * scale), int(50 * scale))
    assert out_img.shape == (3, *size) and out_img.dtype == torch.uint8
    assert out_label.shape == size and out_label.dtype == torch.int64
    assert_aligned(out_img, out_label)


def test_rescale_label_is_nearest():
    _, label = coord_image(6, 7)
    _, up = rescale(torch.zeros(3, 6, 7, dtype=torch.uint8), label, 2.0)
    # doubling repeats every pixel twice in both directions
    assert torch.equal(up, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    _, down = rescale(torch.zeros(3, 6, 8, dtype=torch.uint8), coord_image(6, 8)[1], 0.5)
    # halving keeps one of each 2x2 block: no new values, one value per block
    assert down.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            r, c = divmod(int(down[i, j]), 8)
            assert r // 2 == i and c // 2 == j


def test_pad_small_pad_is_reflect_and_label_ignore():
    img = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8)
    label = torch.randint(0, 4, (5, 6))
    out_img, out_label = pad_to(img, label, (8, 9))
    ref = F.pad(img.float()[None], (0, 3, 0, 3), mode="reflect")[0].to(torch.uint8)
    assert torch.equal(out_img, ref)
    assert torch.equal(out_label[:5, :6], label)
    assert (out_label[5:] == -1).all() and (out_label[:, 6:] == -1).all()


def test_pad_larger_than_image_reflects_repeatedly():
    img = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 1, 3).expand(3, 1, 3)
    out_img, out_label = pad_to(img.contiguous(), torch.zeros(1, 3, dtype=torch.long), (2, 8))
    # columns a b c -> a b c b a b c b; the single row is replicated
    row = torch.tensor([10, 20, 30, 20, 10, 20, 30, 20], dtype=torch.uint8)
    assert torch.equal(out_img, row.view(1, 1, 8).expand(3, 2, 8))
    assert (out_label[0, :3] == 0).all() and (out_label[0, 3:] == -1).all()
    assert (out_label[1] == -1).all()


def test_pad_keeps_larger_images():
    img, label = coord_image(10, 12)
    out_img, out_label = pad_to(img, label, (4, 12))
    assert torch.equal(out_img, img) and torch.equal(out_label, label)


def test_random_crop_is_a_window_and_covers_every_offset():
    img, label = coord_image(12, 13)
    tops, lefts = set(), set()
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        c_img, c_label = random_crop(img, label, (10, 11), g)
        top, left = int(c_img[0, 0, 0]), int(c_img[1, 0, 0])
        assert torch.equal(c_img, img[:, top : top + 10, left : left + 11])
        assert torch.equal(c_label, label[top : top + 10, left : left + 11])
        tops.add(top)
        lefts.add(left)
    assert tops == {0, 1, 2} and lefts == {0, 1, 2}


# --- the loader transforms -------------------------------------------------------------


def test_labeled_transform_geometry_keeps_alignment():
    img, label = block_pattern(40, 50, seed=1)
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        out_img, out_label = labeled_transform(
            img, label, (32, 36), (0.5, 1.5), g, photometric_aug=False
        )
        assert out_img.shape == (3, 32, 36) and out_img.dtype == torch.uint8
        assert out_label.shape == (32, 36) and out_label.dtype == torch.int64
        assert_aligned(out_img, out_label, min_fraction=0.2)


def test_labeled_transform_geometry_does_not_depend_on_photometric():
    img, label = block_pattern(40, 50, seed=2)
    changed = 0
    for seed in range(10):
        full = labeled_transform(
            img, label, (24, 24), (0.5, 1.5), torch.Generator().manual_seed(seed)
        )
        geo = labeled_transform(
            img,
            label,
            (24, 24),
            (0.5, 1.5),
            torch.Generator().manual_seed(seed),
            photometric_aug=False,
        )
        assert torch.equal(full[1], geo[1])
        changed += not torch.equal(full[0], geo[0])
    assert changed > 0  # the photometric part does change the image


def test_labeled_transform_padding_is_ignore():
    img, label = block_pattern(20, 25)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        out_img, out_label = labeled_transform(
            img, label, (32, 36), (1.0, 1.0), g, photometric_aug=False
        )
        assert (out_label[20:] == -1).all()
        flipped = (out_label[:20, :11] == -1).all()
        kept = out_label[:20, 11:] if flipped else out_label[:20, :25]
        padded = out_label[:20, :11] if flipped else out_label[:20, 25:]
        assert (padded == -1).all() and (kept >= 0).all()
        assert int((out_label == -1).sum()) == 32 * 36 - 20 * 25
        expected = label.flip(-1) if flipped else label
        assert torch.equal(kept, expected)


def test_labeled_transform_flips_about_half_the_time():
    img, label = coord_image(6, 7)
    flips = 0
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        _, out_label = labeled_transform(img, label, (6, 7), (1.0, 1.0), g, photometric_aug=False)
        flipped = torch.equal(out_label, label.flip(-1))
        assert flipped or torch.equal(out_label, label)
        flips += flipped
    assert 70 < flips < 130


def test_labeled_transform_is_reproducible_from_the_seed():
    img, label = block_pattern(40, 50, seed=3)
    a = labeled_transform(img, label, (24, 24), (0.5, 1.5), torch.Generator().manual_seed(7))
    b = labeled_transform(img, label, (24, 24), (0.5, 1.5), torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [
        labeled_transform(img, label, (24, 24), (0.5, 1.5), torch.Generator().manual_seed(s))
        for s in range(8, 12)
    ]
    assert any(not torch.equal(a[0], o[0]) for o in others)
    out_img, out_label = labeled_transform(img, label, (24, 24), (0.5, 1.5))  # default generator
    assert out_img.shape == (3, 24, 24) and out_label.shape == (24, 24)


def test_unlabeled_transform_crops_and_pads():
    img, _ = coord_image(12, 13)
    for seed in range(5):
        out = unlabeled_transform(img, (10, 11), torch.Generator().manual_seed(seed))
        top, left = int(out[0, 0, 0]), int(out[1, 0, 0])
        assert torch.equal(out, img[:, top : top + 10, left : left + 11])
    small, _ = block_pattern(8, 9)
    out = unlabeled_transform(small, (12, 10), torch.Generator().manual_seed(0))
    ref = F.pad(small.float()[None], (0, 1, 0, 4), mode="reflect")[0].to(torch.uint8)
    assert out.shape == (3, 12, 10) and torch.equal(out, ref)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(unlabeled_transform(img, (5, 5), g1), unlabeled_transform(img, (5, 5), g2))
