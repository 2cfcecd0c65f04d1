"""engine/loop.py: the loop's small pieces (the end-to-end runs are in test_engine.py)."""

from __future__ import annotations

import pytest
from test_run import small_run

from engine.loop import MetricAverager, check_finite, schedule_lines, set_learning_rate
from utils.errors import UserError


def test_metric_averager_means_and_empties() -> None:
    avg = MetricAverager()
    avg.add({"sup": 1.0, "lr": 0.1})
    avg.add({"sup": 3.0, "lr": 0.3})
    assert avg.pop() == pytest.approx({"sup": 2.0, "lr": 0.2})
    assert avg.pop() == {}


def test_set_learning_rate_follows_the_poly_schedule() -> None:
    run = small_run(["Optim.lr=0.1", "Optim.power=1.0", "Optim.min_lr=0.01"])
    run.iteration = 400  # of 800
    set_learning_rate(run)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    run.iteration = 799
    set_learning_rate(run)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_check_finite_names_the_iteration_and_every_term() -> None:
    run = small_run()
    check_finite(run, {"sup": 1.0, "total": 2.0})
    with pytest.raises(UserError, match=r"iteration 1: sup=1.0, total=nan"):
        check_finite(run, {"sup": 1.0, "total": float("nan")})


def test_schedule_lines_give_the_epoch_and_the_ramp_in_iterations() -> None:
    run = small_run(["Ramp_Scheduler.max_epoch=10"])
    first, ramp = schedule_lines(run)
    assert first.startswith("an epoch is 8 iterations (16 labeled images / (batch 2 x 1")
    assert "until iteration 80 (epoch 10)" in ramp
