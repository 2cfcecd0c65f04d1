"""COCO-Stuff-10K (Caesar, Uijlings, Ferrari 2018; v1.1: 9,000 train / 1,000 test images).

Read in its common layout::

    <root>/images/<name>.jpg                 COCO_train2014_000000000077.jpg ...
    <root>/annotations/<name>.png            8-bit masks of the COCO-Stuff ids
    <root>/imageLists/train.txt, test.txt    one <name> a line

A mask stores the 182 COCO-Stuff ids 0-based (its id - 1: 0 = person ... 181 = wood; the
release's .mat files store id 1..182 and 0 = unlabeled, and its own conversion to PNG
subtracts one and writes unlabeled as 255). 11 of the 91 thing ids have no annotations in
COCO (street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair
brush), so the 182 ids map to 171 classes (:data:`STORED_TO_TRAIN_ID`: the 80 things, then
the 91 stuff classes, in id order); 255 is ignored; an unused id or any other value is an
error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataset.base import SegDataset
from dataset.classes import COCOSTUFF_CLASSES
from utils.errors import UserError
from utils.labels import IGNORE_VALUE

STORED_IDS = 182
# 0-based ids of the COCO thing categories that have no annotations (COCO ids 12, 26, 29,
# 30, 45, 66, 68, 69, 71, 83, 91)
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def stored_to_train_id() -> np.ndarray:
    """256-entry table: stored value -> class 0..170, 255 -> ignore, anything else -1."""
    lut = np.full(256, -1, dtype=np.int16)
    used = [i for i in range(STORED_IDS) if i not in UNUSED_IDS]
    lut[used] = np.arange(len(used))
    lut[IGNORE_VALUE] = IGNORE_VALUE
    return lut


STORED_TO_TRAIN_ID = stored_to_train_id()


class CocoStuffDataset(SegDataset):
    """COCO-Stuff-10K; ids are the image names of its ``imageLists``."""

    def __init__(
        self,
        root: str | Path,
        ids: list[str],
        mode: str,
        crop_size: tuple[int, int],
        scale_size: tuple[float, float],
    ) -> None:
        super().__init__(root, ids, mode, crop_size, scale_size, len(COCOSTUFF_CLASSES))

    def image_path(self, name: str) -> Path:
        return self.root / "images" / f"{name}.jpg"

    def label_path(self, name: str) -> Path:
        return self.root / "annotations" / f"{name}.png"

    def decode_label(self, arr: np.ndarray, path: Path) -> np.ndarray:
        out = STORED_TO_TRAIN_ID[arr]
        bad = out < 0
        if bad.any():
            values = np.unique(arr[bad])[:5].tolist()
            raise UserError(
                f"label {path} has values {values} that are no COCO-Stuff class (0-based ids "
                f"0..{STORED_IDS - 1} less the unused {list(UNUSED_IDS)}, and 255 for ignore)"
            )
        return out.astype(np.uint8)
