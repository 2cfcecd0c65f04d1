"""VOC and Cityscapes datasets on tiny fixtures in the real on-disk layouts."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from dataset.voc import VOC_CLASSES, VOCDataset, voc_palette
from utils.errors import UserError

H, W = 40, 50


def write_jpg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=95)


def write_label(path: Path, arr: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "P":
        pil = pil.convert("P")  # keeps the values as palette indices
        pil.putpalette(voc_palette())
    pil.save(path)


def voc_label(seed: int, num_classes: int = 21) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, num_classes, (H, W)).astype(np.uint8)
    arr[:5, :] = 255  # an ignore band
    return arr


def expected_label(arr: np.ndarray) -> torch.Tensor:
    out = arr.astype(np.int64)
    out[arr == 255] = -1
    return torch.from_numpy(out)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOC"
    for i, name in enumerate(["a", "b", "c"]):
        write_jpg(root / "JPEGImages" / f"{name}.jpg", i)
    write_label(root / "SegmentationClassAug" / "a.png", voc_label(0))
    write_label(root / "SegmentationClassAug" / "b.png", voc_label(1), mode="L")
    write_label(root / "SegmentationClass" / "b.png", voc_label(9))  # Aug wins
    write_label(root / "SegmentationClass" / "c.png", voc_label(2))  # fallback
    return root


# --- VOC -------------------------------------------------------------------------------


def test_voc_valid_items_are_whole_images_with_exact_labels(voc_root):
    ds = VOCDataset(voc_root, ["a", "b", "c"], "valid")
    assert len(ds) == 3
    for i, (name, seed) in enumerate([("a", 0), ("b", 1), ("c", 2)]):
        item = ds[i]
        assert item["name"] == name
        img = item["img"]
        assert img.dtype == torch.uint8 and img.shape == (3, H, W)
        decoded = np.array(Image.open(voc_root / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        assert torch.equal(img, torch.from_numpy(decoded).permute(2, 0, 1))
        assert item["label"].dtype == torch.int64
        assert torch.equal(item["label"], expected_label(voc_label(seed)))
        assert (item["label"][:5] == -1).all()


def test_voc_labeled_and_unlabeled_items(voc_root):
    labeled = VOCDataset(voc_root, ["a", "b"], "labeled", crop_size=(32, 36), scale_size=(0.5, 1.5))
    item = labeled[(0, 11)]
    assert item["img"].shape == (3, 32, 36) and item["img"].dtype == torch.uint8
    assert item["label"].shape == (32, 36) and item["label"].dtype == torch.int64
    values = set(item["label"].unique().tolist())
    assert values <= set(range(21)) | {-1} and values - {-1}
    unlabeled = VOCDataset(voc_root, ["a", "b", "c"], "unlabeled", crop_size=(24, 24))
    u_item = unlabeled[1]
    assert "label" not in u_item and u_item["name"] == "b"
    assert u_item["img"].shape == (3, 24, 24) and u_item["img"].dtype == torch.uint8


def test_voc_same_index_and_seed_give_the_same_item(voc_root):
    ds = VOCDataset(voc_root, ["a", "b"], "labeled", crop_size=(24, 24))
    first, again = ds[(1, 123)], ds[(1, 123)]
    assert torch.equal(first["img"], again["img"]) and torch.equal(first["label"], again["label"])
    others = [ds[(1, s)] for s in range(124, 128)]
    assert any(not torch.equal(first["img"], o["img"]) for o in others)
    u_ds = VOCDataset(voc_root, ["a"], "unlabeled", crop_size=(24, 24))
    assert torch.equal(u_ds[(0, 5)]["img"], u_ds[(0, 5)]["img"])


def test_voc_loader_with_index_seed_pairs(voc_root):
    ds = VOCDataset(voc_root, ["a", "b", "c"], "labeled", crop_size=(16, 16))
    keys = [(2, 1), (0, 2), (1, 3)]
    batch = next(iter(DataLoader(ds, batch_size=3, sampler=keys)))
    assert batch["img"].shape == (3, 3, 16, 16) and batch["label"].shape == (3, 16, 16)
    assert batch["name"] == ["c", "a", "b"]
    assert torch.equal(batch["img"][0], ds[(2, 1)]["img"])


def test_voc_palette_and_class_names():
    palette = voc_palette()
    assert len(palette) == 768

    def colour(i):
        return tuple(palette[3 * i : 3 * i + 3])

    assert colour(0) == (0, 0, 0) and colour(1) == (128, 0, 0) and colour(2) == (0, 128, 0)
    assert colour(3) == (128, 128, 0) and colour(15) == (192, 128, 128)
    assert colour(20) == (0, 64, 128) and colour(255) == (224, 224, 192)
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"


def _error(ds, key=0) -> str:
    with pytest.raises(UserError) as err:
        ds[key]
    message = str(err.value)
    assert "\n" not in message
    return message


def test_voc_bad_data_names_the_file(voc_root):
    root = voc_root
    assert "d.jpg" in _error(VOCDataset(root, ["d"], "unlabeled", crop_size=(8, 8)))
    (root / "JPEGImages" / "bad.jpg").write_bytes(b"not a jpeg at all")
    assert "bad.jpg" in _error(VOCDataset(root, ["bad"], "unlabeled", crop_size=(8, 8)))

    write_jpg(root / "JPEGImages" / "nolabel.jpg", 5)
    assert "nolabel.png" in _error(VOCDataset(root, ["nolabel"], "valid"))

    write_jpg(root / "JPEGImages" / "size.jpg", 6)
    write_label(root / "SegmentationClassAug" / "size.png", voc_label(6)[:, :-1])
    assert "size.png" in _error(VOCDataset(root, ["size"], "valid"))

    arr = voc_label(7)
    arr[10, 10] = 21  # not a class, not ignore
    write_jpg(root / "JPEGImages" / "value.jpg", 7)
    write_label(root / "SegmentationClassAug" / "value.png", arr)
    message = _error(VOCDataset(root, ["value"], "labeled", crop_size=(8, 8)))
    assert "value.png" in message and "21" in message
    # the same values are fine with more classes
    assert VOCDataset(root, ["value"], "valid", num_classes=22)[0]["label"][10, 10] == 21

    write_jpg(root / "JPEGImages" / "rgb.jpg", 8)
    (root / "SegmentationClassAug").mkdir(exist_ok=True)
    Image.new("RGB", (W, H)).save(root / "SegmentationClassAug" / "rgb.png")
    assert "rgb.png" in _error(VOCDataset(root, ["rgb"], "valid"))

    with pytest.raises(UserError):
        VOCDataset(root, [], "valid")
    with pytest.raises(UserError):
        VOCDataset(root, ["a"], "train")


# --- Cityscapes ------------------------------------------------------------------------

# label id -> train id, written out by hand from the Cityscapes label table
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def write_png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def city_files(root: Path, split: str, name: str) -> tuple[Path, Path]:
    city = name.split("_")[0]
    img = root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
    gt = root / "gtFine" / split / city / f"{name}_gtFine"
    return img, gt


@pytest.fixture
def city_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    all_ids = (np.arange(H * W) % 256).reshape(H, W)  # every label id 0..255 occurs
    img, gt = city_files(root, "train", "aachen_000000_000019")
    write_png(img, 0)
    write_label(Path(f"{gt}_labelIds.png"), all_ids, mode="L")
    img, gt = city_files(root, "train", "bochum_000000_000313")
    write_png(img, 1)
    write_label(Path(f"{gt}_labelIds.png"), np.full((H, W), 7), mode="L")
    write_label(Path(f"{gt}_labelTrainIds.png"), voc_label(3, 19), mode="L")
    img, gt = city_files(root, "val", "frankfurt_000000_000294")
    write_png(img, 2)
    write_label(Path(f"{gt}_labelIds.png"), np.full((H, W), 26), mode="L")
    return root


def test_cityscapes_label_ids_map_to_train_ids(city_root):
    ds = CityscapesDataset(city_root, ["aachen/aachen_000000_000019"], "valid", split="train")
    item = ds[0]
    assert item["img"].shape == (3, H, W) and item["img"].dtype == torch.uint8
    assert item["name"] == "aachen/aachen_000000_000019"
    label = item["label"]
    assert label.dtype == torch.int64 and label.shape == (H, W)
    ids = (np.arange(H * W) % 256).reshape(H, W)
    expected = torch.tensor([[TRAIN_ID.get(int(v), -1) for v in row] for row in ids])
    assert torch.equal(label, expected)
    flat = dict(zip(ids.ravel().tolist(), label.ravel().tolist()))
    assert flat[7] == 0 and flat[26] == 13 and flat[33] == 18
    assert flat[0] == -1 and flat[255] == -1 and flat[6] == -1 and flat[34] == -1


def test_cityscapes_prefers_label_train_ids_and_uses_the_split(city_root):
    ds = CityscapesDataset(city_root, ["bochum/bochum_000000_000313"], "valid", split="train")
    assert torch.equal(ds[0]["label"], expected_label(voc_label(3, 19)))
    val = CityscapesDataset(city_root, ["frankfurt/frankfurt_000000_000294"], "valid", split="val")
    assert (val[0]["label"] == 13).all()
    train = CityscapesDataset(
        city_root,
        ["aachen/aachen_000000_000019", "bochum/bochum_000000_000313"],
        "labeled",
        split="train",
        crop_size=(24, 24),
        scale_size=(0.5, 2.0),
    )
    item = train[(1, 4)]
    assert item["img"].shape == (3, 24, 24) and item["label"].shape == (24, 24)
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road"
    assert CITYSCAPES_CLASSES[13] == "car" and CITYSCAPES_CLASSES[18] == "bicycle"


def test_cityscapes_bad_data(city_root):
    img, gt = city_files(city_root, "train", "bochum_000000_000313")
    write_label(Path(f"{gt}_labelTrainIds.png"), np.full((H, W), 19), mode="L")
    ds = CityscapesDataset(city_root, ["bochum/bochum_000000_000313"], "valid", split="train")
    assert "bochum_000000_000313_gtFine_labelTrainIds.png" in _error(ds)
    ds = CityscapesDataset(city_root, ["aachen/aachen_000000_000019"], "valid", split="val")
    assert "aachen_000000_000019_leftImg8bit.png" in _error(ds)
    with pytest.raises(UserError):
        CityscapesDataset(city_root, ["aachen_000000_000019"], "valid", split="train")
    with pytest.raises(UserError):
        CityscapesDataset(city_root, ["aachen/aachen_000000_000019"], "valid", split="test")


def test_label_map_reads_a_coarser_labelling_of_the_same_files(tmp_path: Path):
    """FashionScenes v2 reads v1's label files through FASHION6_MAP: every stored class goes
    to its group, ignore stays ignore, a value outside the stored classes is an error."""
    from demo.fashion_scenes import FASHION6_CLASSES, FASHION6_MAP, FASHION_CLASSES

    root = tmp_path / "fs"
    arr = (np.arange(H * W) % len(FASHION_CLASSES)).reshape(H, W).astype(np.uint8)
    arr[0, :3] = 255
    write_jpg(root / "JPEGImages" / "s.jpg", 0)
    write_label(root / "SegmentationClassAug" / "s.png", arr)
    ds = VOCDataset(root, ["s"], "valid", num_classes=len(FASHION6_CLASSES), label_map=FASHION6_MAP)
    label = ds[0]["label"].numpy()
    expected = np.asarray(FASHION6_MAP)[np.minimum(arr, 10)].astype(np.int64)
    expected[0, :3] = -1
    assert np.array_equal(label, expected)
    assert set(np.unique(label)) == {-1, *range(len(FASHION6_CLASSES))}
    arr[5, 5] = 11  # not a v1 class
    write_label(root / "SegmentationClassAug" / "s.png", arr)
    assert "11" in _error(ds)
