"""The datasets a config can name (one registry) and the loaders that feed the training loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dataset.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from dataset.palette import voc_palette
from dataset.splits import read_split
from dataset.voc import VOC_CLASSES, VOCDataset
from demo.fashion_scenes import (
    FASHION6_CLASSES,
    FASHION6_MAP,
    FASHION_CLASSES,
    NUM_TRAIN,
    ensure_fashion_scenes,
)
from utils.errors import UserError
from utils.sampler import EpochBatchSampler

# (root, ids, mode, crop_size, scale_size, num_classes) -> dataset of one mode
MakeDataset = Callable[[Path, list, str, tuple, tuple, int], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its classes, the pool labeled images are drawn from, its palette, how to
    read one mode of it, and how to make its root ready (check it, or generate the demo)."""

    classes: tuple[str, ...]
    pool_size: int  # training images the labeled ones are drawn from (VOC: train_aug)
    palette: Callable[[], list[int]]
    make: MakeDataset
    prepare: Callable[[Path], Path]


def existing_root(root: Path) -> Path:
    if not root.is_dir():
        raise UserError(f"config key Dataset.data_dir: dataset root not found: {root}")
    return root


def _voc(root, ids, mode, crop, scale, num_classes) -> Dataset:
    return VOCDataset(root, ids, mode, crop, scale, num_classes)


def _fashion6(root, ids, mode, crop, scale, num_classes) -> Dataset:
    return VOCDataset(root, ids, mode, crop, scale, num_classes, label_map=FASHION6_MAP)


def _cityscapes(root, ids, mode, crop, scale, num_classes) -> Dataset:
    return CityscapesDataset(root, ids, mode, "val" if mode == "valid" else "train", crop, scale)


DATASETS: dict[str, DatasetSpec] = {
    "voc": DatasetSpec(VOC_CLASSES, 10582, voc_palette, _voc, existing_root),
    "cityscapes": DatasetSpec(CITYSCAPES_CLASSES, 2975, voc_palette, _cityscapes, existing_root),
    # the embedded demo, generated on first use in the VOC layout: v1 (10 garments) and v2
    # (the default: the same scenes with 6 classes, see demo/fashion_scenes.py)
    "fashionscenes": DatasetSpec(
        FASHION_CLASSES, NUM_TRAIN, voc_palette, _voc, lambda root: ensure_fashion_scenes(root)
    ),
    "fashionscenes6": DatasetSpec(
        FASHION6_CLASSES,
        NUM_TRAIN,
        voc_palette,
        _fashion6,
        lambda root: ensure_fashion_scenes(root),
    ),
}


def class_names(name: str) -> tuple[str, ...]:
    return DATASETS[name].classes


def build_datasets(cfg: dict) -> dict[str, Dataset]:
    """``{"labeled", "unlabeled", "valid"}`` datasets of the configured split."""
    data = cfg["Dataset"]
    spec = DATASETS[data["name"]]
    num_classes = cfg["Network"]["num_class"]
    if num_classes != len(spec.classes):
        raise UserError(
            f"config key Network.num_class: got {num_classes}, expected {len(spec.classes)} "
            f"for {data['name']}"
        )
    root = Path(spec.prepare(Path(data["data_dir"]).expanduser()))
    ids = read_split(data["txt_dir"], data["num_labels"], cfg["Seed"])
    if len(ids["labeled"]) != data["num_labels"]:
        raise UserError(
            f"split {data['txt_dir']}/{data['num_labels']}/{cfg['Seed']}: labeled_filename.txt "
            f"lists {len(ids['labeled'])} ids, expected {data['num_labels']}"
        )
    crop, scale = tuple(data["crop_size"]), tuple(data["scale_size"])
    return {
        mode: spec.make(root, ids[mode], mode, crop, scale, num_classes)
        for mode in ("labeled", "unlabeled", "valid")
    }


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, cfg: dict, device: torch.device):
    workers = cfg["Dataset"]["num_workers"]
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def cycle(loader: DataLoader, sampler: EpochBatchSampler, start_iter: int) -> Iterator[dict]:
    """Endless batches; position derived from the iteration, so resuming needs no state."""
    epoch, batch = divmod(start_iter, sampler.batches_per_epoch)
    sampler.set_position(epoch, batch)
    while True:
        yield from loader
        sampler.set_position(sampler.epoch + 1, 0)
