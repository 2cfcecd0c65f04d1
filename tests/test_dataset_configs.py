"""The shipped configs of ADE20K, COCO (81 classes) and COCO-Stuff-10K: they validate, their
classes and label conventions read tiny made-up folders in each published layout as
published, the ADE20K id lists ship and draw splits from a plain clone, and other
repositories' split lines (UniMatch-V2 / SemiVL for ADE20K, UniMatch for COCO) import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dataset.classes import COCOSTUFF_CLASSES
from dataset.cocostuff import STORED_TO_TRAIN_ID, UNUSED_IDS, CocoStuffDataset
from engine.config import load_config
from engine.data import DATASETS, build_datasets
from tools import make_splits
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
ADE_LISTS = REPO / "dataset" / "id_lists" / "ade20k"
H, W = 24, 32


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=90)


def write_mask(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def config_copy(tmp: Path, name: str, **dataset) -> Path:
    """A shipped config with some Dataset keys replaced (the data in ``tmp``)."""
    cfg = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    cfg["Dataset"].update(dataset)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "name, classes, pool, fractions",
    [
        ("ade20k", 150, 20210, (1263, 2526, 5053, 10105)),
        ("coco", 81, 118287, (7393, 14786, 29572, 59144)),
        ("cocostuff10k", 171, 9000, (563, 1125, 2250, 4500)),
    ],
)
def test_configs_validate_with_their_classes_and_the_1_16_fraction(name, classes, pool, fractions):
    text = (REPO / "configs" / f"{name}.yaml").read_text()
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    spec = DATASETS[cfg["Dataset"]["name"]]
    assert cfg["Network"]["num_class"] == len(spec.classes_of(cfg["Dataset"])) == classes
    assert cfg["Dataset"]["num_labels"] == fractions[0]
    # the counts in the comments are 1/16 ... 1/2 of the pool, rounded half up
    assert fractions == tuple(int(pool / d + 0.5) for d in (16, 8, 4, 2))
    assert all(str(n) in text for n in fractions)


def test_ade20k_id_lists_are_its_file_names_in_unimatch_line_format():
    train, val = lines(ADE_LISTS / "training.txt"), lines(ADE_LISTS / "validation.txt")
    assert len(train) == len(set(train)) == 20210 and len(val) == 2000
    assert train[0] == (
        "images/training/ADE_train_00000001.jpg annotations/training/ADE_train_00000001.png"
    )
    assert train[-1].startswith("images/training/ADE_train_00020210.jpg ")
    assert val[-1] == (
        "images/validation/ADE_val_00002000.jpg annotations/validation/ADE_val_00002000.png"
    )
    cfg = load_config(REPO / "configs" / "ade20k.yaml")["Dataset"]
    assert cfg["classes"][0] == "wall" and cfg["classes"][-1] == "flag"
    assert cfg["reduce_zero_label"] and cfg["ignore_index"] == 255


def test_ade20k_splits_draw_from_a_plain_clone_and_import_unimatch_v2_lines(tmp_path, capsys):
    out = tmp_path / "ADE20K_split"
    args = ["--config", str(REPO / "configs" / "ade20k.yaml"), "--out", str(out)]
    assert make_splits.main([*args, "--num-labels", "1263"]) == 0
    folder = out / "1263" / "3407"
    assert len(lines(folder / "labeled_filename.txt")) == 1263
    assert len(lines(folder / "unlabeled_filename.txt")) == 20210 - 1263
    assert lines(folder / "valid_filename.txt")[0] == "images/validation/ADE_val_00000001"
    published = tmp_path / "labeled.txt"  # UniMatch-V2 / SemiVL splits/ade20k/*/labeled.txt
    published.write_text(
        "images/training/ADE_train_00000042.jpg annotations/training/ADE_train_00000042.png\n"
        "images/training/ADE_train_00017002.jpg annotations/training/ADE_train_00017002.png\n"
    )
    assert make_splits.main([*args, "--import-labeled", str(published), "--name", "v2"]) == 0
    assert lines(out / "2" / "v2" / "labeled_filename.txt") == [
        "images/training/ADE_train_00000042",
        "images/training/ADE_train_00017002",
    ]
    capsys.readouterr()


def test_ade20k_masks_read_zero_as_ignore_and_the_rest_one_lower(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    ids = ["images/training/ADE_train_00000001", "images/validation/ADE_val_00000001"]
    arr = (np.arange(H * W) % 151).reshape(H, W)  # 0 ("other") .. 150
    for k, image_id in enumerate(ids):
        write_image(root / f"{image_id}.jpg", k)
        write_mask(root / (image_id.replace("images", "annotations", 1) + ".png"), arr)
    cfg = load_config(REPO / "configs" / "ade20k.yaml", [f"Dataset.data_dir={root}"])
    ds = DATASETS["folder"].make(root, ids[1:], "valid", cfg["Dataset"], 150)
    label = ds[0]["label"].numpy()
    assert np.array_equal(label, np.where(arr == 0, -1, arr - 1))
    arr[3, 3] = 151
    write_mask(root / "annotations" / "validation" / "ADE_val_00000001.png", arr)
    with pytest.raises(
        UserError, match=r"ADE_val_00000001\.png has values \[151\] outside 1\.\.150"
    ):
        ds[0]


def test_coco_reads_unimatch_masks_and_imports_its_split_lines(tmp_path, capsys):
    root = tmp_path / "coco"
    train = [f"{i:012d}" for i in (9, 25, 30, 34, 36)]
    for k, name in enumerate(train):
        write_image(root / "train2017" / f"{name}.jpg", k)
        write_mask(root / "masks" / f"{name}.png", np.full((H, W), k * 20))  # 0 = background
    write_image(root / "val2017" / "000000000139.jpg", 9)
    mask = np.full((H, W), 80)
    mask[0] = 255
    write_mask(root / "masks" / "000000000139.png", mask)
    config = config_copy(tmp_path, "coco", data_dir=str(root), txt_dir=str(tmp_path / "split"))
    published = tmp_path / "labeled.txt"  # UniMatch's splits/coco/*/labeled.txt lines
    published.write_text(
        "".join(f"train2017/{n}.jpg masks/{n}.png\n" for n in (train[3], train[0]))
    )
    args = ["--config", str(config), "--import-labeled", str(published), "--name", "unimatch"]
    assert make_splits.main(args) == 0
    capsys.readouterr()
    cfg = load_config(config, ["Dataset.num_labels=2", "Dataset.split=unimatch"])
    data = build_datasets(cfg)
    assert data["labeled"].ids == [f"train2017/{train[0]}", f"train2017/{train[3]}"]
    assert len(data["unlabeled"]) == 3
    valid = data["valid"][0]["label"]
    assert valid[0].eq(-1).all() and valid[1:].eq(80).all()  # toothbrush, ignore band
    assert cfg["Dataset"]["classes"][80] == "toothbrush"


def test_cocostuff_maps_its_182_ids_to_171_classes():
    lut = STORED_TO_TRAIN_ID
    used = [v for v in range(182) if v not in UNUSED_IDS]
    assert len(used) == 171 == len(COCOSTUFF_CLASSES)
    assert lut[used].tolist() == list(range(171))
    assert all(lut[v] == -1 for v in UNUSED_IDS) and lut[255] == 255
    assert all(lut[v] == -1 for v in range(182, 255))
    # hand-checked: person (0) -> 0, stop sign (id 13, stored 12) -> 11 after street sign,
    # toothbrush (id 90, stored 89) -> 79, banner (id 92, stored 91) -> 80, wood -> 170
    assert (lut[0], lut[12], lut[89], lut[91], lut[181]) == (0, 11, 79, 80, 170)
    assert COCOSTUFF_CLASSES[11] == "stop sign" and COCOSTUFF_CLASSES[79] == "toothbrush"
    assert COCOSTUFF_CLASSES[80] == "banner" and COCOSTUFF_CLASSES[170] == "wood"


def test_cocostuff_folder_reads_and_draws_from_its_image_lists(tmp_path, capsys):
    root = tmp_path / "cocostuff-10k"
    names = [f"COCO_train2014_{i:012d}" for i in range(6)] + ["COCO_val2014_000000000042"]
    arr = np.array([[0, 12, 91, 181, 255, 89]] * 4, np.uint8)
    for k, name in enumerate(names):
        write_image(root / "images" / f"{name}.jpg", k)
        write_mask(root / "annotations" / f"{name}.png", np.tile(arr, (H // 4, W // 6 + 1))[:, :W])
    (root / "imageLists").mkdir()
    (root / "imageLists" / "train.txt").write_text("\n".join(names[:6]) + "\n")
    (root / "imageLists" / "test.txt").write_text(names[6] + "\n")
    out = tmp_path / "split"
    args = ["--dataset", "cocostuff10k", "--num-labels", "2", "--out", str(out)]
    assert make_splits.main(args) == 2  # its lists do not ship
    assert "--data-root" in capsys.readouterr().err
    assert make_splits.main([*args, "--data-root", str(root)]) == 0
    assert lines(out / "2" / "3407" / "valid_filename.txt") == [names[6]]
    ds = CocoStuffDataset(root, [names[6]], "valid", (16, 16), (1.0, 1.0))
    label = ds[0]["label"]
    assert label[0, :6].tolist() == [0, 11, 80, 170, -1, 79]
    bad = np.full((H, W), UNUSED_IDS[0])
    write_mask(root / "annotations" / f"{names[6]}.png", bad)
    with pytest.raises(UserError, match=r"values \[11\] that are no COCO-Stuff class"):
        ds[0]
    command = DATASETS["cocostuff10k"].split_command("COCOStuff10k_split", 563, 1)
    assert command == (
        "python tools/make_splits.py --dataset cocostuff10k --num-labels 563 --seed 1 "
        "--data-root DATA_DIR"
    )
