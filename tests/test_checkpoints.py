"""engine/checkpoints.py: the checkpoint of a run, and trained checkpoints for the tools."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_run import small_run

from engine.checkpoints import (
    inference_config,
    load_trained_checkpoint,
    make_checkpoint,
    restore,
    result_model_key,
)
from engine.config import DEFAULT_CONFIG, load_config
from utils.checkpoint import save_checkpoint
from utils.errors import UserError


def test_a_checkpoint_restores_the_run_it_was_made_from() -> None:
    run = small_run()
    with torch.no_grad():
        next(run.student.parameters()).add_(1.0)
    run.iteration, run.best_miou, run.history = 5, 0.25, [{"iter": 4, "miou": 25.0}]
    state = copy.deepcopy(make_checkpoint(run))
    assert state["config"] is not None and state["strategy"] == "mix_label"
    assert state["world_size"] == 1
    fresh = small_run()
    restore(fresh, state)
    assert (fresh.iteration, fresh.best_miou, fresh.latest_iteration) == (5, 0.25, 5)
    assert fresh.history == run.history and fresh.epoch == run.epoch
    for (k, a), b in zip(run.student.state_dict().items(), fresh.student.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_file_that_is_no_training_checkpoint_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    save_checkpoint({"state_dict": {}}, path)
    with pytest.raises(UserError, match="not a training checkpoint"):
        load_trained_checkpoint(path)


def test_result_model_key_follows_the_strategy() -> None:
    assert result_model_key({"strategy": "supervised"}) == "student"
    assert result_model_key({"strategy": "mix_label"}) == "teacher"
    assert result_model_key({}) == "teacher"


def test_inference_config_of_a_checkpoint_and_of_a_paper_checkpoint() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    state = {"config": cfg}
    assert (
        inference_config(state, Path("a.pth"), None, ["Training.eval_mode=sliding"])["Training"][
            "eval_mode"
        ]
        == "sliding"
    )
    # another model than the checkpoint's is refused; training keys may differ
    with pytest.raises(UserError, match="Network.rep_dim"):
        inference_config(state, Path("a.pth"), DEFAULT_CONFIG, ["Network.rep_dim=32"])
    inference_config(state, Path("a.pth"), DEFAULT_CONFIG, ["Dataset.batch_size=2"])
    with pytest.raises(UserError, match="--config configs/voc.yaml"):
        inference_config({"config": None, "teacher": {}}, Path("p.pth"), None)
