"""Cityscapes fine annotations (SPEC section 6).

Ids look like ``aachen/aachen_000000_000019`` (city / name). Image
``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``; label
``root/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` when present, else
``_gtFine_labelIds.png`` mapped to the 19 train ids (everything else -> ignore).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataset.base import SegDataset
from dataset.classes import CITYSCAPES_CLASSES
from utils.errors import UserError
from utils.labels import IGNORE_VALUE

# label ids of the 19 evaluated classes, in train id order
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
SPLITS = ("train", "val")


def label_id_to_train_id() -> np.ndarray:
    """256-entry lookup table: Cityscapes label id -> train id, 255 for ignored ids."""
    lut = np.full(256, IGNORE_VALUE, dtype=np.uint8)
    lut[list(TRAIN_LABEL_IDS)] = np.arange(len(TRAIN_LABEL_IDS), dtype=np.uint8)
    return lut


LABEL_ID_TO_TRAIN_ID = label_id_to_train_id()


class CityscapesDataset(SegDataset):
    """Cityscapes; ``split`` ("train" or "val") picks the folder the ids live in."""

    def __init__(
        self,
        root: str | Path,
        ids: list[str],
        mode: str,
        split: str,
        crop_size: tuple[int, int] = (769, 769),
        scale_size: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        super().__init__(root, ids, mode, crop_size, scale_size, len(CITYSCAPES_CLASSES))
        if split not in SPLITS:
            raise UserError(f"Cityscapes split {split!r} must be one of {', '.join(SPLITS)}")
        bad = next((i for i in self.ids if i.count("/") != 1), None)
        if bad is not None:
            raise UserError(f"Cityscapes id {bad!r} must look like city/city_000000_000019")
        self.split = split

    def image_path(self, name: str) -> Path:
        return self.root / "leftImg8bit" / self.split / f"{name}_leftImg8bit.png"

    def label_path(self, name: str) -> Path:
        stem = self.root / "gtFine" / self.split / f"{name}_gtFine"
        train_ids = stem.with_name(stem.name + "_labelTrainIds.png")
        return train_ids if train_ids.is_file() else stem.with_name(stem.name + "_labelIds.png")

    def decode_label(self, arr: np.ndarray, path: Path) -> np.ndarray:
        if path.name.endswith("_labelIds.png"):
            return LABEL_ID_TO_TRAIN_ID[arr]  # every value maps to a train id or ignore
        return super().decode_label(arr, path)
