"""A dataset described in its config (``Dataset.name: folder``): images and masks in folders
or list files, read without a line of code. ``docs/own_dataset.md`` walks through one.

Where things are (keys of the config's ``Dataset`` section):

- folders, relative to ``Dataset.data_dir``: ``image_dir`` + ``label_dir`` (training images
  and their masks, the same relative paths in both, nested folders allowed),
  ``val_image_dir`` + ``val_label_dir`` (validation), ``unlabeled_dir`` (more training
  images, without masks);
- or list files, relative to the working directory (like ``Dataset.txt_dir``), whose paths
  are relative to ``data_dir``: ``train_list`` (``image label`` lines; a line with an image
  alone is an image without a mask), ``val_list`` (``image label``), ``unlabeled_list``
  (``image``). This is the line format of UniMatch's and U2PL's split files
  (``images/training/X.jpg annotations/training/X.png``).

An image id is the image's path relative to ``data_dir`` less its suffix
(``images/training/ADE_train_00000001``): unique across the training, validation and
unlabeled images, and the first path of such a line less its suffix. Images end in
``image_suffix`` (default: ``.jpg``, ``.jpeg`` or ``.png``, any case); the mask of
``<image_dir>/<rel>.jpg`` is ``<label_dir>/<rel><label_suffix>`` (default ``.png``).

Masks (``label_format``): ``index``, 8-bit grey (or palette) PNGs whose stored values are
class ids; ``palette``, palette (P) PNGs read as their indices, not their colours; ``rgb``,
colour-coded masks, decoded with ``colors`` (the ``[r, g, b]`` of each class in order;
``ignore_colors`` read as ignore; any other colour is an error naming the file, the colour
and its pixel count). Stored values are then classes ``0..C-1`` and ``ignore_index``
(default 255) is ignore; with ``reduce_zero_label`` stored 0 is ignore and ``1..C`` are
classes ``0..C-1`` (ADE20K's convention). Any other value is an error naming the file and
the values: never clamped.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from dataset.base import SegDataset, _read_array
from utils.errors import UserError
from utils.labels import IGNORE_VALUE

LABEL_FORMATS = ("index", "palette", "rgb")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # any case, where Dataset.image_suffix is ''
# the pairs of (image folder, mask folder, list file) keys: training and validation
TRAIN_KEYS = ("image_dir", "label_dir", "train_list")
VAL_KEYS = ("val_image_dir", "val_label_dir", "val_list")


def _under(folder: str) -> PurePosixPath:
    """A folder key as a relative path ('' and '.' are data_dir itself)."""
    return PurePosixPath(folder or ".")


class FolderLayout:
    """Where the images and masks of a ``folder`` dataset are: ids, image and mask paths, and
    the id pools of ``tools/make_splits.py``. ``data`` is the config's Dataset section."""

    def __init__(self, root: str | Path, data: dict) -> None:
        self.root = Path(root).expanduser()
        self.data = data
        # id -> (image, mask or None) of every line of the list files
        self.listed: dict[str, tuple[Path, Path | None]] = {}
        self.list_ids: dict[str, list[str]] = {}
        for key, columns in (("train_list", (1, 2)), ("val_list", (2,)), ("unlabeled_list", (1,))):
            if data.get(key):
                self.list_ids[key] = self._read_list(key, columns)

    # --- list files and folders --------------------------------------------------------

    def _id_of(self, entry: str, where: str) -> tuple[str, Path]:
        """A list file's image path -> (its id, its file)."""
        path = PurePosixPath(entry)
        if path.is_absolute():
            try:
                path = PurePosixPath(Path(entry).relative_to(self.root.resolve()).as_posix())
            except ValueError:
                raise UserError(f"{where}: {entry} is not inside {self.root}") from None
        if not path.suffix or ".." in path.parts:
            raise UserError(f"{where}: {entry} is not an image path inside Dataset.data_dir")
        return str(path.with_suffix("")), self.root / path

    def entry_id(self, entry: str) -> str:
        """The id of the first path of a list line (``images/training/X.jpg`` ->
        ``images/training/X``; absolute paths inside data_dir too); a bare id as it is."""
        return self._id_of(entry, entry)[0] if PurePosixPath(entry).suffix else entry

    def _read_list(self, key: str, columns: tuple[int, ...]) -> list[str]:
        path = Path(self.data[key]).expanduser()
        if not path.is_file():
            raise UserError(f"config key Dataset.{key}: list file not found: {path}")
        ids = []
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            entries = line.split()
            if not entries:
                continue
            where = f"{path}:{line_no}"
            if len(entries) not in columns:
                shape = " or ".join(("'image'", "'image label'")[n - 1] for n in columns)
                raise UserError(f"{where}: expected {shape}, got {line.strip()!r}")
            image_id, image = self._id_of(entries[0], where)
            if image_id in self.listed:
                raise UserError(f"{where}: image {entries[0]} is listed twice")
            label = self.root / entries[1] if len(entries) == 2 else None
            self.listed[image_id] = (image, label)
            ids.append(image_id)
        if not ids:
            raise UserError(f"config key Dataset.{key}: list file is empty: {path}")
        return ids

    def _is_image(self, name: str) -> str | None:
        """The suffix that makes ``name`` an image file, or None."""
        suffix = self.data.get("image_suffix", "")
        if suffix:
            return suffix if name.endswith(suffix) and len(name) > len(suffix) else None
        ext = os.path.splitext(name)[1]
        return ext if ext.lower() in IMAGE_SUFFIXES else None

    def scan(self, key: str) -> dict[str, Path]:
        """Every image under the folder ``Dataset.<key>`` (nested folders; the mask folders
        are skipped where they lie inside it), by id, sorted."""
        folder = self.root / self.data[key]
        if not folder.is_dir():
            raise UserError(f"config key Dataset.{key}: folder not found: {folder}")
        skip = {
            (self.root / self.data[k]).resolve()
            for k in ("label_dir", "val_label_dir")
            if self.data.get(k) and _under(self.data[k]) != _under(self.data[key])
        }
        found: dict[str, Path] = {}
        for parent, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if (Path(parent) / d).resolve() not in skip)
            for name in sorted(files):
                suffix = self._is_image(name)
                if suffix is None:
                    continue
                path = Path(parent) / name
                image_id = path.relative_to(self.root).as_posix()[: -len(suffix)]
                if image_id in found:
                    raise UserError(f"two images of one id {image_id}: {found[image_id]}, {path}")
                found[image_id] = path
        if not found:
            endings = self.data.get("image_suffix") or ", ".join(IMAGE_SUFFIXES)
            raise UserError(f"config key Dataset.{key}: no images ({endings}) under {folder}")
        return found

    # --- one id ------------------------------------------------------------------------

    def image_path(self, image_id: str) -> Path:
        if image_id in self.listed:
            return self.listed[image_id][0]
        stem = self.root / image_id
        suffix = self.data.get("image_suffix", "")
        if suffix:
            return stem.with_name(stem.name + suffix)
        for ext in IMAGE_SUFFIXES:
            for candidate in (ext, ext.upper()):
                path = stem.with_name(stem.name + candidate)
                if path.is_file():
                    return path
        raise UserError(f"image not found: {stem}{{{','.join(IMAGE_SUFFIXES)}}}")

    def label_path(self, image_id: str, valid: bool) -> Path:
        """The mask of a training (or, ``valid``, a validation) image."""
        listed = self.listed.get(image_id, (None, None))[1]
        if listed is not None:
            return listed
        images, masks, _ = VAL_KEYS if valid else TRAIN_KEYS
        if self.data[images]:
            path = PurePosixPath(image_id)
            if path.is_relative_to(_under(self.data[images])):
                rel = path.relative_to(_under(self.data[images]))
                return self.root / self.data[masks] / f"{rel}{self.data['label_suffix']}"
        where = (
            f"not in Dataset.{'val_list' if valid else 'train_list'} with a mask"
            if not self.data[images]
            else f"not under Dataset.{images} ({self.data[images]})"
        )
        raise UserError(f"no mask for image {image_id}: {where}")

    # --- pools -------------------------------------------------------------------------

    def training_ids(self) -> list[str]:
        if "train_list" in self.list_ids:
            return self.list_ids["train_list"]
        return list(self.scan("image_dir"))

    def unlabeled_ids(self) -> list[str]:
        """The images without masks given apart (``unlabeled_dir`` or ``unlabeled_list``)."""
        if "unlabeled_list" in self.list_ids:
            return self.list_ids["unlabeled_list"]
        return list(self.scan("unlabeled_dir")) if self.data.get("unlabeled_dir") else []

    def val_ids(self) -> list[str]:
        if "val_list" in self.list_ids:
            return self.list_ids["val_list"]
        return list(self.scan("val_image_dir"))

    def pools(self) -> tuple[list[str], list[str], list[str]]:
        """(fine, train, val): the training images with a mask (where labeled images are
        drawn from: a listed mask, or a mask file beside the image), every training image
        (with the unlabeled ones), the validation images."""
        training = self.training_ids()
        if "train_list" in self.list_ids:
            fine = [i for i in training if self.listed[i][1] is not None]
        else:
            fine = [i for i in training if self.label_path(i, valid=False).is_file()]
        if not fine:
            raise UserError(
                f"no training image has a mask (Dataset.label_dir {self.data['label_dir']}, "
                f"label_suffix {self.data['label_suffix']})"
                if "train_list" not in self.list_ids
                else f"Dataset.train_list {self.data['train_list']}: no line names a mask"
            )
        return fine, training + self.unlabeled_ids(), self.val_ids()


class LabelDecoder:
    """Mask file -> stored values (``read``) -> train ids, 255 = ignore (``decode``)."""

    def __init__(
        self,
        label_format: str,
        num_classes: int,
        ignore_index: int = IGNORE_VALUE,
        reduce_zero_label: bool = False,
        colors: list | tuple = (),
        ignore_colors: list | tuple = (),
    ) -> None:
        if label_format not in LABEL_FORMATS:
            raise UserError(f"label format {label_format!r}: expected one of {LABEL_FORMATS}")
        self.label_format = label_format
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.first = 1 if reduce_zero_label else 0  # stored value of class 0
        lut = np.full(256, -1, dtype=np.int16)  # stored value -> train id; -1: not allowed
        lut[self.first : self.first + num_classes] = np.arange(num_classes)
        if reduce_zero_label:
            lut[0] = IGNORE_VALUE
        lut[ignore_index] = IGNORE_VALUE
        self.lut = lut
        table = [(_rgb_key(c), v) for v, c in enumerate(colors)]
        table += [(_rgb_key(c), ignore_index) for c in ignore_colors]
        table.sort()
        self.colour_keys = np.array([k for k, _ in table], dtype=np.int64)
        self.colour_values = np.array([v for _, v in table], dtype=np.uint8)

    @classmethod
    def from_config(cls, data: dict, num_classes: int) -> LabelDecoder:
        return cls(
            data["label_format"],
            num_classes,
            data["ignore_index"],
            data["reduce_zero_label"],
            data["colors"],
            data["ignore_colors"],
        )

    def expected(self) -> str:
        """The allowed stored values, in words."""
        ignored = sorted({0, self.ignore_index} if self.first else {self.ignore_index})
        what = " and ".join(map(str, ignored))
        return f"{self.first}..{self.first + self.num_classes - 1} (and {what} for ignore)"

    def read(self, path: Path) -> np.ndarray:
        """The stored values of a mask ``[H, W]`` (uint8); rgb masks through the colours."""
        if self.label_format == "rgb":
            return self._colours_to_values(_read_array(path, "label", rgb=True), path)
        if self.label_format == "palette":
            with _open(path) as pil:
                if pil.mode != "P":
                    raise UserError(
                        f"label {path} has image mode {pil.mode}; Dataset.label_format palette "
                        "reads palette (P) PNGs (grey values: label_format index)"
                    )
        return _read_array(path, "label", rgb=False)

    def _colours_to_values(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        keys = _rgb_key(rgb)
        pos = np.searchsorted(self.colour_keys, keys).clip(0, len(self.colour_keys) - 1)
        known = self.colour_keys[pos] == keys
        if not known.all():
            unknown, counts = np.unique(keys[~known], return_counts=True)
            top = int(np.argmax(counts))
            key = int(unknown[top])
            others = f" (and {len(unknown) - 1} more unknown colours)" if len(unknown) > 1 else ""
            raise UserError(
                f"label {path}: colour ({key >> 16}, {(key >> 8) & 255}, {key & 255}) on "
                f"{int(counts[top])} pixels is not in Dataset.colors{others}"
            )
        return self.colour_values[pos]

    def invalid(self, stored: np.ndarray) -> np.ndarray:
        """Mask of the pixels whose stored value is neither a class nor ignored."""
        return self.lut[stored] < 0

    def decode(self, stored: np.ndarray, path: Path) -> np.ndarray:
        """Stored values -> train ids (uint8, 255 = ignore); any other value is an error."""
        out = self.lut[stored]
        bad = out < 0
        if bad.any():
            values = np.unique(stored[bad])
            raise UserError(
                f"label {path} has values {values[:5].tolist()} outside {self.expected()}"
            )
        return out.astype(np.uint8)


def _rgb_key(rgb) -> np.ndarray | int:
    """``[..., 3]`` colours -> one integer each (r << 16 | g << 8 | b)."""
    arr = np.asarray(rgb, dtype=np.int64)
    return (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise UserError(f"label not found: {path}")
    try:
        return Image.open(path)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read label {path}: {reason}") from None


class FolderDataset(SegDataset):
    """One mode (labeled, unlabeled, valid) of a ``folder`` dataset."""

    def __init__(
        self,
        root: str | Path,
        ids: list[str],
        mode: str,
        crop_size: tuple[int, int],
        scale_size: tuple[float, float],
        num_classes: int,
        data: dict,
    ) -> None:
        super().__init__(root, ids, mode, crop_size, scale_size, num_classes)
        self.layout = FolderLayout(self.root, data)
        self.decoder = LabelDecoder.from_config(data, num_classes)

    def image_path(self, name: str) -> Path:
        return self.layout.image_path(name)

    def label_path(self, name: str) -> Path:
        return self.layout.label_path(name, valid=self.mode == "valid")

    def read_label(self, path: Path) -> np.ndarray:
        return self.decoder.read(path)

    def decode_label(self, arr: np.ndarray, path: Path) -> np.ndarray:
        return self.decoder.decode(arr, path)
