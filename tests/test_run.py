"""engine/run.py: the Run built from a config (tiny synthetic datasets, no data read)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.config import DEFAULT_CONFIG, load_config
from engine.run import TwoBatchForward, amp_dtype_for, build_run, iters_per_epoch
from tools.benchmark import SyntheticSet
from utils.errors import UserError
from utils.strategies import STRATEGIES

SMALL = [
    "Network.random_init=true",
    "Network.pretrained=",
    "Network.rep_dim=8",
    "Network.decoder_channels=16",
    "Dataset.batch_size=2",
    "Dataset.crop_size=[32,32]",
    "Training.amp=false",
]


def small_run(overrides=(), labeled: int = 16, strategy: str = "mix_label"):
    cfg = load_config(DEFAULT_CONFIG, [*SMALL, *overrides])
    sets = {"labeled": SyntheticSet(labeled), "unlabeled": SyntheticSet(16), "valid": None}
    return build_run(cfg, STRATEGIES[strategy], torch.device("cpu"), 0, 1, datasets=sets)


def test_iters_per_epoch_is_the_labeled_loader_per_process() -> None:
    assert iters_per_epoch(125, 16, 1) == 7  # the demo: 125 // 16
    assert iters_per_epoch(125, 16, 2) == 3  # ceil(125 / 2) = 63 per process
    assert iters_per_epoch(662, 8, 4) == 20


def test_build_run_holds_what_the_config_says() -> None:
    run = small_run(["Loss.alpha=0.5", "Optim.lr=0.1", "Optim.momentum=0.8"])
    assert run.iters_per_epoch == 8 and run.iteration == 0 and run.epoch == 0
    assert run.prototypes.proto.shape == (6, 8)
    group = run.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.1, 0.8, True)
    assert run.amp_dtype is None and not run.channels_last
    # the teacher starts as a copy of the student and takes no gradient
    for (k, s), t in zip(run.student.state_dict().items(), run.teacher.state_dict().values()):
        assert torch.equal(s, t), k
    assert not any(p.requires_grad for p in run.teacher.parameters())
    run.iteration = 17
    assert run.epoch == 2


def test_build_run_refuses_a_batch_larger_than_the_labeled_set_per_process() -> None:
    with pytest.raises(UserError, match=r"Dataset.batch_size: got 2, expected <= 1"):
        small_run(labeled=1)


def test_semi_supervised_strategy_needs_unlabeled_images() -> None:
    cfg = load_config(DEFAULT_CONFIG, SMALL)
    sets = {"labeled": SyntheticSet(16), "unlabeled": None, "valid": None}
    with pytest.raises(UserError, match="supervised.py"):
        build_run(cfg, STRATEGIES["mix_label"], torch.device("cpu"), 0, 1, datasets=sets)


def test_joint_forward_gives_the_separate_forwards_outputs_in_eval_mode() -> None:
    model = nn.Conv2d(3, 4, 1)
    a, b = torch.randn(2, 3, 5, 5), torch.randn(3, 3, 5, 5)
    wrap = lambda m: lambda x: (m(x), m(x) * 2)  # noqa: E731  (pred, rep)
    inner = nn.Module()
    inner.forward = wrap(model)
    joint, apart = TwoBatchForward(inner, True), TwoBatchForward(inner, False)
    (pl, rl), (pu, ru) = joint(a, b)
    (ql, sl), (qu, su) = apart(a, b)
    assert torch.allclose(pl, ql) and torch.allclose(ru, su) and pu.shape[0] == 3
    assert apart(a, None)[1] is None


def test_amp_off_is_fp32_everywhere() -> None:
    cfg = load_config(DEFAULT_CONFIG, ["Training.amp=false"])
    assert amp_dtype_for(cfg, torch.device("cpu")) is None
