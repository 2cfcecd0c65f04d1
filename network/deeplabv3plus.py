"""DeepLabv3+ with two heads: class logits ``pred`` and representations ``rep``, both at 1/4 res."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from network.encoder import check_encoder
from utils.errors import UserError

ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}  # by the encoder's high_stride
ASPP_CHANNELS = 256
LOW_CHANNELS = 48


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Bias-free conv ("same" padding) followed by BatchNorm and ReLU."""
    padding = dilation * (kernel_size - 1) // 2
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
    )
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        # Bilinear upsampling of a 1x1 map is a constant broadcast.
        return self.conv(self.pool(x)).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """1x1 conv, three atrous 3x3 convs and image pooling, concatenated and projected.

    Every branch and the projection have ``channels`` channels (256 in DeepLabv3+).
    """

    def __init__(
        self, in_channels: int, rates: tuple[int, int, int], channels: int = ASPP_CHANNELS
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, 3, rate) for rate in rates]
            + [ASPPPooling(in_channels, channels)]
        )
        self.project = conv_bn_relu(len(self.branches) * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def head(in_channels: int, out_channels: int, channels: int = ASPP_CHANNELS) -> nn.Sequential:
    """3x3 conv to ``channels`` -> BN -> ReLU -> 1x1 conv (with bias) to ``out_channels``."""
    return nn.Sequential(
        *conv_bn_relu(in_channels, channels, 3), nn.Conv2d(channels, out_channels, 1)
    )


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ whose decoder feeds a classifier head and a representation head.

    ``encoder`` is any module with the interface of ``network.encoder``: ``forward(x) ->
    (low, high)`` and the attributes ``low_channels``, ``high_channels``, ``low_stride``,
    ``high_stride`` (8 or 16: the ASPP rates follow it). It is kept as ``self.backbone`` (the
    checkpoints' ``backbone.*`` keys). ``decoder_channels`` is the width of the ASPP and of
    both heads (256 in DeepLabv3+). ``forward(x)`` returns ``(pred, rep)``:
    ``[B, num_classes, h, w]`` and ``[B, rep_dim, h, w]`` at the encoder's low-level
    resolution (1/4 of the input for the ResNets); nothing is upsampled to the input size here.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        rep_dim: int = 256,
        decoder_channels: int = ASPP_CHANNELS,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        if encoder.high_stride not in ASPP_RATES:
            raise UserError(
                f"encoder {type(encoder).__name__}: high_stride {encoder.high_stride} has no "
                f"ASPP rates; DeepLabv3+ takes {' or '.join(map(str, ASPP_RATES))}"
            )
        self.backbone = encoder
        if decoder_channels < 1:
            raise ValueError(f"decoder_channels must be positive, got {decoder_channels}")
        rates = ASPP_RATES[encoder.high_stride]
        self.aspp = ASPP(encoder.high_channels, rates, decoder_channels)
        self.project = conv_bn_relu(encoder.low_channels, LOW_CHANNELS)
        fused = LOW_CHANNELS + decoder_channels
        self.classifier = head(fused, num_classes, decoder_channels)
        self.representation = head(fused, rep_dim, decoder_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(pred, rep)`` at the encoder's low-level resolution."""
        c1, c4 = self.backbone(x)
        low = self.project(c1)
        high = F.interpolate(
            self.aspp(c4), size=low.shape[-2:], mode="bilinear", align_corners=True
        )
        feat = torch.cat([low, high], dim=1)
        return self.classifier(feat), self.representation(feat)


# Module names of the paper code's DeepLabv3+ (its ``DeepLabv3Plus_with_rep``, whose state
# dicts its checkpoints hold under ``model`` / ``ema_model``) -> ours. The rest (``project``,
# ``classifier``, ``representation``, the ResNet stages' insides) are named alike.
_PAPER_NAMES = (
    ("resnet_conv1.", "backbone.conv1."),
    ("resnet_bn1.", "backbone.bn1."),
    ("resnet_layer", "backbone.layer"),
    ("ASPP.convs.4.1.", "aspp.branches.4.conv.0."),  # image pooling: (pool, conv, BN, ReLU)
    ("ASPP.convs.4.2.", "aspp.branches.4.conv.1."),
    ("ASPP.convs.", "aspp.branches."),
    ("ASPP.project.", "aspp.project."),
)


def from_paper_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the paper code's network with our module names (``module.`` prefixes
    of a DDP-wrapped model removed). Keys of our own layout pass unchanged."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in _PAPER_NAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out
