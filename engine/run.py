"""One training run: the networks, prototypes and optimiser it holds, how they are built from a
config, and how a run becomes a checkpoint and back (with the resume-compatibility check)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dataset.transforms import normalize
from engine.config import apply_overrides, load_config, validate, with_added_keys
from engine.data import build_datasets, split_folder, split_name
from network import build_model_from_config, from_paper_layout
from utils.checkpoint import load_checkpoint, load_weights, save_checkpoint
from utils.dist import is_dist, is_main_process
from utils.ema import make_teacher
from utils.errors import UserError
from utils.prototypes import Prototypes
from utils.strategies import STRATEGIES, Evaluated, Strategy

# Keys that define the model (and its classes): a checkpoint only fits a config that agrees.
MODEL_KEYS = (
    "Network.backbone",
    "Network.num_class",
    "Network.output_stride",
    "Network.rep_dim",
    "Network.base_width",
    "Network.decoder_channels",
    "Dataset.name",
)
# Keys that must not change when a run is resumed.
RESUME_FIXED = (
    "Seed",
    *MODEL_KEYS,
    "Dataset.num_labels",
    "Dataset.split",
    "Dataset.batch_size",
    "Dataset.crop_size",
)
# Keys that may change when a run is resumed: where the files are, and how often and how the
# loop logs, saves and evaluates. They leave the trained weights as they are. Every other key
# (schedule, optimiser, losses, precision, ...) changes the rest of the run: a resume that
# changes one is refused unless asked for (``--allow-changes``), and then logged.
RESUME_FREE = (
    "Dataset.data_dir",
    "Dataset.txt_dir",
    # a folder dataset's folders, list files, file endings and display colours
    *(
        f"Dataset.{key}"
        for key in ("image_dir", "label_dir", "train_list", "unlabeled_dir", "unlabeled_list")
        + ("val_image_dir", "val_label_dir", "val_list", "image_suffix", "label_suffix", "palette")
    ),
    "Dataset.num_workers",
    "Network.pretrained",
    "Network.random_init",
    "Training.eval_interval",
    "Training.eval_mode",
    "Training.eval_crop_size",
    "Training.save_interval",
    "Training.log_interval",
)


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
    saved: dict, cfg: dict, path: Path, keys: tuple[str, ...] = RESUME_FIXED
) -> None:
    """Refuse a checkpoint whose config differs from ``cfg`` in ``keys`` (named in the error).

    A key the checkpoint's (older) config lacks counts as its ``ADDED_KEYS`` value.
    """
    saved = with_added_keys(saved)
    diff = [k for k in keys if _compared(saved, k) != _compared(cfg, k)]
    if diff:
        shown = describe_changes(saved, cfg, diff)
        raise UserError(f"{path} was trained with another model or dataset: {shown}")


def iters_per_epoch(num_labeled: int, batch_size: int, world: int) -> int:
    """Iterations of one pass over the labeled loader (the paper's epoch):
    ``ceil(num_labeled / world) // batch_size``."""
    return -(-num_labeled // world) // batch_size


def check_resume(state: dict, cfg: dict, world: int, path: Path, allow: bool) -> list[str]:
    """What resuming ``state`` with ``cfg`` on ``world`` processes changes, beyond the keys
    that may change (``RESUME_FREE``): changed training keys, and another number of
    processes while the run still has iterations to train (the effective batch, the epoch
    length and the data order follow it). Refused naming them unless ``allow``; returns the
    lines to log (none for an exact resume). ``RESUME_FIXED`` keys are checked before."""
    saved = with_added_keys(state["config"])  # compared as check_resume_compatible does
    keys = dict.fromkeys(dotted_keys(cfg) + dotted_keys(saved))
    changed = [
        k
        for k in keys
        if k not in RESUME_FIXED
        and k not in RESUME_FREE
        and _compared(saved, k) != _compared(cfg, k)
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


@dataclass
class Run:
    """Everything one training run holds; saved (minus the loaders) in a checkpoint."""

    cfg: dict
    strategy: Strategy
    device: torch.device
    rank: int
    world: int
    student: nn.Module  # model_without_ddp
    forward: nn.Module  # TwoBatchForward, possibly wrapped in DDP / compiled
    teacher: nn.Module
    prototypes: Prototypes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    datasets: dict
    iters_per_epoch: int
    iteration: int = 0
    best_miou: float = 0.0
    history: list = field(default_factory=list)
    channels_last: bool = False  # inputs in the networks' memory format (GPU only)
    seconds_before: float = 0.0  # training time of earlier processes of this run (resume)
    latest_iteration: int | None = None  # the iteration latest.pth holds (None: not written)
    started: float = field(default_factory=time.time)
    stopped: float | None = None  # when training ended (the clock of wall_seconds stops)

    @property
    def epoch(self) -> int:
        """Passes over the labeled loader so far (the unit of the ramp-down and the warm-up)."""
        return self.iteration // self.iters_per_epoch

    @property
    def result_model(self) -> nn.Module:
        """The network that is evaluated and is the run's result (the strategy says which)."""
        return self.student if self.strategy.evaluates is Evaluated.STUDENT else self.teacher

    def wall_seconds(self) -> float:
        """Training time of this run, earlier processes included, up to the end of training
        (the final checkpoint and the summary hold the same value; a rerun of a finished run,
        which only evaluates, adds nothing)."""
        end = time.time() if self.stopped is None else self.stopped
        return self.seconds_before + end - self.started

    def stop_clock(self) -> None:
        self.stopped = time.time()

    def model_input(self, img01: torch.Tensor) -> torch.Tensor:
        """A [0, 1] batch as the networks take it: normalised, in their memory format."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return normalize(img01).contiguous(memory_format=fmt)

    def autocast(self) -> torch.autocast:
        """Mixed precision around the forward passes (a no-op without ``amp_dtype``)."""
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )


class TwoBatchForward(nn.Module):
    """Student forward on the labeled and the unlabeled batch inside ONE module call, so that
    DDP sees one forward per backward. ``joint`` concatenates them (BatchNorm statistics then
    mix both batches); the paper runs them separately (the default)."""

    def __init__(self, model: nn.Module, joint: bool) -> None:
        super().__init__()
        self.model, self.joint = model, joint

    def forward(self, img_l: torch.Tensor, img_u: torch.Tensor | None):
        if img_u is None:
            return self.model(img_l), None
        if self.joint:
            pred, rep = self.model(torch.cat([img_l, img_u]))
            b = img_l.shape[0]
            return (pred[:b], rep[:b]), (pred[b:], rep[b:])
        return self.model(img_l), self.model(img_u)


def build_network(cfg: dict) -> nn.Module:
    """DeepLabv3+ on the ``Network`` section's encoder (``network.ENCODERS``)."""
    return build_model_from_config(cfg["Network"])


def build_network_for_eval(cfg: dict) -> nn.Module:
    """The architecture of the config, without loading ImageNet weights (the checkpoint has all)."""
    cfg = {**cfg, "Network": {**cfg["Network"], "pretrained": ""}}
    return build_network(cfg)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512 / AVX512-BF16 / AMX). On an
    AVX2-only CPU bf16 is emulated and many times slower than fp32."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def amp_dtype_for(cfg: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``Training.amp``: CUDA bf16 where supported, else fp16 (with a
    grad scaler); CPU bf16 where the CPU runs it natively; else None (fp32)."""
    if not cfg["Training"]["amp"]:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def _wrap_student(student: nn.Module, cfg: dict, device: torch.device) -> nn.Module:
    """The module the step calls: both student forwards in one call, in DDP when distributed,
    compiled when asked."""
    forward: nn.Module = TwoBatchForward(student, cfg["Training"]["joint_forward"])
    if is_dist():
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg["Training"]["compile"]:
        forward = torch.compile(forward)
    return forward


def make_optimizer(student: nn.Module, opt: dict) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum, weight decay): the fused kernel where torch has one for the
    device (one pass over the parameters), else the multi-tensor one."""
    kwargs = dict(
        lr=opt["lr"],
        momentum=opt["momentum"],
        weight_decay=opt["weight_decay"],
        nesterov=opt["nesterov"],
    )
    try:
        return torch.optim.SGD(student.parameters(), **kwargs, fused=True)
    except (RuntimeError, ValueError):  # no fused SGD for this device / torch version
        return torch.optim.SGD(student.parameters(), **kwargs, foreach=True)


def build_run(
    cfg: dict, strategy: Strategy, device: torch.device, rank: int, world: int, datasets=None
) -> Run:
    """Model, teacher, prototypes, optimiser; ``datasets`` default to the config's."""
    datasets = build_datasets(cfg) if datasets is None else datasets
    data = cfg["Dataset"]
    if strategy.semi_supervised and datasets["unlabeled"] is None:
        raise UserError(
            f"split {split_folder(cfg)}: unlabeled_filename.txt is empty (every training image "
            f"is labeled), so {strategy.name} has nothing to learn from; train it with "
            "supervised.py, or choose a split with unlabeled images"
        )
    per_rank = -(-len(datasets["labeled"]) // world)
    if per_rank < data["batch_size"]:
        raise UserError(
            f"config key Dataset.batch_size: got {data['batch_size']}, expected <= {per_rank} "
            f"(labeled images per process with {world} processes)"
        )
    torch.manual_seed(cfg["Seed"])  # identical initialisation on every process
    student = build_network(cfg).to(device)
    if is_dist() and device.type == "cuda" and cfg["Network"]["sync_bn"]:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    channels_last = device.type == "cuda" and cfg["Training"]["channels_last"]
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    teacher = make_teacher(student)
    forward = _wrap_student(student, cfg, device)
    optimizer = make_optimizer(student, cfg["Optim"])
    amp_dtype = amp_dtype_for(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    net = cfg["Network"]
    protos = Prototypes(net["num_class"], net["rep_dim"], cfg["Loss"]["alpha"], device)
    return Run(
        cfg=cfg,
        strategy=strategy,
        device=device,
        rank=rank,
        world=world,
        student=student,
        forward=forward,
        teacher=teacher,
        prototypes=protos,
        optimizer=optimizer,
        scaler=scaler,
        amp_dtype=amp_dtype,
        datasets=datasets,
        iters_per_epoch=iters_per_epoch(len(datasets["labeled"]), data["batch_size"], world),
        channels_last=channels_last,
    )


# --------------------------------------------------------------------------- checkpoints


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

    Without ``config``: the checkpoint's own (an older one completed with ``ADDED_KEYS``).
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
        cfg = validate(apply_overrides(with_added_keys(saved), overrides), source)
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
