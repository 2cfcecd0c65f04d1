"""The generic dataset of a config (``Dataset.name: folder``) on folders this file writes: the
same masks in each format (index, palette, rgb), JPEG images in nested folders, unlabeled
images without masks, list files; its config keys; splits drawn and imported by
``tools/make_splits.py --config``; ``tools/check_dataset.py`` on each kind of bad mask (one
line, exit 2, nothing written); and a few iterations of the four strategies, then
``evaluate.py`` and ``predict.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dataset.folder import FolderDataset, FolderLayout, LabelDecoder
from dataset.palette import voc_palette
from engine.config import load_config, validate
from engine.data import build_datasets, class_names, palette
from tools import check_dataset, make_splits
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
H, W = 40, 48
CLASSES = ["background", "disc", "bar"]
COLOURS = [[0, 0, 0], [200, 30, 30], [30, 200, 30]]  # rgb masks: one per class
IGNORE_COLOUR = [255, 255, 255]
# training images in nested folders (even ones have masks); validation; unlabeled only
TRAIN = [f"{'street/a' if i % 2 else 'park'}/img{i}" for i in range(10)]
VAL = ["v0", "sub/v1", "sub/v2"]
UNLABELED = ["u0", "deep/er/u1"]


def mask(seed: int) -> np.ndarray:
    """Class ids 0-2 (a disc and a bar on background) and an ignore band (255)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    cy, cx = rng.integers(10, 30), rng.integers(10, 38)
    arr = np.zeros((H, W), np.uint8)
    arr[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1
    arr[rng.integers(0, 30) :][:8, 4:40] = 2
    arr[0] = 255
    return arr


def write_mask(path: Path, arr: np.ndarray, label_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if label_format == "index":
        Image.fromarray(arr, mode="L").save(path)
    elif label_format == "palette":
        pil = Image.fromarray(arr, mode="L").convert("P")
        pil.putpalette(voc_palette())
        pil.save(path)
    else:
        table = np.array(COLOURS + [IGNORE_COLOUR] * (256 - len(COLOURS)), np.uint8)
        Image.fromarray(table[arr]).save(path)


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1000 + seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=90)


def make_folder(root: Path, label_format: str) -> Path:
    """images/{train,val}/<nested>/X.jpg, masks/{train,val}/<nested>/X.png (half of the
    training images have none), unlabeled/<nested>/X.jpg."""
    for i, name in enumerate(TRAIN):
        write_image(root / "images" / "train" / f"{name}.jpg", i)
        if i % 2 == 0 or i < 6:
            write_mask(root / "masks" / "train" / f"{name}.png", mask(i), label_format)
    for i, name in enumerate(VAL):
        write_image(root / "images" / "val" / f"{name}.jpg", 100 + i)
        write_mask(root / "masks" / "val" / f"{name}.png", mask(100 + i), label_format)
    for i, name in enumerate(UNLABELED):
        write_image(root / "unlabeled" / f"{name}.jpg", 200 + i)
    return root


LABELED_POOL = sorted(f"images/train/{n}" for i, n in enumerate(TRAIN) if i % 2 == 0 or i < 6)


def folder_keys(root: Path, label_format: str) -> dict:
    keys = {
        "name": "folder",
        "data_dir": str(root),
        "classes": CLASSES,
        "image_dir": "images/train",
        "label_dir": "masks/train",
        "unlabeled_dir": "unlabeled",
        "val_image_dir": "images/val",
        "val_label_dir": "masks/val",
        "label_format": label_format,
    }
    if label_format == "rgb":
        keys.update(colors=COLOURS, ignore_colors=[IGNORE_COLOUR])
    return keys


def write_config(tmp: Path, root: Path, label_format: str, **dataset) -> Path:
    """The demo config made a tiny folder one (from scratch, 2 iterations)."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["Network"].update(num_class=3, pretrained="", random_init=True, rep_dim=32)
    cfg["Dataset"].update(
        txt_dir=str(tmp / "splits"),
        num_labels=4,
        batch_size=2,
        crop_size=[32, 32],
        num_workers=0,
        **folder_keys(root, label_format),
    )
    cfg["Dataset"].update(dataset)
    cfg["Loss"].update(num_queries=16, num_negatives=32, warm_up=0)
    cfg["Training"].update(total_iter=2, eval_interval=2, save_interval=2, log_interval=1)
    cfg["Training"].update(amp=False, channels_last=False)
    path = tmp / f"{label_format}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One config per mask format, each over its own folder, with a drawn split."""
    out = {}
    for label_format in ("index", "palette", "rgb"):
        tmp = tmp_path_factory.mktemp(label_format)
        config = write_config(tmp, make_folder(tmp / "data", label_format), label_format)
        assert make_splits.main(["--config", str(config), "--num-labels", "4", "--seed", "1"]) == 0
        out[label_format] = config
    return out


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- reading ---------------------------------------------------------------------------


def test_the_three_formats_read_the_same_labels(folders):
    items = {}
    for label_format, config in folders.items():
        cfg = load_config(config, ["Dataset.split=1", "Seed=1"])
        data = build_datasets(cfg)
        assert len(data["labeled"]) == 4
        assert len(data["unlabeled"]) == len(TRAIN) + len(UNLABELED) - 4
        assert data["valid"].ids == [f"images/val/{n}" for n in sorted(VAL)]
        items[label_format] = [data["valid"][k] for k in range(len(VAL))]
    for k, name in enumerate(sorted(VAL)):
        expected = torch.from_numpy(mask(100 + VAL.index(name)).astype(np.int64))
        expected[expected == 255] = -1
        for label_format in folders:
            item = items[label_format][k]
            assert torch.equal(item["label"], expected), (label_format, name)
            assert item["img"].shape == (3, H, W)


def test_ids_are_paths_in_data_dir_less_suffix_and_unlabeled_need_no_mask(folders):
    cfg = load_config(folders["index"])
    layout = FolderLayout(cfg["Dataset"]["data_dir"], cfg["Dataset"])
    fine, train, val = layout.pools()
    assert sorted(fine) == LABELED_POOL
    assert sorted(train) == sorted(
        [f"images/train/{n}" for n in TRAIN] + [f"unlabeled/{n}" for n in UNLABELED]
    )
    assert sorted(val) == sorted(f"images/val/{n}" for n in VAL)
    unlabeled = FolderDataset(
        cfg["Dataset"]["data_dir"], ["unlabeled/deep/er/u1", "images/train/street/a/img9"],
        "unlabeled", (16, 16), (1.0, 1.0), 3, cfg["Dataset"],
    )  # fmt: skip
    assert [unlabeled[k]["img"].shape for k in range(2)] == [(3, 16, 16)] * 2
    assert "label" not in unlabeled[0]
    assert class_names(cfg) == tuple(CLASSES)
    assert palette(cfg) == voc_palette()


def test_list_files_read_as_the_folders(folders, tmp_path):
    """train_list ('image label', or an image alone: unlabeled) and val_list, UniMatch's
    line format: the same ids and labels as the folders."""
    cfg = load_config(folders["index"])
    root = Path(cfg["Dataset"]["data_dir"])
    lines = [
        f"images/train/{n}.jpg masks/train/{n}.png" if f"images/train/{n}" in LABELED_POOL
        else f"images/train/{n}.jpg"
        for n in TRAIN
    ]  # fmt: skip
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text(
        "".join(f"{root}/images/val/{n}.jpg masks/val/{n}.png\n" for n in VAL)  # absolute too
    )
    listed = dict(cfg["Dataset"], image_dir="", label_dir="", val_image_dir="", val_label_dir="")
    listed.update(train_list=str(tmp_path / "train.txt"), val_list=str(tmp_path / "val.txt"))
    pools = zip(FolderLayout(root, listed).pools(), FolderLayout(root, cfg["Dataset"]).pools())
    assert all(sorted(a) == sorted(b) for a, b in pools)
    ids = [f"images/val/{n}" for n in VAL]
    a = FolderDataset(root, ids, "valid", (32, 32), (1.0, 1.0), 3, listed)
    b = FolderDataset(root, ids, "valid", (32, 32), (1.0, 1.0), 3, cfg["Dataset"])
    assert all(torch.equal(a[k]["label"], b[k]["label"]) for k in range(len(ids)))


def test_reduce_zero_label_and_ignore_index():
    stored = np.array([[0, 1, 2, 3, 7]], np.uint8)
    decoder = LabelDecoder("index", 3, ignore_index=7, reduce_zero_label=True)
    assert decoder.decode(stored, Path("m.png")).tolist() == [[255, 0, 1, 2, 255]]
    with pytest.raises(UserError, match=r"m\.png has values \[3\] outside 0\.\.2"):
        LabelDecoder("index", 3).decode(stored[:, :4], Path("m.png"))


# --- the config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, needle",
    [
        (
            {"classes": ["a", "b"]},
            "Network.num_class: got 3, expected 2, the number of Dataset.classes",
        ),
        ({"train_list": "x.txt"}, "Dataset.image_dir"),
        ({"label_dir": ""}, "Dataset.label_dir"),
        ({"val_image_dir": "", "val_label_dir": ""}, "Dataset.val_image_dir"),
        ({"label_format": "rgb"}, "Dataset.colors"),
        ({"colors": COLOURS}, "read with label_format rgb only"),
        ({"label_format": "png"}, "one of index, palette, rgb"),
        ({"ignore_index": 2}, "Dataset.ignore_index"),
        ({"image_dir": "../elsewhere"}, "a folder inside Dataset.data_dir"),
        ({"palette": [1, 2]}, "Dataset.palette"),
    ],
)
def test_bad_folder_keys_are_one_line_naming_the_key(folders, change, needle):
    cfg = yaml.safe_load(folders["index"].read_text())
    cfg["Dataset"].update(change)
    with pytest.raises(UserError) as err:
        validate(cfg, "x.yaml")
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_folder_keys_belong_to_folder_configs_only():
    cfg = yaml.safe_load((REPO / "configs" / "voc.yaml").read_text())
    cfg["Dataset"]["image_dir"] = "x"
    with pytest.raises(UserError, match=r"Dataset\.image_dir is read with Dataset\.name folder"):
        validate(cfg, "voc.yaml")
    assert "image_dir" not in load_config(REPO / "configs" / "voc.yaml")["Dataset"]
    example = load_config(REPO / "configs" / "folder_example.yaml", ["Dataset.image_suffix=.jpg"])
    assert example["Dataset"]["image_suffix"] == ".jpg"  # an override sets a left-out key
    assert example["Dataset"]["palette"] == [] and example["Dataset"]["ignore_index"] == 255


# --- splits ----------------------------------------------------------------------------


def test_make_splits_draws_from_the_config_and_imports_unimatch_lines(folders, tmp_path, capsys):
    split = Path(load_config(folders["index"])["Dataset"]["txt_dir"]) / "4" / "1"
    labeled = split.joinpath("labeled_filename.txt").read_text().split()
    unlabeled = split.joinpath("unlabeled_filename.txt").read_text().split()
    assert len(labeled) == 4 and set(labeled) <= set(LABELED_POOL)
    assert len(unlabeled) == len(TRAIN) + len(UNLABELED) - 4 and not set(labeled) & set(unlabeled)
    lines = tmp_path / "labeled.txt"
    lines.write_text(
        "images/train/park/img0.jpg masks/train/park/img0.png\nimages/train/park/img2.jpg x\n"
    )
    out = tmp_path / "out"
    args = ["--config", str(folders["index"]), "--out", str(out)]
    assert make_splits.main([*args, "--import-labeled", str(lines), "--name", "unimatch"]) == 0
    assert "Dataset.num_labels=2 Dataset.split=unimatch" in capsys.readouterr().out
    assert (out / "2" / "unimatch" / "labeled_filename.txt").read_text().split() == [
        "images/train/park/img0",
        "images/train/park/img2",
    ]
    lines.write_text("images/train/nope.jpg masks/train/nope.png\n")
    assert make_splits.main([*args, "--import-labeled", str(lines), "--name", "other"]) == 2
    assert "images/train/nope is not in" in capsys.readouterr().err


def test_a_missing_split_says_how_to_draw_it(folders):
    cfg = load_config(folders["index"], ["Dataset.num_labels=3"])
    with pytest.raises(
        UserError, match="python tools/make_splits.py --config CONFIG --num-labels 3"
    ):
        build_datasets(cfg)


# --- tools/check_dataset.py: one line, exit 2, nothing written --------------------------


def test_check_dataset_reports_a_clean_dataset(folders, capsys):
    assert check_dataset.main([str(folders["rgb"]), "Seed=1"]) == 0
    out = capsys.readouterr().out
    assert "labeled: 4 images" in out and "unlabeled: 8 images" in out and "no errors" in out
    assert "pixels: background" in out and "ignored" in out


@pytest.fixture
def broken(tmp_path) -> tuple[Path, Path]:
    """A folder (index masks) and its config, with no split drawn: every image is checked."""
    root = make_folder(tmp_path / "data", "index")
    return root, write_config(tmp_path, root, "index")


def check_fails(config: Path, capsys, *overrides: str) -> str:
    before = files_under(config.parent)
    assert check_dataset.main([str(config), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert files_under(config.parent) == before  # nothing written
    return err


def test_check_dataset_value_outside_the_classes(broken, capsys):
    root, config = broken
    arr = mask(2)
    arr[5:7, 5] = 3
    write_mask(root / "masks" / "train" / "park" / "img2.png", arr, "index")
    err = check_fails(config, capsys)
    assert "masks/train/park/img2.png has values [3] outside 0..2 (and 255 for ignore)" in err


def test_check_dataset_unknown_rgb_colour(tmp_path, capsys):
    root = make_folder(tmp_path / "data", "rgb")
    config = write_config(tmp_path, root, "rgb")
    path = root / "masks" / "val" / "v0.png"
    rgb = np.array(Image.open(path))
    rgb[10:13, 10:13] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    err = check_fails(config, capsys)
    assert f"label {path}: colour (1, 2, 3) on 9 pixels is not in Dataset.colors" in err


def test_check_dataset_foreground_stored_as_ignore(broken, capsys):
    root, config = broken
    for path in (root / "masks").rglob("*.png"):
        arr = np.array(Image.open(path))
        write_mask(path, np.where(arr == 0, 0, 255).astype(np.uint8), "index")
    err = check_fails(config, capsys)
    assert "your foreground may be stored as 255, which is the ignore value" in err


def test_check_dataset_missing_mask(broken, capsys):
    root, config = broken
    (root / "masks" / "val" / "sub" / "v1.png").unlink()
    err = check_fails(config, capsys)
    assert "valid: images/val/sub/v1: no mask" in err and "masks/val/sub/v1.png" in err


def test_check_dataset_size_mismatch(broken, capsys):
    root, config = broken
    write_mask(root / "masks" / "train" / "street" / "a" / "img1.png", mask(1)[:, :-2], "index")
    err = check_fails(config, capsys)
    assert "masks/train/street/a/img1.png is 46x40 (WxH), its image 48x40" in err


def test_training_refuses_bad_masks_of_every_format_naming_the_file(tmp_path):
    for label_format, bad in (("index", 3), ("palette", 7), ("rgb", None)):
        root = tmp_path / label_format
        write_image(root / "i" / "a.jpg", 0)
        arr = mask(0)
        if bad is not None:
            arr[3, 3] = bad
        write_mask(root / "m" / "a.png", arr, label_format)
        if bad is None:  # a colour outside the table
            Image.fromarray(np.full((H, W, 3), 9, np.uint8)).save(root / "m" / "a.png")
        data = {**folder_keys(root, label_format), "image_dir": "i", "label_dir": "m"}
        data.update(image_suffix="", label_suffix=".png", ignore_index=255)
        data.update(reduce_zero_label=False, colors=data.get("colors", []))
        data.setdefault("ignore_colors", [])
        ds = FolderDataset(root, ["i/a"], "labeled", (16, 16), (1.0, 1.0), 3, data)
        with pytest.raises(UserError) as err:
            ds[0]
        message = str(err.value)
        assert str(root / "m" / "a.png") in message and "\n" not in message, message
        assert (f"[{bad}] outside 0..2" if bad else "colour (9, 9, 9)") in message


# --- training, evaluation, prediction --------------------------------------------------


def python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


@pytest.mark.slow
def test_four_strategies_train_then_evaluate_and_predict(folders, tmp_path):
    """Each format trains (two iterations), each strategy once; the rgb run is evaluated and
    predicts masks in its own colours."""
    runs = {
        "supervised": "index",
        "ori_pseudo": "palette",
        "mix_label": "index",
        "cross_label": "rgb",
    }
    for strategy, label_format in runs.items():
        work = tmp_path / strategy
        proc = python(
            f"{strategy}.py", "--config", str(folders[label_format]), "--work-dir", str(work),
            "Seed=1",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((work / "summary.json").read_text())
        assert summary["iterations"] == 2 and list(summary["per_class_iou"]) == CLASSES
    checkpoint = tmp_path / "cross_label" / "latest.pth"
    proc = python("evaluate.py", "--checkpoint", str(checkpoint))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bar" in proc.stdout and "mIoU" in proc.stdout
    out = tmp_path / "predicted"
    images = Path(load_config(folders["rgb"])["Dataset"]["data_dir"]) / "images" / "val" / "sub"
    proc = python(
        "predict.py", "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = sorted(p.name for p in out.glob("*.png"))
    assert masks == ["v1.png", "v2.png"]
    colours = Image.open(out / "v1.png").getpalette()[:9]
    assert colours == [c for rgb in COLOURS for c in rgb]  # the masks' own colours
