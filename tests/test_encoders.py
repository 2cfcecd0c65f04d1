"""The encoder interface and registry of network/: DeepLabv3+ on an encoder that is not a ResNet.

The second family lives here, in the tests: a tiny ViT (a patch embedding to stride-4 tokens,
a transformer block, a patch merge to stride 16, another block; random init, no position
embedding: the test needs shapes and gradients, not accuracy). It is registered for one test
at a time, built from the ``Network`` config section like the ResNets, run forward / backward
through DeepLabv3+ with both heads, and trained for a few steps by the real engine step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import network
from engine.checkpoints import make_checkpoint
from engine.config import DEFAULT_CONFIG, load_config
from engine.run import build_run
from engine.step import train_step
from network import ENCODERS, DeepLabV3Plus, Encoder, build_model, build_model_from_config
from network.resnet import RESNETS, ResNetBackbone
from tools.benchmark import SyntheticSet, synthetic_batch
from utils.errors import UserError
from utils.strategies import STRATEGIES


class TinyViT(Encoder):
    """Tokens at stride 4 (low level) and stride 16 (high level), one transformer block each."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.block1 = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.merge = nn.Conv2d(dim, 2 * dim, kernel_size=4, stride=4)
        self.block2 = nn.TransformerEncoderLayer(
            2 * dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.low_channels, self.high_channels = dim, 2 * dim
        self.low_stride, self.high_stride = 4, 16

    @staticmethod
    def _attend(block: nn.Module, x: Tensor) -> Tensor:
        """A transformer block over the pixels of a map ``[B,C,h,w]`` as tokens."""
        b, c, h, w = x.shape
        tokens = block(x.flatten(2).transpose(1, 2))  # [B, h*w, C]
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self._attend(self.block1, self.embed(x))
        high = self._attend(self.block2, self.merge(low))
        return low, high


def tiny_vit(net_cfg: Mapping[str, Any]) -> TinyViT:
    """The registry builder: the ResNet keys it cannot honour stop the run, named."""
    if net_cfg["output_stride"] != 16:
        raise UserError(
            f"config key Network.output_stride: got {net_cfg['output_stride']!r}, expected 16 "
            "(tiny_vit's high-level stride; the dilation pattern is a ResNet idea)"
        )
    if net_cfg["base_width"] != 64:
        raise UserError(
            f"config key Network.base_width: got {net_cfg['base_width']!r}, expected 64 "
            "(a ResNet width: tiny_vit does not read it)"
        )
    if net_cfg["pretrained"]:
        raise UserError("config key Network.pretrained: tiny_vit has no pretrained weights")
    return TinyViT()


NET = {
    "backbone": "tiny_vit",
    "num_class": 4,
    "output_stride": 16,
    "rep_dim": 8,
    "base_width": 64,
    "decoder_channels": 16,
    "pretrained": "",
}


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny_vit in the registry for one test (removed after it)."""
    monkeypatch.setitem(ENCODERS, "tiny_vit", tiny_vit)


def test_registry_holds_every_resnet_and_builds_them() -> None:
    assert set(RESNETS) <= set(ENCODERS)
    encoder = ENCODERS["resnet18"]({**NET, "backbone": "resnet18", "base_width": 8})
    assert isinstance(encoder, ResNetBackbone)
    assert (encoder.low_channels, encoder.high_channels) == (8, 64)
    assert (encoder.low_stride, encoder.high_stride) == (4, 16)
    with pytest.raises(UserError, match="resnet152.*resnet18"):
        build_model_from_config({**NET, "backbone": "resnet152"})
    with pytest.raises(ValueError, match="registered already"):
        network.register_encoder("resnet18", tiny_vit)


def test_resnet_keys_stay_with_the_resnet_entry(registered: None) -> None:
    """output_stride and base_width change a ResNet; an encoder that cannot honour them says
    so, naming the key."""
    resnet = {**NET, "backbone": "resnet18", "base_width": 8}
    assert build_model_from_config({**resnet, "output_stride": 8}).backbone.high_stride == 8
    with pytest.raises(UserError, match=r"Network\.output_stride: got 8"):
        build_model_from_config({**NET, "output_stride": 8})
    with pytest.raises(UserError, match=r"Network\.base_width: got 16"):
        build_model_from_config({**NET, "base_width": 16})
    with pytest.raises(UserError, match=r"Network\.pretrained"):
        build_model_from_config({**NET, "pretrained": "weights.pth"})


def test_deeplab_on_a_vit_forward_backward_both_heads(registered: None) -> None:
    torch.manual_seed(0)
    model = build_model_from_config(NET).train()
    assert isinstance(model, DeepLabV3Plus) and isinstance(model.backbone, TinyViT)
    assert model.aspp.branches[1][0].dilation == (6, 6)  # the rates of stride 16
    assert model.project[0].in_channels == 16 and model.aspp.branches[0][0].in_channels == 32
    pred, rep = model(torch.randn(2, 3, 32, 48))
    assert pred.shape == (2, 4, 8, 12) and rep.shape == (2, 8, 8, 12)  # the low stride, 4
    (pred.square().mean() + rep.square().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert any(k.startswith("backbone.block1.") for k in model.state_dict())


@pytest.mark.parametrize("strategy", ["mix_label", "supervised"])
def test_the_engine_trains_deeplab_on_a_vit(registered: None, strategy: str) -> None:
    """Three real training steps (teacher, pseudo-labels, augmentation, both losses, the
    contrastive term, SGD, EMA) on the ViT encoder, from a config whose Network.backbone names it."""
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "Network.random_init=true",
            "Network.pretrained=",
            "Network.base_width=64",
            "Network.rep_dim=8",
            "Network.decoder_channels=16",
            "Dataset.batch_size=2",
            "Dataset.crop_size=[32,32]",
            "Loss.num_queries=8",
            "Loss.num_negatives=8",
            "Training.amp=false",
        ],
    )
    cfg["Network"]["backbone"] = "tiny_vit"  # registered after the schema was read
    sets = {k: SyntheticSet(16) for k in ("labeled", "unlabeled", "valid")}
    run = build_run(cfg, STRATEGIES[strategy], torch.device("cpu"), 0, 1, datasets=sets)
    assert isinstance(run.student.backbone, TinyViT)
    before = {k: v.clone() for k, v in run.student.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch_l = synthetic_batch(cfg, g, labeled=True)
        batch_u = synthetic_batch(cfg, g, labeled=False) if strategy != "supervised" else None
        stats = train_step(run, batch_l, batch_u)
        assert all(torch.isfinite(v) for v in stats.values()), stats
        run.iteration += 1
    after = run.student.state_dict()
    assert not torch.equal(before["backbone.embed.weight"], after["backbone.embed.weight"])
    assert not torch.equal(before["classifier.3.weight"], after["classifier.3.weight"])
    if strategy != "supervised":
        assert not torch.equal(before["representation.3.weight"], after["representation.3.weight"])
        assert run.prototypes.proto.abs().sum() > 0
    assert set(make_checkpoint(run)["student"]) == set(before)


def test_build_model_keeps_its_resnet_signature() -> None:
    """The keyword front of build_model_from_config gives the same network as the config."""
    torch.manual_seed(0)
    a = build_model("resnet18", 4, 16, 8, base_width=8, decoder_channels=16)
    torch.manual_seed(0)
    b = build_model_from_config({**NET, "backbone": "resnet18", "base_width": 8})
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
