"""Tests of the one photometric implementation (dataset/photometric.py), used per batch for the
unlabeled strong augmentation and per sample (a batch of one) by the labeled loader.

Expected values come from torchvision's adjust_* / gaussian_blur on float images, from the
configured probabilities, and from invariants (maps move with the image under the flip).
"""

from __future__ import annotations

import pytest
import torch
from test_batch_augment import block_batch, conf_of, gen, tv_functional

from dataset.photometric import (
    BLUR_KERNEL_SIZE,
    BLUR_PROB,
    BLUR_SIGMA_RANGE,
    JITTER_PROB,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    photometric_flip,
    random_blur,
)
from dataset.transforms import labeled_transform, pad_to, random_crop, rescale, to_uint8


def assert_conf_follows_label(y: torch.Tensor, conf: torch.Tensor):
    assert torch.equal(conf, conf_of(y))


@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (adjust_brightness, "adjust_brightness", [0.75, 1.0, 1.25]),
        (adjust_contrast, "adjust_contrast", [0.75, 1.1, 1.25]),
        (adjust_saturation, "adjust_saturation", [0.75, 0.9, 1.25]),
        (adjust_hue, "adjust_hue", [-0.25, 0.1, 0.25]),
    ],
)
def test_colour_ops_match_torchvision_per_image(ours, theirs, factors):
    img = torch.rand(3, 3, 10, 12, generator=gen(40))
    img[0, :, :2] = 0.5  # grey pixels: zero chroma
    theirs = getattr(tv_functional(), theirs)
    out = ours(img, torch.tensor(factors))
    for i, factor in enumerate(factors):
        torch.testing.assert_close(
            out[i : i + 1], theirs(img[i : i + 1], factor), atol=2e-6, rtol=0
        )
        torch.testing.assert_close(ours(img[i : i + 1], torch.tensor([factor])), out[i : i + 1])


def test_gaussian_blur_matches_torchvision_and_tiny_sigma_is_identity():
    img = torch.rand(2, 3, 12, 14, generator=gen(41))
    sigmas = [0.3, 1.15]
    out = gaussian_blur(img, torch.tensor(sigmas))
    for i, sigma in enumerate(sigmas):
        expected = tv_functional().gaussian_blur(img[i : i + 1], [9, 9], [sigma, sigma])
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(gaussian_blur(img, torch.tensor([1e-3, 1e-3])), img)


def test_blur_and_jitter_are_applied_to_drawn_images_only():
    img = torch.rand(8, 3, 12, 14, generator=gen(42))
    assert torch.equal(random_blur(img, gen(0), p=0.0), img)
    assert torch.equal(color_jitter(img, gen(0), p=0.0), img)
    blurred = random_blur(img, gen(0), p=1.0)
    jittered = color_jitter(img, gen(0), p=1.0)
    assert all(not torch.equal(blurred[i], img[i]) for i in range(8))
    assert all(not torch.equal(jittered[i], img[i]) for i in range(8))
    some = color_jitter(img, gen(1), p=0.5)
    unchanged = [torch.equal(some[i], img[i]) for i in range(8)]
    assert any(unchanged) and not all(unchanged)


def test_flip_moves_image_and_maps_together():
    img, y = block_batch(b=8, seed=43)
    img_out, (y_out, c_out) = photometric_flip(
        img, [y, conf_of(y)], gen(44), p_jitter=0.0, p_blur=0.0, p_flip=0.5
    )
    flipped = []
    for i in range(8):
        f = torch.equal(y_out[i], y[i].flip(-1)) and not torch.equal(y_out[i], y[i])
        assert f or torch.equal(y_out[i], y[i])
        assert torch.equal(img_out[i], img[i].flip(-1) if f else img[i])
        flipped.append(f)
    assert any(flipped) and not all(flipped)
    assert_conf_follows_label(y_out, c_out)


def test_photometric_keeps_maps_and_clamps_image():
    img = torch.rand(4, 3, 12, 14, generator=gen(45))
    y = torch.randint(-1, 5, (4, 12, 14), generator=gen(46))
    img_out, (y_out, c_out) = photometric_flip(img, [y, conf_of(y)], gen(47), p_flip=0.0)
    assert torch.equal(y_out, y) and torch.equal(c_out, conf_of(y))
    assert img_out.min() >= 0 and img_out.max() <= 1


def test_blur_kernel_covers_three_sigma_for_every_sigma_drawn():
    assert 3 * max(BLUR_SIGMA_RANGE) <= BLUR_KERNEL_SIZE // 2


def test_jitter_and_blur_probabilities_are_the_configured_ones():
    """Over a large batch, the fraction of images each op changes is its probability."""
    n = 4000
    img = torch.rand(n, 3, 6, 6, generator=gen(60))
    jittered = color_jitter(img, gen(61))
    blurred = random_blur(img, gen(62))
    changed_j = (jittered != img).flatten(1).any(1).float().mean().item()
    changed_b = (blurred != img).flatten(1).any(1).float().mean().item()
    assert changed_j == pytest.approx(JITTER_PROB, abs=0.025)
    assert changed_b == pytest.approx(BLUR_PROB, abs=0.025)


def test_labeled_loader_photometric_is_the_batched_implementation_on_a_batch_of_one():
    """labeled_transform = rescale / pad / crop, then photometric_flip on a batch of one with
    the same generator, then back to uint8: the labeled and the unlabeled pipeline share it."""
    img, y = block_batch(b=1, h=40, w=48, seed=63)
    img_u8, label = to_uint8(img[0]), y[0]
    for seed in range(6):
        out_img, out_label = labeled_transform(img_u8, label, (32, 36), (0.5, 1.5), gen(seed))
        g = gen(seed)
        scale = 0.5 + 1.0 * float(torch.rand(1, generator=g))
        ref_img, ref_label = rescale(img_u8, label, scale)
        ref_img, ref_label = pad_to(ref_img, ref_label, (32, 36))
        ref_img, ref_label = random_crop(ref_img, ref_label, (32, 36), g)
        ref01, (ref_label,) = photometric_flip(ref_img[None].float() / 255, [ref_label[None]], g)
        assert torch.equal(out_img, to_uint8(ref01[0]))
        assert torch.equal(out_label, ref_label[0])
