"""The shared training engine behind ``supervised.py``, ``ori_pseudo.py``, ``mix_label.py``
and ``cross_label.py``: the strategies differ only in their pseudo-label function.

Stages (each a small function): parse the command line, validate everything, build data /
model / optimiser, resume, ``train_step``, ``evaluate``, save. One process on the CPU or
one GPU without torchrun; torchrun for N GPUs / N nodes (NCCL) or N CPU processes (gloo).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dataset.batch_augment import strong_augment
from dataset.build import build_datasets, class_names
from dataset.transforms import normalize
from network import build_model
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import dump_config, load_config
from utils.contrastive import prototype_contrastive_loss
from utils.dist import all_reduce_sum, broadcast_, init_distributed, is_dist, is_main_process
from utils.ema import ema_update, make_teacher
from utils.errors import UserError
from utils.evaluation import evaluate, format_table
from utils.losses import ohem_ce, sup_ce, unsup_ce
from utils.prototypes import Prototypes
from utils.sampler import EpochBatchSampler, step_seed
from utils.schedules import poly_lr, ramp_down
from utils.strategies import make_pseudo_labels, needs_rep, teacher_predictions

STRATEGY_NAMES = ("supervised", "ori_pseudo", "mix_label", "cross_label")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
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
    "Dataset.batch_size",
    "Dataset.crop_size",
)
log = logging.getLogger("css")


# --------------------------------------------------------------------------- set-up


def parse_args(strategy: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"{strategy}.py",
        description=f"Train DeepLabv3+ with the {strategy} strategy (CSS, ICCV 2023).",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: demo)")
    p.add_argument("--work-dir", default=None, help="run folder (default: runs/<derived>)")
    p.add_argument("--fresh", action="store_true", help="refuse to resume an existing run")
    p.add_argument("overrides", nargs="*", help="Section.key=value config overrides")
    return p.parse_args(argv)


def default_work_dir(cfg: dict, strategy: str) -> Path:
    d = cfg["Dataset"]
    return Path("runs") / f"{d['name']}_{strategy}_{d['num_labels']}_seed{cfg['Seed']}"


def _get(cfg: dict, dotted: str) -> Any:
    """The value at ``Section.key``; None where a (older) config lacks it."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_resume_compatible(
    saved: dict, cfg: dict, path: Path, keys: tuple[str, ...] = RESUME_FIXED
) -> None:
    """Refuse a checkpoint whose config differs from ``cfg`` in ``keys`` (named in the error)."""
    diff = [k for k in keys if _get(saved, k) != _get(cfg, k)]
    if diff:
        shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(cfg, k)!r})" for k in diff)
        raise UserError(f"{path} was trained with another model or dataset: {shown}")


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


# --------------------------------------------------------------------------- building


@dataclass
class Run:
    """Everything one training run holds; saved (minus the loaders) in a checkpoint."""

    cfg: dict
    strategy: str
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
    started: float = field(default_factory=time.time)

    def wall_seconds(self) -> float:
        return self.seconds_before + time.time() - self.started

    def model_input(self, img01: torch.Tensor) -> torch.Tensor:
        """A [0, 1] batch as the networks take it: normalised, in their memory format."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return normalize(img01).contiguous(memory_format=fmt)


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
    net = cfg["Network"]
    return build_model(
        net["backbone"],
        net["num_class"],
        net["output_stride"],
        net["rep_dim"],
        net["pretrained"] or None,
        base_width=net["base_width"],
        decoder_channels=net["decoder_channels"],
    )


def amp_dtype_for(cfg: dict, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or not cfg["Training"]["amp"]:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_loader(dataset, sampler: EpochBatchSampler, cfg: dict, device: torch.device):
    workers = cfg["Dataset"]["num_workers"]
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def cycle(loader, sampler: EpochBatchSampler, start_iter: int):
    """Endless batches; position derived from the iteration, so resuming needs no state."""
    epoch, batch = divmod(start_iter, sampler.batches_per_epoch)
    sampler.set_position(epoch, batch)
    while True:
        yield from loader
        sampler.set_position(sampler.epoch + 1, 0)


def build_run(
    cfg: dict, strategy: str, device: torch.device, rank: int, world: int, datasets=None
) -> Run:
    """Model, teacher, prototypes, optimiser; ``datasets`` default to the config's."""
    datasets = build_datasets(cfg) if datasets is None else datasets
    data = cfg["Dataset"]
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
    forward: nn.Module = TwoBatchForward(student, cfg["Training"]["joint_forward"])
    if is_dist():
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg["Training"]["compile"]:
        forward = torch.compile(forward)
    opt = cfg["Optim"]
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=opt["lr"],
        momentum=opt["momentum"],
        weight_decay=opt["weight_decay"],
        nesterov=opt["nesterov"],
        foreach=True,
    )
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
        iters_per_epoch=per_rank // data["batch_size"],
        channels_last=channels_last,
    )


# --------------------------------------------------------------------------- checkpoints


def make_checkpoint(run: Run) -> dict:
    return {
        "student": run.student.state_dict(),
        "teacher": run.teacher.state_dict(),
        "ema_step": run.iteration,
        "prototypes": run.prototypes.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "iteration": run.iteration,
        "epoch": run.iteration // run.iters_per_epoch,
        "best_miou": run.best_miou,
        "history": run.history,
        "wall_seconds": run.wall_seconds(),
        "strategy": run.strategy,
        "rng": {"torch": torch.get_rng_state()},
        "config": run.cfg,
    }


def restore(run: Run, state: dict) -> None:
    run.student.load_state_dict(state["student"])
    run.teacher.load_state_dict(state["teacher"])
    run.prototypes.load_state_dict(state["prototypes"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.iteration = int(state["iteration"])
    run.best_miou = float(state["best_miou"])
    run.history = list(state["history"])
    run.seconds_before = float(state.get("wall_seconds", 0.0))


def save(run: Run, work_dir: Path, name: str) -> None:
    if is_main_process():
        save_checkpoint(make_checkpoint(run), work_dir / name)


# --------------------------------------------------------------------------- one step


def contrastive_weight(run: Run, epoch: int) -> float:
    if run.strategy == "ori_pseudo":
        return 1.0
    r = run.cfg["Ramp_Scheduler"]
    return ramp_down(
        epoch, r["begin_epoch"], r["max_epoch"], r["max_value"], r["min_value"], r["ramp_mult"]
    )


def downsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest downsampling of a ``[B,H,W]`` map (labels, masks) to ``size``."""
    return F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0].to(x.dtype)


def no_timer(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def augment_unlabeled(run: Run, img_u01: torch.Tensor, pl) -> tuple[torch.Tensor, dict]:
    """Strong augmentation of the unlabeled batch and its per-pixel maps (each distinct map
    once: most strategies use the same tensors for both branches)."""
    named = {"y_u": pl.y_u, "conf_u": pl.conf_u, "y_con": pl.y_con, "conf_con": pl.conf_con}
    unique: list[torch.Tensor] = []
    for t in named.values():
        if not any(t is u for u in unique):
            unique.append(t)
    fills = [-1 if t.dtype == torch.int64 else 0.0 for t in unique]
    data = run.cfg["Dataset"]
    img, out = strong_augment(
        img_u01,
        unique,
        fills,
        crop_size=tuple(data["crop_size"]),
        scale_size=tuple(data["scale_size"]),
        mix_mode=data["mix_mode"],
        class_map=0,  # ClassMix chooses classes from y_u
    )
    index = {id(t): k for k, t in enumerate(unique)}
    return img, {name: out[index[id(t)]] for name, t in named.items()}


def train_step(run: Run, batch_l: dict, batch_u: dict | None, phase=no_timer) -> dict:
    """One optimiser step; returns the loss terms and diagnostics as 0-dim tensors.

    ``phase(name)`` is a context manager around each stage (the benchmark times them).
    """
    cfg, dev, loss_cfg = run.cfg, run.device, run.cfg["Loss"]
    epoch = run.iteration // run.iters_per_epoch
    img_l = run.model_input(batch_l["img"].to(dev, non_blocking=True))
    y_l = batch_l["label"].to(dev, non_blocking=True)
    size = tuple(img_l.shape[-2:])
    autocast = torch.autocast(dev.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None)
    stats: dict[str, torch.Tensor] = {}
    img_u_s = pl = maps = None
    if batch_u is not None:
        with phase("teacher"), torch.no_grad():
            img_u01 = batch_u["img"].to(dev, non_blocking=True).float().div_(255)
            with autocast:
                if cfg["Training"]["teacher_on_labeled"]:
                    run.teacher(img_l)  # paper quirk: only moves the teacher's BN statistics
                logits_t, rep_t = run.teacher(run.model_input(img_u01))
            t = teacher_predictions(
                logits_t,
                rep_t,
                run.prototypes.proto,
                loss_cfg["temp"],
                size,
                needs_rep(run.strategy),
            )
            pl = make_pseudo_labels(run.strategy, t, epoch, loss_cfg["warm_up"])
        with phase("augment"), torch.no_grad():
            img_aug, maps = augment_unlabeled(run, img_u01, pl)
            img_u_s = run.model_input(img_aug)
        if pl.agreement is not None:
            stats["agreement"] = pl.agreement
    with phase("student_forward"), autocast:
        (pred_l, rep_l), out_u = run.forward(img_l, img_u_s)
    with phase("sup_loss"):
        pred_l_large = F.interpolate(pred_l.float(), size=size, mode="bilinear", align_corners=True)
        if loss_cfg["sup_loss"] == "ohem":
            min_kept = loss_cfg["ohem_min_kept"] * img_l.shape[0]
            sup = ohem_ce(pred_l_large, y_l, loss_cfg["ohem_thresh"], min_kept)
        else:
            sup = sup_ce(pred_l_large, y_l)
    stats["sup"] = sup.detach()
    # The supervised baseline does not use the representation head; a zero term keeps it in
    # the graph so that DDP (which expects every parameter to get a gradient) is satisfied.
    total = sup if out_u is not None else sup + rep_l.float().sum() * 0
    if out_u is not None:
        pred_u, rep_u = out_u
        with phase("unsup_loss"):
            pred_u_large = F.interpolate(
                pred_u.float(), size=tuple(img_u_s.shape[-2:]), mode="bilinear", align_corners=True
            )
            unsup = unsup_ce(
                pred_u_large,
                maps["y_u"],
                maps["conf_u"],
                loss_cfg["un_threshold"],
                loss_cfg["weight_counts_ignored"],
            )
        contrast = contrastive_term(run, pred_l, rep_l, y_l, pred_u, rep_u, maps, pl, phase)
        lam = contrastive_weight(run, epoch)
        total = total + unsup + lam * contrast
        with torch.no_grad():
            stats["unsup"] = unsup.detach()
            stats["contrast"] = contrast.detach()
            confident = (maps["conf_u"] >= loss_cfg["un_threshold"]) & (maps["y_u"] >= 0)
            stats["mask_ratio"] = confident.float().mean()
            stats["lambda"] = torch.tensor(lam, device=dev)
    stats["total"] = total.detach()
    with phase("backward"):
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(total).backward()
    with phase("optimizer_ema"):
        run.scaler.step(run.optimizer)
        run.scaler.update()
        ema_update(run.teacher, run.student, run.iteration, cfg["EMA"]["alpha"])
    return stats


def contrastive_term(run, pred_l, rep_l, y_l, pred_u, rep_u, maps, pl, phase=no_timer):
    """Prototype update from this step's valid pixels, then the contrastive loss (SPEC 4.5).

    Valid pixels: labeled pixels with a label, unlabeled pixels whose contrastive
    pseudo-label is not ignored and whose confidence is >= weak_threshold; all maps are
    downsampled (nearest) to the representation's 1/4 resolution.
    """
    loss_cfg = run.cfg["Loss"]
    rep = torch.cat([rep_l, rep_u]).float()
    size = tuple(rep.shape[-2:])
    with phase("proto_update"), torch.no_grad():
        y = torch.cat([downsample(y_l, size), downsample(maps["y_con"], size)])
        weak = downsample(maps["conf_con"], size) >= loss_cfg["weak_threshold"]
        valid = y >= 0
        valid[y_l.shape[0] :] &= weak
        if pl.use_rep_indicator:  # rep-space probabilities, prototypes before this update
            prob = run.prototypes.probs(rep.detach(), loss_cfg["temp"])
        else:
            prob = torch.cat([pred_l, pred_u]).detach().float().softmax(1)
        run.prototypes.update(rep.detach(), y.clamp_min(0), valid)
    # A diverged step (non-finite rep) leaves non-finite prototypes, from which negative
    # classes cannot be drawn (torch.multinomial raises); zeros let the step finish with a
    # non-finite loss that check_finite reports. Identity while the prototypes are finite.
    proto = torch.nan_to_num(run.prototypes.proto, nan=0.0, posinf=0.0, neginf=0.0)
    with phase("contrastive"):
        return prototype_contrastive_loss(
            rep,
            y,
            valid,
            prob,
            proto,
            loss_cfg["strong_threshold"],
            loss_cfg["temp"],
            loss_cfg["num_queries"],
            loss_cfg["num_negatives"],
        )


# --------------------------------------------------------------------------- evaluation


def eval_model(run: Run) -> nn.Module:
    """The teacher is the result; the supervised baseline (no teacher forward, so no teacher
    BN statistics) is evaluated on its student."""
    return run.student if run.strategy == "supervised" else run.teacher


def sync_buffers(*models: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics).

    Without SyncBatchNorm (CPU / gloo, or ``sync_bn: false``) each process updates them from
    its own batches, so the shards of a distributed evaluation would run different models,
    none of them the one rank 0 saves. Training is unaffected: both networks run in train
    mode (batch statistics) and DDP broadcasts the student's buffers before each forward.
    """
    if is_dist():
        for model in models:
            for buf in model.buffers():
                broadcast_(buf)


def run_eval(run: Run) -> tuple[float, torch.Tensor]:
    tr = run.cfg["Training"]
    sync_buffers(run.student, run.teacher)
    cm = evaluate(
        eval_model(run),
        run.datasets["valid"],
        run.cfg["Network"]["num_class"],
        run.device,
        mode=tr["eval_mode"],
        crop=tr["eval_crop_size"],
        num_workers=min(2, run.cfg["Dataset"]["num_workers"]),
        amp_dtype=run.amp_dtype,
    )
    return cm.miou(), cm.iou()


# --------------------------------------------------------------------------- the loop


class MetricAverager:
    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.n = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += v
        self.n += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        self.sums.clear()
        self.n = 0
        return out


def check_finite(run: Run, values: dict[str, float]) -> None:
    bad = [
        k
        for k in ("sup", "unsup", "contrast", "total")
        if k in values and not math.isfinite(values[k])
    ]
    if bad:
        terms = ", ".join(
            f"{k}={values[k]}" for k in ("sup", "unsup", "contrast", "total") if k in values
        )
        raise UserError(
            f"non-finite loss at iteration {run.iteration + 1}: {terms}; "
            "the last good checkpoint is kept"
        )


class MetricsWriter:
    """``metrics.jsonl`` on rank 0, plus TensorBoard events when tensorboard is installed."""

    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / "metrics.jsonl"
        self.tb = None
        if is_main_process():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.tb = SummaryWriter(str(work_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        if not is_main_process():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "iter":
                    self.tb.add_scalar(key, value, record["iter"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(run: Run, work_dir: Path) -> dict:
    cfg, tr = run.cfg, run.cfg["Training"]
    seed, bs = cfg["Seed"], cfg["Dataset"]["batch_size"]
    sampler_l = EpochBatchSampler(len(run.datasets["labeled"]), bs, seed, 0, run.rank, run.world)
    batches_l = cycle(
        make_loader(run.datasets["labeled"], sampler_l, cfg, run.device), sampler_l, run.iteration
    )
    batches_u = None
    if run.strategy != "supervised":
        sampler_u = EpochBatchSampler(
            len(run.datasets["unlabeled"]), bs, seed, 1, run.rank, run.world
        )
        if sampler_u.batches_per_epoch == 0:
            raise UserError(
                f"config key Dataset.batch_size: got {bs}, larger than the unlabeled set per process"
            )
        loader_u = make_loader(run.datasets["unlabeled"], sampler_u, cfg, run.device)
        batches_u = cycle(loader_u, sampler_u, run.iteration)
    metrics = MetricsWriter(work_dir)
    avg = MetricAverager()
    run.started = time.time()
    bar = tqdm(
        total=tr["total_iter"],
        initial=run.iteration,
        desc=run.strategy,
        dynamic_ncols=True,
        disable=not is_main_process(),
        smoothing=0.1,
    )
    run.student.train()
    run.teacher.train()
    t_data = time.perf_counter()
    while run.iteration < tr["total_iter"]:
        batch_l = next(batches_l)
        batch_u = next(batches_u) if batches_u is not None else None
        data_time = time.perf_counter() - t_data
        for group in run.optimizer.param_groups:
            group["lr"] = poly_lr(
                cfg["Optim"]["lr"],
                run.iteration,
                tr["total_iter"],
                cfg["Optim"]["power"],
                cfg["Optim"]["min_lr"],
            )
        torch.manual_seed(step_seed(seed, run.rank, run.iteration))
        t0 = time.perf_counter()
        stats = train_step(run, batch_l, batch_u)
        stats["stop"] = torch.tensor(float(StopRequest.requested), device=run.device)
        names = list(stats)
        # One small all-reduce: logged values are means over processes, and a non-finite
        # loss or a Ctrl-C on any process stops every process at the same step.
        packed = all_reduce_sum(torch.stack([stats[k].float() for k in names])) / run.world
        values = dict(zip(names, packed.cpu().tolist()))
        stop = values.pop("stop") > 0
        try:
            check_finite(run, values)
        except UserError:
            bar.close()  # so that the message starts its own line, not the progress bar's
            raise
        run.iteration += 1
        values.update(
            lr=run.optimizer.param_groups[0]["lr"],
            sec_per_iter=time.perf_counter() - t0,
            data_time=data_time,
        )
        avg.add(values)
        bar.update(1)
        bar.set_postfix(
            {k: f"{values[k]:.3f}" for k in ("sup", "unsup", "contrast") if k in values}
        )
        if run.iteration % tr["log_interval"] == 0 or run.iteration == tr["total_iter"]:
            record = {
                "iter": run.iteration,
                "epoch": run.iteration // run.iters_per_epoch,
                **avg.pop(),
            }
            metrics.write(record)
            log.info(
                "iter %d  %s",
                run.iteration,
                "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("iter",)),
            )
        is_eval = run.iteration % tr["eval_interval"] == 0 or run.iteration == tr["total_iter"]
        if is_eval:
            miou, iou = run_eval(run)
            best = miou > run.best_miou
            run.best_miou = max(run.best_miou, miou)
            run.history.append({"iter": run.iteration, "miou": 100 * miou})
            metrics.write(
                {"iter": run.iteration, "miou": 100 * miou, "best_miou": 100 * run.best_miou}
            )
            log.info(
                "iter %d  mIoU %.2f  best %.2f", run.iteration, 100 * miou, 100 * run.best_miou
            )
            if best:
                save(run, work_dir, "best.pth")
        if is_eval or run.iteration % tr["save_interval"] == 0:
            save(run, work_dir, "latest.pth")
        if stop:
            save(run, work_dir, "latest.pth")
            raise KeyboardInterrupt
        t_data = time.perf_counter()
    bar.close()
    metrics.close()
    if not run.history or run.history[-1]["iter"] != run.iteration:
        miou, iou = run_eval(run)  # resumed a finished run: evaluate it again
    names = class_names(cfg["Dataset"]["name"])
    log.info(
        "final evaluation of the %s:\n%s",
        "student" if run.strategy == "supervised" else "teacher",
        format_table(iou, names),
    )
    return {
        "strategy": run.strategy,
        "miou": 100 * miou,
        "best_miou": 100 * run.best_miou,
        "per_class_iou": {
            n: (None if math.isnan(v) else 100 * v) for n, v in zip(names, iou.tolist())
        },
        "iterations": run.iteration,
        "wall_seconds": run.wall_seconds(),
        "dataset": cfg["Dataset"]["name"],
        "num_labels": cfg["Dataset"]["num_labels"],
        "seed": seed,
        "world_size": run.world,
    }


# --------------------------------------------------------------------------- entry point


def _one_line(exc: BaseException) -> str:
    """A worker's exception arrives with its traceback; keep the original message only."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def prepare(strategy: str, args: argparse.Namespace) -> tuple[dict, Path, dict | None]:
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
        if state.get("strategy") != strategy:
            raise UserError(f"{latest} belongs to a {state.get('strategy')} run, not {strategy}")
    return cfg, work_dir, state


def main(strategy: str, argv: list[str] | None = None) -> int:
    assert strategy in STRATEGY_NAMES, strategy
    args = parse_args(strategy, argv)
    run: Run | None = None
    work_dir: Path | None = None
    try:
        cfg, work_dir, state = prepare(strategy, args)
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
            strategy,
            cfg["Dataset"]["name"],
            len(run.datasets["labeled"]),
            len(run.datasets["unlabeled"]),
            len(run.datasets["valid"]),
            world,
            device,
            f", resuming at iteration {run.iteration}" if state is not None else "",
        )
        summary = train(run, work_dir)
        if is_main_process():
            (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            log.info("mIoU %.2f (best %.2f) -> %s", summary["miou"], summary["best_miou"], work_dir)
        return 0
    except UserError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if run is not None and work_dir is not None and (work_dir / "latest.pth").exists():
            print(
                f"\ninterrupted: {work_dir / 'latest.pth'} holds iteration {run.iteration}",
                file=sys.stderr,
            )
        return 130
    finally:
        if is_dist():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()


class StopRequest:
    """Ctrl-C / SIGTERM: finish the current step, write latest.pth, exit. A second Ctrl-C
    interrupts at once."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, frame):
            if cls.requested:
                raise KeyboardInterrupt
            cls.requested = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def entry(strategy: str) -> None:
    """``python <strategy>.py [--config ...] [overrides]``."""
    StopRequest.install()
    sys.exit(main(strategy))
