"""Tests of network/: ResNet backbones (dilation, deep stem, weight loading) and DeepLabv3+."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from network import BACKBONES, DeepLabV3Plus, build_backbone, build_model, load_backbone_weights
from utils.errors import UserError

H, W = 33, 25  # odd, non-square: every stride-2 step rounds up, H and W cannot be swapped


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def deepstem() -> nn.Module:
    return build_backbone("resnet101_deepstem", 8)


def _stage_dilations(stage: nn.Sequential) -> list[tuple[int, int]]:
    """(stride, dilation) of every 3x3 conv of a stage, in order; checks padding == dilation."""
    found = []
    for conv in stage.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            assert conv.padding == conv.dilation
            found.append((conv.stride[0], conv.dilation[0]))
    return found


def _expected_dilations(stage: nn.Sequential, stride: int, rate: int) -> list[tuple[int, int]]:
    """SPEC rule: the conv that had stride 2 keeps the previous rate, all later 3x3 convs get rate."""
    per_block = 2 if isinstance(stage[0], tvm.resnet.BasicBlock) else 1
    first = (stride, 1) if stride == 2 else (1, rate // 2)
    if per_block == 2:  # BasicBlock: conv1 is the strided conv, conv2 follows it
        return [first] + [(1, rate)] * (2 * len(stage) - 1)
    return [first] + [(1, rate)] * (len(stage) - 1)


# Small ResNets at both strides; the big ones once each (their dilation code is torchvision's,
# shared by all Bottleneck nets, and is checked at both strides on resnet50 further below).
SHAPE_CASES = [(name, stride) for name in ("resnet18", "resnet34") for stride in (8, 16)] + [
    ("resnet50", 16),
    ("resnet101", 8),
    ("resnet101_deepstem", 16),
]


def test_shape_cases_cover_every_backbone_and_stride() -> None:
    assert {name for name, _ in SHAPE_CASES} == set(BACKBONES)
    assert {stride for name, stride in SHAPE_CASES if name.startswith("resnet101")} == {8, 16}


@pytest.mark.parametrize(("name", "output_stride"), SHAPE_CASES)
def test_output_shapes_and_dilation(name: str, output_stride: int) -> None:
    model = build_model(name, num_classes=5, output_stride=output_stride, rep_dim=12).eval()
    backbone = model.backbone
    rate3, rate4 = (2, 4) if output_stride == 8 else (1, 2)
    assert _stage_dilations(backbone.layer3) == _expected_dilations(
        backbone.layer3, 1 if rate3 > 1 else 2, rate3
    )
    assert _stage_dilations(backbone.layer4) == _expected_dilations(backbone.layer4, 1, rate4)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        c1, c4 = backbone.forward_features(x)
        pred, rep = model(x)
    expansion = 4 if name in ("resnet50", "resnet101", "resnet101_deepstem") else 1
    assert c1.shape == (2, 64 * expansion, math.ceil(H / 4), math.ceil(W / 4))
    assert (backbone.low_channels, backbone.high_channels) == (64 * expansion, 512 * expansion)
    assert c4.shape == (
        2,
        512 * expansion,
        math.ceil(H / output_stride),
        math.ceil(W / output_stride),
    )
    assert pred.shape == (2, 5, *c1.shape[-2:])
    assert rep.shape == (2, 12, *c1.shape[-2:])
    assert "fc.weight" not in backbone.state_dict()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilated_layer4_equals_strided_network_subsampled(name: str) -> None:
    """A trous identity: the OS8/OS16 layer4 map sampled every 4th/2nd pixel equals the OS32 one."""
    ref = getattr(tvm, name)(weights=None).eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        c4_ref = ref.layer4(ref.layer3(ref.layer2(ref.layer1(y))))
        for output_stride, step in ((8, 4), (16, 2)):
            backbone = build_backbone(name, output_stride).eval()
            backbone.load_state_dict(
                {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
            )
            c4 = backbone.forward_features(x)[1][..., ::step, ::step]
            assert c4.shape == c4_ref.shape
            torch.testing.assert_close(c4, c4_ref, rtol=1e-4, atol=1e-4 * c4_ref.abs().max())


def test_deep_stem_layout(deepstem: nn.Module) -> None:
    stem = deepstem.conv1
    assert isinstance(stem, nn.Sequential) and len(stem) == 7
    for idx, (cin, cout, stride) in zip((0, 3, 6), ((3, 64, 2), (64, 64, 1), (64, 128, 1))):
        conv = stem[idx]
        assert isinstance(conv, nn.Conv2d) and conv.bias is None
        assert (conv.in_channels, conv.out_channels) == (cin, cout)
        assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (stride, stride), (1, 1))
    assert [type(stem[i]) for i in (1, 2, 4, 5)] == [nn.BatchNorm2d, nn.ReLU] * 2
    assert stem[1].num_features == stem[4].num_features == 64
    assert deepstem.bn1.num_features == 128
    pool = deepstem.maxpool
    assert pool.ceil_mode and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    first = deepstem.layer1[0]
    assert first.conv1.in_channels == 128 and first.conv1.out_channels == 64
    down = first.downsample[0]
    assert (down.in_channels, down.out_channels, down.stride) == (128, 256, (1, 1))
    keys = set(deepstem.state_dict())
    assert {"conv1.0.weight", "conv1.1.running_var", "conv1.3.weight", "conv1.4.weight"} <= keys
    assert {"conv1.6.weight", "bn1.weight"} <= keys and "conv1.weight" not in keys


def test_deep_stem_maxpool_ceil_mode_on_even_input(deepstem: nn.Module) -> None:
    """64 -> stem conv 32 -> ceil-mode pool 17 (floor mode would give 16)."""
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = deepstem.maxpool(deepstem.relu(deepstem.bn1(deepstem.conv1(x))))
    assert y.shape == (1, 128, 17, 17)


def _torchvision_checkpoint(tmp_path, name: str = "resnet18") -> tuple[str, dict]:
    ref = getattr(tvm, name)(weights=None).state_dict()
    path = str(tmp_path / f"{name}.pth")
    torch.save(ref, path)
    return path, ref


def _assert_backbone_equals(backbone: nn.Module, ref: dict) -> None:
    state = backbone.state_dict()
    assert set(state) == {k for k in ref if not k.startswith("fc.")}
    for key, value in state.items():
        assert torch.equal(value, ref[key]), key


def test_load_torchvision_layout(tmp_path) -> None:
    path, ref = _torchvision_checkpoint(tmp_path)
    assert "fc.weight" in ref
    backbone = build_backbone("resnet18", 8)
    load_backbone_weights(backbone, path)
    _assert_backbone_equals(backbone, ref)
    model = build_model("resnet18", 3, output_stride=16, pretrained=path)
    _assert_backbone_equals(model.backbone, ref)


@pytest.mark.parametrize(
    ("wrapper", "prefix"),
    [("state_dict", "module."), ("model", "backbone."), ("state_dict", "module.backbone.")],
)
def test_load_wrapped_and_prefixed(tmp_path, wrapper: str, prefix: str) -> None:
    ref = tvm.resnet18(weights=None).state_dict()
    path = str(tmp_path / "wrapped.pth")
    torch.save({wrapper: {prefix + k: v for k, v in ref.items()}, "epoch": 3}, path)
    backbone = build_backbone("resnet18", 8)
    load_backbone_weights(backbone, path)
    _assert_backbone_equals(backbone, ref)


def _scramble(backbone: nn.Module) -> None:
    with torch.no_grad():
        for value in backbone.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn_like(value))
            else:
                value.add_(7)


_OURS_TO_V1C = {
    "conv1.0.": "stem.0.",
    "conv1.1.": "stem.1.",
    "conv1.3.": "stem.3.",
    "conv1.4.": "stem.4.",
    "conv1.6.": "stem.6.",
    "bn1.": "stem.7.",
}


def _to_v1c(key: str) -> str:
    for ours, v1c in _OURS_TO_V1C.items():
        if key.startswith(ours):
            return v1c + key[len(ours) :]
    return key


def test_load_deep_stem_v1c_and_own_layout(deepstem: nn.Module, tmp_path) -> None:
    ref = {k: v.clone() for k, v in deepstem.state_dict().items()}
    v1c = {_to_v1c(k): v for k, v in ref.items()}
    v1c["fc.weight"] = torch.zeros(1000, 2048)
    assert not any(k.startswith(("conv1.", "bn1.")) for k in v1c)
    assert sum(k.startswith("stem.") for k in v1c) == 3 + 3 * 5  # 3 conv weights, 3 BNs x 5 entries
    v1c_path, own_path = str(tmp_path / "v1c.pth"), str(tmp_path / "own.pth")
    torch.save({"state_dict": v1c, "meta": {"arch": "ResNetV1c"}}, v1c_path)
    torch.save({"model": {f"module.{k}": v for k, v in ref.items()}}, own_path)
    for path in (v1c_path, own_path):
        _scramble(deepstem)
        assert not torch.equal(deepstem.conv1[0].weight, ref["conv1.0.weight"])
        load_backbone_weights(deepstem, path)
        _assert_backbone_equals(deepstem, ref)


def _raises_one_line(backbone: nn.Module, path: str, *parts: str) -> str:
    with pytest.raises(UserError) as info:
        load_backbone_weights(backbone, path)
    message = str(info.value)
    assert "\n" not in message and path in message
    for part in parts:
        assert part in message
    return message


def test_load_errors(tmp_path) -> None:
    backbone = build_backbone("resnet18", 8)
    _raises_one_line(backbone, str(tmp_path / "absent.pth"), "not found")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    _raises_one_line(backbone, str(garbage))
    not_tensors = str(tmp_path / "not_tensors.pth")
    torch.save({"epoch": 3, "lr": 0.1}, not_tensors)
    _raises_one_line(backbone, not_tensors, "epoch")
    a_list = str(tmp_path / "list.pth")
    torch.save([torch.zeros(1)], a_list)
    _raises_one_line(backbone, a_list, "list")

    _, ref = _torchvision_checkpoint(tmp_path)
    missing = dict(ref)
    del missing["layer3.1.bn2.running_var"]
    missing_path = str(tmp_path / "missing.pth")
    torch.save(missing, missing_path)
    _raises_one_line(backbone, missing_path, "layer3.1.bn2.running_var")
    wrong = dict(ref)
    wrong["layer2.0.conv1.weight"] = torch.zeros(3, 5)
    wrong_path = str(tmp_path / "wrong.pth")
    torch.save(wrong, wrong_path)
    _raises_one_line(backbone, wrong_path, "layer2.0.conv1.weight", "(3, 5)", "(128, 64, 3, 3)")
    # A failed load leaves the backbone untouched.
    assert not torch.equal(backbone.layer1[0].conv1.weight, ref["layer1.0.conv1.weight"])


def test_load_plain_stem_into_deep_stem_names_first_keys_only(deepstem, tmp_path) -> None:
    state = {k: v for k, v in deepstem.state_dict().items() if not k.startswith(("conv1.", "bn1."))}
    state["conv1.weight"] = torch.zeros(64, 3, 7, 7)
    state |= {
        f"bn1.{k}": torch.zeros(64) for k in ("weight", "bias", "running_mean", "running_var")
    }
    path = str(tmp_path / "plain_stem.pth")
    torch.save(state, path)
    message = _raises_one_line(deepstem, path, "missing key conv1.0.weight", "more)")
    assert message.count("missing key") + message.count("has shape") == 3


def test_bad_names_and_strides() -> None:
    with pytest.raises(UserError, match="resnet152.*resnet18"):
        build_model("resnet152", 21)
    with pytest.raises(UserError, match="32"):
        build_model("resnet18", 21, output_stride=32)
    with pytest.raises(UserError, match="4"):
        build_backbone("resnet18", 4)


@pytest.mark.parametrize(("output_stride", "rates"), [(8, (12, 24, 36)), (16, (6, 12, 18))])
def test_aspp_rates(output_stride: int, rates: tuple[int, int, int]) -> None:
    model = build_model("resnet18", 4, output_stride=output_stride)
    branches = model.aspp.branches
    assert len(branches) == 5
    assert branches[0][0].kernel_size == (1, 1)
    atrous = [branch[0] for branch in branches[1:4]]
    assert [conv.dilation for conv in atrous] == [(r, r) for r in rates]
    assert [conv.padding for conv in atrous] == [(r, r) for r in rates]
    assert all(conv.kernel_size == (3, 3) for conv in atrous)


def test_convs_before_bn_have_no_bias_and_heads_end_with_bias() -> None:
    model = build_model("resnet18", 4, rep_dim=8)
    modules = list(model.modules())
    for conv, nxt in zip(modules, modules[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            assert conv.bias is None
    for head, out in ((model.classifier, 4), (model.representation, 8)):
        assert (head[0].in_channels, head[0].out_channels, head[0].kernel_size) == (
            304,
            256,
            (3, 3),
        )
        assert isinstance(head[1], nn.BatchNorm2d) and isinstance(head[2], nn.ReLU)
        assert (head[3].in_channels, head[3].out_channels, head[3].kernel_size) == (
            256,
            out,
            (1, 1),
        )
        assert head[3].bias is not None
    assert model.aspp.project[0].in_channels == 5 * 256


def test_aspp_pooling_branch_is_global_and_constant() -> None:
    model = build_model("resnet18", 4).eval()
    pooling = model.aspp.branches[4]
    x = torch.randn(2, 512, 5, 7)
    conv, bn = pooling.conv[0], pooling.conv[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
        out = pooling(x)
    z = x.mean(dim=(2, 3)) @ conv.weight[:, :, 0, 0].T
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = z.clamp(min=0)[:, :, None, None].expand(2, 256, 5, 7)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_decoder_wiring() -> None:
    """Both heads read cat([project(layer1) (48 ch), upsampled ASPP (256 ch)]) at layer1 size."""
    model = build_model("resnet18", 4, rep_dim=8).eval()
    seen = {}

    def keep(name: str, take_input: bool):
        def hook(module, inputs, output):
            seen[name] = inputs[0] if take_input else output

        return hook

    model.project.register_forward_hook(keep("low", False))
    model.aspp.register_forward_hook(keep("aspp", False))
    model.classifier.register_forward_hook(keep("cls_in", True))
    model.representation.register_forward_hook(keep("rep_in", True))
    with torch.no_grad():
        pred, rep = model(torch.randn(2, 3, H, W))
    size = pred.shape[-2:]
    assert seen["low"].shape == (2, 48, *size) and seen["aspp"].shape[1] == 256
    high = F.interpolate(seen["aspp"], size=size, mode="bilinear", align_corners=True)
    torch.testing.assert_close(seen["cls_in"], torch.cat([seen["low"], high], dim=1))
    assert torch.equal(seen["cls_in"], seen["rep_in"])


def test_channels_last_matches_contiguous() -> None:
    model = build_model("resnet18", 4, rep_dim=8).eval()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        pred, rep = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        pred_cl, rep_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(pred_cl, pred, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rep_cl, rep, rtol=1e-4, atol=1e-4)


def test_train_step_under_autocast_reaches_every_parameter() -> None:
    model = build_model("resnet18", 4, rep_dim=8).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred, rep = model(torch.randn(2, 3, H, W))
    assert pred.dtype == rep.dtype == torch.bfloat16
    loss = pred.float().square().mean() + rep.float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_deeplab_reads_the_stride_from_the_encoder_and_rejects_what_it_cannot_use() -> None:
    """The ASPP rates follow the encoder's declared high_stride; a stride without rates, or an
    encoder that does not declare the interface, stops with one line naming the attribute."""
    model = DeepLabV3Plus(build_backbone("resnet18", 16), 4)
    assert model.aspp.branches[1][0].dilation == (6, 6)
    encoder = build_backbone("resnet18", 16)
    encoder.high_stride = 32
    with pytest.raises(UserError, match="high_stride 32 has no ASPP rates"):
        DeepLabV3Plus(encoder, 4)
    del encoder.low_channels
    with pytest.raises(UserError, match="low_channels must be a positive integer"):
        DeepLabV3Plus(encoder, 4)


def _conv_widths(module: nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(
    ("name", "expansion"),
    [("resnet18", 1), ("resnet34", 1), ("resnet50", 4), ("resnet101_deepstem", 4)],
)
def test_base_width_scales_every_stage(name: str, expansion: int) -> None:
    """base_width w: stem w (deep stem w-w-2w), stages w-2w-4w-8w (x expansion), same depth."""
    w = 8
    standard, narrow = build_backbone(name, 16), build_backbone(name, 16, base_width=w)
    for k, stage in enumerate(("layer1", "layer2", "layer3", "layer4")):
        a, b = getattr(standard, stage), getattr(narrow, stage)
        assert len(a) == len(b)
        # every conv of a stage is (64 / w) times narrower, block by block
        assert [c * w // 64 for c in _conv_widths(a)] == _conv_widths(b)
        assert _conv_widths(b)[-1] == w * 2**k * expansion
    stem = [16, 8, 8] if name.endswith("deepstem") else [8]
    assert _conv_widths(narrow.conv1)[::-1][: len(stem)] == stem
    assert (narrow.low_channels, narrow.high_channels) == (w * expansion, 8 * w * expansion)
    # the dilation pattern is the standard network's
    assert _stage_dilations(narrow.layer4) == _stage_dilations(standard.layer4)
    assert _stage_dilations(narrow.layer3) == _stage_dilations(standard.layer3)
    c1, c4 = narrow.eval()(torch.randn(1, 3, H, W))
    assert c1.shape == (1, w * expansion, math.ceil(H / 4), math.ceil(W / 4))
    assert c4.shape == (1, 8 * w * expansion, math.ceil(H / 16), math.ceil(W / 16))


def test_decoder_channels_set_aspp_and_head_widths() -> None:
    model = build_model("resnet18", 5, 16, rep_dim=12, base_width=16, decoder_channels=32).eval()
    assert all(w == 32 for w in _conv_widths(model.aspp))
    assert model.aspp.project[0].in_channels == 5 * 32
    for head, out in ((model.classifier, 5), (model.representation, 12)):
        assert head[0].in_channels == 48 + 32 and _conv_widths(head) == [32, out]
    pred, rep = model(torch.randn(2, 3, H, W))
    assert pred.shape == (2, 5, math.ceil(H / 4), math.ceil(W / 4)) and rep.shape[1] == 12
    # the defaults are DeepLabv3+'s
    assert all(w == 256 for w in _conv_widths(build_model("resnet18", 5).aspp))


def test_base_width_rejects_bad_values_and_imagenet_weights(tmp_path) -> None:
    with pytest.raises(UserError, match="base_width"):
        build_backbone("resnet18", 16, base_width=0)
    path = tmp_path / "r18.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    with pytest.raises(UserError, match=str(path)):
        build_model("resnet18", 5, 16, pretrained=str(path), base_width=32)


def test_narrow_pretrained_weights_load_when_they_fit_and_name_the_keys_when_not(tmp_path):
    src = build_backbone("resnet18", 16, base_width=16)
    path = tmp_path / "w16.pth"
    torch.save({k: v for k, v in src.state_dict().items()}, path)
    dst = build_backbone("resnet18", 16, base_width=16)
    load_backbone_weights(dst, str(path))
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values())
    )
    with pytest.raises(
        UserError, match=r"conv1\.weight has shape \(16, 3, 7, 7\), expected \(64, 3, 7, 7\)"
    ):
        load_backbone_weights(build_backbone("resnet18", 16, base_width=64), str(path))
