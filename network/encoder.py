"""The encoder interface of DeepLabv3+: what any backbone provides to the decoder.

An encoder is an ``nn.Module`` whose ``forward(x)`` returns ``(low, high)``: the low-level
feature map the decoder fuses (``[B, low_channels, H / low_stride, W / low_stride]``, rounded
up) and the high-level map the ASPP reads (``[B, high_channels, H / high_stride, ...]``).
It declares the four numbers as attributes; DeepLabv3+ sizes its layers from them and
needs nothing else (``network.resnet.ResNetBackbone`` is one encoder family). The networks'
outputs are at the low-level resolution (1/4 for the ResNets, the SPEC's).
"""

from __future__ import annotations

from torch import Tensor, nn

from utils.errors import UserError

INTERFACE = ("low_channels", "high_channels", "low_stride", "high_stride")


class Encoder(nn.Module):
    """Base class of encoders (subclassing it is optional: the attributes are what counts).

    ``low_channels`` / ``high_channels``: channels of the two maps; ``low_stride`` /
    ``high_stride``: their strides with respect to the input.
    """

    low_channels: int
    high_channels: int
    low_stride: int
    high_stride: int

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


def check_encoder(encoder: nn.Module) -> None:
    """Raise ``UserError`` unless ``encoder`` declares the interface: the four attributes,
    positive integers, the high-level stride a multiple of the low-level one."""
    name = type(encoder).__name__
    for attr in INTERFACE:
        value = getattr(encoder, attr, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(
                f"encoder {name}: attribute {attr} must be a positive integer, got {value!r} "
                f"(an encoder declares {', '.join(INTERFACE)})"
            )
    if encoder.high_stride % encoder.low_stride:
        raise UserError(
            f"encoder {name}: high_stride {encoder.high_stride} is not a multiple of "
            f"low_stride {encoder.low_stride}"
        )
