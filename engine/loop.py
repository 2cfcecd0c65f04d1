"""The training loop around the step: batches, the learning rate, per-step bookkeeping (one
small all-reduce, the finite-loss check, stop requests, metrics), the evaluation and save
schedule, and the final report. The method itself is in ``engine/step.py``."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from engine.checkpoints import save
from engine.data import class_names, cycle, make_loader
from engine.evaluation import evaluate, format_table, sync_buffers
from engine.run import Run
from engine.step import train_step
from utils.dist import all_reduce_sum, barrier, is_main_process
from utils.errors import UserError
from utils.sampler import EpochBatchSampler, step_seed
from utils.schedules import poly_lr

log = logging.getLogger("css")
LOSS_TERMS = ("sup", "unsup", "contrast", "total")


class StopRequest:
    """Ctrl-C / SIGTERM: every process finishes the current step, latest.pth is written, every
    process exits (status 130). A second signal interrupts at once, unless it comes within
    ``WINDOW`` seconds of the first: then it is the same request (a terminal's Ctrl-C can reach
    a worker directly and once more forwarded by torchrun's agent). Once the stop checkpoint
    is written further signals are ignored: the process is exiting anyway. Data-loader worker
    processes (forked, so they inherit the handler) ignore them: their process stops them."""

    WINDOW = 2.0
    requested = False
    first_at = 0.0
    checkpoint_written = False
    pid = -1  # the process that installed the handler

    @classmethod
    def handler(cls, signum: int, frame=None) -> None:
        if os.getpid() != cls.pid:
            return
        now = time.monotonic()
        if not cls.requested:
            cls.requested, cls.first_at = True, now
            if os.environ.get("RANK", "0") == "0":  # os.write: print is not reentrant
                os.write(
                    2,
                    f"\n{signal.Signals(signum).name}: finishing this step, then writing "
                    f"latest.pth (a signal after {cls.WINDOW:g} s interrupts at once)\n".encode(),
                )
            return
        if cls.checkpoint_written or now - cls.first_at < cls.WINDOW:
            return
        raise KeyboardInterrupt

    @classmethod
    def install(cls) -> None:
        cls.pid = os.getpid()
        signal.signal(signal.SIGINT, cls.handler)
        signal.signal(signal.SIGTERM, cls.handler)

    @classmethod
    def reset(cls) -> None:
        """No request (for a second run in the same process, e.g. in tests)."""
        cls.requested, cls.first_at, cls.checkpoint_written = False, 0.0, False


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


def check_finite(run: Run, values: dict[str, float]) -> None:
    """A non-finite loss term stops the run: one line naming the iteration and every term."""
    if all(math.isfinite(values[k]) for k in LOSS_TERMS if k in values):
        return
    terms = ", ".join(f"{k}={values[k]}" for k in LOSS_TERMS if k in values)
    raise UserError(
        f"non-finite loss at iteration {run.iteration + 1}: {terms}; "
        "the last good checkpoint is kept"
    )


# --------------------------------------------------------------------------- stages


def batches(run: Run) -> Iterator[tuple[dict, dict | None]]:
    """Endless ``(labeled, unlabeled)`` batches from the run's position on (unlabeled: None
    for a strategy without pseudo-labels); the two loaders cycle independently."""
    cfg, seed, bs = run.cfg, run.config.seed, run.config.dataset.batch_size
    sampler_l = EpochBatchSampler(len(run.datasets["labeled"]), bs, seed, 0, run.rank, run.world)
    loader_l = make_loader(run.datasets["labeled"], sampler_l, cfg, run.device)
    batches_l = cycle(loader_l, sampler_l, run.iteration)
    if not run.strategy.semi_supervised:
        return ((batch_l, None) for batch_l in batches_l)
    sampler_u = EpochBatchSampler(len(run.datasets["unlabeled"]), bs, seed, 1, run.rank, run.world)
    if sampler_u.batches_per_epoch == 0:
        raise UserError(
            f"config key Dataset.batch_size: got {bs}, larger than the unlabeled set per process"
        )
    loader_u = make_loader(run.datasets["unlabeled"], sampler_u, cfg, run.device)
    return zip(batches_l, cycle(loader_u, sampler_u, run.iteration))


def set_learning_rate(run: Run) -> None:
    """The poly schedule at this iteration."""
    opt, total = run.config.optim, run.config.training.total_iter
    lr = poly_lr(opt.lr, run.iteration, total, opt.power, opt.min_lr)
    for group in run.optimizer.param_groups:
        group["lr"] = lr


def reduce_step(run: Run, stats: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
    """One small all-reduce per step: logged values become means over processes, and a stop
    request or a non-finite loss on any process stops every process at the same step.
    Returns the values and the number of processes asked to stop (0: go on)."""
    stats["stop"] = torch.tensor(float(StopRequest.requested), device=run.device)
    names = list(stats)
    packed = all_reduce_sum(torch.stack([stats[k].float() for k in names])) / run.world
    values = dict(zip(names, packed.cpu().tolist()))
    stop = round(values.pop("stop") * run.world)  # processes that were asked to stop
    return values, stop


def log_record(run: Run, avg: MetricAverager, metrics: MetricsWriter) -> None:
    """Every ``log_interval`` iterations (and at the end): the averaged values."""
    record = {"iter": run.iteration, "epoch": run.epoch, **avg.pop()}
    metrics.write(record)
    log.info(
        "iter %d  %s",
        run.iteration,
        "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "iter"),
    )


def run_eval(run: Run) -> tuple[float, torch.Tensor]:
    """mIoU and per-class IoU of the run's result network on the validation set (sharded)."""
    cfg = run.config
    sync_buffers(run.student, run.teacher)
    cm = evaluate(
        run.result_model,
        run.datasets["valid"],
        cfg.network.num_class,
        run.device,
        mode=cfg.training.eval_mode,
        crop=cfg.training.eval_crop_size,
        num_workers=min(2, cfg.dataset.num_workers),
        amp_dtype=run.amp_dtype,
        batch_size=cfg.dataset.batch_size,
    )
    return cm.miou(), cm.iou()


def evaluate_and_save(
    run: Run, work_dir: Path, metrics: MetricsWriter
) -> tuple[float, torch.Tensor]:
    """An evaluation of the schedule: history, metrics, ``best.pth`` when it improved."""
    miou, iou = run_eval(run)
    best = miou > run.best_miou
    run.best_miou = max(run.best_miou, miou)
    run.history.append({"iter": run.iteration, "miou": 100 * miou})
    metrics.write({"iter": run.iteration, "miou": 100 * miou, "best_miou": 100 * run.best_miou})
    log.info("iter %d  mIoU %.2f  best %.2f", run.iteration, 100 * miou, 100 * run.best_miou)
    if best:
        save(run, work_dir, "best.pth")
    return miou, iou


def schedule_lines(run: Run) -> list[str]:
    """The per-epoch schedule in iterations: an epoch is one pass over the labeled loader
    (``num_labels / (batch x processes)``, as in the paper code), so the contrastive ramp-down
    and cross_label's warm-up end earlier with more processes."""
    cfg, ipe, world = run.config, run.iters_per_epoch, run.world
    bs, total = cfg.dataset.batch_size, cfg.training.total_iter
    batch = f"{bs * world} labeled"
    if run.strategy.semi_supervised:
        batch += f" + {bs * world} unlabeled"

    def upto(epoch: int) -> str:
        it = epoch * ipe
        return (
            f"iteration {it} (epoch {epoch}{', after the last iteration' if it >= total else ''})"
        )

    lines = [
        f"an epoch is {ipe} iterations ({len(run.datasets['labeled'])} labeled images / "
        f"(batch {bs} x {world} process(es))); effective batch {batch} images; "
        f"{total} iterations = {total / ipe:.4g} epochs"
    ]
    if run.strategy.ramps_contrast:
        r = cfg.ramp_scheduler
        start = f"0 up to {upto(r.begin_epoch)}, then " if r.begin_epoch > 0 else ""
        lines.append(
            f"contrastive weight: {start}ramps down from {r.max_value:g} until "
            f"{upto(r.max_epoch)}, {r.min_value:g} after"
        )
    if run.strategy.warms_up:
        w = cfg.loss.warm_up
        lines.append(
            f"{run.strategy.name} warm-up: the unsupervised CE learns from logit-space labels "
            f"until {upto(w)}, from representation-space labels after"
        )
    return lines


def progress_bar(run: Run) -> tqdm:
    return tqdm(
        total=run.config.training.total_iter,
        initial=run.iteration,
        desc=run.strategy.name,
        dynamic_ncols=True,
        disable=not is_main_process(),
        smoothing=0.1,
    )


# --------------------------------------------------------------------------- the loop


def train(run: Run, work_dir: Path) -> dict:
    """Train from ``run.iteration`` to ``Training.total_iter``; return the summary."""
    tr = run.config.training
    for line in schedule_lines(run):
        log.info(line)
    metrics, avg = MetricsWriter(work_dir), MetricAverager()
    stream = batches(run)
    run.started, run.stopped = time.time(), None
    if run.iteration >= tr.total_iter:
        run.stopped = run.started  # nothing to train: wall_seconds stays the checkpoint's
        log.info(
            "the run is complete (iteration %d of %d): evaluating its %s",
            run.iteration,
            tr.total_iter,
            run.strategy.evaluates.value,
        )
    bar = progress_bar(run)
    run.student.train()
    run.teacher.train()
    try:
        last_eval = train_steps(run, work_dir, stream, bar, metrics, avg)
    finally:
        bar.close()  # before any message, so that it starts its own line
        metrics.close()
    return final_report(run, last_eval)


def train_steps(run: Run, work_dir: Path, stream, bar: tqdm, metrics: MetricsWriter, avg):
    """The steps up to ``Training.total_iter``; the last evaluation (None if there was none)."""
    tr, seed = run.config.training, run.config.seed
    last_eval = None
    t_data = time.perf_counter()
    while run.iteration < tr.total_iter:
        batch_l, batch_u = next(stream)
        data_time = time.perf_counter() - t_data
        set_learning_rate(run)
        torch.manual_seed(step_seed(seed, run.rank, run.iteration))
        t0 = time.perf_counter()
        values, stop = reduce_step(run, train_step(run, batch_l, batch_u))
        check_finite(run, values)
        run.iteration += 1
        values.update(
            lr=run.optimizer.param_groups[0]["lr"],
            sec_per_iter=time.perf_counter() - t0,
            data_time=data_time,
        )
        avg.add(values)
        bar.update(1)
        bar.set_postfix({k: f"{values[k]:.3f}" for k in LOSS_TERMS[:3] if k in values})
        last = run.iteration == tr.total_iter
        if run.iteration % tr.log_interval == 0 or last:
            log_record(run, avg, metrics)
        is_eval = run.iteration % tr.eval_interval == 0 or last
        if is_eval:
            last_eval = evaluate_and_save(run, work_dir, metrics)
        if last:
            run.stop_clock()  # latest.pth and the summary hold the same wall_seconds
        if is_eval or run.iteration % tr.save_interval == 0 or stop:
            save(run, work_dir, "latest.pth")
        if stop:
            StopRequest.checkpoint_written = True
            barrier()  # no process exits before rank 0 has written latest.pth
            log.info(
                "stop requested on %d of %d process(es): latest.pth holds iteration %d",
                stop,
                run.world,
                run.iteration,
            )
            raise KeyboardInterrupt
        t_data = time.perf_counter()
    return last_eval


def final_report(run: Run, last_eval: tuple[float, torch.Tensor] | None) -> dict:
    """The per-class table of the final network, and the run's summary."""
    cfg = run.config
    miou, iou = last_eval if last_eval is not None else run_eval(run)
    names = class_names(run.cfg)
    log.info(
        "final evaluation of the %s:\n%s", run.strategy.evaluates.value, format_table(iou, names)
    )
    return {
        "strategy": run.strategy.name,
        "miou": 100 * miou,
        "best_miou": 100 * run.best_miou,
        "per_class_iou": {
            n: (None if math.isnan(v) else 100 * v) for n, v in zip(names, iou.tolist())
        },
        "iterations": run.iteration,
        "wall_seconds": run.wall_seconds(),
        "dataset": cfg.dataset.name,
        "num_labels": cfg.dataset.num_labels,
        "seed": cfg.seed,
        "world_size": run.world,
    }
