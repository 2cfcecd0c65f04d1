"""Networks only: ResNet backbones and DeepLabv3+ with a classifier and a representation head."""

from __future__ import annotations

from network.deeplabv3plus import DeepLabV3Plus, from_paper_layout
from network.resnet import BACKBONES, build_backbone, load_backbone_weights

__all__ = [
    "BACKBONES",
    "DeepLabV3Plus",
    "build_backbone",
    "build_model",
    "from_paper_layout",
    "load_backbone_weights",
]


def build_model(
    backbone: str,
    num_classes: int,
    output_stride: int = 8,
    rep_dim: int = 256,
    pretrained: str | None = None,
    base_width: int = 64,
    decoder_channels: int = 256,
) -> DeepLabV3Plus:
    """Build DeepLabv3+ on ``backbone``; load its ImageNet weights from ``pretrained`` if given.

    ``base_width`` (stem / layer1 width, 64 standard) and ``decoder_channels`` (ASPP and
    head width, 256 standard) make a smaller network; ImageNet weights need ``base_width=64``.
    ``pretrained=None`` (or ``""``) leaves the backbone randomly initialised; whether that is
    allowed is the caller's decision. Bad names, strides or weight files raise ``UserError``.
    """
    net = build_backbone(backbone, output_stride, base_width)
    if pretrained:
        load_backbone_weights(net, pretrained)
    return DeepLabV3Plus(
        net, num_classes, output_stride, rep_dim=rep_dim, decoder_channels=decoder_channels
    )
