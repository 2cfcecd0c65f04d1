"""Real-format conformance: genuine dataset files read through the project's readers.

The files live outside the repository (a Cityscapes frame with its gtFine label files, three
VOC images with palette masks; see shared/data/README.md of the project's CI). These tests
read them from the folder named by the environment variable ``CSS_FIXTURES`` (``.ci/run``
sets it); without it they skip and say where to get the files. Every other test makes its
own fixtures.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.cityscapes import CityscapesDataset
from dataset.voc import VOCDataset
from utils.labels import IGNORE_INDEX

FIXTURES = Path(os.environ.get("CSS_FIXTURES", "/nonexistent-css-fixtures"))
CITY = "frankfurt/frankfurt_000000_000294"
VOC_IDS = ("2011_000003", "2011_000006", "2011_000025")

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(),
    reason="set CSS_FIXTURES to a folder holding cityscapes_frankfurt/ (a gtFine frame, e.g. "
    "mmsegmentation's tests/data/pseudo_cityscapes_dataset) and voc_labelme/ (labelme's "
    "examples/semantic_segmentation/data_dataset_voc); .ci/run points it at ../shared/fixtures",
)


def as_ignore(arr: np.ndarray) -> np.ndarray:
    out = arr.astype(np.int64)
    out[arr == 255] = IGNORE_INDEX
    return out


@needs_fixtures
def test_cityscapes_label_ids_map_to_the_provided_label_train_ids(tmp_path):
    """The reader's labelIds -> train-id mapping against the frame's own labelTrainIds.

    The two files of this (downscaled) frame were resampled separately: 77 of its 32,768
    pixels disagree, each on a boundary, within two pixels of one where the mapping gives the provided
    value. So: every labelId present maps to the train id the provided file gives the bulk of
    its pixels (a wrong table entry fails here), and each disagreeing pixel is a boundary one.
    """
    src = FIXTURES / "cityscapes_frankfurt"
    city, name = CITY.split("/")
    # a copy without the labelTrainIds file, so the reader maps labelIds itself
    for sub, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
        folder = tmp_path / sub / "val" / city
        folder.mkdir(parents=True)
        shutil.copy(src / sub / "val" / city / f"{name}_{suffix}.png", folder)
    mapped = CityscapesDataset(tmp_path, [CITY], "valid", "val")[0]["label"].numpy()
    gt = src / "gtFine/val" / city
    label_ids = np.array(Image.open(gt / f"{name}_gtFine_labelIds.png"))
    provided = as_ignore(np.array(Image.open(gt / f"{name}_gtFine_labelTrainIds.png")))
    assert mapped.shape == provided.shape == (128, 256)
    assert len(np.unique(label_ids)) > 10  # a real street scene: many classes to get right
    for value in np.unique(label_ids):
        ours = mapped[label_ids == value]
        assert len(np.unique(ours)) == 1  # one train id per labelId
        share = (ours == provided[label_ids == value]).mean()
        assert share >= 0.9, (value, ours[0], share)
    ys, xs = np.nonzero(mapped != provided)
    assert len(ys) <= 0.005 * mapped.size
    for y, x in zip(ys, xs):
        around = mapped[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3]
        assert (around == provided[y, x]).any(), (y, x)
    # with the labelTrainIds file present the reader takes it as it is
    read = CityscapesDataset(src, [CITY], "valid", "val")[0]
    assert np.array_equal(read["label"].numpy(), provided)
    assert read["img"].shape == (3, 128, 256)


@needs_fixtures
def test_voc_palette_masks_read_as_their_indices(tmp_path):
    src = FIXTURES / "voc_labelme"
    for sub in ("JPEGImages", "SegmentationClass"):
        shutil.copytree(src / sub, tmp_path / sub)
    names = (src / "class_names.txt").read_text().splitlines()
    assert len(names) == 21 and names[15] == "person"
    data = VOCDataset(tmp_path, list(VOC_IDS), "valid")
    for k, image_id in enumerate(VOC_IDS):
        mask = Image.open(src / "SegmentationClass" / f"{image_id}.png")
        assert mask.mode == "P"  # indices with a palette, not colours
        item = data[k]
        expected = as_ignore(np.array(mask))
        assert np.array_equal(item["label"].numpy(), expected)
        assert item["img"].shape[-2:] == expected.shape
        assert set(np.unique(expected)) - {IGNORE_INDEX} <= set(range(21))


@needs_fixtures
def test_voc_palette_masks_read_by_the_folder_dataset_as_by_the_voc_reader():
    """The genuine VOC masks through ``Dataset.name: folder`` with ``label_format: palette``:
    the same labels (and images) as the VOC reader gives."""
    from dataset.folder import FolderDataset

    src = FIXTURES / "voc_labelme"
    data = {
        "image_dir": "JPEGImages",
        "label_dir": "SegmentationClass",
        "val_image_dir": "JPEGImages",
        "val_label_dir": "SegmentationClass",
        "image_suffix": "",
        "label_suffix": ".png",
        "label_format": "palette",
        "ignore_index": 255,
        "reduce_zero_label": False,
        "colors": [],
        "ignore_colors": [],
    }
    ids = [f"JPEGImages/{i}" for i in VOC_IDS]
    folder = FolderDataset(src, ids, "valid", (512, 512), (1.0, 1.0), 21, data)
    voc = VOCDataset(src, list(VOC_IDS), "valid")
    for k in range(len(VOC_IDS)):
        ours, theirs = folder[k], voc[k]
        assert np.array_equal(ours["label"].numpy(), theirs["label"].numpy())
        assert np.array_equal(ours["img"].numpy(), theirs["img"].numpy())
        assert len(np.unique(ours["label"].numpy())) > 2  # classes besides background / ignore
