"""Atomic, safely loaded checkpoints."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

# Keys every training checkpoint holds (see utils/engine.py: make_checkpoint).
REQUIRED_KEYS = ("student", "teacher", "prototypes", "optimizer", "iteration", "config")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to a temporary file in the same folder, then rename it into place.

    A crash (even SIGKILL) in the middle leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """Load a checkpoint with ``weights_only=True``; bad input is a one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable checkpoint ({first[:120]})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a training checkpoint (no dict inside)")
    missing = [k for k in required if k not in state]
    if missing:
        raise UserError(f"{path} is not a training checkpoint (missing {', '.join(missing)})")
    return state
