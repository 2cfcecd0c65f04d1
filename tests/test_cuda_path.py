"""The CUDA path without a GPU: a tensor created on the wrong device fails a CPU test.

Two checks, because no single one can run every stage on a CPU-only machine:

1. **Fake CUDA** (``torch._subclasses.fake_tensor.FakeTensorMode``): the networks are built on
   a fake ``cuda:0`` device (tensors with shapes, dtypes and devices but no data), and the
   step's stages run on them as on a GPU: teacher forward under CUDA autocast, the teacher's
   pseudo-labels of every strategy, the batch augmentation (rescale / crop, CutMix, CutOut,
   ClassMix, blur, the colour ops, flip), the student forward on both batches, the supervised
   (CE and OHEM) and unsupervised losses, the diagnostics, the prototype update and the
   rep-space probabilities, the contrastive CE on sampled anchors and negatives with its
   custom backward, the backward pass, the fused SGD step and the teacher's EMA. A CPU tensor
   meeting a CUDA tensor there raises as on a GPU (a 0-dim CPU tensor is allowed, as CUDA
   allows it), so a ``torch.zeros(n)`` without ``device=`` fails this test.

   What cannot run on fake tensors, and how it is covered instead:

   * ops whose output shape or a Python value depends on the data: the contrastive loss's
     class bookkeeping (``torch.bincount``, ``torch.nonzero`` of the present classes, the
     number of valid pixels read on the host), the colour-jitter order
     (``torch.randperm(4).tolist()``), the grad scaler's ``found_inf`` read (fp16 only), the
     loop's logging (``.item()``);
   * torch's fused SGD kernel (``_fused_sgd_``, what ``make_optimizer`` picks on CUDA) has no
     fake implementation: the test checks that it is picked, then steps with the multi-tensor
     (``foreach``) kernel on the same parameter groups;
   * the autograd engine: on a machine without CUDA it refuses a graph on a ``cuda`` device
     (``GraphTask::stash_current_streams`` asks the driver for a primary context), so the
     backward pass here is :func:`backward_without_engine`, which calls each node's backward
     function in reverse topological order (the same functions the engine would call);
   * ``copy.deepcopy`` of a fake module makes tensors of another fake mode, so the teacher is
     built directly instead of by ``utils.ema.make_teacher`` (a ``deepcopy``, which keeps
     devices; tested in test_ema.py).

2. **Poisoned default device** (CPU, real data): the whole ``train_step`` of every strategy
   runs with ``torch.device("meta")`` as the default device, so a tensor created without
   ``device=`` lands on ``meta``; a ``TorchDispatchMode`` records every op whose output is on
   ``meta`` and the test fails naming them. This covers what the fake device cannot run (the
   contrastive loss as a whole, the colour jitter, ``train_step`` itself).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dataset import batch_augment, photometric
from engine.config import DEFAULT_CONFIG, load_config, typed
from engine.run import TwoBatchForward, build_run, make_optimizer
from engine.step import (
    UnlabeledBatch,
    augment_unlabeled,
    contrastive_pixels,
    contrastive_weight,
    diagnostics,
    supervised_loss,
    teacher_pseudo_labels,
    train_step,
    unsupervised_loss,
)
from network import build_model
from tools.benchmark import SyntheticSet, synthetic_batch
from utils.contrastive import contrastive_ce, sample_negative_classes, sample_pixels
from utils.ema import ema_update
from utils.prototypes import Prototypes
from utils.strategies import STRATEGIES

CUDA = torch.device("cuda:0")
B, H, W, C, D = 2, 32, 32, 4, 8


# --------------------------------------------------------------------------- helpers


def backward_without_engine(loss: torch.Tensor) -> None:
    """``loss.backward()`` without the autograd engine: every node of ``loss.grad_fn``'s graph
    is called in reverse topological order with the gradients of its outputs, and the
    gradients of leaves are accumulated into ``.grad`` (as ``AccumulateGrad`` would)."""
    order, seen, stack = [], set(), [(loss.grad_fn, False)]
    while stack:  # iterative post-order DFS: a node comes after everything it feeds
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif node is not None and node not in seen:
            seen.add(node)
            stack.append((node, True))
            stack.extend((nxt, False) for nxt, _ in node.next_functions if nxt is not None)
    grads: dict = {loss.grad_fn: {0: torch.ones_like(loss)}}
    for node in reversed(order):
        slots = grads.pop(node, None)
        if slots is None:
            continue
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf
            leaf = node.variable
            leaf.grad = slots[0] if leaf.grad is None else leaf.grad + slots[0]
            continue
        call = node if callable(node) else node.apply  # a custom Function's node: .apply
        outs = call(*[slots.get(k) for k in range(len(node._input_metadata))])
        outs = (outs,) if outs is None or isinstance(outs, torch.Tensor) else outs
        for (nxt, k), g in zip(node.next_functions, outs):
            if nxt is not None and g is not None:
                slot = grads.setdefault(nxt, {})
                slot[k] = g if k not in slot else slot[k] + g


def assert_on_cuda(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert isinstance(t, FakeTensor) and t.device == CUDA, (type(t), t.device)


def cuda_autocast(monkeypatch: pytest.MonkeyPatch) -> torch.autocast:
    """``torch.autocast("cuda", bfloat16)`` as on a GPU: its constructor asks the driver whether
    CUDA and bf16 are there (and disables itself otherwise); the region itself needs no GPU."""
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
        return torch.autocast("cuda", dtype=torch.bfloat16)


def fake_config() -> dict:
    cfg = load_config(DEFAULT_CONFIG, ["Network.random_init=true", "Network.pretrained="])
    cfg["Loss"]["ohem_min_kept"] = 100
    return cfg


# --------------------------------------------------------------------------- 1. fake CUDA


@pytest.fixture(scope="module")
def fake() -> FakeTensorMode:
    return FakeTensorMode(allow_non_fake_inputs=False)


def test_fake_cuda_rejects_a_cpu_tensor_as_a_gpu_does(fake: FakeTensorMode) -> None:
    """The premise of this module: on fake CUDA tensors a CPU tensor made without ``device=``
    fails as on a GPU; a 0-dim CPU tensor (a scalar) passes, as on a GPU."""
    with fake:
        x = torch.ones(B, 3, device=CUDA)
        assert_on_cuda(x + torch.tensor(2.0))
        with pytest.raises(Exception, match="cpu"):
            x + torch.zeros(B, 3)  # noqa: B018


@pytest.mark.parametrize("strategy", ["ori_pseudo", "mix_label", "cross_label"])
def test_step_stages_run_on_fake_cuda(
    fake: FakeTensorMode, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stages of engine/step.py on fake CUDA tensors, composed as ``train_step`` does."""
    cfg = fake_config()
    cfg["Loss"]["sup_loss"] = "ohem"
    c = typed(cfg)
    loss_cfg = c.loss
    strat = STRATEGIES[strategy]
    with fake, torch.device(CUDA):  # the demo's network, narrower
        student = build_model("resnet18", C, 16, D, base_width=8, decoder_channels=16)
        teacher = build_model("resnet18", C, 16, D, base_width=8, decoder_channels=16)
        for p in teacher.parameters():
            p.requires_grad_(False)
    # the colour jitter's ops run below; its order draw (randperm(4).tolist()) cannot
    monkeypatch.setattr(photometric, "color_jitter", lambda img, generator, p: img)
    with fake:
        protos = Prototypes(C, D, loss_cfg.alpha, CUDA)
        optimizer = make_optimizer(student, c.optim)
        assert optimizer.defaults["fused"], "on CUDA the fused SGD is the one used"
        img_l = torch.rand(B, 3, H, W, device=CUDA)
        y_l = torch.randint(-1, C, (B, H, W), device=CUDA)
        img_u = torch.rand(B, 3, H, W, device=CUDA)
        factor = torch.rand(B, device=CUDA) + 0.5
        for op in (photometric.adjust_brightness, photometric.adjust_contrast):
            assert_on_cuda(op(img_u, factor))
        assert_on_cuda(photometric.adjust_saturation(img_u, factor))
        assert_on_cuda(photometric.adjust_hue(img_u, factor - 1))

        # teacher -> pseudo-labels (before and after cross_label's warm-up), under autocast
        with torch.no_grad(), cuda_autocast(monkeypatch):
            logits_t, rep_t = teacher(img_u)
        assert logits_t.dtype == torch.bfloat16
        for epoch in (0, loss_cfg.warm_up):
            pl = teacher_pseudo_labels(logits_t, rep_t, strat, protos, loss_cfg, epoch, (H, W))
            assert_on_cuda(pl.y_u, pl.conf_u, pl.y_con, pl.conf_con)

        # strong augmentation with every mix mode
        for mode in batch_augment.MIX_MODES:
            data = replace(c.dataset, crop_size=(H, W), mix_mode=mode)
            img, maps = augment_unlabeled(img_u, pl, data)
            assert_on_cuda(img, *maps.values())
        unlabeled = UnlabeledBatch(img, maps, pl.agreement, loss_cfg.un_threshold)

        # student on both batches, losses
        with cuda_autocast(monkeypatch):
            out_l, out_u = TwoBatchForward(student, False)(img_l, img)
        sup = supervised_loss(out_l[0], y_l, loss_cfg)
        unsup = unsupervised_loss(out_u[0], unlabeled, loss_cfg)

        # contrastive_term's first half: valid pixels, indicator, prototype update
        rep = torch.cat([out_l[1], out_u[1]]).float()
        size = tuple(rep.shape[-2:])
        y, valid = contrastive_pixels(
            y_l, maps["y_con"], maps["conf_con"], size, loss_cfg.weak_threshold
        )
        prob = protos.probs(rep.detach(), loss_cfg.temp)
        protos.update(rep.detach(), y.clamp_min(0), valid)
        assert_on_cuda(y, valid, prob, protos.proto)

        # its second half on sampled anchors / negatives (the class bookkeeping is data)
        q, n, m = 4, 6, 10
        present = torch.arange(C, device=CUDA)
        counts = torch.full((C,), m // C, device=CUDA)
        offsets = torch.cumsum(counts, 0) - counts
        neg_cls = sample_negative_classes(protos.proto, loss_cfg.temp, q, n)
        neg_pos = sample_pixels(counts, offsets, neg_cls)
        anchor = rep.permute(0, 2, 3, 1).reshape(-1, D)[: C * q].view(C, q, D)
        pixels = F.normalize(rep.detach().permute(0, 2, 3, 1).reshape(-1, D)[:m], dim=-1)
        contrast = contrastive_ce(anchor, protos.proto[present], pixels, neg_pos, 0.5).mean()

        lam = contrastive_weight(strat, c.ramp_scheduler, 3)
        total = sup + unsup + lam * contrast
        stats = diagnostics(unsup, contrast, lam, unlabeled, loss_cfg)
        assert_on_cuda(total, *stats.values())

        # update: backward, SGD, the teacher's EMA (engine.step.update but its backward)
        optimizer.zero_grad(set_to_none=True)
        backward_without_engine(total)
        params = list(student.parameters())
        assert all(p.grad is not None for p in params)
        assert_on_cuda(*[p.grad for p in params])
        for group in optimizer.param_groups:  # the fused kernel has no fake implementation
            group.update(fused=False, foreach=True)
        optimizer.step()
        ema_update(teacher, student, 3, cfg["EMA"]["alpha"])
        momentum = [state["momentum_buffer"] for state in optimizer.state.values()]
        assert len(momentum) == len(params)
        assert_on_cuda(*params, *teacher.parameters(), *momentum)


# --------------------------------------------------------------------------- 2. poisoned default


class OutputsOn(TorchDispatchMode):
    """Records the ops whose output lies on ``device``."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device, self.ops = torch.device(device), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device == self.device for t in leaves):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_train_step_creates_every_tensor_on_the_batchs_device(strategy: str) -> None:
    """A whole step on the CPU with ``meta`` as the default device: no op may output on meta."""
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "Network.random_init=true",
            "Network.pretrained=",
            "Dataset.batch_size=2",
            "Dataset.crop_size=[32,32]",
            "Dataset.mix_mode=classmix",
            "Loss.sup_loss=ohem",
            "Loss.ohem_min_kept=100",
            "Loss.warm_up=0",
            "Training.amp=false",
        ],
    )
    datasets = {k: SyntheticSet(16) for k in ("labeled", "unlabeled", "valid")}
    run = build_run(cfg, STRATEGIES[strategy], torch.device("cpu"), 0, 1, datasets=datasets)
    g = torch.Generator().manual_seed(0)
    semi = run.strategy.semi_supervised
    for _ in range(2):  # the second step starts from non-zero prototypes
        batch_l = synthetic_batch(cfg, g, labeled=True)
        batch_u = synthetic_batch(cfg, g, labeled=False) if semi else None
        recorder = OutputsOn("meta")
        with torch.device("meta"), recorder:
            stats = train_step(run, batch_l, batch_u)
        assert recorder.ops == [], f"tensors created on the default device: {recorder.ops}"
        assert all(v.device.type == "cpu" for v in stats.values())
        run.iteration += 1


def test_poisoned_default_device_catches_a_tensor_made_without_device() -> None:
    recorder = OutputsOn("meta")
    x = torch.ones(3)
    with contextlib.suppress(RuntimeError), torch.device("meta"), recorder:
        x + torch.zeros(3)  # noqa: B018
    assert recorder.ops and "zeros" in recorder.ops[0]
