"""Mean teacher: a frozen copy of the student whose parameters follow an exponential moving average."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """Return a deep copy of ``student`` with every parameter frozen (``requires_grad=False``).

    Pass the unwrapped module (``model_without_ddp``), not the DDP wrapper.
    """
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def ema_decay(step: int, alpha: float) -> float:
    """Decay used at optimiser step ``step`` (counted from 0): ``min(1 - 1/(step+1), alpha)``."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, alpha: float) -> float:
    """In place ``teacher_p = decay * teacher_p + (1 - decay) * student_p``; returns the decay.

    Parameters only: buffers (BN running statistics) are left as they are. ``student`` must
    be the unwrapped module (``model_without_ddp``) so that its parameters pair up, in order,
    with the teacher's.
    """
    decay = ema_decay(step, alpha)
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(
            f"teacher has {len(t_params)} parameters, student {len(s_params)}: "
            "pass the unwrapped student (model_without_ddp)"
        )
    if t_params:  # one fused pass: t + (1 - decay) * (s - t)
        torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    return decay
