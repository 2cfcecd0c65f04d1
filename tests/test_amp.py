"""Mixed precision: which dtype ``Training.amp`` picks, and that a bf16 autocast step agrees
with an fp32 step from the same state (losses, gradients) on a small network."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from engine.run import amp_dtype_for, build_run, cpu_has_fast_bf16
from engine.step import train_step
from tools.benchmark import SyntheticSet, synthetic_batch
from utils.sampler import step_seed
from utils.strategies import get_strategy

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "Network.pretrained=",
    "Network.random_init=true",
    "Network.backbone=resnet18",
    "Network.base_width=8",
    "Network.decoder_channels=32",
    "Network.rep_dim=16",
    "Dataset.crop_size=[48,48]",
    "Dataset.batch_size=2",
    "Loss.num_queries=8",
    "Loss.num_negatives=16",
]


def test_amp_dtype_per_device_and_switch():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["Training.amp=true"])
    expected_cpu = torch.bfloat16 if cpu_has_fast_bf16() else None
    assert amp_dtype_for(cfg, torch.device("cpu")) == expected_cpu
    off = load_config(REPO / "configs" / "demo.yaml", ["Training.amp=false"])
    assert amp_dtype_for(off, torch.device("cpu")) is None
    assert amp_dtype_for(off, torch.device("cuda")) is None


def grads_after_step(run, batch_l, batch_u) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(step_seed(3407, 0, 0))
    stats = train_step(run, batch_l, batch_u)
    flat = torch.cat([p.grad.flatten() for p in run.student.parameters() if p.grad is not None])
    return {k: float(v) for k, v in stats.items()}, flat


@pytest.mark.parametrize("strategy", ["mix_label", "supervised"])
def test_bf16_autocast_step_agrees_with_fp32(strategy):
    """Same initial state and batch: the loss terms agree within 1 % (bf16 keeps 8 bits of
    mantissa in the convolutions; losses, softmax statistics and prototypes stay fp32). The
    gradients of a freshly initialised network near chance loss are small and bf16 rounding
    is a large part of them (cosine 0.73-0.99 per tensor for CE alone), so the stated bound
    is cosine > 0.7 for the supervised step (a wrong gradient would be near 0); with the
    unlabeled branch, bf16 rounding moves pixels across the hard-anchor and confidence
    thresholds, so the sampled terms differ and only the loss values are compared. bf16 is emulated on CPUs
    without it: slow, but correct, so this runs everywhere."""
    torch.set_num_threads(1)
    cfg = load_config(REPO / "configs" / "demo.yaml", [*SMALL, "Training.amp=false"])
    datasets = {
        k: SyntheticSet(cfg["Dataset"]["num_labels"]) for k in ("labeled", "unlabeled", "valid")
    }
    run32 = build_run(cfg, get_strategy(strategy), torch.device("cpu"), 0, 1, datasets=datasets)
    run16 = copy.deepcopy(run32)
    run16.amp_dtype = torch.bfloat16
    g = torch.Generator().manual_seed(0)
    batch_l = synthetic_batch(cfg, g, labeled=True)
    batch_u = synthetic_batch(cfg, g, labeled=False) if strategy != "supervised" else None
    stats32, grad32 = grads_after_step(run32, batch_l, batch_u)
    stats16, grad16 = grads_after_step(run16, batch_l, batch_u)
    assert set(stats16) == set(stats32)
    for key in ("sup", "unsup", "contrast", "total"):
        if key in stats32:
            assert stats16[key] == pytest.approx(stats32[key], rel=0.01, abs=1e-3), key
    if strategy == "supervised":  # no discrete choice (hard anchors, confident pixels) on the way
        cos = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
        assert cos > 0.7
    assert run16.prototypes.proto.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in run16.teacher.parameters())
