"""One training run: the networks, prototypes and optimiser it holds, and how they are built
from a config. Its checkpoint is ``engine/checkpoints.py``; the resume rules are
``engine/resume.py``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from dataset.transforms import normalize
from engine.config import Section, typed
from engine.data import build_datasets, split_folder
from network import build_model_from_config
from utils.dist import is_dist
from utils.ema import make_teacher
from utils.errors import UserError
from utils.prototypes import Prototypes
from utils.strategies import Evaluated, Strategy


def iters_per_epoch(num_labeled: int, batch_size: int, world: int) -> int:
    """Iterations of one pass over the labeled loader (the paper's epoch):
    ``ceil(num_labeled / world) // batch_size``."""
    return -(-num_labeled // world) // batch_size


@dataclass
class Run:
    """Everything one training run holds; saved (minus the loaders) in a checkpoint.

    ``cfg``: the validated config dict (what the checkpoint and ``config.yaml`` hold);
    ``config``: the same, typed (``run.config.loss.un_threshold``), which the engine reads."""

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
    config: Section = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.config = typed(self.cfg)

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


def _wrap_student(student: nn.Module, training: Section, device: torch.device) -> nn.Module:
    """The module the step calls: both student forwards in one call, in DDP when distributed,
    compiled when asked (the ``Training`` section says)."""
    forward: nn.Module = TwoBatchForward(student, training.joint_forward)
    if is_dist():
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    if training.compile:
        forward = torch.compile(forward)
    return forward


def make_optimizer(student: nn.Module, opt: Section) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum, weight decay) of the ``Optim`` section: the fused kernel where
    torch has one for the device (one pass over the parameters), else the multi-tensor one."""
    kwargs = dict(
        lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov
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
    c = typed(cfg)
    bs = c.dataset.batch_size
    if strategy.semi_supervised and datasets["unlabeled"] is None:
        raise UserError(
            f"split {split_folder(cfg)}: unlabeled_filename.txt is empty (every training image "
            f"is labeled), so {strategy.name} has nothing to learn from; train it with "
            "supervised.py, or choose a split with unlabeled images"
        )
    per_rank = -(-len(datasets["labeled"]) // world)
    if per_rank < bs:
        raise UserError(
            f"config key Dataset.batch_size: got {bs}, expected <= {per_rank} "
            f"(labeled images per process with {world} processes)"
        )
    torch.manual_seed(c.seed)  # identical initialisation on every process
    student = build_network(cfg).to(device)
    if is_dist() and device.type == "cuda" and c.network.sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    channels_last = device.type == "cuda" and c.training.channels_last
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    teacher = make_teacher(student)
    forward = _wrap_student(student, c.training, device)
    optimizer = make_optimizer(student, c.optim)
    amp_dtype = amp_dtype_for(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    protos = Prototypes(c.network.num_class, c.network.rep_dim, c.loss.alpha, device)
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
        iters_per_epoch=iters_per_epoch(len(datasets["labeled"]), bs, world),
        channels_last=channels_last,
    )
