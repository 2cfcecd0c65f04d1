"""The datasets a config can name (one registry) and the loaders that feed the training loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dataset.camvid import CAMVID_CLASSES, CamVidDataset
from dataset.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from dataset.palette import camvid_palette, cityscapes_palette, voc_palette
from dataset.splits import SEED_SPLIT, VOC_BLENDED, VOC_CLASSIC, read_split, split_dir
from dataset.voc import VOC_CLASSES, VOCDataset
from demo.fashion_scenes import (
    DEFAULT_TXT_DIR,
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
# (txt_dir, num_labels, seed) -> the command line that draws that split
SplitCommand = Callable[[str, int, int], str]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its classes, the pool labeled images are drawn from, its palette, how to
    read one mode of it, how to make its root ready (check it, or generate the demo), the
    command that draws a missing split, and whether ``tools/make_splits.py --import-labeled``
    reads another repository's split of it."""

    classes: tuple[str, ...]
    pool_size: int  # training images the labeled ones are drawn from (VOC: train_aug)
    palette: Callable[[], list[int]]
    make: MakeDataset
    prepare: Callable[[Path], Path]
    split_command: SplitCommand
    imports_labeled: bool = False


def existing_root(root: Path) -> Path:
    if not root.is_dir():
        raise UserError(f"config key Dataset.data_dir: dataset root not found: {root}")
    return root


def _voc(root, ids, mode, crop, scale, num_classes) -> Dataset:
    return VOCDataset(root, ids, mode, crop, scale, num_classes)


def _camvid(root, ids, mode, crop, scale, num_classes) -> Dataset:
    return CamVidDataset(root, ids, mode, crop, scale)


def _fashion6(root, ids, mode, crop, scale, num_classes) -> Dataset:
    return VOCDataset(root, ids, mode, crop, scale, num_classes, label_map=FASHION6_MAP)


def _cityscapes(root, ids, mode, crop, scale, num_classes) -> Dataset:
    return CityscapesDataset(root, ids, mode, "val" if mode == "valid" else "train", crop, scale)


def _out_flag(flag: str, txt_dir: str, default: Path) -> str:
    """`` --out DIR`` unless ``txt_dir`` is the tool's default folder."""
    same = Path(txt_dir).expanduser().resolve() == default.resolve()
    return "" if same else f" {flag} {txt_dir}"


def _make_splits(dataset: str, default_dir: str) -> SplitCommand:
    def command(txt_dir: str, num_labels: int, seed: int) -> str:
        scheme = ""
        if dataset == "voc" and num_labels not in VOC_CLASSIC + VOC_BLENDED:
            scheme = " --scheme " + ("classic" if num_labels <= max(VOC_CLASSIC) else "blended")
        out = _out_flag("--out", txt_dir, REPO / default_dir)
        return (
            f"python tools/make_splits.py --dataset {dataset} --num-labels {num_labels} "
            f"--seed {seed}{scheme}{out}"
        )

    return command


def _fashion_splits(txt_dir: str, num_labels: int, seed: int) -> str:
    out = _out_flag("--txt-dir", txt_dir, DEFAULT_TXT_DIR)
    return (
        f"python -m demo.fashion_scenes --write-splits --num-labels {num_labels} "
        f"--seeds {seed}{out}"
    )


DATASETS: dict[str, DatasetSpec] = {
    "voc": DatasetSpec(
        VOC_CLASSES,
        10582,
        voc_palette,
        _voc,
        existing_root,
        _make_splits("voc", "VOC_split"),
        imports_labeled=True,
    ),
    "cityscapes": DatasetSpec(
        CITYSCAPES_CLASSES,
        2975,
        cityscapes_palette,
        _cityscapes,
        existing_root,
        _make_splits("cityscapes", "CityScapes_split"),
        imports_labeled=True,
    ),
    # the SegNet release (dataset/camvid.py): labeled drawn from the 367 train images,
    # validated on the 233 test images (the 101 val images choose the config)
    "camvid": DatasetSpec(
        CAMVID_CLASSES,
        367,
        camvid_palette,
        _camvid,
        existing_root,
        _make_splits("camvid", "CamVid_split"),
        imports_labeled=True,
    ),
    # the embedded demo, generated on first use in the VOC layout: v1 (10 garments) and v2
    # (the default: the same scenes with 6 classes, see demo/fashion_scenes.py)
    "fashionscenes": DatasetSpec(
        FASHION_CLASSES,
        NUM_TRAIN,
        voc_palette,
        _voc,
        lambda root: ensure_fashion_scenes(root),
        _fashion_splits,
    ),
    "fashionscenes6": DatasetSpec(
        FASHION6_CLASSES,
        NUM_TRAIN,
        voc_palette,
        _fashion6,
        lambda root: ensure_fashion_scenes(root),
        _fashion_splits,
    ),
}


def class_names(name: str) -> tuple[str, ...]:
    return DATASETS[name].classes


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
        how = (
            "import a labeled.txt with: python tools/make_splits.py --dataset "
            f"{data['name']} --import-labeled LABELED_TXT --name {name}"
            if DATASETS[data["name"]].imports_labeled
            else "write its labeled / unlabeled / valid_filename.txt there"
        )
    raise UserError(f"split folder not found: {folder} ({what}); {how}")


def build_datasets(cfg: dict) -> dict[str, Dataset | None]:
    """``{"labeled", "unlabeled", "valid"}`` datasets of the configured split; ``unlabeled``
    is None where its list is empty (every training image labeled: supervised only)."""
    data = cfg["Dataset"]
    spec = DATASETS[data["name"]]
    num_classes = cfg["Network"]["num_class"]
    if num_classes != len(spec.classes):
        raise UserError(
            f"config key Network.num_class: got {num_classes}, expected {len(spec.classes)} "
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
    crop, scale = tuple(data["crop_size"]), tuple(data["scale_size"])
    return {
        mode: spec.make(root, ids[mode], mode, crop, scale, num_classes) if ids[mode] else None
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
