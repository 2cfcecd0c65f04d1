"""The demo backbone's pretraining uses only Fashion-MNIST train items that no scene holds, on
train backgrounds; the shipped weights load into the demo network through Network.pretrained."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from demo.fashion_scenes import load_asset
from engine.config import DEFAULT_CONFIG, load_config
from engine.run import build_network
from tools.pretrain_demo_backbone import item_pool, make_patch
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_item_pool_excludes_every_item_the_scene_asset_holds(tmp_path: Path):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (40, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    used = np.array([3, 7, 11, 30])
    asset = {"train_item_source_index": used, "train_items": images[used]}
    items, item_labels, source = item_pool(tmp_path, asset)
    assert sorted(source.tolist()) == sorted(set(range(40)) - set(used.tolist()))
    assert np.array_equal(items, images[source]) and np.array_equal(item_labels, labels[source])
    wrong = {"train_item_source_index": used, "train_items": images[used] // 2}
    with pytest.raises(UserError, match="differ from the scene asset"):
        item_pool(tmp_path, wrong)


def test_patches_are_deterministic_and_use_train_backgrounds_only():
    asset = load_asset()
    item = asset["train_items"][0]
    a = make_patch(np.random.default_rng([1, 2]), item, asset["train_backgrounds"])
    b = make_patch(np.random.default_rng([1, 2]), item, asset["train_backgrounds"])
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_shipped_weights_load_into_the_demo_network():
    cfg = load_config(DEFAULT_CONFIG)
    path = REPO / cfg["Network"]["pretrained"]
    assert path.is_file() and cfg["Network"]["base_width"] == 16
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["num_items"] == 57000 and meta["args"]["width"] == 16
    build_network(cfg)  # loads the file; a mismatch would raise naming the keys
