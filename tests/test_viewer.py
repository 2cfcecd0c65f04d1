"""The dataset palettes in predict.py, and tools/show_pseudo_labels.py, on a tiny random
network saved as a checkpoint (no training, no dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dataset.palette import CITYSCAPES_COLOURS, cityscapes_palette, voc_palette
from engine.config import load_config
from engine.data import DATASETS
from engine.run import build_network

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "Network.backbone=resnet18",
    "Network.base_width=8",
    "Network.decoder_channels=16",
    "Network.rep_dim=8",
    "Network.pretrained=",
    "Network.random_init=true",
]
H, W = 40, 56


def test_each_dataset_paints_in_its_own_colours():
    city = cityscapes_palette()
    assert len(city) == 768 and len(CITYSCAPES_COLOURS) == 19
    assert city[:3] == [128, 64, 128] and city[13 * 3 : 14 * 3] == [0, 0, 142]  # road, car
    assert city[255 * 3 :] == [0, 0, 0]  # ignore: black
    assert DATASETS["cityscapes"].palette() == city
    assert DATASETS["voc"].palette() == DATASETS["fashionscenes"].palette() == voc_palette()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random 19-class Cityscapes-config network saved as a mix_label checkpoint, with
    prototypes, and an image."""
    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "cityscapes.yaml", TINY)
    model = build_network(cfg).eval()
    with torch.no_grad():  # BN statistics that spread the logits over several classes
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.2, 2.0)
    proto = torch.randn(19, 8)
    proto[18] = 0  # a class whose prototype was never updated
    state = model.state_dict()
    folder = tmp_path_factory.mktemp("viewer")
    ckpt = folder / "latest.pth"
    torch.save(
        {
            "student": state,
            "teacher": state,
            "prototypes": {"proto": proto, "alpha": 0.99},
            "config": cfg,
            "strategy": "mix_label",
            "iteration": 7,
        },
        ckpt,
    )
    rng = np.random.default_rng(0)
    image = folder / "street.png"  # smooth (JPEG overlays stay close), varied colours
    coarse = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    coarse.resize((W, H), Image.Resampling.BICUBIC).save(image)
    return {"ckpt": ckpt, "image": image, "model": model, "proto": proto, "cfg": cfg}


def test_predict_paints_cityscapes_in_cityscapes_colours(tiny_ckpt, tmp_path):
    import predict

    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_ckpt["ckpt"]), "--input", str(tiny_ckpt["image"])]
    assert predict.main([*argv, "--output", str(out)]) == 0
    mask = Image.open(out / "street.png")
    assert mask.getpalette()[: 19 * 3] == cityscapes_palette()[: 19 * 3]
    overlay = np.asarray(Image.open(out / "street_overlay.jpg").convert("RGB"), np.float32)
    img = np.asarray(Image.open(tiny_ckpt["image"]), np.float32)
    error = {}
    for name, palette in (("cityscapes", cityscapes_palette()), ("voc", voc_palette())):
        colours = np.asarray(palette, np.float32).reshape(-1, 3)[np.asarray(mask)]
        error[name] = np.abs(overlay[:, W:] - (0.5 * img + 0.5 * colours)).mean()
    assert error["cityscapes"] < 15 and error["cityscapes"] < error["voc"] / 3, error  # JPEG


def expected_maps(model, proto, image: Path, tau: float):
    """y_cls, y_rep and their confidences computed here from the network's raw outputs."""
    from dataset.transforms import normalize

    img = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1)
    with torch.no_grad():
        logits, rep = model(normalize(img[None]))
    up = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=True)
    conf_cls, y_cls = torch.softmax(up, 1).max(1)
    cos = torch.einsum("bdhw,cd->bchw", F.normalize(rep, dim=1), F.normalize(proto, dim=1))
    sim = F.interpolate(cos, size=(H, W), mode="bilinear", align_corners=True)
    conf_rep, y_rep = torch.softmax(sim / tau, 1).max(1)
    return y_cls[0].numpy(), y_rep[0].numpy(), conf_cls[0].numpy(), conf_rep[0].numpy()


def panel(sheet: np.ndarray, k: int) -> np.ndarray:
    """Panel ``k`` of the viewer's picture, back at the image's size (one pixel a cell)."""
    from tools.show_pseudo_labels import GAP, MIN_PANEL, TITLE

    scale = -(-MIN_PANEL // H)
    x = GAP + k * (W * scale + GAP)
    block = sheet[TITLE : TITLE + H * scale, x : x + W * scale]
    return block[scale // 2 :: scale, scale // 2 :: scale]


def test_the_viewer_draws_both_spaces_their_agreement_and_confidences(tiny_ckpt, tmp_path, capsys):
    from tools import show_pseudo_labels as viewer

    out = tmp_path / "pseudo.png"
    argv = ["--checkpoint", str(tiny_ckpt["ckpt"]), "--input", str(tiny_ckpt["image"])]
    assert viewer.main([*argv, "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    sheet = np.asarray(Image.open(out).convert("RGB"))
    scale = -(-viewer.MIN_PANEL // H)
    assert sheet.shape[1] == 6 * (W * scale + viewer.GAP) + viewer.GAP
    y_cls, y_rep, conf_cls, conf_rep = expected_maps(
        tiny_ckpt["model"], tiny_ckpt["proto"], tiny_ckpt["image"], 0.5
    )
    assert len(np.unique(y_cls)) > 1 and len(np.unique(y_rep)) > 1
    assert 0 < (y_cls == y_rep).mean() < 1  # both kinds of pixel appear
    colours = np.asarray(cityscapes_palette(), np.uint8).reshape(-1, 3)
    assert (panel(sheet, 1) == colours[y_cls]).all(-1).mean() > 0.99
    assert (panel(sheet, 2) == colours[y_rep]).all(-1).mean() > 0.99
    agree = (panel(sheet, 3) == viewer.AGREE).all(-1)
    disagree = (panel(sheet, 3) == viewer.DISAGREE).all(-1)
    assert ((agree == (y_cls == y_rep)) & (agree ^ disagree)).mean() > 0.99
    for k, conf in ((4, conf_cls), (5, conf_rep)):
        assert np.abs(panel(sheet, k).astype(int) - viewer.ramp(conf)).max() <= 1


def test_the_viewer_reads_a_paper_code_checkpoint_and_refuses_one_without_prototypes(
    tiny_ckpt, tmp_path, capsys
):
    from tools import show_pseudo_labels as viewer

    state = torch.load(tiny_ckpt["ckpt"], weights_only=True)
    renamed = {k.replace("backbone.layer", "resnet_layer"): v for k, v in state["teacher"].items()}
    renamed = {k.replace("backbone.", "resnet_"): v for k, v in renamed.items()}
    paper = tmp_path / "best_model.pth"
    torch.save(
        {"model": renamed, "ema_model": renamed, "prototypes": tiny_ckpt["proto"].numpy()}, paper
    )
    config = tmp_path / "tiny.yaml"
    import yaml

    config.write_text(yaml.safe_dump(tiny_ckpt["cfg"]))
    out = tmp_path / "paper.png"
    argv = ["--input", str(tiny_ckpt["image"]), "--output", str(out), "--config", str(config)]
    assert viewer.main(["--checkpoint", str(paper), *argv]) == 0
    assert out.is_file()
    del state["prototypes"]
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    capsys.readouterr()
    assert viewer.main(["--checkpoint", str(bare), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bare}: no prototypes")


def test_the_viewer_adds_the_ground_truth_and_another_checkpoints_prediction(tiny_ckpt, tmp_path):
    from tools import show_pseudo_labels as viewer

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 19, (H, W)).astype(np.uint8)
    truth[: H // 3] = 255  # ignored: drawn black
    label = tmp_path / "truth.png"
    Image.fromarray(truth).save(label)
    state = torch.load(tiny_ckpt["ckpt"], weights_only=False)
    other = {k: v.clone() for k, v in state["student"].items()}
    head = next(k for k in other if k.endswith("weight") and other[k].shape[0] == 19)
    other[head] = -other[head]  # another network: its prediction differs from the teacher's
    baseline = tmp_path / "supervised" / "best.pth"
    baseline.parent.mkdir()
    torch.save({**state, "student": other, "strategy": "supervised"}, baseline)
    out = tmp_path / "pseudo.png"
    argv = ["--checkpoint", str(tiny_ckpt["ckpt"]), "--input", str(tiny_ckpt["image"])]
    extra = ["--label", str(label), "--compare", str(baseline), "--output", str(out)]
    assert viewer.main([*argv, *extra]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))
    scale = -(-viewer.MIN_PANEL // H)
    assert sheet.shape[1] == 8 * (W * scale + viewer.GAP) + viewer.GAP
    colours = np.asarray(cityscapes_palette(), np.uint8).reshape(-1, 3)
    expected_truth = np.where(truth[..., None] == 255, 0, colours[np.minimum(truth, 18)])
    assert (panel(sheet, 1) == expected_truth).all(-1).mean() > 0.99
    model = build_network(tiny_ckpt["cfg"]).eval()
    model.load_state_dict(other)
    y_other = expected_maps(model, tiny_ckpt["proto"], tiny_ckpt["image"], 0.5)[0]
    y_cls = expected_maps(tiny_ckpt["model"], tiny_ckpt["proto"], tiny_ckpt["image"], 0.5)[0]
    assert (y_other != y_cls).mean() > 0.1
    assert (panel(sheet, 2) == colours[y_other]).all(-1).mean() > 0.99  # the student's
    assert (panel(sheet, 3) == colours[y_cls]).all(-1).mean() > 0.99  # then y_cls as before
    wrong = tmp_path / "small.png"
    Image.fromarray(truth[:-1]).save(wrong)
    assert viewer.main([*argv, "--label", str(wrong), "--output", str(out)]) == 2
