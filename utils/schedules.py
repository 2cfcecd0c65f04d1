"""Learning-rate and loss-weight schedules (plain floats, per iteration / per epoch)."""

from __future__ import annotations

import math


def poly_lr(
    base_lr: float, it: int, total_iter: int, power: float = 0.9, min_lr: float = 1e-4
) -> float:
    """Poly schedule ``max(base_lr * (1 - it / total_iter) ** power, min_lr)``."""
    frac = max(0.0, 1.0 - it / total_iter)
    return max(base_lr * frac**power, min_lr)


def ramp_down(
    epoch: int,
    begin_epoch: int,
    max_epoch: int,
    max_value: float,
    min_value: float,
    ramp_mult: float = -5.0,
) -> float:
    """Contrastive weight: 0 before ``begin_epoch``; ``min_value`` from ``max_epoch`` on; between,
    ``max_value * exp(ramp_mult * ((epoch - begin) / (max_epoch - begin)) ** 2)`` clamped
    below at ``min_value``.
    """
    if epoch < begin_epoch:
        return 0.0
    if epoch >= max_epoch:
        return float(min_value)
    frac = (epoch - begin_epoch) / (max_epoch - begin_epoch)
    return max(max_value * math.exp(ramp_mult * frac**2), min_value)
