"""The resume policy: which config keys a resumed run may change (the model and dataset keys
never; where the files are and how often the loop logs, saves and evaluates always; every
other key, and another number of processes, with ``--allow-changes``), and the messages that
refuse the others. ``inference_config`` (``engine/checkpoints.py``) applies the model keys'
rule to the tools that read a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import FIXED, FREE, MODEL, keys_of, with_defaults
from engine.data import split_name
from engine.run import iters_per_epoch
from utils.errors import UserError

# The schema's ``Key.resume`` of each key (engine/config.py) says whether a resume may change it.
# Keys that define the model (and its classes): a checkpoint only fits a config that agrees.
MODEL_KEYS = keys_of(MODEL)
# Keys that must not change when a run is resumed.
RESUME_FIXED = keys_of(MODEL, FIXED)  # in schema order: Seed, the model keys, ...
# Keys that may change when a run is resumed: where the files are, and how often and how the
# loop logs, saves and evaluates. They leave the trained weights as they are. Every other key
# (schedule, optimiser, losses, precision, ...) changes the rest of the run: a resume that
# changes one is refused unless asked for (``--allow-changes``), and then logged.
RESUME_FREE = keys_of(FREE)


def config_value(cfg: dict, dotted: str) -> Any:
    """The value at ``Section.key``; None where a (older) config lacks it."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _compared(cfg: dict, dotted: str) -> Any:
    """The value compared on resume: ``Dataset.split`` as the folder it names (``seed`` and
    the seed's number name the same split)."""
    if dotted == "Dataset.split" and isinstance(cfg.get("Dataset"), dict) and "Seed" in cfg:
        return split_name(cfg)
    return config_value(cfg, dotted)


def dotted_keys(cfg: dict, prefix: str = "") -> list[str]:
    """Every ``Section.key`` of a config, in order."""
    out = []
    for k, v in cfg.items():
        out += dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def describe_changes(saved: dict, cfg: dict, keys: list[str]) -> str:
    return ", ".join(f"{k} ({_compared(saved, k)!r} -> {_compared(cfg, k)!r})" for k in keys)


def check_resume_compatible(
    saved: dict, cfg: dict, path: Path, keys: tuple[str, ...] | None = None
) -> None:
    """Refuse a checkpoint whose config differs from ``cfg`` in ``keys`` (named in the error).

    A key the checkpoint's (older) config lacks counts as its default.
    """
    keys = keys_of(MODEL, FIXED) if keys is None else keys  # RESUME_FIXED, read now
    saved = with_defaults(saved)
    diff = [k for k in keys if _compared(saved, k) != _compared(cfg, k)]
    if diff:
        shown = describe_changes(saved, cfg, diff)
        raise UserError(f"{path} was trained with another model or dataset: {shown}")


def check_resume(state: dict, cfg: dict, world: int, path: Path, allow: bool) -> list[str]:
    """What resuming ``state`` with ``cfg`` on ``world`` processes changes, beyond the keys
    that may change (``RESUME_FREE``): changed training keys, and another number of
    processes while the run still has iterations to train (the effective batch, the epoch
    length and the data order follow it). Refused naming them unless ``allow``; returns the
    lines to log (none for an exact resume). ``RESUME_FIXED`` keys are checked before."""
    saved = with_defaults(state["config"])  # compared as check_resume_compatible does
    keys = dict.fromkeys(dotted_keys(cfg) + dotted_keys(saved))
    may_not, may = keys_of(MODEL, FIXED), keys_of(FREE)  # RESUME_FIXED, RESUME_FREE, read now
    changed = [
        k
        for k in keys
        if k not in may_not and k not in may and _compared(saved, k) != _compared(cfg, k)
    ]
    found, notes = [], []
    if changed:
        found.append(describe_changes(saved, cfg, changed))
        notes.append(f"resuming with changed settings (--allow-changes): {found[-1]}")
    saved_world = state.get("world_size")
    if int(state["iteration"]) < cfg["Training"]["total_iter"] and saved_world != world:
        if saved_world is None:  # written before checkpoints recorded it
            notes.append(f"{path} does not record its number of processes; this run has {world}")
        else:
            n, bs = cfg["Dataset"]["num_labels"], cfg["Dataset"]["batch_size"]
            what = (
                f"effective batch {bs}x{saved_world} -> {bs}x{world} images per loader, an "
                f"epoch {iters_per_epoch(n, bs, saved_world)} -> {iters_per_epoch(n, bs, world)}"
                " iterations, another data order"
            )
            found.append(f"processes ({saved_world} -> {world}: {what})")
            notes.append(
                f"resuming on {world} process(es) instead of {saved_world} (--allow-changes): "
                f"{what}"
            )
    if found and not allow:
        raise UserError(
            f"{path}: resuming would change the run: {'; '.join(found)}; resume with the same "
            "settings, pass --allow-changes to continue with these, or use another --work-dir"
        )
    return notes
