"""Networks only: DeepLabv3+ with a classifier and a representation head, on any encoder of the
registry ``ENCODERS`` (the ResNets here; ``network.encoder`` says what an encoder provides).

Adding an encoder family: a module under ``network/`` with an ``nn.Module`` that meets the
interface of ``network.encoder`` and a builder taking the ``Network`` config section, and one
``register_encoder(name, builder)`` call below (or at run time, before the model is built).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from network.deeplabv3plus import DeepLabV3Plus, from_paper_layout
from network.encoder import Encoder, check_encoder
from network.resnet import RESNETS, build_backbone, load_backbone_weights, resnet_encoder
from utils.errors import UserError

__all__ = [
    "BACKBONES",
    "ENCODERS",
    "DeepLabV3Plus",
    "Encoder",
    "build_backbone",
    "build_encoder",
    "build_model",
    "build_model_from_config",
    "check_encoder",
    "from_paper_layout",
    "load_backbone_weights",
    "register_encoder",
]

EncoderBuilder = Callable[[Mapping[str, Any]], nn.Module]

# name (``Network.backbone``) -> builder of the encoder from the ``Network`` config section
# (it reads the keys it needs, loads its own pretrained weights, and rejects keys it cannot
# honour with a ``UserError`` naming them).
ENCODERS: dict[str, EncoderBuilder] = {
    name: functools.partial(resnet_encoder, name) for name in RESNETS
}
# The encoder names, as the config schema checks ``Network.backbone`` (the registry itself:
# membership follows later registrations).
BACKBONES = ENCODERS


def register_encoder(name: str, builder: EncoderBuilder) -> None:
    """Add encoder ``name`` to ``ENCODERS``; a name taken already raises ``ValueError``."""
    if name in ENCODERS:
        raise ValueError(f"encoder {name!r} is registered already")
    ENCODERS[name] = builder


def build_encoder(net_cfg: Mapping[str, Any]) -> nn.Module:
    """The encoder ``net_cfg["backbone"]`` built by its registry entry (a ``UserError``
    listing the names for an unknown one)."""
    name = net_cfg["backbone"]
    if name not in ENCODERS:
        raise UserError(f"backbone: got {name!r}, expected one of {', '.join(ENCODERS)}")
    return ENCODERS[name](net_cfg)


def build_model_from_config(net_cfg: Mapping[str, Any]) -> DeepLabV3Plus:
    """DeepLabv3+ from the ``Network`` config section: the encoder from the registry (with its
    pretrained weights when ``pretrained`` names a file), then the decoder and both heads
    (``num_class``, ``rep_dim``, ``decoder_channels``)."""
    encoder = build_encoder(net_cfg)
    return DeepLabV3Plus(
        encoder,
        net_cfg["num_class"],
        rep_dim=net_cfg["rep_dim"],
        decoder_channels=net_cfg["decoder_channels"],
    )


def build_model(
    backbone: str,
    num_classes: int,
    output_stride: int = 8,
    rep_dim: int = 256,
    pretrained: str | None = None,
    base_width: int = 64,
    decoder_channels: int = 256,
) -> DeepLabV3Plus:
    """:func:`build_model_from_config` with the ``Network`` keys as arguments.

    ``output_stride`` and ``base_width`` (stem / layer1 width, 64 standard) are the ResNets'
    keys; ``decoder_channels`` (ASPP and head width, 256 standard) makes a smaller decoder;
    ImageNet weights need ``base_width=64``. ``pretrained=None`` (or ``""``) leaves the
    encoder randomly initialised; whether that is allowed is the caller's decision. Bad
    names, strides or weight files raise ``UserError``.
    """
    return build_model_from_config(
        {
            "backbone": backbone,
            "num_class": num_classes,
            "output_stride": output_stride,
            "rep_dim": rep_dim,
            "pretrained": pretrained or "",
            "base_width": base_width,
            "decoder_channels": decoder_channels,
        }
    )
