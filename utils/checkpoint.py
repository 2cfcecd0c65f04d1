"""Checkpoint files: atomic writes, safe loads (``weights_only``), weights files of other layouts."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

# Keys every training checkpoint holds (see engine/run.py: make_checkpoint).
REQUIRED_KEYS = ("student", "teacher", "prototypes", "optimizer", "iteration", "config")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to a temporary file in the same folder, then rename it into place.

    A crash (even SIGKILL) in the middle leaves the previous file intact. A write that fails
    (a folder that cannot be written, a full disk) is a one-line ``UserError`` naming the file;
    the previous file stays and the temporary file is removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        kept = "the previous one is kept" if path.is_file() else "no earlier one exists"
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); {kept}") from None


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


# Wrappers around a state dict in other projects' checkpoint files ({"state_dict": ...}).
_WRAPPER_KEYS = ("state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (``weights_only=True``) and return its dict of tensors, unwrapped
    from ``{"state_dict": ...}`` / ``{"model": ...}``. Bad input is a one-line ``UserError``."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling / zip / format failure
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__})"
        ) from None
    while isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in _WRAPPER_KEYS):
        obj = next(obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict))
    if not isinstance(obj, dict) or not obj:
        raise UserError(
            f"{path}: expected a state dict (dict of tensors), got {type(obj).__name__}"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(
                f"{path}: expected a state dict (dict of tensors), entry {key!r} is a "
                f"{type(value).__name__}"
            )
    return obj
