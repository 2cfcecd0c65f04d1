"""Probe for tests/test_engine.py: run an entry script under torchrun, then dump each rank's state.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_probe.py PROBE_DIR \
        mix_label.py --work-dir DIR [Section.key=value ...]

The entry script runs unchanged (``runpy``, as ``__main__``, with its own command line). The
only addition is a wrapper around ``engine.loop.train`` that keeps a reference to the
``Run`` it trained; when the script exits, each process writes ``PROBE_DIR/rank<r>.pt`` with
its own student and teacher state dicts (parameters and buffers), prototypes and iteration
counter, so that the test can compare the processes bitwise. Exits with the script's status.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch

from engine import loop
from engine.run import Run


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def main(argv: list[str]) -> int:
    probe_dir, script, script_args = Path(argv[0]), argv[1], argv[2:]
    captured: dict[str, Run] = {}
    real_train = loop.train

    def train_and_keep(run: Run, work_dir: Path) -> dict:
        captured["run"] = run
        return real_train(run, work_dir)

    loop.train = train_and_keep
    sys.argv = [script, *script_args]
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    run = captured.get("run")
    if run is not None and code == 0:
        probe_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "student": cpu_state(run.student),
            "teacher": cpu_state(run.teacher),
            "prototypes": run.prototypes.proto.detach().cpu().clone(),
            "iteration": run.iteration,
            "world": run.world,
        }
        torch.save(state, probe_dir / f"rank{os.environ.get('RANK', '0')}.pt")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
