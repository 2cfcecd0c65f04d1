"""Build the labeled / unlabeled / valid datasets that a config describes."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from dataset.splits import read_split
from utils.errors import UserError


def class_names(name: str) -> tuple[str, ...]:
    if name == "voc":
        from dataset.voc import VOC_CLASSES

        return VOC_CLASSES
    if name == "cityscapes":
        from dataset.cityscapes import CITYSCAPES_CLASSES

        return CITYSCAPES_CLASSES
    from dataset.fashion_scenes import FASHION_CLASSES

    return FASHION_CLASSES


def prepare_data_root(cfg: dict) -> Path:
    """The dataset root; the demo data is generated there on first use."""
    data = cfg["Dataset"]
    root = Path(data["data_dir"]).expanduser()
    if data["name"] == "fashionscenes":
        from dataset.fashion_scenes import ensure_fashion_scenes

        return Path(ensure_fashion_scenes(root))
    if not root.is_dir():
        raise UserError(f"config key Dataset.data_dir: dataset root not found: {root}")
    return root


def build_datasets(cfg: dict) -> dict[str, Dataset]:
    """``{"labeled", "unlabeled", "valid"}`` datasets of the configured split."""
    data = cfg["Dataset"]
    num_classes = cfg["Network"]["num_class"]
    expected = len(class_names(data["name"]))
    if num_classes != expected:
        raise UserError(
            f"config key Network.num_class: got {num_classes}, expected {expected} for {data['name']}"
        )
    root = prepare_data_root(cfg)
    ids = read_split(data["txt_dir"], data["num_labels"], cfg["Seed"])
    if len(ids["labeled"]) != data["num_labels"]:
        raise UserError(
            f"split {data['txt_dir']}/{data['num_labels']}/{cfg['Seed']}: labeled_filename.txt "
            f"lists {len(ids['labeled'])} ids, expected {data['num_labels']}"
        )
    crop, scale = tuple(data["crop_size"]), tuple(data["scale_size"])
    out = {}
    for mode in ("labeled", "unlabeled", "valid"):
        if data["name"] == "cityscapes":
            from dataset.cityscapes import CityscapesDataset

            split = "val" if mode == "valid" else "train"
            out[mode] = CityscapesDataset(root, ids[mode], mode, split, crop, scale)
        else:
            from dataset.voc import VOCDataset

            out[mode] = VOCDataset(root, ids[mode], mode, crop, scale, num_classes)
    return out
