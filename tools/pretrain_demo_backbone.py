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
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset.transforms import normalize  # noqa: E402
from demo import fashion_scenes as fs  # noqa: E402
from network.resnet import set_base_width  # noqa: E402
from tools.build_demo_assets import FMNIST_DIR, read_idx  # noqa: E402
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


def build_classifier(width: int) -> nn.Module:
    """torchvision ResNet-18 (stride 32, as ImageNet models are trained) at ``width``."""
    net = tvm.resnet18(weights=None, num_classes=10)
    if width != 64:
        set_base_width(net, BasicBlock, width)
        net.fc = nn.Linear(8 * width, 10)
    return net


@torch.no_grad()
def accuracy(net: nn.Module, img: torch.Tensor, lab: torch.Tensor, autocast) -> float:
    net.eval()
    correct = 0
    for k in range(0, len(img), 500):
        with autocast():
            correct += int((net(img[k : k + 500]).argmax(1) == lab[k : k + 500]).sum())
    net.train()
    return correct / len(img)


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
    net = build_classifier(args.width).to(memory_format=torch.channels_last)  # ~10% faster on CPU
    opt = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.wd
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if args.bf16
        else (lambda: torch.autocast("cpu", enabled=False))
    )
    curve = []
    start = time.perf_counter()
    loss_avg = acc_avg = None
    net.train()
    for step in range(args.steps):
        img, lab = make_batch(
            np.random.default_rng([args.seed, 2, step]), items_t, labels_t, backgrounds, args.batch
        )
        with autocast():
            logits = net(img.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = (logits.argmax(1) == lab).float().mean().item()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        acc_avg = acc if acc_avg is None else 0.98 * acc_avg + 0.02 * acc
        done = step + 1
        if done % 50 == 0 or done == args.steps:
            el = time.perf_counter() - start
            eta = el / done * (args.steps - done)
            print(
                f"step {done}/{args.steps}  loss {loss_avg:.3f}  train acc {acc_avg:.3f}  "
                f"lr {sched.get_last_lr()[0]:.4f}  {el / 60:.1f} min  ETA {eta / 60:.1f} min",
                flush=True,
            )
        if args.eval_every and done % args.eval_every == 0 and done != args.steps:
            a = accuracy(net, hold_img, hold_lab, autocast)
            curve.append(
                {"step": done, "holdout_acc": a, "minutes": (time.perf_counter() - start) / 60}
            )
            print(f"step {done}: held-out accuracy {a:.4f}", flush=True)
    minutes = (time.perf_counter() - start) / 60
    acc = accuracy(net, hold_img, hold_lab, autocast)
    curve.append({"step": args.steps, "holdout_acc": acc, "minutes": minutes})
    print(f"held-out accuracy {acc:.4f} after {args.steps} steps, {minutes:.1f} min", flush=True)

    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    meta = {
        "what": f"width-{args.width} ResNet-18 (torchvision layout) pretrained as a 10-way "
        "classifier of single Fashion-MNIST train items (not in the scene asset) pasted on "
        "train background crops",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "patch": PATCH,
        "item_size": ITEM_SIZE,
        "num_items": int(len(items)),
        "num_train_items": int(len(train)),
        "holdout_acc": acc,
        "curve": curve,
        "minutes": minutes,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sha256_16": digest,
    }
    Path(str(args.out) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
