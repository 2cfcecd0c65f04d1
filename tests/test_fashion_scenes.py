"""FashionScenes: compositing rules by hand, scene invariants, sources, folder life cycle, splits."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.splits import draw_split
from demo import fashion_scenes as fs
from tools.build_demo_assets import FMNIST_DIR, read_idx
from tools.demo_contact_sheet import colour_label, contact_sheet

REPO = Path(__file__).resolve().parents[1]
SMALL = {"num_train": 40, "num_val": 30}


@pytest.fixture(scope="module")
def asset() -> dict[str, np.ndarray]:
    return fs.load_asset()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fs.ensure_fashion_scenes(tmp_path_factory.mktemp("a") / "FashionScenes", **SMALL)


def read_label(root: Path, scene_id: str) -> np.ndarray:
    return np.asarray(Image.open(root / "SegmentationClassAug" / f"{scene_id}.png"))


def tree_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- rules by hand


def test_voc_palette_known_colours() -> None:
    pal = np.asarray(fs.voc_palette()).reshape(256, 3)
    assert pal.shape == (256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]  # VOC "person"
    assert pal[255].tolist() == [224, 224, 192]


def test_item_mask_threshold_is_strict() -> None:
    intensity = np.array([[0.0, 0.2, 0.25, 0.26, 1.0]], np.float32)
    assert fs.item_mask(intensity).tolist() == [[False, False, False, True, True]]


def test_resize_item_normalises_to_item_max() -> None:
    item = np.zeros((28, 28), np.uint8)
    item[4:24, 4:24] = 100  # dim item: its own max becomes 1
    out = fs.resize_item(item, 56, 56)
    assert out.shape == (56, 56) and out.dtype == np.float32
    assert out[28, 28] == pytest.approx(1.0)
    assert out[0, 0] == 0.0


def test_boundary_band_is_one_pixel_each_side_of_the_edge() -> None:
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = True  # the square ...
    expected[1, 2:7] = expected[7, 2:7] = True  # ... grown by one pixel (4-neighbourhood:
    expected[2:7, 1] = expected[2:7, 7] = True  # no corners) ...
    expected[3:6, 3:6] = False  # ... minus its erosion
    np.testing.assert_array_equal(fs.boundary_band(mask), expected)


def test_composite_by_hand() -> None:
    under = np.tile(np.array([100.0, 50.0, 0.0], np.float32), (1, 3, 1))
    intensity = np.array([[1.0, 0.4, 0.2]], np.float32)
    colour = np.array([200.0, 100.0, 50.0], np.float32)
    out = fs.composite(under, intensity, fs.item_mask(intensity), colour)
    # opaque tint; alpha 0.8 over fg 0.4 * colour = (80, 40, 20); off the mask: untouched
    np.testing.assert_allclose(out[0, 0], [200, 100, 50], atol=1e-4)
    np.testing.assert_allclose(
        out[0, 1], [0.8 * 80 + 0.2 * 100, 0.8 * 40 + 0.2 * 50, 0.8 * 20], atol=1e-4
    )
    np.testing.assert_array_equal(out[0, 2], [100, 50, 0])


def test_paste_item_later_items_overwrite_earlier_ones_and_their_band() -> None:
    canvas = np.zeros((8, 8, 3), np.float32)
    label = np.zeros((8, 8), np.uint8)
    square = np.pad(np.ones((4, 4), np.float32), 1)  # 6x6 patch, 4x4 solid item
    colour = np.array([10.0, 20.0, 30.0], np.float32)
    fs.paste_item(canvas, label, square, colour, 3, 0, 0)
    fs.paste_item(canvas, label, square, colour, 7, 2, 2)
    x, a, b, o = 255, 3, 7, 0
    expected = np.array(
        [
            [o, x, x, x, x, o, o, o],
            [x, x, x, x, x, x, o, o],
            [x, x, a, x, x, x, x, o],
            [x, x, x, x, x, x, x, x],
            [x, x, x, x, b, b, x, x],
            [o, x, x, x, b, b, x, x],
            [o, o, x, x, x, x, x, x],
            [o, o, o, x, x, x, x, o],
        ]
    )
    np.testing.assert_array_equal(label, expected)
    # the image shows the items exactly on their masks, untouched elsewhere
    painted = np.zeros((8, 8), bool)
    painted[1:5, 1:5] = painted[3:7, 3:7] = True
    np.testing.assert_array_equal(canvas.any(axis=2), painted)


def test_stands_out_needs_contrast_against_canvas_and_photo() -> None:
    mask = np.ones((1, 10), bool)
    ref = np.zeros((1, 10, 3), np.float32)
    strong = ref + np.array([60.0, 0.0, 0.0], np.float32)
    assert fs._stands_out(strong, [ref, ref], mask)
    weak = ref + 30.0  # every pixel differs, but the mean is below MIN_MEAN_CONTRAST
    assert not fs._stands_out(weak, [ref, ref], mask)
    patchy = strong.copy()
    patchy[0, :2] = 0.0  # 80 % of the pixels stand out, mean 48: below the 90 % needed
    assert not fs._stands_out(patchy, [ref, ref], mask)
    assert not fs._stands_out(strong, [ref, strong], mask)  # invisible on the photo


def test_occludes_hidden_fraction_by_hand() -> None:
    owner = np.full((2, 10), -1)
    owner[0] = 0  # item 0: 10 visible pixels
    owner[1, :4] = 1  # item 1: 4 visible pixels
    cover = np.zeros((2, 10), bool)
    cover[0, :5] = True  # hides exactly half of item 0: allowed
    assert not fs._occludes(owner, cover, 2)
    cover[0, 5] = True  # 6 of 10
    assert fs._occludes(owner, cover, 2)
    cover = np.zeros((2, 10), bool)
    cover[1, :3] = True  # 3 of 4 of item 1
    assert fs._occludes(owner, cover, 2)
    assert not fs._occludes(np.full((2, 10), -1), cover, 0)


# ---------------------------------------------------------------------------- whole scenes


def test_generate_scene_labels_match_the_image(asset: dict[str, np.ndarray]) -> None:
    diffs, fractions = [], []
    for index in range(30):
        rng = np.random.default_rng(index)
        background = fs.crop_background(rng, asset["train_backgrounds"], fs.SCENE_SIZE)
        img, label = fs.generate_scene(
            rng, asset["train_items"], asset["train_classes"], background
        )
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert label.shape == (96, 96) and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= set(range(11)) | {255}
        assert ((label >= 1) & (label <= 10)).any(), "every scene holds an item"
        np.testing.assert_array_equal(img[label == 0], background[label == 0])
        item = (label >= 1) & (label <= 10)
        diff = np.abs(img.astype(int) - background.astype(int)).max(axis=2)
        diffs.append(diff[item])
        fractions.append((label == 255).mean())
    diff = np.concatenate(diffs)
    assert (diff >= 16).mean() > 0.9  # item pixels visibly differ from the photo
    assert diff.mean() > 40
    assert np.mean(fractions) < 0.12 and max(fractions) < 0.25  # the ignore band is thin


def test_items_without_contrast_are_redrawn(
    asset: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other tint equals the grey background: those items must be rejected."""
    grey = np.array([128.0, 128.0, 128.0], np.float32)
    red = np.array([255.0, 0.0, 0.0], np.float32)
    calls = []

    def alternating(rng: np.random.Generator) -> np.ndarray:
        calls.append(1)
        return grey if len(calls) % 2 else red

    monkeypatch.setattr(fs, "random_colour", alternating)
    background = np.full((96, 96, 3), 128, np.uint8)
    for index in range(10):
        rng = np.random.default_rng(index)
        img, label = fs.generate_scene(
            rng, asset["train_items"], asset["train_classes"], background
        )
        item = (label >= 1) & (label <= 10)
        diff = np.abs(img.astype(int) - 128).max(axis=2)[item]
        assert (diff >= 20).mean() > 0.95
    assert len(calls) > 20


def test_generate_scene_is_deterministic(asset: dict[str, np.ndarray]) -> None:
    def one() -> tuple[np.ndarray, np.ndarray]:
        rng = fs.scene_rng("val", 5)
        background = fs.crop_background(rng, asset["val_backgrounds"], fs.SCENE_SIZE)
        return fs.generate_scene(rng, asset["val_items"], asset["val_classes"], background)

    (img1, label1), (img2, label2) = one(), one()
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(label1, label2)


# ---------------------------------------------------------------------------- the asset file


def test_asset_is_small_and_sources_are_disjoint(asset: dict[str, np.ndarray]) -> None:
    assert fs.DEFAULT_ASSET.stat().st_size < 5 * 1024 * 1024
    meta = json.loads(str(asset["meta"]))
    photos = meta["photos"]
    train_photos = {p["name"] for p in photos if p["split"] == "train"}
    val_photos = {p["name"] for p in photos if p["split"] == "val"}
    assert train_photos and val_photos and not train_photos & val_photos
    for photo in photos:
        assert "CC0" in photo["licence"] or "public domain" in photo["licence"]
    names = meta["photo_names"]
    for split, allowed in (("train", train_photos), ("val", val_photos)):
        used = {names[k] for k in asset[f"{split}_background_source"].tolist()}
        assert used == allowed
        assert len(asset[f"{split}_backgrounds"]) == len(asset[f"{split}_background_source"])
        assert set(asset[f"{split}_classes"].tolist()) == set(range(1, 11))
    assert "MIT" in meta["items"]["licence"]


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_asset_items_come_from_the_right_fashion_mnist_file(asset: dict[str, np.ndarray]) -> None:
    for split, prefix in (("train", "train"), ("val", "t10k")):
        images = read_idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        index = asset[f"{split}_item_source_index"]
        assert len(np.unique(index)) == len(index)
        np.testing.assert_array_equal(asset[f"{split}_items"], images[index])
        np.testing.assert_array_equal(asset[f"{split}_classes"], labels[index] + 1)


def test_each_split_draws_only_from_its_own_items_and_photos(tmp_path: Path) -> None:
    """A fake asset whose train and val parts are recognisable: class 3 on red, class 8 on blue."""
    item = np.zeros((28, 28), np.uint8)
    item[3:25, 5:23] = 255
    fake = tmp_path / "fake.npz"
    np.savez_compressed(
        fake,
        train_items=np.stack([item] * 4),
        train_classes=np.full(4, 3, np.uint8),
        train_backgrounds=np.full((2, 120, 120, 3), (200, 30, 30), np.uint8),
        val_items=np.stack([item] * 4),
        val_classes=np.full(4, 8, np.uint8),
        val_backgrounds=np.full((2, 120, 120, 3), (30, 30, 200), np.uint8),
        meta=np.asarray("{}"),
    )
    root = fs.ensure_fashion_scenes(tmp_path / "scenes", asset=fake, num_train=6, num_val=4)
    for split, cls, colour in (("train", 3, (200, 30, 30)), ("val", 8, (30, 30, 200))):
        for scene_id in fs.scene_ids(split, 6 if split == "train" else 4):
            label = read_label(root, scene_id)
            assert set(np.unique(label).tolist()) <= {0, cls, 255}
            assert (label == cls).any()
            img = np.asarray(Image.open(root / "JPEGImages" / f"{scene_id}.jpg"))
            far = ~fs._shift_any(fs._shift_any(label != 0))  # 2 px away from items (JPEG)
            assert np.abs(img[far].astype(int) - colour).max(axis=1).mean() < 6


# ---------------------------------------------------------------------------- the folder


def test_folder_layout_and_classes(small_root: Path) -> None:
    seg = small_root / "ImageSets" / "Segmentation"
    for split in ("train", "val"):
        ids = (seg / f"{split}.txt").read_text().split()
        assert ids == fs.scene_ids(split, SMALL[f"num_{split}"])
        present = set()
        for scene_id in ids:
            img = Image.open(small_root / "JPEGImages" / f"{scene_id}.jpg")
            assert img.size == (96, 96) and img.mode == "RGB"
            png = Image.open(small_root / "SegmentationClassAug" / f"{scene_id}.png")
            assert png.mode == "P" and png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
            label = np.asarray(png)
            assert ((label >= 1) & (label <= 10)).any()
            present |= set(np.unique(label).tolist())
        assert present == set(range(11)) | {255}


def test_generation_is_deterministic_and_prefix_stable(small_root: Path, tmp_path: Path) -> None:
    other = fs.ensure_fashion_scenes(tmp_path / "FashionScenes", num_train=10, num_val=5)
    for name in tree_files(other):
        if name.endswith((".jpg", ".png")):
            assert filecmp.cmp(small_root / name, other / name, shallow=False), name


def test_second_call_reuses_and_partial_folder_is_regenerated(
    small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a complete folder")

    monkeypatch.setattr(fs, "generate_split", must_not_run)
    done = small_root / ".complete"
    stamps = (
        done.stat().st_mtime_ns,
        (small_root / "JPEGImages" / "val_00003.jpg").stat().st_mtime_ns,
    )
    assert fs.ensure_fashion_scenes(small_root, **SMALL) == small_root
    assert stamps == (
        done.stat().st_mtime_ns,
        (small_root / "JPEGImages" / "val_00003.jpg").stat().st_mtime_ns,
    )

    monkeypatch.undo()
    partial = tmp_path / "FashionScenes"
    (partial / "JPEGImages").mkdir(parents=True)
    (partial / "JPEGImages" / "train_00000.jpg").write_bytes(b"truncated")
    fs.ensure_fashion_scenes(partial, **SMALL)
    assert tree_files(partial) == tree_files(small_root)
    assert filecmp.cmp(
        partial / "JPEGImages" / "train_00000.jpg",
        small_root / "JPEGImages" / "train_00000.jpg",
        shallow=False,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["FashionScenes"]  # no leftovers


def test_losing_the_rename_race_keeps_the_winner(small_root: Path, tmp_path: Path) -> None:
    marker = (small_root / ".complete").read_text()
    loser = tmp_path / "loser"
    loser.mkdir()
    (loser / "x").write_text("mine")
    before = (small_root / ".complete").stat().st_mtime_ns
    fs._move_into_place(loser, small_root, marker)
    assert (small_root / ".complete").stat().st_mtime_ns == before
    assert not (small_root / "x").exists()


def test_two_processes_started_together(tmp_path: Path) -> None:
    root = tmp_path / "FashionScenes"
    code = f"from demo.fashion_scenes import ensure_fashion_scenes as e; e({str(root)!r}, num_train=8, num_val=4)"
    env = {**os.environ, "RANK": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert (root / ".complete").is_file()
    assert len(list((root / "JPEGImages").iterdir())) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["FashionScenes"]


# ---------------------------------------------------------------------------- splits, sheet


def test_shipped_splits_are_reproduced_byte_for_byte(tmp_path: Path) -> None:
    assert fs.main(["--write-splits", "--txt-dir", str(tmp_path)]) == 0
    shipped = REPO / "FashionScenes_split"
    assert tree_files(tmp_path) == tree_files(shipped)
    assert len(tree_files(shipped)) == 3 * len(fs.SPLIT_LABELS) * len(fs.SPLIT_SEEDS)
    for name in tree_files(shipped):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    for num_labels in (125, 250):
        split = {
            k: (shipped / str(num_labels) / "3407" / f"{k}_filename.txt").read_text().split()
            for k in ("labeled", "unlabeled", "valid")
        }
        assert len(split["labeled"]) == num_labels
        assert sorted(split["labeled"] + split["unlabeled"]) == fs.scene_ids("train", 2000)
        assert split["valid"] == fs.scene_ids("val", 300)


def test_write_other_label_counts_and_seeds(tmp_path: Path) -> None:
    args = ["--write-splits", "--txt-dir", str(tmp_path), "--num-labels", "1000", "--seeds", "5"]
    assert fs.main(args) == 0
    assert tree_files(tmp_path) == [
        f"1000/5/{k}_filename.txt" for k in ("labeled", "unlabeled", "valid")
    ]
    labeled = (tmp_path / "1000" / "5" / "labeled_filename.txt").read_text().split()
    unlabeled = (tmp_path / "1000" / "5" / "unlabeled_filename.txt").read_text().split()
    assert labeled == draw_split(fs.scene_ids("train", 2000), 1000, 5)[0]
    assert sorted(labeled + unlabeled) == fs.scene_ids("train", 2000)
    # a count above the pool is one line naming the value, exit 2
    assert fs.main(["--write-splits", "--txt-dir", str(tmp_path), "--num-labels", "2001"]) == 2


def test_contact_sheet(small_root: Path) -> None:
    coloured = colour_label(np.array([[0, 1, 255]], np.uint8))
    assert coloured.tolist() == [[[0, 0, 0], [128, 0, 0], [255, 255, 255]]]
    sheet = contact_sheet(small_root, fs.scene_ids("val", 4), columns=2)
    assert sheet.width >= 4 * 96 and sheet.height >= 2 * 96
