"""tools/benchmark.py on a tiny model: the record is complete and self-consistent (no timing
assertions: speed is reported, never tested)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from engine.run import cpu_has_fast_bf16
from tools.benchmark import benchmark, synthetic_batch

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "Network.backbone=resnet18",
    "Network.rep_dim=16",
    "Dataset.crop_size=[48,48]",
    "Dataset.batch_size=2",
    "Loss.num_queries=8",
    "Loss.num_negatives=16",
]
SEMI_PHASES = {
    "teacher",
    "augment",
    "student_forward",
    "sup_loss",
    "unsup_loss",
    "proto_update",
    "contrastive",
    "backward",
    "optimizer_ema",
}


def tiny_cfg() -> dict:
    return load_config(REPO / "configs" / "demo.yaml", TINY)


@pytest.mark.parametrize("strategy", ["mix_label", "supervised"])
def test_record_is_complete_and_consistent(strategy):
    torch.set_num_threads(1)
    r = benchmark(tiny_cfg(), strategy, iters=2, warmup=1, device=torch.device("cpu"))
    expected = (
        SEMI_PHASES
        if strategy != "supervised"
        else {"student_forward", "sup_loss", "backward", "optimizer_ema"}
    )
    assert set(r["phases"]) == expected
    assert r["overhead"] == pytest.approx(r["step_seconds"] / r["network_seconds"])
    assert sum(r["phases"].values()) <= r["step_seconds"] * 1.05  # medians of parts
    share = r["phases"].get("contrastive", 0.0) / r["step_seconds"]
    assert r["contrastive_share"] == pytest.approx(share)
    assert r["images_per_second"] == pytest.approx(
        2 * (2 if strategy != "supervised" else 1) / r["step_seconds"]
    )
    assert r["peak_memory_mb"] > 0 and r["device"] == "cpu"
    assert r["amp"] == ("bfloat16" if cpu_has_fast_bf16() else "fp32")  # the demo sets amp
    assert (r["iters"], r["warmup"], r["crop_size"]) == (2, 1, [48, 48])


def test_synthetic_labels_cover_classes_with_ignore_lines():
    cfg = tiny_cfg()
    batch = synthetic_batch(cfg, torch.Generator().manual_seed(0), labeled=True)
    assert batch["img"].dtype == torch.uint8 and batch["img"].shape == (2, 3, 48, 48)
    y = batch["label"]
    assert y.shape == (2, 48, 48) and y.dtype == torch.int64
    assert bool((y[:, ::16] == -1).all()) and int(y.max()) < cfg["Network"]["num_class"]


def test_cli_prints_one_json_line_and_rejects_bad_input():
    cmd = [sys.executable, "tools/benchmark.py", "--iters", "1", "--warmup", "0", *TINY]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["strategy"] == "mix_label"
    bad = subprocess.run(cmd + ["Loss.temp=-1"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Loss.temp" in bad.stderr


def test_record_names_every_network_key_it_ran_with():
    """The network's size is in the record, so a number can be matched with its settings."""
    torch.set_num_threads(1)
    cfg = tiny_cfg()
    r = benchmark(cfg, "supervised", iters=1, warmup=0, device=torch.device("cpu"))
    for key in ("backbone", "output_stride", "base_width", "decoder_channels", "rep_dim",
                "num_class"):  # fmt: skip
        assert r[key] == cfg["Network"][key], key
    assert (r["base_width"], r["decoder_channels"], r["rep_dim"]) == (16, 64, 16)  # the demo's
    assert r["crop_size"] == cfg["Dataset"]["crop_size"] and r["batch_size"] == 2
    assert r["joint_forward"] is False
