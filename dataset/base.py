"""The reading and item building shared by the segmentation datasets.

A subclass resolves paths (:meth:`SegDataset.image_path`, :meth:`SegDataset.label_path`)
and may read and decode labels (:meth:`SegDataset.read_label`,
:meth:`SegDataset.decode_label`); everything else lives here.

An item is ``{"img": uint8 [3, H, W], "label": int64 [H, W] (ignore -1), "name": str}``;
unlabeled items have no ``"label"``. ``dataset[i]`` uses torch's default generator,
``dataset[(i, sample_seed)]`` draws every random number from a generator seeded with
``sample_seed``, so an item does not depend on the worker that loads it.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dataset.transforms import labeled_transform, unlabeled_transform
from utils.errors import UserError
from utils.labels import IGNORE_INDEX, IGNORE_VALUE

MODES = ("labeled", "unlabeled", "valid")


def _read_array(path: Path, what: str, rgb: bool) -> np.ndarray:
    """Decode an image file to an array: RGB ``[H, W, 3]`` or the stored values of a
    palette (P) / 8-bit (L) label ``[H, W]``. A missing or unreadable file is a UserError."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with Image.open(path) as pil:
            if rgb:
                return np.array(pil.convert("RGB"))
            if pil.mode not in ("P", "L"):
                raise UserError(
                    f"{what} {path} has image mode {pil.mode}; expected a palette (P) or "
                    "8-bit greyscale (L) PNG"
                )
            return np.array(pil)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read {what} {path}: {reason}") from None


def read_image(path: Path) -> Tensor:
    """Read an image file as ``uint8 [3, H, W]`` RGB."""
    return torch.from_numpy(_read_array(path, "image", rgb=True)).permute(2, 0, 1).contiguous()


def read_label_array(path: Path) -> np.ndarray:
    """Read a label PNG as its stored values: palette indices (mode P) or grey levels (L)."""
    return _read_array(path, "label", rgb=False)


def check_label_values(
    arr: np.ndarray, num_classes: int, path: Path, ignore: int = IGNORE_VALUE
) -> None:
    """Labels must be class indices ``0..num_classes-1`` or the file's ignore value
    (255, the project's; CamVid's files store void as 11)."""
    if arr.size == 0 or int(arr.max()) < num_classes:
        return
    bad = np.unique(arr[(arr >= num_classes) & (arr != ignore)])
    if bad.size:
        raise UserError(
            f"label {path} has values {bad[:5].tolist()} outside 0..{num_classes - 1} "
            f"(and {ignore} for ignore)"
        )


def to_label_tensor(arr: np.ndarray) -> Tensor:
    """uint8 train ids with 255 = ignore -> ``int64 [H, W]`` with ignore = -1."""
    label = torch.from_numpy(arr.astype(np.int64))
    label[label == IGNORE_VALUE] = IGNORE_INDEX
    return label


def parse_key(key: Any) -> tuple[int, torch.Generator | None]:
    """``index`` or ``(index, sample_seed)`` -> index and the generator to draw from."""
    if isinstance(key, (tuple, list)):
        index, seed = key
        return operator.index(index), torch.Generator().manual_seed(operator.index(seed))
    return operator.index(key), None


class SegDataset(Dataset):
    """Images listed by id, read from ``root``; transform chosen by ``mode``."""

    def __init__(
        self,
        root: str | Path,
        ids: list[str],
        mode: str,
        crop_size: tuple[int, int],
        scale_size: tuple[float, float],
        num_classes: int,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"dataset mode {mode!r} must be one of {', '.join(MODES)}")
        if not ids:
            raise UserError(f"empty id list for the {mode} dataset in {root}")
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise UserError(f"crop_size {crop_size} must be two positive integers (height, width)")
        if len(scale_size) != 2 or not 0 < scale_size[0] <= scale_size[1]:
            raise UserError(f"scale_size {scale_size} must be (low, high) with 0 < low <= high")
        self.root = Path(root).expanduser()
        self.ids = list(ids)
        self.mode = mode
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_size = (float(scale_size[0]), float(scale_size[1]))
        self.num_classes = num_classes

    # --- what a subclass provides ------------------------------------------------------

    def image_path(self, name: str) -> Path:
        """Path of the image of id ``name``."""
        raise NotImplementedError

    def label_path(self, name: str) -> Path:
        """Path of the label PNG of id ``name``."""
        raise NotImplementedError

    def read_label(self, path: Path) -> np.ndarray:
        """The stored values of the label file ``path`` ``[H, W]``. Default: a palette (P) or
        8-bit greyscale (L) PNG."""
        return read_label_array(path)

    def decode_label(self, arr: np.ndarray, path: Path) -> np.ndarray:
        """Stored label values -> train ids (255 = ignore), checked. Default: stored as is."""
        check_label_values(arr, self.num_classes, path)
        return arr

    # --- shared ------------------------------------------------------------------------

    def load_label(self, name: str, size_hw: tuple[int, int]) -> Tensor:
        """Read, decode and check the label of ``name``; it must be ``size_hw`` large."""
        path = self.label_path(name)
        arr = self.read_label(path)
        if arr.shape != tuple(size_hw):
            raise UserError(
                f"label {path} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image is "
                f"{size_hw[1]}x{size_hw[0]}"
            )
        return to_label_tensor(self.decode_label(arr, path))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, generator = parse_key(key)
        name = self.ids[index]
        img = read_image(self.image_path(name))
        if self.mode == "unlabeled":
            return {"img": unlabeled_transform(img, self.crop_size, generator), "name": name}
        label = self.load_label(name, tuple(img.shape[-2:]))
        if self.mode == "labeled":
            img, label = labeled_transform(img, label, self.crop_size, self.scale_size, generator)
        return {"img": img, "label": label, "name": name}
