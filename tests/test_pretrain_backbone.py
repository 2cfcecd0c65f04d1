"""The backbone pretraining tool: class folders from a folder or a tar, the held-out split,
deterministic weights that load through Network.pretrained, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import DEFAULT_CONFIG, load_config
from engine.run import build_network
from tools.pretrain_backbone import augment, hold_out, main, read_image_folders
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("bus", "cat", "tree")


def write_tree(root: Path, splits=(("train", 6), ("test", 2)), size: int = 12) -> None:
    """``root/<split>/<class>/<k>.png``: class c is tinted towards channel c, noise on top."""
    rng = np.random.default_rng(0)
    for split, count in splits:
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(folder / f"{k:02d}.png")


def test_folder_and_tar_read_the_same_images_labels_and_classes(tmp_path: Path):
    write_tree(tmp_path / "photos" / "cifar")
    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "photos", arcname="photos")
    a = read_image_folders(tmp_path / "photos" / "cifar", 8)
    b = read_image_folders(tmp_path / "photos.tar.gz", 8)
    assert set(a) == set(b) == {"train", "test"}
    for split, n in (("train", 18), ("test", 6)):
        assert a[split].classes == b[split].classes == CLASSES
        assert a[split].images.shape == (n, 8, 8, 3) and a[split].images.dtype == np.uint8
        assert np.array_equal(a[split].images, b[split].images)
        assert np.array_equal(a[split].labels, b[split].labels)
    # labels follow the folder: class c is the brightest in channel c
    means = a["train"].images.reshape(18, -1, 3).mean(1)
    assert np.array_equal(means.argmax(1), a["train"].labels)


def test_without_a_test_folder_images_are_held_out_of_train(tmp_path: Path):
    write_tree(tmp_path, splits=(("train", 6),))
    sets = read_image_folders(tmp_path, 12)
    assert set(sets) == {"train"}
    train, held = hold_out(sets["train"], 5, seed=1)
    assert len(train.labels) == 13 and len(held.labels) == 5
    flat = {img.tobytes() for img in train.images}
    assert not flat & {img.tobytes() for img in held.images}
    again, held2 = hold_out(sets["train"], 5, seed=1)
    assert np.array_equal(held.images, held2.images)
    with pytest.raises(UserError, match="--holdout 18"):
        hold_out(sets["train"], 18, seed=1)


def test_augment_crops_a_window_of_the_reflect_padded_image_and_flips_some():
    images = np.arange(4 * 8 * 8 * 3, dtype=np.int64).reshape(4, 8, 8, 3) % 251
    images = images.astype(np.uint8)
    out = augment(np.random.default_rng(3), images)
    assert out.shape == images.shape
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    for k in range(4):
        windows = [
            w
            for t in range(3)
            for left in range(3)
            for w in (
                padded[k, t : t + 8, left : left + 8],
                padded[k, t : t + 8, left : left + 8][:, ::-1],
            )
        ]
        assert any(np.array_equal(out[k], w) for w in windows)


def pretrain(tmp_path: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--width",
            "8",
            "--image-size",
            "12",
            "--input-size",
            "16",
            "--steps",
            "3",
            "--batch",
            "4",
            *extra,
        ]
    )


def test_same_seed_same_weights_which_load_through_network_pretrained(tmp_path: Path):
    write_tree(tmp_path / "data")
    assert pretrain(tmp_path, tmp_path / "a.pth") == 0
    assert pretrain(tmp_path, tmp_path / "b.pth") == 0
    assert pretrain(tmp_path, tmp_path / "h.pth", "--half") == 0
    a = torch.load(tmp_path / "a.pth", weights_only=True)
    b = torch.load(tmp_path / "b.pth", weights_only=True)
    h = torch.load(tmp_path / "h.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert h["conv1.weight"].dtype == torch.float16
    assert torch.equal(h["conv1.weight"], a["conv1.weight"].half())
    assert a["fc.weight"].shape == (3, 64) and a["conv1.weight"].shape == (8, 3, 7, 7)
    meta = json.loads((tmp_path / "a.pth.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["num_train"] == 18
    assert meta["num_holdout"] == 6 and 0.0 <= meta["holdout_acc"] <= 1.0
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "Network.base_width=8",
            "Network.backbone=resnet18",
            f"Network.pretrained={tmp_path / 'h.pth'}",
        ],
    )
    net = build_network(cfg)
    loaded = dict(net.named_parameters())
    conv1 = next(v for k, v in loaded.items() if k.endswith("conv1.weight") and v.shape[0] == 8)
    assert torch.equal(conv1.detach(), h["conv1.weight"].float())


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path: Path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "tools/pretrain_backbone.py", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
        )

    out = tmp_path / "w.pth"
    missing = run("--data", str(tmp_path / "nope"), "--out", str(out))
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "not found" in missing.stderr and not out.exists()
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    flat = run("--data", str(tmp_path / "flat"), "--out", str(out))
    assert flat.returncode == 2 and "train/<class>" in flat.stderr and not out.exists()
    write_tree(tmp_path / "data")
    (tmp_path / "data" / "test" / "cat" / "00.png").write_bytes(b"not a png")
    broken = run("--data", str(tmp_path / "data"), "--out", str(out))
    assert broken.returncode == 2 and "test/cat/00.png" in broken.stderr and not out.exists()
    out.write_bytes(b"keep")
    exists = run("--data", str(tmp_path / "data"), "--out", str(out))
    assert exists.returncode == 2 and "exists" in exists.stderr and out.read_bytes() == b"keep"
