"""Time the real training step, phase by phase, on synthetic batches (no dataset needed).

    python tools/benchmark.py [--config PATH] [--strategy mix_label] [--iters N] [--warmup K]
                              [Section.key=value ...]

Prints one JSON line: median seconds per step and per phase (teacher forward + pseudo-labels,
batch augmentation, student forward, each loss, prototype update, backward, optimiser + EMA),
``network_seconds`` (the same student forward / backward and teacher forward alone, nothing
else), ``overhead = step / network``, the contrastive and augmentation shares of the step,
peak memory (RSS on CPU, max allocated on GPU), device, torch version and threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import DEFAULT_CONFIG, load_config  # noqa: E402
from engine.run import build_run  # noqa: E402
from engine.step import train_step  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.sampler import step_seed  # noqa: E402
from utils.strategies import STRATEGIES, get_strategy  # noqa: E402


class PhaseTimer:
    """``with timer("name"):`` adds the wall time of the block (device synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = defaultdict(float)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.times[name] += time.perf_counter() - t0


class SyntheticSet(torch.utils.data.Dataset):
    """Stands in for the datasets: only its length (the labeled pool) is used."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):  # pragma: no cover - never loaded
        raise IndexError(i)


def synthetic_batch(cfg: dict, generator: torch.Generator, labeled: bool) -> dict:
    """uint8 images and blocky labels covering every class (the contrastive worst case)."""
    b = cfg["Dataset"]["batch_size"]
    h, w = cfg["Dataset"]["crop_size"]
    c = cfg["Network"]["num_class"]
    batch = {"img": torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=generator)}
    if labeled:
        block = 16
        coarse = torch.randint(0, c, (b, 1, -(-h // block), -(-w // block)), generator=generator)
        label = coarse.float().repeat_interleave(block, 2).repeat_interleave(block, 3)
        label = label[:, 0, :h, :w].long()
        label[:, ::block, :] = -1  # thin ignore lines, as label borders
        batch["label"] = label
    return batch


def network_only(run, batch_l: dict, batch_u: dict | None, timer: PhaseTimer) -> None:
    """The student forward / backward and the teacher forward of a step, nothing else."""
    dev = run.device
    autocast = run.autocast()
    img_l = run.model_input(batch_l["img"].to(dev))
    img_u = run.model_input(batch_u["img"].to(dev)) if batch_u is not None else None
    with timer("network"):
        if img_u is not None:
            with torch.no_grad(), autocast:
                run.teacher(img_u)
        with autocast:
            (pred_l, rep_l), out_u = run.forward(img_l, img_u)
        loss = pred_l.float().mean() + rep_l.float().mean()
        if out_u is not None:
            loss = loss + out_u[0].float().mean() + out_u[1].float().mean()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def benchmark(cfg: dict, strategy: str, iters: int, warmup: int, device: torch.device) -> dict:
    torch.set_flush_denormal(True)
    datasets = {
        k: SyntheticSet(cfg["Dataset"]["num_labels"]) for k in ("labeled", "unlabeled", "valid")
    }
    run = build_run(cfg, get_strategy(strategy), device, 0, 1, datasets=datasets)
    run.student.train()
    run.teacher.train()
    g = torch.Generator().manual_seed(cfg["Seed"])
    semi = run.strategy.semi_supervised
    steps, phases, nets = [], defaultdict(list), []
    for i in range(warmup + iters):
        batch_l = synthetic_batch(cfg, g, labeled=True)
        batch_u = synthetic_batch(cfg, g, labeled=False) if semi else None
        torch.manual_seed(step_seed(cfg["Seed"], 0, i))
        timer = PhaseTimer(device)
        with timer("step"):
            train_step(run, batch_l, batch_u, phase=timer)
        run.iteration += 1
        net_timer = PhaseTimer(device)
        network_only(run, batch_l, batch_u, net_timer)
        if i >= warmup:
            steps.append(timer.times.pop("step"))
            for k, v in timer.times.items():
                phases[k].append(v)
            nets.append(net_timer.times["network"])
    step = statistics.median(steps)
    network = statistics.median(nets)
    phase_med = {k: statistics.median(v) for k, v in phases.items()}
    return {
        "strategy": strategy,
        "step_seconds": step,
        "network_seconds": network,
        "overhead": step / network,
        "phases": phase_med,
        "contrastive_share": phase_med.get("contrastive", 0.0) / step,
        "augment_share": phase_med.get("augment", 0.0) / step,
        "images_per_second": cfg["Dataset"]["batch_size"] * (2 if semi else 1) / step,
        "peak_memory_mb": peak_memory_mb(device),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "fp32",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "iters": iters,
        "warmup": warmup,
        "backbone": cfg["Network"]["backbone"],
        "output_stride": cfg["Network"]["output_stride"],
        "base_width": cfg["Network"]["base_width"],
        "decoder_channels": cfg["Network"]["decoder_channels"],
        "rep_dim": cfg["Network"]["rep_dim"],
        "crop_size": cfg["Dataset"]["crop_size"],
        "batch_size": cfg["Dataset"]["batch_size"],
        "num_class": cfg["Network"]["num_class"],
        "joint_forward": cfg["Training"]["joint_forward"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time the training step phase by phase.")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--strategy", choices=list(STRATEGIES), default="mix_label")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("overrides", nargs="*", help="Section.key=value config overrides")
    args = p.parse_args(argv)
    try:
        if args.iters < 1 or args.warmup < 0:
            raise UserError("--iters must be >= 1 and --warmup >= 0")
        # The benchmark needs no weights file and no data: random init is fine for timing.
        cfg = load_config(args.config, ["Network.random_init=true", *args.overrides])
        cfg["Network"]["pretrained"] = ""
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        result = benchmark(cfg, args.strategy, args.iters, args.warmup, device)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
