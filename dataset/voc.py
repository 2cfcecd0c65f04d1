"""PASCAL VOC 2012 with the SBD augmented labels (SPEC section 6).

Layout: ``root/JPEGImages/<id>.jpg``; labels ``root/SegmentationClassAug/<id>.png``, or
``root/SegmentationClass/<id>.png`` when the Aug folder lacks the file. Labels are palette
(or 8-bit greyscale) PNGs of class indices, 255 = ignore.
"""

from __future__ import annotations

from pathlib import Path

from dataset.base import SegDataset
from dataset.palette import voc_palette  # noqa: F401  (re-exported)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


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
    ) -> None:
        super().__init__(root, ids, mode, crop_size, scale_size, num_classes)

    def image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def label_path(self, name: str) -> Path:
        aug = self.root / "SegmentationClassAug" / f"{name}.png"
        fine = self.root / "SegmentationClass" / f"{name}.png"
        if aug.is_file() or not fine.is_file():
            return aug  # a missing label is reported under the Aug path by the reader
        return fine
