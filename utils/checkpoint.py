"""Checkpoint files: atomic writes, safe loads (``weights_only``), weights files of other layouts."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError

# Keys every training checkpoint holds (see engine/checkpoints.py: make_checkpoint).
REQUIRED_KEYS = ("student", "teacher", "prototypes", "optimizer", "iteration", "config")


def _numpy_globals() -> list:
    """What ``weights_only`` loading must accept for numpy arrays inside a checkpoint (the
    paper code saves its prototypes as one): the array reconstructor under its numpy 2 and
    numpy 1 names, ``ndarray``, and the dtype classes. Nothing that runs code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    dtypes = getattr(np, "dtypes", None)
    classes = [
        getattr(dtypes, n)
        for n in dir(dtypes)
        if isinstance(getattr(dtypes, n), type) and issubclass(getattr(dtypes, n), np.dtype)
    ]
    names = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
    return [reconstruct, np.ndarray, np.dtype, *classes, *((reconstruct, n) for n in names)]


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
        with torch.serialization.safe_globals(_numpy_globals()):
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


def weight_mismatches(
    state: dict[str, Any], expected: dict[str, torch.Tensor], unexpected: bool = True
) -> list[str]:
    """Every key of ``expected`` that ``state`` lacks or holds in another shape (model order),
    then (``unexpected``) every key of ``state`` the model does not have.

    ``num_batches_tracked`` may be absent (old checkpoints lack it).
    """
    problems = []
    for key, ref in expected.items():
        value = state.get(key)
        if value is None:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing key {key}")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, expected a tensor")
        elif value.shape != ref.shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
    if unexpected:
        problems += [f"unexpected key {key}" for key in state if key not in expected]
    return problems


def load_weights(module: nn.Module, state: Any, source: str) -> None:
    """``module.load_state_dict(state)``, or a one-line ``UserError`` naming ``source`` and the
    first keys and shapes that do not fit (instead of torch's page-long ``RuntimeError``)."""
    if not isinstance(state, dict):
        raise UserError(f"{source}: expected a state dict, got {type(state).__name__}")
    expected = module.state_dict()
    problems = weight_mismatches(state, expected)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(
            f"{source}: the weights do not fit the model of the config: "
            f"{'; '.join(problems[:3])}{more}"
        )
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
