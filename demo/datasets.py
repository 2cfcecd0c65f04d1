"""The embedded demo data in the dataset registry (``dataset/registry.py``): FashionScenes v1
(``fashionscenes``, 10 garments) and v2 (``fashionscenes6``, the demo default: the same
scenes with 6 classes), generated on first use in the VOC layout and read like VOC. Their
splits are drawn by ``python -m demo.fashion_scenes --write-splits``. ``engine/data.py``
imports this module, so every engine entry point sees them."""

from __future__ import annotations

from pathlib import Path

from dataset.palette import voc_palette
from dataset.registry import DatasetSpec, out_flag, register, voc_reader
from demo.fashion_scenes import (
    DEFAULT_TXT_DIR,
    FASHION6_CLASSES,
    FASHION6_MAP,
    FASHION_CLASSES,
    NUM_TRAIN,
    ensure_fashion_scenes,
)


def fashion_splits_command(txt_dir: str, num_labels: int, seed: int) -> str:
    out = out_flag("--txt-dir", txt_dir, DEFAULT_TXT_DIR)
    return (
        f"python -m demo.fashion_scenes --write-splits --num-labels {num_labels} "
        f"--seeds {seed}{out}"
    )


def prepare(root: Path) -> Path:
    return ensure_fashion_scenes(root)


register(
    "fashionscenes",
    DatasetSpec(
        FASHION_CLASSES, NUM_TRAIN, voc_palette, voc_reader(), prepare, fashion_splits_command
    ),
)
register(
    "fashionscenes6",
    DatasetSpec(
        FASHION6_CLASSES,
        NUM_TRAIN,
        voc_palette,
        voc_reader(FASHION6_MAP),
        prepare,
        fashion_splits_command,
    ),
)
