"""The checkpoint of a run (what ``latest.pth`` / ``best.pth`` hold, and how a run is put back
from one), and the checkpoints of trained runs that ``evaluate.py`` / ``predict.py`` read:
ours, or the paper code's (turned into ours), with the config they are used with."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import apply_overrides, load_config, validate, with_defaults
from engine.resume import MODEL_KEYS, check_resume_compatible
from engine.run import Run, build_network_for_eval
from network import from_paper_layout
from utils.checkpoint import load_checkpoint, load_weights, save_checkpoint
from utils.dist import is_main_process
from utils.errors import UserError
from utils.strategies import STRATEGIES, Evaluated


def make_checkpoint(run: Run) -> dict:
    """Everything a resume reads. The EMA step and the epoch follow from ``iteration``, and
    every step reseeds the random generators from ``(Seed, rank, iteration)``, so neither
    they nor a generator state are stored (older checkpoints that hold ``ema_step``,
    ``epoch`` and ``rng`` still load; those entries are not read)."""
    return {
        "student": run.student.state_dict(),
        "teacher": run.teacher.state_dict(),
        "prototypes": run.prototypes.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "iteration": run.iteration,
        "best_miou": run.best_miou,
        "history": run.history,
        "wall_seconds": run.wall_seconds(),
        "strategy": run.strategy.name,
        "world_size": run.world,
        "config": run.cfg,
    }


def restore(run: Run, state: dict, source: str = "checkpoint") -> None:
    """Put a checkpoint's state into ``run``; weights that do not fit are a one-line
    ``UserError`` naming ``source``."""
    load_weights(run.student, state["student"], f"{source} (student)")
    load_weights(run.teacher, state["teacher"], f"{source} (teacher)")
    run.prototypes.load_state_dict(state["prototypes"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.iteration = int(state["iteration"])
    run.best_miou = float(state["best_miou"])
    run.history = list(state["history"])
    run.seconds_before = float(state.get("wall_seconds", 0.0))
    run.latest_iteration = run.iteration


def load_trained_checkpoint(path: str | Path) -> dict:
    """A checkpoint of a trained run for ``evaluate.py`` / ``predict.py``: ours, or one of the
    paper code (its ``model`` / ``ema_model`` state dicts and numpy ``prototypes``), turned
    into ours: ``student``, ``teacher`` (its EMA model, the result), ``prototypes``, and
    ``config`` None (it holds none: ``--config`` says which)."""
    state = load_checkpoint(path, required=())
    if "teacher" in state and "student" in state:
        return state
    if isinstance(state.get("model"), dict) and isinstance(state.get("ema_model"), dict):
        proto = state.get("prototypes")
        return {
            "student": from_paper_layout(state["model"]),
            "teacher": from_paper_layout(state["ema_model"]),
            "prototypes": None
            if proto is None
            else {"proto": torch.as_tensor(proto, dtype=torch.float32)},
            "config": None,
            "epoch": state.get("epoch"),
            "iteration": None,
            "source": "paper code",
        }
    raise UserError(
        f"{path} is not a training checkpoint: it holds neither student / teacher (this "
        "project) nor model / ema_model (the paper code)"
    )


def inference_config(
    state: dict, path: Path, config: str | Path | None, overrides: list[str] = ()
) -> dict:
    """The config ``evaluate.py`` / ``predict.py`` use for the checkpoint ``state`` at ``path``.

    Without ``config``: the checkpoint's own (a key an older one lacks read as its default).
    With it: that file, whose model keys must agree with the checkpoint's (the training-only
    keys, batch, crop, split, may differ). ``overrides`` apply to either and are checked the
    same way. Used by every tool that reads a trained checkpoint, so one checkpoint works in
    all of them.
    """
    saved = state.get("config")
    if config is not None:
        cfg = load_config(config, overrides)
    elif saved is None:
        classes = getattr(state.get("teacher", {}).get("classifier.3.weight"), "shape", [0])[0]
        name = {19: "cityscapes"}.get(classes, "voc")
        raise UserError(
            f"{path} holds no config (a checkpoint of the paper code): give the config it was "
            f"trained with, e.g. --config configs/{name}.yaml"
        )
    else:
        source = f"{path} (its config; --config to use another)"
        cfg = validate(apply_overrides(with_defaults(saved), overrides), source)
    if saved is not None:
        check_resume_compatible(saved, cfg, path, MODEL_KEYS)
    return cfg


def result_model_key(state: dict) -> str:
    """``"teacher"`` or ``"student"``: the checkpoint entry its strategy names as the result
    (the teacher for a checkpoint that does not name its strategy)."""
    strategy = STRATEGIES.get(state.get("strategy", ""))
    return (strategy.evaluates if strategy is not None else Evaluated.TEACHER).value


def save(run: Run, work_dir: Path, name: str) -> None:
    """Rank 0 writes the checkpoint (every process calls this at the same iteration)."""
    if is_main_process():
        save_checkpoint(make_checkpoint(run), work_dir / name)
    if name == "latest.pth":
        run.latest_iteration = run.iteration


def load_teacher(
    path: Path, config: str | None = None, overrides: list[str] = ()
) -> tuple[dict, dict, torch.nn.Module, torch.Tensor]:
    """``(state, cfg, teacher, proto)`` of a trained checkpoint, for the tools that look at
    pseudo-labels: the teacher's weights in a network of the (checkpoint's) config and its
    prototypes, which must be ``(num_class, rep_dim)`` (a one-line ``UserError`` otherwise)."""
    state = load_trained_checkpoint(path)
    cfg = inference_config(state, path, config, overrides)
    teacher = build_network_for_eval(cfg)
    load_weights(teacher, state["teacher"], f"{path} (teacher)")
    protos = state.get("prototypes") or {}
    proto = protos.get("proto") if isinstance(protos, dict) else None
    shape = (cfg["Network"]["num_class"], cfg["Network"]["rep_dim"])
    if not isinstance(proto, torch.Tensor) or tuple(proto.shape) != shape:
        raise UserError(f"{path}: no prototypes of shape ({shape[0]}, {shape[1]}) inside")
    return state, cfg, teacher, proto
