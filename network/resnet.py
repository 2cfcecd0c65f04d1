"""ResNet encoders for DeepLabv3+: torchvision ResNets with dilation, plus the deep-stem ResNet-101.

The ResNet-only ideas live here: the output stride as a dilation pattern (``Network.output_stride``),
the stem / stage width (``Network.base_width``) and the ImageNet weight layouts
(``Network.pretrained``); :func:`resnet_encoder` is the registry's builder for every name of
``RESNETS``. The backbone keeps torchvision's parameter names (conv1, bn1, layer1..layer4) so ImageNet
state dicts load directly; avgpool and fc are dropped. Dilation follows one rule for every
block type (torchvision's for Bottleneck, the paper code's ``_nostride_dilate``): in a stage
whose stride is replaced by dilation ``d``, the 3x3 conv that had stride 2 gets dilation
``d // 2`` and every other 3x3 conv gets ``d``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3

from network.encoder import Encoder
from utils.checkpoint import read_state_dict, weight_mismatches
from utils.errors import UserError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet101_deepstem")
OUTPUT_STRIDES = (8, 16)

_TORCHVISION = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
    "resnet101_deepstem": tvm.resnet101,
}
# Dilation of (layer2, layer3, layer4) for each output stride.
_DILATIONS = {8: (1, 2, 4), 16: (1, 1, 2)}
# mmcv / mmseg ResNetV1c stem -> our deep stem.
_V1C_STEM = {
    "stem.0.": "conv1.0.",
    "stem.1.": "conv1.1.",
    "stem.3.": "conv1.3.",
    "stem.4.": "conv1.4.",
    "stem.6.": "conv1.6.",
    "stem.7.": "bn1.",
}
_KEY_PREFIXES = ("module.", "backbone.")


class ResNetBackbone(Encoder):
    """ResNet trunk without avgpool / fc; ``forward(x)`` returns the (layer1, layer4) outputs.

    The encoder interface: ``low_channels`` / ``high_channels`` (layer1 / layer4 channels),
    ``low_stride`` 4, ``high_stride`` = ``output_stride``. Also ``arch`` (name).
    """

    def __init__(self, net: tvm.ResNet, arch: str, output_stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.arch = arch
        self.output_stride = output_stride
        self.low_channels = _out_channels(net.layer1)
        self.high_channels = _out_channels(net.layer4)
        self.low_stride = 4
        self.high_stride = output_stride

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(c1, c4)``: layer1 features (1/4 res) and layer4 features (1/OS res)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c4 = self.layer4(self.layer3(self.layer2(c1)))
        return c1, c4

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Same as :meth:`forward`."""
        return self.forward(x)


def check_output_stride(output_stride: int) -> None:
    """Raise ``UserError`` unless ``output_stride`` is 8 or 16."""
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"output_stride: got {output_stride!r}, expected one of 8, 16")


def build_backbone(name: str, output_stride: int = 8, base_width: int = 64) -> ResNetBackbone:
    """Build a randomly initialised ResNet backbone with the given output stride (8 or 16).

    ``base_width`` is the width of the stem and layer1 (64 in every standard ResNet; the
    stages double it: 64-128-256-512). A narrower ResNet keeps the depth and the layout but
    has no ImageNet weights; the demo uses 16 to train on 2 CPU cores.
    """
    if name not in RESNETS:
        raise UserError(f"backbone: got {name!r}, expected one of {', '.join(RESNETS)}")
    check_output_stride(output_stride)
    if base_width < 1:
        raise UserError(f"base_width: got {base_width!r}, expected a positive integer")
    dilated = [d > 1 for d in _DILATIONS[output_stride]]
    if name in ("resnet18", "resnet34"):
        net = _TORCHVISION[name](weights=None)
        if base_width != 64:
            set_base_width(net, BasicBlock, base_width)
        for stage, dilation in zip((net.layer2, net.layer3, net.layer4), _DILATIONS[output_stride]):
            if dilation > 1:
                _dilate_basic_stage(stage, dilation)
    else:
        net = _TORCHVISION[name](weights=None, replace_stride_with_dilation=dilated)
        if base_width != 64:
            set_base_width(net, Bottleneck, base_width, dilated)
    if name == "resnet101_deepstem":
        _make_deep_stem(net)
    return ResNetBackbone(net, name, output_stride)


def resnet_encoder(name: str, net_cfg: Mapping[str, Any]) -> ResNetBackbone:
    """The registry's builder of ResNet ``name`` from the ``Network`` config section: its
    ``output_stride`` (the dilation pattern), ``base_width`` and ``pretrained`` (ImageNet
    weights, loaded here; ``""`` = none)."""
    encoder = build_backbone(name, net_cfg["output_stride"], net_cfg["base_width"])
    if net_cfg["pretrained"]:
        load_backbone_weights(encoder, net_cfg["pretrained"])
    return encoder


def _out_channels(stage: nn.Sequential) -> int:
    """Channels a ResNet stage outputs (its last block's last BatchNorm)."""
    last = stage[-1]
    return (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features


def set_base_width(
    net: tvm.ResNet, block: type, width: int, dilated: list[bool] | None = None
) -> None:
    """Rebuild the stem and the four stages of ``net`` at widths w-2w-4w-8w, in place."""
    depths = [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
    dilated = dilated or [False, False, False]
    net.inplanes, net.dilation = width, 1
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block, width, depths[0])
    for k, name in enumerate(("layer2", "layer3", "layer4")):
        stage = net._make_layer(block, width * 2 ** (k + 1), depths[k + 1], 2, dilated[k])
        setattr(net, name, stage)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _dilate_basic_stage(stage: nn.Sequential, dilation: int) -> None:
    """Replace the stride 2 of a BasicBlock stage by dilation, in place."""
    for block in stage:
        assert isinstance(block, BasicBlock)
        for conv in (block.conv1, block.conv2):
            rate = dilation // 2 if conv.stride == (2, 2) else dilation
            conv.stride, conv.dilation, conv.padding = (1, 1), (rate, rate), (rate, rate)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


def _make_deep_stem(net: tvm.ResNet) -> None:
    """Swap the 7x7 stem of a Bottleneck ResNet for the v1c deep stem (3->w->w->2w), in place.

    w is the stem's width (64 in the standard network: 3->64->64->128).
    """
    w = net.bn1.num_features
    net.conv1 = nn.Sequential(
        conv3x3(3, w, stride=2),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        conv3x3(w, w),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        conv3x3(w, 2 * w),
    )
    net.bn1 = nn.BatchNorm2d(2 * w)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    first = net.layer1[0]
    first.conv1 = conv1x1(2 * w, first.conv1.out_channels)
    first.downsample[0] = conv1x1(2 * w, first.downsample[0].out_channels)
    for module in (net.conv1, first.conv1, first.downsample[0]):
        for conv in module.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load ImageNet weights into ``backbone`` (torchvision, v1c deep-stem or our own layout).

    Wrappers ``{"state_dict": ...}`` / ``{"model": ...}`` and key prefixes ``module.`` /
    ``backbone.`` are removed; keys the backbone lacks (``fc.*``) are ignored. A missing or
    unreadable file, a missing backbone key or a shape mismatch raises ``UserError``.
    """
    state = _backbone_layout(read_state_dict(path))
    expected = backbone.state_dict()
    problems = weight_mismatches(state, expected, unexpected=False)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        arch = getattr(backbone, "arch", type(backbone).__name__)
        raise UserError(
            f"{path}: weights do not fit backbone {arch}: {'; '.join(problems[:3])}{more}"
        )
    backbone.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)


def _backbone_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes and rename v1c ``stem.*`` keys to our ``conv1.*`` / ``bn1.*``."""
    out = {}
    for key, value in state.items():
        while key.startswith(_KEY_PREFIXES):
            key = key.split(".", 1)[1]
        for old, new in _V1C_STEM.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out
