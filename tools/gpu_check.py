"""The GPU paths, checked in one go on a machine with CUDA (about 10 minutes on one GPU).

    python tools/gpu_check.py [--out gpu_check.jsonl]        # on the GPU machine
    python tools/gpu_check.py --dry-run                      # print the plan
    python tools/gpu_check.py --device cpu --smoke           # the same logic, tiny, on a CPU

Steps, each a subprocess with a time limit, each writing one JSON record to ``--out``:
1. ``tools/benchmark.py`` at the paper's VOC config (ResNet-101, OS 8, crop 512, batch 8 + 8)
   for every strategy, fp32 and AMP: s/step, images/s, peak memory, overhead;
2. ``Training.compile=true`` for a few training iterations on the demo data;
3. ``torchrun --nproc_per_node=1`` for a few iterations (the launcher on the GPU machine);
4. AMP against fp32 over 20 steps from the same state: the loss terms step by step.
A failing step is recorded (exit status, the last lines of its output) and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from utils.strategies import STRATEGIES  # noqa: E402

# The demo run of the compile / launcher steps: the v1 demo from scratch, a few iterations.
DEMO_RUN = [
    "Training.total_iter=6",
    "Training.eval_interval=6",
    "Training.save_interval=6",
    "Training.log_interval=2",
    "Dataset.num_workers=2",
]
SMOKE = [  # --smoke: a tiny network so that the whole plan runs on a CPU in a few minutes
    "Network.backbone=resnet18",
    "Network.base_width=8",
    "Network.decoder_channels=16",
    "Network.rep_dim=16",
    "Network.pretrained=",
    "Network.random_init=true",
    "Dataset.crop_size=[48,48]",
    "Dataset.batch_size=2",
    "Loss.num_queries=8",
    "Loss.num_negatives=16",
]


@dataclass(frozen=True)
class Step:
    name: str
    cmd: list[str]
    timeout: int


def plan(device: str, smoke: bool, work: Path) -> list[Step]:
    """Every step of the check, in order."""
    py = sys.executable
    bench_cfg = "configs/demo.yaml" if smoke else "configs/voc.yaml"
    extra = SMOKE if smoke else []
    iters = ["--iters", "2", "--warmup", "1"] if smoke else ["--iters", "5", "--warmup", "2"]
    steps = []
    for amp in ("false", "true"):
        for strategy in STRATEGIES:
            steps.append(
                Step(
                    f"benchmark_{strategy}_{'amp' if amp == 'true' else 'fp32'}",
                    [
                        py,
                        "tools/benchmark.py",
                        "--config",
                        bench_cfg,
                        "--strategy",
                        strategy,
                        "--device",
                        device,
                        *iters,
                        f"Training.amp={amp}",
                        *extra,
                    ],
                    300,
                )
            )
    demo = [
        *DEMO_RUN,
        "Dataset.name=fashionscenes",
        "Network.num_class=11",
        "Network.pretrained=",
        "Network.random_init=true",
        *extra,
    ]
    steps.append(
        Step(
            "compile",
            [
                py,
                "mix_label.py",
                "--work-dir",
                str(work / "compile"),
                "Training.compile=true",
                *demo,
            ],
            600,
        )
    )
    steps.append(
        Step(
            "torchrun_1",
            [
                py,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=1",
                "mix_label.py",
                "--work-dir",
                str(work / "torchrun"),
                *demo,
            ],
            300,
        )
    )
    steps.append(
        Step(
            "amp_vs_fp32",
            [
                py,
                "tools/gpu_check.py",
                "--agreement",
                "--device",
                device,
                "--steps",
                "3" if smoke else "20",
                *(["--smoke"] if smoke else []),
            ],
            300,
        )
    )
    return steps


def run_step(step: Step) -> dict:
    t0 = time.time()
    try:
        proc = subprocess.run(
            step.cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=step.timeout,
            env=dict(os.environ),
        )
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code = 124
        out = (
            (err.stdout or b"").decode(errors="replace")
            if isinstance(err.stdout, bytes)
            else (err.stdout or "")
        )
    record = {"step": step.name, "exit": code, "seconds": round(time.time() - t0, 1)}
    lines = [line for line in out.splitlines() if line.strip()]
    json_lines = [line for line in lines if line.startswith("{")]
    if code == 0 and json_lines:
        record["result"] = json.loads(json_lines[-1])
    elif code != 0:
        record["tail"] = lines[-8:]
    return record


def agreement(device: str, steps: int, smoke: bool) -> dict:
    """Loss terms of ``steps`` mix_label steps in fp32 and with AMP from the same state."""
    import copy

    import torch

    sys.path.insert(0, str(REPO))
    from engine.config import load_config
    from engine.run import build_run
    from engine.step import train_step
    from tools.benchmark import SyntheticSet, synthetic_batch
    from utils.sampler import step_seed
    from utils.strategies import get_strategy

    cfg_path = REPO / ("configs/demo.yaml" if smoke else "configs/voc.yaml")
    overrides = [*(SMOKE if smoke else []), "Network.pretrained=", "Network.random_init=true"]
    cfg = load_config(cfg_path, [*overrides, "Training.amp=false"])
    dev = torch.device(device)
    sets = {
        k: SyntheticSet(cfg["Dataset"]["num_labels"]) for k in ("labeled", "unlabeled", "valid")
    }
    run32 = build_run(cfg, get_strategy("mix_label"), dev, 0, 1, datasets=sets)
    runs = {"fp32": run32, "amp": copy.deepcopy(run32)}
    runs["amp"].amp_dtype = (
        torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    )
    if runs["amp"].amp_dtype == torch.float16:
        runs["amp"].scaler = torch.amp.GradScaler(dev.type)
    losses: dict[str, list[float]] = {k: [] for k in runs}
    for name, run in runs.items():
        g = torch.Generator().manual_seed(0)
        for i in range(steps):
            batch_l = synthetic_batch(cfg, g, labeled=True)
            batch_u = synthetic_batch(cfg, g, labeled=False)
            torch.manual_seed(step_seed(cfg["Seed"], 0, i))
            losses[name].append(float(train_step(run, batch_l, batch_u)["total"]))
            run.iteration += 1
    rel = [abs(a - b) / max(abs(b), 1e-8) for a, b in zip(losses["amp"], losses["fp32"])]
    return {
        "amp_dtype": str(runs["amp"].amp_dtype),
        "total_fp32": losses["fp32"],
        "total_amp": losses["amp"],
        "max_rel_diff": max(rel),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python tools/gpu_check.py --out gpu_check.jsonl",
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny network and iterations")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--out", type=Path, default=REPO / "gpu_check.jsonl")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "gpu_check")
    p.add_argument("--agreement", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.agreement:
        print(json.dumps(agreement(args.device, args.steps, args.smoke)))
        return 0
    steps = plan(args.device, args.smoke, args.work_dir)
    if args.dry_run:
        for s in steps:
            print(f"{s.name}: {' '.join(s.cmd)}  (limit {s.timeout} s)")
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(
                "error: no CUDA device here; use --device cpu --smoke for the logic",
                file=sys.stderr,
            )
            return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with open(args.out, "w") as f:
        for s in steps:
            record = run_step(s)
            failed += record["exit"] != 0
            f.write(json.dumps(record) + "\n")
            f.flush()
            print(f"{s.name}: exit {record['exit']} in {record['seconds']} s", flush=True)
    print(f"{len(steps) - failed} of {len(steps)} steps passed; records in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
