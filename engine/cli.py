"""The command line of the training entry scripts: parse, validate everything before the run
folder is touched, then one process (or ``--nproc-per-node N`` processes) trains.

    python mix_label.py [--config PATH] [--work-dir DIR] [--fresh] [--allow-changes]
                        [--nproc-per-node N|auto] [Section.key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from engine import launch, loop
from engine.config import DEFAULT_CONFIG, dump_config, load_config
from engine.run import build_run, check_resume, check_resume_compatible, restore
from utils.checkpoint import load_checkpoint
from utils.dist import init_distributed, is_dist, is_main_process
from utils.errors import UserError
from utils.strategies import Strategy, get_strategy

log = logging.getLogger("css")


def parse_args(strategy: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"{strategy}.py",
        description=f"Train DeepLabv3+ with the {strategy} strategy (CSS, ICCV 2023).",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: demo)")
    p.add_argument("--work-dir", default=None, help="run folder (default: runs/<derived>)")
    p.add_argument("--fresh", action="store_true", help="refuse to resume an existing run")
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
    p.add_argument("overrides", nargs="*", help="Section.key=value config overrides")
    return p.parse_args(argv)


def default_work_dir(cfg: dict, strategy: Strategy) -> Path:
    d = cfg["Dataset"]
    return Path("runs") / f"{d['name']}_{strategy.name}_{d['num_labels']}_seed{cfg['Seed']}"


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


def prepare(
    strategy: Strategy, args: argparse.Namespace, world: int = 1
) -> tuple[dict, Path, dict | None, list[str]]:
    """Validate everything before the run folder is touched. Returns the config, the run
    folder, the checkpoint to resume (or None) and the lines saying what the resume changes
    (``--allow-changes``)."""
    cfg = load_config(args.config, args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(cfg, strategy)
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} exists and is not a folder")
    latest = work_dir / "latest.pth"
    state, notes = None, []
    if latest.exists():
        if args.fresh:
            raise UserError(f"{latest} exists and --fresh was given; choose another --work-dir")
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
        restore(run, state)
    if is_main_process():
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.yaml").write_text(dump_config(cfg))
    setup_logging(work_dir)
    log.info(
        "%s: %s, %d labeled / %d unlabeled / %d val images, %d process(es) on %s%s",
        strategy.name,
        cfg["Dataset"]["name"],
        len(run.datasets["labeled"]),
        len(run.datasets["unlabeled"]),
        len(run.datasets["valid"]),
        world,
        device,
        f", resuming at iteration {run.iteration}" if state is not None else "",
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


def main(strategy_name: str, argv: list[str] | None = None) -> int:
    strategy = get_strategy(strategy_name)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(strategy.name, argv)
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


def entry(strategy_name: str) -> None:
    """``python <strategy>.py [--config ...] [overrides]``."""
    loop.StopRequest.install()
    sys.exit(main(strategy_name, sys.argv[1:]))
