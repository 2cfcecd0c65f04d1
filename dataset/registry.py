"""The datasets a config can name: one registry, read by the engine (``engine/data.py``) and by
the tools (``tools/make_splits.py``, ``tools/check_dataset.py``, ...).

An entry (:class:`DatasetSpec`) holds every fact of one dataset: its classes, the pool the
labeled images are drawn from, its palette, how to read one mode of it, how to make its root
ready, the command that draws a missing split, and, for a dataset with published id lists,
how ``tools/make_splits.py`` draws and imports its splits (:class:`SplitRecipe`: the default
split folder, the standard label counts, the id-list files, the ids of a downloaded copy, the
parser of another repository's ``labeled.txt`` lines).

This module imports no torch (the readers do, and are imported when a dataset is built), so
the split tool stays fast. ``demo/fashion_scenes.py`` registers the embedded demo data
(``register``): ``dataset/`` does not import ``demo/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dataset.classes import CAMVID_CLASSES, CITYSCAPES_CLASSES, COCOSTUFF_CLASSES, VOC_CLASSES
from dataset.palette import camvid_palette, cityscapes_palette, voc_palette
from dataset.splits import CAMVID_SPLITS, CITYSCAPES_SPLITS, VOC_BLENDED, VOC_CLASSIC, read_ids
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# (root, ids, mode, the config's Dataset section, num_classes) -> the dataset of one mode
MakeDataset = Callable[[Path, list, str, dict, int], Any]
# (txt_dir, num_labels, seed) -> the command line that draws that split
SplitCommand = Callable[[str, int, int], str]
# fine (where labeled ids are drawn from), train (every training id), val ids
Pools = tuple[list[str], list[str], list[str]]


@dataclass(frozen=True)
class IdLists:
    """Files of the shipped id lists (relative to ``--id-lists``, default ``dataset/id_lists``):
    ``fine`` the ids labeled images are drawn from (VOC: train), ``train`` every training id
    (VOC: train_aug), ``val`` the validation ids; ``{valid_set}`` in a name is replaced by the
    chosen validation set (CamVid: test or val)."""

    fine: str
    train: str
    val: str

    def read(self, folder: Path, valid_set: str) -> Pools:
        fine = read_ids(folder / self.fine)
        train = fine if self.train == self.fine else read_ids(folder / self.train)
        return fine, train, read_ids(folder / self.val.format(valid_set=valid_set))


@dataclass(frozen=True)
class SplitRecipe:
    """How ``tools/make_splits.py`` draws and imports the splits of a dataset with fixed ids.

    ``out``: the default split root (relative to the repository); ``standard``: the label
    counts drawn when none is given; ``classic``: those of them drawn from the ``fine`` pool
    under ``--scheme auto`` (VOC's 92 ... 1464; the others from ``train``: blended; empty
    where fine = train); ``id_lists``: the shipped lists (None where they cannot be known
    without the data); ``data_root(root, valid_set)``: the
    pools of a downloaded copy; ``entry_id``: the id named by the first path of another
    repository's ``labeled.txt`` line; ``valid_sets``: the validation sets a split can use,
    the first the default (CamVid: test, where results are reported, or val)."""

    out: str
    standard: tuple[int, ...]
    id_lists: IdLists | None  # None: not known without the data (--data-root)
    data_root: Callable[[Path, str], Pools]
    entry_id: Callable[[PurePosixPath], str]
    classic: tuple[int, ...] = ()
    valid_sets: tuple[str, ...] = ("val",)

    def scheme(self, num_labels: int) -> str:
        """``classic`` (drawn from fine) or ``blended`` (from train) for a count that is not
        standard: classic up to the largest classic count."""
        return "classic" if num_labels <= max(self.classic, default=0) else "blended"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its classes (None: the config's ``Dataset.classes``), the pool labeled
    images are drawn from (None: counted from the data), its palette, how to read one mode of
    it, how to make its root ready (check it, or generate the demo), the command that draws a
    missing split, and how ``tools/make_splits.py`` draws and imports its splits (None: not
    from published id lists)."""

    classes: tuple[str, ...] | None
    pool_size: int | None
    palette: Callable[[], list[int]]
    make: MakeDataset
    prepare: Callable[[Path], Path]
    split_command: SplitCommand
    splits: SplitRecipe | None = None
    # split name -> the command that imports another repository's labeled.txt as that split
    import_command: Callable[[str], str] | None = None
    # a dataset described by its config: Dataset section -> its layout, whose ``pools()``
    # gives (fine, train, val) ids and ``entry_id(path)`` the id of a list line's first path
    layout: Callable[[dict], Any] | None = None

    @property
    def imports_labeled(self) -> bool:
        """``tools/make_splits.py --import-labeled`` reads another repository's split of it."""
        return self.import_command is not None

    def classes_of(self, data: dict) -> tuple[str, ...]:
        """The class names of a config's Dataset section: the entry's, else its ``classes``."""
        return self.classes if self.classes is not None else tuple(data["classes"])

    def pool_size_of(self, data: dict) -> int:
        """The number of training images labeled ones can be drawn from."""
        if self.pool_size is not None:
            return self.pool_size
        return len(self.layout(data).pools()[0])

    def palette_of(self, data: dict) -> list[int]:
        """768 palette values: a config's ``Dataset.palette`` (or, for colour-coded masks, its
        ``colors``) where it has one, else the entry's."""
        colours = data.get("palette") or data.get("colors")
        if not colours:
            return self.palette()
        flat = [int(v) for rgb in colours[:256] for v in rgb]
        return flat + [0] * (768 - len(flat))


DATASETS: dict[str, DatasetSpec] = {}


def register(name: str, spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` under ``name`` (a name is registered once)."""
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    DATASETS[name] = spec
    return spec


def existing_root(root: Path) -> Path:
    if not root.is_dir():
        raise UserError(f"config key Dataset.data_dir: dataset root not found: {root}")
    return root


def out_flag(flag: str, txt_dir: str, default: Path) -> str:
    """`` --out DIR`` unless ``txt_dir`` is the tool's default folder."""
    same = Path(txt_dir).expanduser().resolve() == default.resolve()
    return "" if same else f" {flag} {txt_dir}"


def make_splits_command(name: str, recipe: SplitRecipe) -> SplitCommand:
    """The ``tools/make_splits.py`` line that draws one split of ``name``."""

    def command(txt_dir: str, num_labels: int, seed: int) -> str:
        scheme = ""
        if recipe.classic and num_labels not in recipe.standard:
            scheme = " --scheme " + recipe.scheme(num_labels)
        out = out_flag("--out", txt_dir, REPO / recipe.out)
        root = " --data-root DATA_DIR" if recipe.id_lists is None else ""  # Dataset.data_dir
        return (
            f"python tools/make_splits.py --dataset {name} --num-labels {num_labels} "
            f"--seed {seed}{scheme}{root}{out}"
        )

    return command


def register_with_splits(
    name: str,
    classes: tuple[str, ...],
    pool_size: int,
    palette: Callable[[], list[int]],
    make: MakeDataset,
    recipe: SplitRecipe,
) -> DatasetSpec:
    """Register a dataset whose splits ``tools/make_splits.py --dataset name`` draws."""

    def import_command(split: str) -> str:
        return f"python tools/make_splits.py --dataset {name} --import-labeled LABELED_TXT --name {split}"

    spec = DatasetSpec(
        classes,
        pool_size,
        palette,
        make,
        existing_root,
        make_splits_command(name, recipe),
        recipe,
        import_command,
    )
    return register(name, spec)


# --- readers (imported when a dataset is built: they import torch) ---------------------


def voc_reader(label_map: tuple[int, ...] | None = None) -> MakeDataset:
    """VOC layout (``dataset/voc.py``); ``label_map``: a coarser labelling of the same files."""

    def make(root, ids, mode, data, num_classes):
        from dataset.voc import VOCDataset

        crop, scale = tuple(data["crop_size"]), tuple(data["scale_size"])
        if label_map is None:
            return VOCDataset(root, ids, mode, crop, scale, num_classes)
        return VOCDataset(root, ids, mode, crop, scale, num_classes, label_map=label_map)

    return make


def _cityscapes(root, ids, mode, data, num_classes):
    from dataset.cityscapes import CityscapesDataset

    split = "val" if mode == "valid" else "train"
    return CityscapesDataset(
        root, ids, mode, split, tuple(data["crop_size"]), tuple(data["scale_size"])
    )


def _folder(root, ids, mode, data, num_classes):
    from dataset.folder import FolderDataset

    crop, scale = tuple(data["crop_size"]), tuple(data["scale_size"])
    return FolderDataset(root, ids, mode, crop, scale, num_classes, data)


def _folder_layout(data: dict):
    from dataset.folder import FolderLayout

    return FolderLayout(data["data_dir"], data)


def _cocostuff(root, ids, mode, data, num_classes):
    from dataset.cocostuff import CocoStuffDataset

    crop, scale = tuple(data["crop_size"]), tuple(data["scale_size"])
    return CocoStuffDataset(root, ids, mode, crop, scale)


def _camvid(root, ids, mode, data, num_classes):
    from dataset.camvid import CamVidDataset

    return CamVidDataset(root, ids, mode, tuple(data["crop_size"]), tuple(data["scale_size"]))


# --- ids of downloaded copies, and of other repositories' labeled.txt lines -------------


def _voc_root_pools(root: Path, valid_set: str) -> Pools:
    """``ImageSets/Segmentation/train.txt`` and ``val.txt``; train_aug = the ids of
    ``SegmentationClassAug/*.png`` minus val."""
    sets = root / "ImageSets" / "Segmentation"
    fine, val = read_ids(sets / "train.txt"), read_ids(sets / "val.txt")
    aug = root / "SegmentationClassAug"
    labels = [p.stem for p in aug.glob("*.png")]
    if not labels:
        raise UserError(f"no *.png labels in {aug} (needed for the train_aug ids)")
    val_set = set(val)
    return fine, [i for i in labels if i not in val_set], val


def _cityscapes_ids(root: Path, split: str) -> list[str]:
    folder = root / "leftImg8bit" / split
    suffix = "_leftImg8bit.png"
    ids = [f"{p.parent.name}/{p.name[: -len(suffix)]}" for p in folder.glob(f"*/*{suffix}")]
    if not ids:
        raise UserError(f"no */*{suffix} images under {folder}")
    return ids


def _cityscapes_root_pools(root: Path, valid_set: str) -> Pools:
    """The images of ``leftImg8bit/train`` and ``leftImg8bit/val``."""
    train = _cityscapes_ids(root, "train")
    return train, train, _cityscapes_ids(root, "val")


def _camvid_root_pools(root: Path, valid_set: str) -> Pools:
    """CamVid's list files ``train.txt`` and ``test.txt`` (or ``val.txt``: ``valid_set``)."""
    from dataset.camvid import read_list_file  # imports torch: only this path needs it

    train = read_list_file(root / "train.txt")
    return train, train, read_list_file(root / f"{valid_set}.txt")


def _cocostuff_root_pools(root: Path, valid_set: str) -> Pools:
    """Its ``imageLists/train.txt`` and ``test.txt`` (image names)."""
    train = read_ids(root / "imageLists" / "train.txt")
    return train, train, read_ids(root / "imageLists" / "test.txt")


def stem_id(path: PurePosixPath) -> str:
    """VOC: ``JPEGImages/2007_000032.jpg`` -> ``2007_000032``."""
    return path.stem


def folder_stem_id(path: PurePosixPath) -> str:
    """``<parent folder>/<stem>`` less Cityscapes' ``_leftImg8bit``:
    ``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png`` ->
    ``aachen/aachen_000000_000019``; ``/SegNet/CamVid/train/X.png`` -> ``train/X``."""
    name = path.stem.removesuffix("_leftImg8bit")
    return f"{path.parent.name}/{name}"


# --- the datasets with a reader of their own -------------------------------------------

register_with_splits(
    "voc",
    VOC_CLASSES,
    10582,
    voc_palette,
    voc_reader(),
    SplitRecipe(
        out="VOC_split",
        standard=VOC_CLASSIC + VOC_BLENDED,
        classic=VOC_CLASSIC,
        id_lists=IdLists("voc_train.txt", "voc_trainaug.txt", "voc_val.txt"),
        data_root=_voc_root_pools,
        entry_id=stem_id,
    ),
)
register_with_splits(
    "cityscapes",
    CITYSCAPES_CLASSES,
    2975,
    cityscapes_palette,
    _cityscapes,
    SplitRecipe(
        out="CityScapes_split",
        standard=CITYSCAPES_SPLITS,
        id_lists=IdLists("cityscapes_train.txt", "cityscapes_train.txt", "cityscapes_val.txt"),
        data_root=_cityscapes_root_pools,
        entry_id=folder_stem_id,
    ),
)
# the SegNet release (dataset/camvid.py): labeled drawn from the 367 train images,
# validated on the 233 test images (the 101 val images choose the config)
register_with_splits(
    "camvid",
    CAMVID_CLASSES,
    367,
    camvid_palette,
    _camvid,
    SplitRecipe(
        out="CamVid_split",
        standard=CAMVID_SPLITS,
        id_lists=IdLists("camvid/train.txt", "camvid/train.txt", "camvid/{valid_set}.txt"),
        data_root=_camvid_root_pools,
        entry_id=folder_stem_id,
        valid_sets=("test", "val"),
    ),
)
# COCO-Stuff-10K (dataset/cocostuff.py): its 182 stored ids map to 171 classes; labeled
# drawn from the 9,000 train images (1/16 ... 1/2: 563, 1125, 2250, 4500), validated on the
# 1,000 test images. Its image lists are not shipped: --data-root reads its imageLists/.
register_with_splits(
    "cocostuff10k",
    COCOSTUFF_CLASSES,
    9000,
    voc_palette,
    _cocostuff,
    SplitRecipe(
        out="COCOStuff10k_split",
        standard=(563, 1125, 2250, 4500),
        id_lists=None,
        data_root=_cocostuff_root_pools,
        entry_id=stem_id,
        valid_sets=("test",),
    ),
)

# any folder of images and masks, described by its config (dataset/folder.py): classes,
# palette and pool come from the config's Dataset keys; make_splits.py --config draws splits
FOLDER = "folder"
register(
    FOLDER,
    DatasetSpec(
        classes=None,
        pool_size=None,
        palette=voc_palette,
        make=_folder,
        prepare=existing_root,
        split_command=lambda txt_dir, num_labels, seed: (
            f"python tools/make_splits.py --config CONFIG --num-labels {num_labels} --seed {seed}"
            f" --out {txt_dir} (CONFIG: this config file)"
        ),
        import_command=lambda split: (
            f"python tools/make_splits.py --config CONFIG --import-labeled LABELED_TXT --name "
            f"{split} (CONFIG: this config file)"
        ),
        layout=_folder_layout,
    ),
)
