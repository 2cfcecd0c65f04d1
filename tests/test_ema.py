"""Mean teacher: decay sequence, parameter values, buffers left alone."""

import pytest
import torch
from torch import nn

from utils.ema import ema_decay, ema_update, make_teacher


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def fill_params(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_make_teacher_is_frozen_independent_copy():
    student = tiny_model()
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)
        assert t.data_ptr() != s.data_ptr()
    fill_params(student, 5.0)
    assert not any(torch.all(t == 5.0) for t in teacher.parameters())


def test_decay_sequence_values():
    alpha = 0.99
    assert ema_decay(0, alpha) == 0.0
    assert ema_decay(1, alpha) == pytest.approx(1 / 2)
    assert ema_decay(2, alpha) == pytest.approx(2 / 3)
    assert ema_decay(3, alpha) == pytest.approx(3 / 4)
    assert ema_decay(98, alpha) == pytest.approx(98 / 99)
    assert ema_decay(99, alpha) == pytest.approx(0.99)
    assert ema_decay(5000, alpha) == pytest.approx(0.99)


def test_ema_update_parameter_values_follow_capped_decay():
    alpha = 0.6  # caps the third step: min(2/3, 0.6) = 0.6
    student = tiny_model()
    teacher = make_teacher(student)
    fill_params(teacher, 100.0)
    student_values = [1.0, 3.0, 7.0, 11.0]
    expected = 100.0
    decays = []
    for step, s in enumerate(student_values):
        fill_params(student, s)
        decays.append(ema_update(teacher, student, step, alpha))
        d = min(1 - 1 / (step + 1), alpha)
        expected = d * expected + (1 - d) * s
        for p in teacher.parameters():
            torch.testing.assert_close(p, torch.full_like(p, expected))
    assert decays == pytest.approx([0.0, 0.5, 0.6, 0.6])
    # hand values: 1 -> 0.5*1 + 0.5*3 = 2 -> 0.6*2 + 0.4*7 = 4 -> 0.6*4 + 0.4*11 = 6.8
    assert expected == pytest.approx(6.8)


def test_ema_update_leaves_buffers_untouched():
    student = tiny_model()
    teacher = make_teacher(student)
    with torch.no_grad():
        student[1].running_mean.fill_(9.0)
        student[1].running_var.fill_(4.0)
        student[1].num_batches_tracked.fill_(17)
    before = {
        k: v.clone() for k, v in teacher.state_dict().items() if "running" in k or "num_b" in k
    }
    ema_update(teacher, student, step=3, alpha=0.99)
    for k, v in before.items():
        assert torch.equal(teacher.state_dict()[k], v), k
    assert all(not p.requires_grad for p in teacher.parameters())


def test_ema_update_rejects_mismatched_models():
    student = tiny_model()
    teacher = make_teacher(nn.Linear(2, 3))
    with pytest.raises(ValueError):
        ema_update(teacher, student, 0, 0.99)
