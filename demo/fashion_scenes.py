"""FashionScenes generator: the embedded demo data, written in the VOC layout on first use from a
small asset file (``demo/assets/fashion_scenes.npz``). It is read like VOC (``dataset.voc``).

Each 96x96 scene is a crop of a real photo with 2-5 real Fashion-MNIST items pasted on it,
resized (24-64 px) and tinted. Labels are honest per-pixel masks: 11 classes
(``FASHION_CLASSES``, 0 = background), 255 = ignore on a thin band at each item's edge.

Rules (``generate_scene``):
- An item's grey values are normalised to its maximum and resized bilinearly: intensity
  ``a`` in [0, 1]. Its mask is ``a > MASK_THRESHOLD`` (0.25).
- Tint and compositing: foreground ``a * colour`` (a random colour), opacity
  ``min(1, 2 a)`` on the mask and 0 off it, so every labelled pixel is at least half item
  and every pixel labelled background is the photo, untouched.
- Label: the item's class on the mask, 255 on the band ``dilate(mask) & ~erode(mask)``
  (4-neighbourhood, 1 px each side of the edge). Later items overwrite earlier ones,
  their ignore band included.
- Rejected and redrawn (size, position, colour): a placement whose masked pixels do not
  stand out from what lies under them (``_stands_out``), or one that hides more than
  ``MAX_OCCLUSION`` of an item already placed.

Sources. Items: Fashion-MNIST (Zalando SE, MIT licence); train scenes use only items of
its train file, validation scenes only items of its t10k file. Backgrounds: crops of
scikit-image's bundled photos declared public domain or CC0 in their docstrings; train and
validation use disjoint photos:
- train: astronaut (public domain, NASA), coffee (CC0, Rachel Michetti), rocket (public
  domain, SpaceX), hubble_deep_field (public domain, NASA), brick (CC0, CC0Textures),
  grass (CC0, DeviantArt linolafett), camera (CC0, Lav Varshney);
- val: chelsea (CC0, Stefan van der Walt), retina (CC0 1.0, Mikael Haggstrom), gravel
  (CC0, CC0Textures), clock (public domain, Stefan van der Walt).
The asset file's ``meta`` entry repeats these with their sources; ``tools/build_demo_assets.py``
rebuilds it.

On disk (VOC layout): ``JPEGImages/<id>.jpg`` (quality 95, no chroma subsampling),
``SegmentationClassAug/<id>.png`` (palette PNG, VOC palette), ``ImageSets/Segmentation/
{train,val}.txt``; ids ``train_00000``..., ``val_00000``.... Scene ``i`` of a split depends
only on ``(GENERATOR_SEED, split, i)``, so a smaller set is a prefix of the full one.

CLI: ``python -m demo.fashion_scenes [--root DIR] [--write-splits [--txt-dir DIR]]``.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dataset.palette import voc_palette
from dataset.splits import draw_split, write_split
from utils.command_line import ArgumentParser
from utils.errors import UserError
from utils.labels import IGNORE_VALUE

FASHION_CLASSES = (
    "background",
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FASHION_NUM_CLASSES = len(FASHION_CLASSES)  # 11
# FashionScenes v2 (the demo's default): the same scenes, labelled with 6 classes — the four
# tops (t-shirt/top, pullover, coat, shirt) and the three shoes (sandal, sneaker, ankle boot)
# merged, the groups Fashion-MNIST's own classifiers confuse. FASHION6_MAP[v1 class] = v2 class.
FASHION6_CLASSES = ("background", "top", "trouser", "dress", "footwear", "bag")
FASHION6_MAP = (0, 1, 2, 1, 3, 1, 4, 1, 4, 5, 4)

GENERATOR_VERSION = "fashion_scenes-v1"
GENERATOR_SEED = 7781
SCENE_SIZE = 96
NUM_TRAIN = 2000
NUM_VAL = 300
ITEMS_PER_SCENE = (2, 5)
ITEM_SIZE = (24, 64)
ASPECT_JITTER = 0.15
MASK_THRESHOLD = 0.25
MIN_MEAN_CONTRAST = 48.0  # mean max-channel difference over the item's pixels, 0-255 scale
MIN_PIXEL_CONTRAST = 20.0  # a pixel "stands out" above this difference
MIN_STANDOUT_FRACTION = 0.9
MAX_OCCLUSION = 0.5
ATTEMPTS = 30
JPEG_QUALITY = 95

SPLIT_LABELS = (125, 250)  # 1/16 and 1/8 of NUM_TRAIN
SPLIT_SEEDS = (3407, 1, 2)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ASSET = REPO_ROOT / "demo" / "assets" / "fashion_scenes.npz"
DEFAULT_TXT_DIR = REPO_ROOT / "FashionScenes_split"
SPLITS = ("train", "val")
ASSET_KEYS = (
    "train_items",
    "train_classes",
    "train_backgrounds",
    "val_items",
    "val_classes",
    "val_backgrounds",
    "meta",
)


# ---------------------------------------------------------------------------- one item


def resize_item(item: np.ndarray, height: int, width: int) -> np.ndarray:
    """Item grey values / their max, resized bilinearly to ``height x width`` (float32)."""
    peak = float(item.max())
    scaled = item.astype(np.float32) / max(peak, 1.0)
    resized = Image.fromarray(scaled).resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def item_mask(intensity: np.ndarray) -> np.ndarray:
    """Pixels that belong to the item: intensity clearly above its background."""
    return intensity > MASK_THRESHOLD


def _shift_any(mask: np.ndarray) -> np.ndarray:
    """Mask OR its 4 neighbours (one step of 4-neighbourhood dilation; outside is False)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """``dilate(mask) & ~erode(mask)`` with the 4-neighbourhood: 1 px either side of the edge."""
    dilated = _shift_any(mask)
    eroded = ~_shift_any(~mask)
    return dilated & ~eroded


def composite(
    under: np.ndarray, intensity: np.ndarray, mask: np.ndarray, colour: np.ndarray
) -> np.ndarray:
    """Tinted item ``intensity * colour`` over ``under`` (H x W x 3, 0-255 float).

    Opacity ``min(1, 2 * intensity)`` on the mask, 0 off it.
    """
    alpha = (np.minimum(1.0, 2.0 * intensity) * mask)[:, :, None]
    return alpha * (intensity[:, :, None] * colour) + (1.0 - alpha) * under


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random tint (RGB, 0-255 float32): any hue, saturation 0.3-1, value 0.6-1."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.6, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(hue, sat, val), np.float32) * 255.0


def _stands_out(painted: np.ndarray, refs: list[np.ndarray], mask: np.ndarray) -> bool:
    """Whether the item's pixels differ enough from every reference (canvas, photo)."""
    diff = np.min([np.abs(painted - ref).max(axis=2) for ref in refs], axis=0)[mask]
    if diff.size == 0:
        return False
    return bool(
        diff.mean() >= MIN_MEAN_CONTRAST
        and (diff >= MIN_PIXEL_CONTRAST).mean() >= MIN_STANDOUT_FRACTION
    )


def _occludes(owner: np.ndarray, cover: np.ndarray, num_placed: int) -> bool:
    """Whether ``cover`` (a full-scene mask) hides > MAX_OCCLUSION of any placed item."""
    if num_placed == 0:
        return False
    visible = np.bincount(owner[owner >= 0], minlength=num_placed)
    hidden = np.bincount(owner[cover & (owner >= 0)], minlength=num_placed)
    return bool((hidden > MAX_OCCLUSION * visible).any())


def paste_item(
    canvas: np.ndarray,
    label: np.ndarray,
    intensity: np.ndarray,
    colour: np.ndarray,
    cls: int,
    top: int,
    left: int,
) -> None:
    """Paint one item into ``canvas`` (H x W x 3 float) and ``label`` (H x W uint8), in place."""
    h, w = intensity.shape
    window = (slice(top, top + h), slice(left, left + w))
    mask = item_mask(intensity)
    canvas[window] = composite(canvas[window], intensity, mask, colour)
    band = boundary_band(mask)
    label[window][mask] = cls
    label[window][band] = IGNORE_VALUE


# ---------------------------------------------------------------------------- one scene


def _draw_placement(
    rng: np.random.Generator, item: np.ndarray, size: int
) -> tuple[np.ndarray, int, int, np.ndarray]:
    """Random size (with aspect jitter), position and colour for one item.

    The intensity gets a 1 px zero margin so that its boundary band is never clipped.
    """
    height = int(rng.integers(ITEM_SIZE[0], ITEM_SIZE[1] + 1))
    aspect = rng.uniform(1.0 - ASPECT_JITTER, 1.0 + ASPECT_JITTER)
    width = int(np.clip(round(height * aspect), ITEM_SIZE[0], ITEM_SIZE[1]))
    intensity = np.pad(resize_item(item, height, width), 1)
    top = int(rng.integers(0, size - height - 1))
    left = int(rng.integers(0, size - width - 1))
    return intensity, top, left, random_colour(rng)


def _place_one(
    rng: np.random.Generator,
    item: np.ndarray,
    cls: int,
    canvas: np.ndarray,
    label: np.ndarray,
    owner: np.ndarray,
    background: np.ndarray,
    num_placed: int,
) -> bool:
    """Try up to ATTEMPTS placements of one item; paint the first acceptable one."""
    size = canvas.shape[0]
    for _ in range(ATTEMPTS):
        intensity, top, left, colour = _draw_placement(rng, item, size)
        h, w = intensity.shape
        window = (slice(top, top + h), slice(left, left + w))
        mask = item_mask(intensity)
        cover = np.zeros(owner.shape, bool)
        cover[window] = _shift_any(mask)
        if _occludes(owner, cover, num_placed):
            continue
        painted = composite(canvas[window], intensity, mask, colour)
        if not _stands_out(painted, [canvas[window], background[window]], mask):
            continue
        paste_item(canvas, label, intensity, colour, cls, top, left)
        owner[cover] = -1
        owner[window][mask & ~boundary_band(mask)] = num_placed
        return True
    return False


def generate_scene(
    rng: np.random.Generator, items: np.ndarray, classes: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Compose one scene on ``background`` (S x S x 3 uint8) from the item pool.

    ``items``: N x 28 x 28 uint8, ``classes``: N class ids in 1..10. Returns the image
    (S x S x 3 uint8) and its label (S x S uint8: 0 background, 1..10, 255 ignore).
    Every scene holds at least one item.
    """
    canvas = background.astype(np.float32)
    label = np.zeros(background.shape[:2], np.uint8)
    owner = np.full(background.shape[:2], -1, np.int32)  # index of the placed item per pixel
    num_wanted = int(rng.integers(ITEMS_PER_SCENE[0], ITEMS_PER_SCENE[1] + 1))
    num_placed = 0
    for _ in range(4 * ITEMS_PER_SCENE[1]):
        if num_placed == num_wanted:
            break
        index = int(rng.integers(len(items)))
        if _place_one(
            rng, items[index], int(classes[index]), canvas, label, owner, background, num_placed
        ):
            num_placed += 1
    if num_placed == 0:
        raise RuntimeError("could not place any item on this background")
    return np.rint(canvas).clip(0, 255).astype(np.uint8), label


def crop_background(rng: np.random.Generator, backgrounds: np.ndarray, size: int) -> np.ndarray:
    """A random ``size x size`` window of a random background crop, flipped with p = 0.5."""
    crop = backgrounds[int(rng.integers(len(backgrounds)))]
    top = int(rng.integers(0, crop.shape[0] - size + 1))
    left = int(rng.integers(0, crop.shape[1] - size + 1))
    window = crop[top : top + size, left : left + size]
    return np.ascontiguousarray(window[:, ::-1] if rng.uniform() < 0.5 else window)


def scene_rng(split: str, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``split``: independent of the number of scenes."""
    return np.random.default_rng([GENERATOR_SEED, SPLITS.index(split), index])


def scene_ids(split: str, num: int) -> list[str]:
    """``train_00000``, ``train_00001``, ... (or ``val_...``)."""
    return [f"{split}_{i:05d}" for i in range(num)]


# ---------------------------------------------------------------------------- asset, folder


def load_asset(asset: str | Path | None = None) -> dict[str, np.ndarray]:
    """The asset arrays; a missing file or key is a ``UserError`` naming it."""
    path = Path(asset) if asset is not None else DEFAULT_ASSET
    if not path.is_file():
        raise UserError(
            f"FashionScenes asset not found: {path} (rebuild: python -m tools.build_demo_assets)"
        )
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ASSET_KEYS if k not in data.files]
        if missing:
            raise UserError(f"FashionScenes asset {path} lacks the arrays {missing}")
        return {k: data[k] for k in data.files}


def asset_meta(asset: str | Path | None = None) -> dict:
    """The asset's metadata (sources, licences, photo splits)."""
    return json.loads(str(load_asset(asset)["meta"]))


def generate_split(
    arrays: dict[str, np.ndarray], split: str, num: int, out_dir: Path, progress: bool = False
) -> list[str]:
    """Write ``num`` scenes of ``split`` under ``out_dir`` (VOC layout); return their ids."""
    items, classes = arrays[f"{split}_items"], arrays[f"{split}_classes"]
    backgrounds = arrays[f"{split}_backgrounds"]
    palette = voc_palette()
    ids = scene_ids(split, num)
    for index, scene_id in enumerate(
        tqdm(ids, desc=f"FashionScenes {split}", disable=not progress)
    ):
        rng = scene_rng(split, index)
        background = crop_background(rng, backgrounds, SCENE_SIZE)
        img, label = generate_scene(rng, items, classes, background)
        Image.fromarray(img).save(
            out_dir / "JPEGImages" / f"{scene_id}.jpg", quality=JPEG_QUALITY, subsampling=0
        )
        label_png = Image.fromarray(label)
        label_png.putpalette(palette)
        label_png.save(out_dir / "SegmentationClassAug" / f"{scene_id}.png")
    (out_dir / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
        "".join(f"{i}\n" for i in ids)
    )
    return ids


def _marker(asset: Path, num_train: int, num_val: int) -> str:
    digest = hashlib.sha256(asset.read_bytes()).hexdigest()[:16]
    return f"{GENERATOR_VERSION} asset={digest} train={num_train} val={num_val}\n"


def _is_complete(root: Path, marker: str) -> bool:
    done = root / ".complete"
    try:
        return done.read_text() == marker
    except OSError:
        return False


def _move_into_place(tmp: Path, root: Path, marker: str) -> None:
    """Rename ``tmp`` to ``root``; if another process got there first, keep theirs."""
    for _ in range(20):
        try:
            os.rename(tmp, root)
            return
        except OSError:
            if _is_complete(root, marker):
                return  # another process finished first: the caller discards ``tmp``
        stale = root.with_name(f".{root.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(root, stale)  # an old version or a partial folder
        except FileNotFoundError:
            continue
        shutil.rmtree(stale, ignore_errors=True)
    raise RuntimeError(f"could not move {tmp} into place as {root}")


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def ensure_fashion_scenes(
    root: str | Path = "data/FashionScenes",
    asset: Path | None = None,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
) -> Path:
    """Return ``root`` holding FashionScenes; generate it first unless already complete.

    Generation is deterministic and goes to a temporary sibling folder that is renamed
    into place, so processes started together cannot leave a half-written folder.
    """
    root = Path(root)
    asset = Path(asset) if asset is not None else DEFAULT_ASSET
    if root.exists() and not root.is_dir():
        raise UserError(f"FashionScenes root {root} exists and is not a folder")
    if not asset.is_file():
        raise UserError(
            f"FashionScenes asset not found: {asset} (rebuild: python -m tools.build_demo_assets)"
        )
    marker = _marker(asset, num_train, num_val)
    if _is_complete(root, marker):
        return root
    arrays = load_asset(asset)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    verbose = _is_main()
    try:
        start = time.perf_counter()
        for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        generate_split(arrays, "train", num_train, tmp, progress=verbose)
        generate_split(arrays, "val", num_val, tmp, progress=verbose)
        (tmp / ".complete").write_text(marker)
        _move_into_place(tmp, root, marker)
        if verbose:
            print(
                f"FashionScenes ready in {root} ({time.perf_counter() - start:.1f} s)", flush=True
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_fashion_splits(
    txt_dir: str | Path = DEFAULT_TXT_DIR,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
    labels: tuple[int, ...] = SPLIT_LABELS,
    seeds: tuple[int, ...] = SPLIT_SEEDS,
) -> list[Path]:
    """Write split files (default: the shipped ones): labeled drawn from the train ids,
    valid = all val ids."""
    train_ids, val_ids = scene_ids("train", num_train), scene_ids("val", num_val)
    out = []
    for num_labels in labels:
        for seed in seeds:
            labeled, unlabeled = draw_split(train_ids, num_labels, seed)
            out.append(write_split(txt_dir, num_labels, seed, labeled, unlabeled, val_ids))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m demo.fashion_scenes",
        description="Generate FashionScenes (the embedded demo data) into --root, or write its "
        "split files\n(<txt-dir>/<num_labels>/<seed>/{labeled,unlabeled,valid}_filename.txt).",
        epilog="examples:\n"
        "  python -m demo.fashion_scenes                      # data/FashionScenes\n"
        "  python -m demo.fashion_scenes --write-splits --num-labels 500 --seeds 3407 1 2\n",
    )
    parser.add_argument(
        "--root", default="data/FashionScenes", help="dataset folder (default data/FashionScenes)"
    )
    parser.add_argument(
        "--asset",
        type=Path,
        default=None,
        help="asset file (default demo/assets/fashion_scenes.npz)",
    )
    parser.add_argument("--write-splits", action="store_true", help="write the split files instead")
    parser.add_argument(
        "--txt-dir",
        type=Path,
        default=DEFAULT_TXT_DIR,
        help="split root, the Dataset.txt_dir of a config (default FashionScenes_split)",
    )
    parser.add_argument(
        "--num-labels",
        type=int,
        nargs="+",
        default=list(SPLIT_LABELS),
        help="with --write-splits: labeled counts (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(SPLIT_SEEDS),
        help="with --write-splits: seeds (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.write_splits:
            paths = write_fashion_splits(
                args.txt_dir, labels=tuple(args.num_labels), seeds=tuple(args.seeds)
            )
            for path in paths:
                print(f"wrote {path}")
        else:
            ensure_fashion_scenes(args.root, args.asset)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
