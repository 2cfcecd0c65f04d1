"""PASCAL VOC 2012 with the SBD augmented labels (SPEC section 6).

Layout: ``root/JPEGImages/<id>.jpg``; labels ``root/SegmentationClassAug/<id>.png``, or
``root/SegmentationClass/<id>.png`` when the Aug folder lacks the file. Labels are palette
(or 8-bit greyscale) PNGs of class indices, 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataset.base import SegDataset, check_label_values
from dataset.classes import VOC_CLASSES  # noqa: F401  (re-exported)
from dataset.palette import voc_palette  # noqa: F401  (re-exported)
from utils.labels import IGNORE_VALUE


class VOCDataset(SegDataset):
    """PASCAL VOC (or any dataset in its layout, e.g. the demo scenes)."""

    def __init__(
        self,
        root: str | Path,
        ids: list[str],
        mode: str,
        crop_size: tuple[int, int] = (512, 512),
        scale_size: tuple[float, float] = (0.5, 1.5),
        num_classes: int = 21,
        label_map: Sequence[int] | None = None,
    ) -> None:
        super().__init__(root, ids, mode, crop_size, scale_size, num_classes)
        # label_map[v] = the class of stored value v (a coarser labelling of the same files)
        self.lut = None
        if label_map is not None:
            self.lut = np.full(256, IGNORE_VALUE, dtype=np.uint8)
            self.lut[: len(label_map)] = label_map
            self.stored_classes = len(label_map)

    def image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def label_path(self, name: str) -> Path:
        aug = self.root / "SegmentationClassAug" / f"{name}.png"
        fine = self.root / "SegmentationClass" / f"{name}.png"
        if aug.is_file() or not fine.is_file():
            return aug  # a missing label is reported under the Aug path by the reader
        return fine

    def decode_label(self, arr: np.ndarray, path: Path) -> np.ndarray:
        if self.lut is None:
            return super().decode_label(arr, path)
        check_label_values(arr, self.stored_classes, path)
        return self.lut[arr]
