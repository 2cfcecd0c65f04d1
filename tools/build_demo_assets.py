"""Build ``demo/assets/fashion_scenes.npz``, the raw material of the FashionScenes demo.

Not needed at run time: the asset file is committed. Rebuilding it needs the Debian
package ``dataset-fashion-mnist`` (or the four Fashion-MNIST ``*-ubyte.gz`` files in
``--fmnist-dir``) and scikit-image (for its bundled photos). The output is deterministic
for a seed.

What goes in:
- Fashion-MNIST items (Zalando SE, MIT/Expat licence): ``ITEMS_PER_CLASS_TRAIN`` per
  class drawn from the *train* file, ``ITEMS_PER_CLASS_VAL`` per class from the *t10k*
  file, skipping near-empty items. Stored as uint8 28x28 with class ids 1..10
  (Fashion-MNIST label + 1; 0 is background in the scenes) and their source indices.
- Background crops (uint8, ``CROP`` x ``CROP`` RGB) from scikit-image photos whose
  docstrings declare them public domain or CC0 (see ``PHOTOS``). Train and validation
  scenes use disjoint photos.

Usage: ``python -m tools.build_demo_assets [--out demo/assets/fashion_scenes.npz]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from utils.command_line import ArgumentParser
from utils.errors import UserError

SEED = 20230718
CROP = 160
CROPS_PER_PHOTO = 4
ITEMS_PER_CLASS_TRAIN = 300
ITEMS_PER_CLASS_VAL = 40
MIN_ITEM_COVER = 0.12  # fraction of the 28x28 frame above 0.25 of the item's max
MIN_SOLIDITY = 0.75  # of the item's support (> 0.05 of max), the fraction above 0.25 of max
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "demo" / "assets" / "fashion_scenes.npz"

# (skimage.data function, split, licence as stated in its docstring, source)
PHOTOS: tuple[tuple[str, str, str, str], ...] = (
    ("astronaut", "train", "public domain (NASA)", "https://flic.kr/p/r9qvLn"),
    ("coffee", "train", "CC0 (Rachel Michetti)", "skimage.data.coffee"),
    (
        "rocket",
        "train",
        "public domain (SpaceX)",
        "https://www.flickr.com/photos/spacexphotos/16511594820",
    ),
    (
        "hubble_deep_field",
        "train",
        "public domain (NASA)",
        "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
    ),
    (
        "brick",
        "train",
        "CC0 (CC0Textures Bricks25)",
        "https://cc0textures.com/view.php?tex=Bricks25",
    ),
    (
        "grass",
        "train",
        "CC0 (DeviantArt linolafett)",
        "https://www.deviantart.com/linolafett/art/Grass-01-434853879",
    ),
    ("camera", "train", "CC0 (Lav Varshney)", "skimage.data.camera"),
    ("chelsea", "val", "CC0 (Stefan van der Walt)", "skimage.data.chelsea"),
    (
        "retina",
        "val",
        "CC0 1.0 (Mikael Haggstrom, Wikimedia Commons)",
        "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg",
    ),
    (
        "gravel",
        "val",
        "CC0 (CC0Textures Gravel04)",
        "https://cc0textures.com/view.php?tex=Gravel04",
    ),
    ("clock", "val", "public domain (Stefan van der Walt)", "skimage.data.clock"),
)


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (images: N x 28 x 28 uint8, labels: N uint8)."""
    if not path.is_file():
        raise UserError(f"Fashion-MNIST file not found: {path} (install dataset-fashion-mnist)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def choose_items(
    images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``per_class`` items of each class, sorted per class.

    Kept: items with enough ink (``MIN_ITEM_COVER``) and a solid mask (``MIN_SOLIDITY``),
    so that faint, patterned items do not turn into labels made mostly of ignore bands.
    """
    peak = images.reshape(len(images), -1).max(axis=1).astype(np.float32)[:, None, None]
    mask = images > 0.25 * peak
    cover = mask.mean(axis=(1, 2))
    solidity = mask.sum(axis=(1, 2)) / np.maximum((images > 0.05 * peak).sum(axis=(1, 2)), 1)
    good = (cover >= MIN_ITEM_COVER) & (solidity >= MIN_SOLIDITY) & (peak[:, 0, 0] > 0)
    chosen = []
    for c in range(10):
        pool = np.flatnonzero((labels == c) & good)
        chosen.append(np.sort(rng.choice(pool, per_class, replace=False)))
    return np.concatenate(chosen)


def load_photo(name: str) -> np.ndarray:
    """One scikit-image photo as uint8 H x W x 3 (grey ones repeated over channels)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)


def photo_crops(img: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` square crops of random size (35-100% of the short side), resized to CROP."""
    h, w = img.shape[:2]
    crops = []
    for _ in range(num):
        side = int(rng.uniform(0.35, 1.0) * min(h, w))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        patch = Image.fromarray(img[top : top + side, left : left + side])
        crops.append(np.asarray(patch.resize((CROP, CROP), Image.Resampling.LANCZOS)))
    return np.stack(crops)


def build(out: Path, fmnist_dir: Path = FMNIST_DIR) -> dict[str, np.ndarray]:
    """Build the asset arrays and write them to ``out`` (np.savez_compressed)."""
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for split, prefix, per_class in (
        ("train", "train", ITEMS_PER_CLASS_TRAIN),
        ("val", "t10k", ITEMS_PER_CLASS_VAL),
    ):
        images = read_idx(fmnist_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(fmnist_dir / f"{prefix}-labels-idx1-ubyte.gz")
        index = choose_items(images, labels, per_class, rng)
        arrays[f"{split}_items"] = images[index]
        arrays[f"{split}_classes"] = (labels[index] + 1).astype(np.uint8)
        arrays[f"{split}_item_source_index"] = index.astype(np.int32)

    photo_names = [p[0] for p in PHOTOS]
    for split in ("train", "val"):
        crops, sources = [], []
        for k, (name, photo_split, _, _) in enumerate(PHOTOS):
            if photo_split == split:
                crops.append(photo_crops(load_photo(name), CROPS_PER_PHOTO, rng))
                sources += [k] * CROPS_PER_PHOTO
        arrays[f"{split}_backgrounds"] = np.concatenate(crops)
        arrays[f"{split}_background_source"] = np.asarray(sources, np.int16)

    meta = {
        "seed": SEED,
        "crop": CROP,
        "items": {
            "dataset": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017)",
            "licence": "MIT (Expat), Copyright 2017 Zalando SE",
            "source": "https://github.com/zalandoresearch/fashion-mnist",
            "train_items_from": "train-images-idx3-ubyte",
            "val_items_from": "t10k-images-idx3-ubyte",
        },
        "photos": [
            {"name": n, "split": s, "licence": lic, "source": src, "via": f"skimage.data.{n}"}
            for n, s, lic, src in PHOTOS
        ],
        "photo_names": photo_names,
    }
    arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return arrays


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m tools.build_demo_assets",
        description=__doc__,
        epilog="example:\n  python -m tools.build_demo_assets --out /tmp/fashion_scenes.npz\n",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"asset file to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--fmnist-dir",
        type=Path,
        default=FMNIST_DIR,
        help=f"folder of the four Fashion-MNIST *-ubyte.gz files (default {FMNIST_DIR})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        arrays = build(args.out, args.fmnist_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items() if k != "meta")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
