"""The command line of the training entry scripts: parse, validate everything before the run
folder is touched, then one process (or ``--nproc-per-node N`` processes) trains.

    python mix_label.py [--config PATH] [--work-dir DIR] [--no-resume] [--allow-changes]
                        [--nproc-per-node N|auto] [Section.key=value ...]

The config is ``--config``; without it, the run folder's own ``config.yaml`` (a run started
before resumes with the config it was started with), else ``configs/demo.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from engine import launch, loop
from engine.checkpoints import restore
from engine.config import DEFAULT_CONFIG, dump_config, load_config
from engine.data import split_name
from engine.resume import check_resume, check_resume_compatible
from engine.run import build_run
from utils.checkpoint import load_checkpoint
from utils.command_line import ArgumentParser
from utils.dist import init_distributed, is_dist, is_main_process
from utils.errors import UserError
from utils.strategies import Strategy, get_strategy

log = logging.getLogger("css")


def _paper_flag(key: str) -> Callable[[str | None], str]:
    return lambda value: f"write the config override {key}={value or 'VALUE'}"


_RESUME_HINT = (
    "a run resumes by itself: run the same command with its --work-dir (which holds "
    "latest.pth, with the prototypes, and config.yaml)"
)
# The paper code's flags (its train scripts) and what to write here instead.
PAPER_FLAGS: dict[str, Callable[[str | None], str]] = {
    "--num_labels": _paper_flag("Dataset.num_labels"),
    "--total_iter": _paper_flag("Training.total_iter"),
    "--strong_threshold": _paper_flag("Loss.strong_threshold"),
    "--weak_threshold": _paper_flag("Loss.weak_threshold"),
    "--un_threshold": _paper_flag("Loss.un_threshold"),
    "--temp": _paper_flag("Loss.temp"),
    "--warmup": _paper_flag("Loss.warm_up"),
    "--resume": lambda value: _RESUME_HINT,
    "--prototypes_resume": lambda value: _RESUME_HINT,
    "--job_name": lambda value: f"write --work-dir runs/{value or 'NAME'}",
    "--gpu_id": lambda value: (
        f"choose the GPUs with CUDA_VISIBLE_DEVICES={value or '0,1'} and start one process "
        "per GPU with --nproc-per-node auto"
    ),
    "--world_size": lambda value: (
        f"write --nproc-per-node {value or 'N'} (processes on this machine; torchrun for "
        "several machines)"
    ),
    "--port": lambda value: (
        "--nproc-per-node picks a free port itself; under torchrun write "
        f"--master_port={value or 'PORT'}"
    ),
    "--sche": lambda value: (
        "the contrastive weight of mix_label / cross_label always follows Ramp_Scheduler; "
        "for a constant weight write Ramp_Scheduler.max_value=1 Ramp_Scheduler.min_value=1"
    ),
}
RENAMED_FLAGS = {
    **PAPER_FLAGS,
    "--fresh": lambda value: (
        "it is now --no-resume (it stops when --work-dir holds a run; it never started a run "
        "over: for a new run choose a new --work-dir)"
    ),
}


def examples(strategy: str) -> str:
    return f"""examples:
  python {strategy}.py                                   # the demo: FashionScenes, a few CPU minutes
  python {strategy}.py --config configs/voc.yaml Dataset.num_labels=92 Training.total_iter=40000
  python {strategy}.py --config configs/voc.yaml Dataset.num_labels=662 Dataset.split=u2pl Seed=1
  python {strategy}.py --work-dir runs/X                 # resume runs/X with runs/X/config.yaml
  python {strategy}.py --work-dir runs/X --allow-changes Training.total_iter=2000   # ... longer
  python {strategy}.py --nproc-per-node auto --config configs/cityscapes.yaml   # every GPU
  torchrun --nproc_per_node=4 {strategy}.py --config configs/cityscapes.yaml    # the same

The paper code's flags are config overrides here (--num_labels 92 -> Dataset.num_labels=92);
each of them stops with one line naming the new spelling (README: "Coming from the paper code").
"""


RUN_RULES = """
The config is --config, else the run folder's config.yaml (the run's own), else
configs/demo.yaml; trailing Section.key=value pairs override it. Everything is validated
before the run folder is touched: bad input stops with one line "error: ..." (exit 2). A
run folder holding latest.pth is resumed (refused, naming the keys, if the model or data
keys changed; another training key, e.g. Training.total_iter to train longer, or another
number of processes needs --allow-changes, and is logged). Ctrl-C or SIGTERM finishes the
step on every process and writes latest.pth."""


def build_parser(strategy: str, description: str | None = None) -> ArgumentParser:
    first = description or f"Train DeepLabv3+ with the {strategy} strategy (CSS, ICCV 2023)."
    p = ArgumentParser(
        prog=f"{strategy}.py",
        description=first.rstrip() + "\n" + RUN_RULES,
        epilog=examples(strategy),
        renamed=RENAMED_FLAGS,
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="config file (default: --work-dir's config.yaml when it has one, else "
        "configs/demo.yaml); a run that exists is resumed only if its model and data keys agree",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="run folder (default: runs/<dataset>_<strategy>_<num_labels>[_<split>]_seed<Seed>); "
        "a folder holding latest.pth is resumed",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="stop with an error if --work-dir already holds a run (latest.pth) instead of "
        "resuming it; nothing is overwritten either way",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume although training settings or the number of processes differ from the "
        "checkpoint's (each change is logged); the model and dataset keys can never change",
    )
    p.add_argument(
        "--nproc-per-node",
        default=None,
        metavar="N|auto",
        help="start N training processes on this machine with torch.distributed's elastic "
        "launcher, as torchrun --nproc_per_node=N does (auto: one per visible GPU)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="Section.key=value",
        help="config overrides, typed by the value they replace (e.g. Dataset.num_labels=92)",
    )
    return p


def parse_args(
    strategy: str, argv: list[str] | None = None, description: str | None = None
) -> argparse.Namespace:
    return build_parser(strategy, description).parse_args(argv)


def default_work_dir(cfg: dict, strategy: Strategy) -> Path:
    """``runs/<dataset>_<strategy>_<num_labels>[_<split>]_seed<Seed>`` (the split named only
    where it is not the seed's own)."""
    d = cfg["Dataset"]
    split = split_name(cfg)
    named = "" if split == str(cfg["Seed"]) else f"_{split}"
    return Path("runs") / f"{d['name']}_{strategy.name}_{d['num_labels']}{named}_seed{cfg['Seed']}"


def setup_logging(work_dir: Path | None) -> None:
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    if not is_main_process():
        log.addHandler(logging.NullHandler())
        return

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stdout)

    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if work_dir is not None:
        fh = logging.FileHandler(work_dir / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)


def one_line(exc: BaseException) -> str:
    """A worker's exception arrives with its traceback; keep the original message only."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def config_path(args: argparse.Namespace) -> Path:
    """``--config``; else the run folder's ``config.yaml`` (the config it was started with,
    with the overrides of its last start); else the demo config."""
    if args.config is not None:
        return Path(args.config)
    if args.work_dir is not None:
        remembered = Path(args.work_dir) / "config.yaml"
        if remembered.is_file():
            return remembered
    return DEFAULT_CONFIG


def prepare(
    strategy: Strategy, args: argparse.Namespace, world: int = 1
) -> tuple[dict, Path, dict | None, list[str]]:
    """Validate everything before the run folder is touched. Returns the config, the run
    folder, the checkpoint to resume (or None) and the lines saying what the resume changes
    (``--allow-changes``)."""
    cfg = load_config(config_path(args), args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(cfg, strategy)
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} exists and is not a folder")
    latest = work_dir / "latest.pth"
    state, notes = None, []
    if latest.exists():
        if args.no_resume:
            raise UserError(
                f"{latest} exists and --no-resume was given; choose another --work-dir "
                "(or leave out --no-resume to resume it)"
            )
        state = load_checkpoint(latest)
        check_resume_compatible(state["config"], cfg, latest)
        if state.get("strategy") != strategy.name:
            raise UserError(
                f"{latest} belongs to a {state.get('strategy')} run, not {strategy.name}"
            )
        notes = check_resume(state, cfg, world, latest, args.allow_changes)
    return cfg, work_dir, state, notes


def train_process(
    strategy: Strategy, cfg: dict, work_dir: Path, state: dict | None, notes: list[str] = ()
) -> int:
    """One training process (of one, or of a torchrun / --nproc-per-node group)."""
    device, rank, world = init_distributed()
    # Denormal floats make CPU kernels many times slower early in training.
    torch.set_flush_denormal(True)
    setup_logging(None)
    run = build_run(cfg, strategy, device, rank, world)
    if state is not None:
        restore(run, state, str(work_dir / "latest.pth"))
    if is_main_process():
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.yaml").write_text(dump_config(cfg))
    setup_logging(work_dir)
    log.info(
        "%s: %s, %d labeled / %d unlabeled / %d val images, %d process(es) on %s%s",
        strategy.name,
        cfg["Dataset"]["name"],
        len(run.datasets["labeled"]),
        len(run.datasets["unlabeled"] or ()),
        len(run.datasets["valid"]),
        world,
        device,
        f", resuming at iteration {run.iteration}" if state is not None else "",
    )
    if cfg["Training"]["amp"]:
        log.info(
            "Training.amp: %s",
            f"autocast {str(run.amp_dtype).replace('torch.', '')} on {device.type}"
            if run.amp_dtype is not None
            else f"no fast reduced precision on this {device.type} (no native bf16); fp32",
        )
    for note in notes:
        log.info(note)
    try:
        summary = loop.train(run, work_dir)
    except KeyboardInterrupt:
        where = f" (rank {rank} of {world})" if world > 1 else ""
        kept = (
            f"{work_dir / 'latest.pth'} holds iteration {run.latest_iteration}"
            if run.latest_iteration is not None
            else "no checkpoint was written"
        )
        print(f"\ninterrupted at iteration {run.iteration}{where}: {kept}", file=sys.stderr)
        raise
    if is_main_process():
        (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("mIoU %.2f (best %.2f) -> %s", summary["miou"], summary["best_miou"], work_dir)
    return 0


def main(strategy_name: str, argv: list[str] | None = None, description: str | None = None) -> int:
    strategy = get_strategy(strategy_name)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(strategy.name, argv, description)
    try:
        nproc = launch.processes_wanted(args.nproc_per_node)
        try:
            cfg, work_dir, state, notes = prepare(strategy, args, launch.world_size(nproc))
        except UserError as exc:
            # The same on every process of a launch (it depends on the command line and the
            # files only): one line per machine, not one per process.
            if os.environ.get("LOCAL_RANK", "0") == "0":
                print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        if nproc > 1:
            return launch.elastic_run(nproc, launch.entry_script(strategy.name), argv)
        return train_process(strategy, cfg, work_dir, state, notes)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if is_dist():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()


def entry(strategy_name: str, description: str | None = None) -> None:
    """``python <strategy>.py [--config ...] [overrides]``; ``description`` (the script's
    docstring) opens its ``--help``."""
    loop.StopRequest.install()
    sys.exit(main(strategy_name, sys.argv[1:], description))
