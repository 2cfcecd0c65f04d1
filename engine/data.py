"""The datasets of a config (from the one registry, ``dataset/registry.py``) and the loaders
that feed the training loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import demo.datasets  # noqa: F401  (registers the embedded demo data)
from dataset.registry import DATASETS
from dataset.splits import SEED_SPLIT, read_split, split_dir
from utils.errors import UserError
from utils.sampler import EpochBatchSampler


def class_names(cfg: dict) -> tuple[str, ...]:
    """The class names of a config's dataset (its registry entry's, or its own)."""
    return DATASETS[cfg["Dataset"]["name"]].classes_of(cfg["Dataset"])


def pool_size(cfg: dict) -> int:
    """The training images of a config's dataset that labeled ones are drawn from."""
    return DATASETS[cfg["Dataset"]["name"]].pool_size_of(cfg["Dataset"])


def palette(cfg: dict) -> list[int]:
    """768 palette values for ``Image.putpalette``: the colours of a config's classes."""
    return DATASETS[cfg["Dataset"]["name"]].palette_of(cfg["Dataset"])


def split_name(cfg: dict) -> str:
    """The split folder under ``<txt_dir>/<num_labels>/``: ``Dataset.split``, or the ``Seed``
    where it is ``seed`` (the paper's layout; also where an older config lacks the key)."""
    split = cfg["Dataset"].get("split", SEED_SPLIT)
    return str(cfg["Seed"]) if split == SEED_SPLIT else split


def split_folder(cfg: dict) -> Path:
    """The configured split folder; a missing one is a ``UserError`` that says how to make it."""
    data = cfg["Dataset"]
    name = split_name(cfg)
    folder = split_dir(data["txt_dir"], data["num_labels"], name)
    if folder.is_dir():
        return folder
    if data.get("split", SEED_SPLIT) == SEED_SPLIT:
        how = "draw it with: " + DATASETS[data["name"]].split_command(
            data["txt_dir"], data["num_labels"], cfg["Seed"]
        )
        what = f"Dataset.num_labels={data['num_labels']}, Seed={cfg['Seed']}"
    else:
        what = f"Dataset.num_labels={data['num_labels']}, Dataset.split={name}"
        spec = DATASETS[data["name"]]
        how = (
            f"import a labeled.txt with: {spec.import_command(name)}"
            if spec.imports_labeled
            else "write its labeled / unlabeled / valid_filename.txt there"
        )
    raise UserError(f"split folder not found: {folder} ({what}); {how}")


def build_datasets(cfg: dict) -> dict[str, Dataset | None]:
    """``{"labeled", "unlabeled", "valid"}`` datasets of the configured split; ``unlabeled``
    is None where its list is empty (every training image labeled: supervised only)."""
    data = cfg["Dataset"]
    spec = DATASETS[data["name"]]
    num_classes = cfg["Network"]["num_class"]
    classes = spec.classes_of(data)
    if num_classes != len(classes):
        raise UserError(
            f"config key Network.num_class: got {num_classes}, expected {len(classes)} "
            f"for {data['name']}"
        )
    folder = split_folder(cfg)  # before the root: cheap, and the demo root is generated
    ids = read_split(data["txt_dir"], data["num_labels"], split_name(cfg))
    if len(ids["labeled"]) != data["num_labels"]:
        raise UserError(
            f"split {folder}: labeled_filename.txt lists {len(ids['labeled'])} ids, "
            f"expected {data['num_labels']}"
        )
    root = Path(spec.prepare(Path(data["data_dir"]).expanduser()))
    return {
        mode: spec.make(root, ids[mode], mode, data, num_classes) if ids[mode] else None
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
