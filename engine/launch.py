"""``--nproc-per-node N|auto``: an entry script that starts its own training processes.

The paper's scripts spawn one process per GPU themselves. Here the entry script hands its own
command line (minus ``--nproc-per-node``) to torch.distributed's elastic launcher, the one
``torchrun`` runs, with torchrun's defaults (one node, a free local rendezvous port,
``OMP_NUM_THREADS=1`` per process unless set), so ``python mix_label.py --nproc-per-node 2``
is ``torchrun --nproc_per_node=2 mix_label.py``. ``torchrun`` stays the way for many nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FLAG = "--nproc-per-node"


def processes_wanted(value: str | None) -> int:
    """Processes to start for ``--nproc-per-node``: 1 without it; ``auto`` = the visible GPUs
    (1 on a machine without one)."""
    if value is None:
        return 1
    if value == "auto":
        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{FLAG}: got {value!r}, expected a positive integer or auto")
    return n


def world_size(nproc: int) -> int:
    """The number of training processes of this launch: torchrun's ``WORLD_SIZE`` (every node
    together) when torchrun started this process, else ``nproc``."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return nproc


def entry_script(strategy_name: str) -> Path:
    return REPO / f"{strategy_name}.py"


def without_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc-per-node N`` / ``--nproc-per-node=N`` (what each process gets)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == FLAG:
            skip = True
        elif not item.startswith(f"{FLAG}="):
            out.append(item)
    return out


def elastic_run(nproc: int, script: Path, argv: list[str]) -> int:
    """Run ``script argv`` in ``nproc`` processes as torchrun does; the exit status of the
    first process that failed, else 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        [f"--nproc-per-node={nproc}", str(script), *without_flag(argv)]
    )
    try:
        run(args)
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return next((c for c in codes if c not in (None, 0)), 1)
    return 0
