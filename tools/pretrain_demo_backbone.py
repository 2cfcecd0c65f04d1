"""Pretrain the FashionScenes demo backbone: the "ImageNet" of the demo.

Real VOC / Cityscapes runs start from an ImageNet backbone; the demo's width-16 ResNet-18
has none, so this script makes one, deterministically, as a one-off build step whose
weights ship in the repository. The pretext task is a 10-way *classification* of single
Fashion-MNIST items, each tinted and pasted onto a crop of a *train* background photo with
the scene generator's own functions (``demo/fashion_scenes.py``: ``resize_item``,
``item_mask``, ``composite``, ``random_colour``, ``crop_background``, ``_stands_out``), so the backbone learns what a
garment looks like on a photo, never a per-pixel label.

What it may use (checked here):
- items: the Fashion-MNIST *train* file minus every item the scene asset holds
  (``train_item_source_index``): 57,000 items; the t10k file (val scenes) is never read;
- backgrounds: the asset's *train* background crops only (never the val photos).
A held-out set of ``--holdout`` of those 57,000 items (on train backgrounds, fixed patches)
measures the accuracy; the rest are trained on.

Output: a torchvision-layout state dict (``conv1.* bn1.* layer1..4.* fc.*``) that
``Network.pretrained`` loads into ``resnet18`` with ``Network.base_width`` = ``--width``,
and a JSON sidecar (``<out>.json``) with the recipe, the accuracy and the time.

    OMP_NUM_THREADS=1 python -m tools.pretrain_demo_backbone --steps 2500 --out pretrained/x.pth
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset.transforms import normalize  # noqa: E402
from demo import fashion_scenes as fs  # noqa: E402
from tools.build_demo_assets import FMNIST_DIR, read_idx  # noqa: E402
from tools.pretrain_backbone import (  # noqa: E402
    build_classifier,
    recipe,
    save_weights,
    train_classifier,
)
from utils.errors import UserError  # noqa: E402

PATCH = 64
ITEM_SIZE = (28, 60)  # item height in px (the scenes use 24-64 in a 96 px scene)


def item_pool(fmnist_dir: Path, asset: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST train items NOT in the scene asset: (images, labels 0..9, source index)."""
    images = read_idx(fmnist_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(fmnist_dir / "train-labels-idx1-ubyte.gz")
    used = np.zeros(len(images), bool)
    used[asset["train_item_source_index"]] = True
    # The asset's items really are those train items (guards against a wrong file).
    idx = asset["train_item_source_index"]
    if not np.array_equal(images[idx], asset["train_items"]):
        raise UserError(f"{fmnist_dir}: its train items differ from the scene asset's")
    keep = np.flatnonzero(~used & (images.reshape(len(images), -1).max(1) > 0))
    return images[keep], labels[keep].astype(np.int64), keep


def make_patch(
    rng: np.random.Generator, item: np.ndarray, backgrounds: np.ndarray, size: int = PATCH
) -> np.ndarray:
    """One ``size x size`` RGB patch: a tinted item pasted on a train background crop.

    Size (``ITEM_SIZE``, the scenes' aspect jitter), position and colour are redrawn up to
    ``fs.ATTEMPTS`` times until the item stands out from the photo, as in the scenes.
    """
    background = fs.crop_background(rng, backgrounds, size).astype(np.float32)
    for _ in range(fs.ATTEMPTS):
        height = int(rng.integers(ITEM_SIZE[0], ITEM_SIZE[1] + 1))
        aspect = rng.uniform(1.0 - fs.ASPECT_JITTER, 1.0 + fs.ASPECT_JITTER)
        width = int(np.clip(round(height * aspect), ITEM_SIZE[0], ITEM_SIZE[1]))
        intensity = np.pad(fs.resize_item(item, height, width), 1)
        h, w = intensity.shape
        top = int(rng.integers(0, size - h + 1))
        left = int(rng.integers(0, size - w + 1))
        colour = fs.random_colour(rng)
        window = (slice(top, top + h), slice(left, left + w))
        mask = fs.item_mask(intensity)
        painted = fs.composite(background[window], intensity, mask, colour)
        if fs._stands_out(painted, [background[window]], mask):
            break
    canvas = background.copy()
    canvas[window] = painted
    return np.rint(canvas).clip(0, 255).astype(np.uint8)


def make_batch(
    rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, backgrounds: np.ndarray, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = rng.integers(0, len(items), n)
    patches = np.stack([make_patch(rng, items[i], backgrounds) for i in idx])
    flip = rng.uniform(size=n) < 0.5
    patches[flip] = patches[flip][:, :, ::-1]
    img = torch.from_numpy(patches).permute(0, 3, 1, 2).float().div_(255)
    return normalize(img), torch.from_numpy(labels[idx])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "pretrained" / "fashion_resnet18_w16.pth")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak lr of the one-cycle schedule")
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--holdout", type=int, default=2000)
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--eval-every", type=int, default=0, help="held-out accuracy every N steps")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU)")
    p.add_argument("--fmnist-dir", type=Path, default=FMNIST_DIR)
    args = p.parse_args(argv)
    try:
        return pretrain(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def pretrain(args: argparse.Namespace) -> int:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_flush_denormal(True)
    asset = fs.load_asset()
    backgrounds = asset["train_backgrounds"]  # never the val photos
    items, labels, source = item_pool(args.fmnist_dir, asset)
    rng = np.random.default_rng([args.seed, 0])
    order = rng.permutation(len(items))
    hold, train = order[: args.holdout], order[args.holdout :]
    hrng = np.random.default_rng([args.seed, 1])
    hold_patches = np.stack([make_patch(hrng, items[i], backgrounds) for i in hold])
    hold_img = normalize(torch.from_numpy(hold_patches).permute(0, 3, 1, 2).float().div_(255))
    hold_lab = torch.from_numpy(labels[hold])
    items_t, labels_t = items[train], labels[train]
    print(
        f"items: {len(items)} Fashion-MNIST train items not in the asset "
        f"({len(train)} train, {len(hold)} held out); backgrounds: {len(backgrounds)} train crops",
        flush=True,
    )

    torch.manual_seed(args.seed)
    net = build_classifier(args.width, 10).to(memory_format=torch.channels_last)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([args.seed, 2, step])
        return make_batch(rng, items_t, labels_t, backgrounds, args.batch)

    acc, curve, minutes = train_classifier(net, batch_fn, hold_img, hold_lab, args)
    meta = {
        "what": f"width-{args.width} ResNet-18 (torchvision layout) pretrained as a 10-way "
        "classifier of single Fashion-MNIST train items (not in the scene asset) pasted on "
        "train background crops",
        "args": recipe(args),
        "patch": PATCH,
        "item_size": ITEM_SIZE,
        "num_items": int(len(items)),
        "num_train_items": int(len(train)),
        "holdout_acc": acc,
        "curve": curve,
        "minutes": minutes,
    }
    save_weights(net, args.out, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
