"""utils/resize.py: bilinear resizing (align_corners=True) as two matrix products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils.resize import interpolation_matrix, resize_bilinear


def reference(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def test_interpolation_matrix_by_hand() -> None:
    """3 -> 5 with align_corners=True: outputs read positions 0, 0.5, 1, 1.5, 2."""
    expected = torch.tensor(
        [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]], dtype=torch.float64
    )
    got = interpolation_matrix(3, 5, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # one output reads the first input; one input is copied to every output
    one = interpolation_matrix(4, 1, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(one, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64))
    assert interpolation_matrix(1, 3, torch.float64, torch.device("cpu")).eq(1).all()


@pytest.mark.parametrize(
    "shape,size",
    [
        ((2, 6, 16, 16), (64, 64)),  # the demo's loss maps
        ((1, 2, 5, 7), (13, 4)),  # up in one direction, down in the other
        ((2, 1, 1, 1), (5, 5)),
        ((1, 3, 7, 9), (1, 1)),
        ((2, 21, 41, 41), (161, 161)),
    ],
)
def test_equals_interpolate_forward_and_backward(shape, size) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = resize_bilinear(x, size), reference(x_ref, size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)


def test_same_size_is_identity_and_autocast_keeps_float32() -> None:
    x = torch.randn(2, 3, 8, 8)
    assert resize_bilinear(x, (8, 8)) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = resize_bilinear(x, (20, 12))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(x, (20, 12)), rtol=0, atol=1e-5)
