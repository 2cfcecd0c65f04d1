"""The command line of the training entry scripts: parse, validate everything before the run
folder is touched, then one process (or ``--nproc-per-node N`` processes) trains.

    python mix_label.py [--config PATH] [--work-dir DIR] [--fresh] [--nproc-per-node N|auto]
                        [Section.key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from engine import launch, loop
from engine.config import DEFAULT_CONFIG, dump_config, load_config
from engine.data import split_name
from engine.run import build_run, check_resume_compatible, restore
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
        "--nproc-per-node",
        default=None,
        metavar="N|auto",
        help="start N training processes on this machine with torch.distributed's elastic "
        "launcher, as torchrun --nproc_per_node=N does (auto: one per visible GPU)",
    )
    p.add_argument("overrides", nargs="*", help="Section.key=value config overrides")
    return p.parse_args(argv)


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


def prepare(strategy: Strategy, args: argparse.Namespace) -> tuple[dict, Path, dict | None]:
    """Validate everything before the run folder is touched."""
    cfg = load_config(args.config, args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(cfg, strategy)
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} exists and is not a folder")
    latest = work_dir / "latest.pth"
    state = None
    if latest.exists():
        if args.fresh:
            raise UserError(f"{latest} exists and --fresh was given; choose another --work-dir")
        state = load_checkpoint(latest)
        check_resume_compatible(state["config"], cfg, latest)
        if state.get("strategy") != strategy.name:
            raise UserError(
                f"{latest} belongs to a {state.get('strategy')} run, not {strategy.name}"
            )
    return cfg, work_dir, state


def train_process(strategy: Strategy, cfg: dict, work_dir: Path, state: dict | None) -> int:
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
    try:
        summary = loop.train(run, work_dir)
    except KeyboardInterrupt:
        if (work_dir / "latest.pth").exists():
            print(
                f"\ninterrupted: {work_dir / 'latest.pth'} holds iteration {run.iteration}",
                file=sys.stderr,
            )
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
        cfg, work_dir, state = prepare(strategy, args)
        if nproc > 1:
            return launch.elastic_run(nproc, launch.entry_script(strategy.name), argv)
        return train_process(strategy, cfg, work_dir, state)
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
