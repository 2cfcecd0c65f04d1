"""Poly learning rate and contrastive-weight ramp-down: hand-computed values."""

import math

import pytest

from utils.schedules import poly_lr, ramp_down


def test_poly_lr_start_middle_end():
    assert poly_lr(0.01, 0, 100) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)  # 0.0053589
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.0053589, rel=1e-4)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01**0.9)  # 1.58e-4 > min_lr
    assert poly_lr(0.01, 100, 100) == pytest.approx(1e-4)


def test_poly_lr_min_lr_and_power():
    assert poly_lr(6.4e-3, 90, 100, min_lr=1e-3) == pytest.approx(1e-3)
    assert poly_lr(1.0, 75, 100, power=2.0, min_lr=0.0) == pytest.approx(0.0625)


def test_ramp_down_values():
    # begin 0, max 10: 1 at start, exp(-5/4) in the middle, exp(-5*0.81) at 9, min_value at 10
    assert ramp_down(0, 0, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert ramp_down(5, 0, 10, 1.0, 0.0) == pytest.approx(math.exp(-1.25))
    assert ramp_down(5, 0, 10, 1.0, 0.0) == pytest.approx(0.2865048, rel=1e-6)
    assert ramp_down(9, 0, 10, 1.0, 0.0) == pytest.approx(math.exp(-4.05))
    assert ramp_down(10, 0, 10, 1.0, 0.0) == 0.0
    assert ramp_down(25, 0, 10, 1.0, 0.0) == 0.0


def test_ramp_down_clamp_begin_and_multiplier():
    assert ramp_down(9, 0, 10, 1.0, 0.1) == pytest.approx(0.1)  # exp(-4.05) = 0.017 < 0.1
    assert ramp_down(10, 0, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert ramp_down(1, 2, 10, 2.0, 0.1) == 0.0  # before begin_epoch
    assert ramp_down(2, 2, 10, 2.0, 0.1) == pytest.approx(2.0)
    assert ramp_down(6, 2, 10, 2.0, 0.0) == pytest.approx(2.0 * math.exp(-1.25))
    assert ramp_down(6, 2, 10, 2.0, 0.0, ramp_mult=-1.0) == pytest.approx(2.0 * math.exp(-0.25))
