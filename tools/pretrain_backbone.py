"""Pretrain a small ResNet on a folder (or tar) of class folders: an "ImageNet" for a CPU.

VOC / Cityscapes runs start from an ImageNet backbone. Where none can be had, or where the
network is a narrow ResNet that no public checkpoint fits, this tool makes one: a ResNet of
``--width`` (the project's ``Network.base_width``) trained as a classifier, deterministically,
on the photos of any dataset laid out as class folders:

    DATA/train/<class>/*.jpg|png     DATA/test/<class>/*   (or val/; else --holdout images)

``DATA`` may be a folder or a ``.tar`` / ``.tar.gz`` holding such a tree at any depth (the
first folder named ``train`` whose children are folders). Every image is decoded once, resized
to ``--image-size`` squared and held in memory as uint8 (CIFAR-10: 50,000 x 32 x 32 x 3 =
150 MB; a 64 px ImageNet would need about 16 GB). Each step draws a batch with a per-step
seed, pads by 1/8 and crops back (reflect), flips half, resizes to ``--input-size`` (bilinear)
and normalises with the ImageNet statistics the segmentation engine uses; SGD with Nesterov
momentum and a one-cycle learning rate. The same seed gives the same weights.

Output: a torchvision-layout state dict (``conv1.* bn1.* layer1..4.* fc.*``) that
``Network.pretrained`` loads into ``Network.backbone`` with ``Network.base_width`` = ``--width``
(exactly as an ImageNet file), and a JSON sidecar (``<out>.json``) with the recipe, the data,
the held-out accuracy, its curve and the time.

    OMP_NUM_THREADS=2 python tools/pretrain_backbone.py --data cifar10_jpeg.tar.gz \\
        --width 32 --image-size 32 --input-size 64 --steps 5000 --eval-every 1000 \\
        --bf16 --half --out pretrained/cifar10_resnet18_w32.pth   # the shipped weights
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset.transforms import normalize  # noqa: E402
from network.resnet import set_base_width  # noqa: E402
from utils.errors import UserError  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
TEST_FOLDERS = ("test", "val")
DEPTHS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34}

# (step) -> (normalised images, labels): one training batch
BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ImageSet:
    """Images of one split held in memory: uint8 [N, S, S, 3] and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]


# ----------------------------------------------------------------------------- reading


def _decode(data: bytes | Path, size: int, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise UserError(f"{name}: unreadable image ({err})") from err


def _split_entries(paths: list[PurePosixPath]) -> dict[str, list[tuple[str, PurePosixPath]]]:
    """``{"train": [(class, path), ...], "test": [...]}`` from the image paths of a tree."""
    trains = sorted(
        (p.parents[2] for p in paths if len(p.parts) >= 3 and p.parts[-3] == "train"),
        key=lambda d: (len(d.parts), str(d)),
    )
    if not trains:
        raise UserError("no train/<class>/<image> files found")
    base = trains[0]
    out: dict[str, list[tuple[str, PurePosixPath]]] = {}
    for split in ("train", *TEST_FOLDERS):
        top = base / split
        entries = sorted(
            (p.parent.name, p) for p in paths if p.parent.parent == top and p.parent != top
        )
        if entries:
            out.setdefault("test" if split in TEST_FOLDERS else "train", entries)
    return out


def read_image_folders(data: Path, size: int) -> dict[str, ImageSet]:
    """Every image of ``data`` (folder or tar) resized to ``size``: ``{"train", "test"?}``."""
    if not data.exists():
        raise UserError(f"--data: not found: {data}")
    if data.is_dir():
        files = {
            PurePosixPath(p.relative_to(data).as_posix()): p
            for p in data.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        }
        read = {k: (lambda p=p: p) for k, p in files.items()}
        splits = _split_entries(sorted(files))
        return _load(splits, lambda path: read[path](), size, data)
    if not tarfile.is_tarfile(data):
        raise UserError(f"--data: {data} is neither a folder nor a tar archive")
    with tarfile.open(data, "r:*") as archive:
        members = {
            PurePosixPath(m.name): m
            for m in archive.getmembers()
            if m.isfile() and PurePosixPath(m.name).suffix.lower() in IMAGE_SUFFIXES
        }
        splits = _split_entries(sorted(members))
        return _load(splits, lambda path: archive.extractfile(members[path]).read(), size, data)


def _load(splits, fetch: Callable, size: int, data: Path) -> dict[str, ImageSet]:
    classes = tuple(sorted({c for c, _ in splits["train"]}))
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, entries in splits.items():
        unknown = sorted({c for c, _ in entries} - set(classes))
        if unknown:
            raise UserError(f"{data}: {split} has classes not in train: {', '.join(unknown)}")
        images = np.stack([_decode(fetch(p), size, f"{data}:{p}") for _, p in entries])
        labels = np.array([index[c] for c, _ in entries], dtype=np.int64)
        out[split] = ImageSet(images, labels, classes)
        print(f"{split}: {len(entries)} images of {len(classes)} classes ({data})", flush=True)
    return out


def hold_out(train: ImageSet, count: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split ``count`` random images off ``train`` (where the data has no test folder)."""
    if not 0 < count < len(train.labels):
        raise UserError(f"--holdout {count}: needs 0 < holdout < {len(train.labels)} images")
    order = np.random.default_rng([seed, 0]).permutation(len(train.labels))
    keep, held = np.sort(order[count:]), np.sort(order[:count])
    return (
        ImageSet(train.images[keep], train.labels[keep], train.classes),
        ImageSet(train.images[held], train.labels[held], train.classes),
    )


# ----------------------------------------------------------------------------- batches


def to_input(images: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> normalised float [N, 3, R, R] (bilinear resize where R != S)."""
    img = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    if img.shape[-1] != input_size:
        img = F.interpolate(img, size=(input_size, input_size), mode="bilinear", antialias=True)
    return normalize(img)


def augment(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Pad by 1/8 of the side (reflect), crop back at a random offset, flip half."""
    n, s = len(images), images.shape[1]
    pad = max(1, s // 8)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    top = rng.integers(0, 2 * pad + 1, n)
    left = rng.integers(0, 2 * pad + 1, n)
    rows = top[:, None] + np.arange(s)[None]
    cols = left[:, None] + np.arange(s)[None]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.uniform(size=n) < 0.5
    out[flip] = out[flip][:, :, ::-1]
    return out


def folder_batches(train: ImageSet, batch: int, input_size: int, seed: int) -> BatchFn:
    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, 2, step])
        idx = rng.integers(0, len(train.labels), batch)
        return to_input(augment(rng, train.images[idx]), input_size), torch.from_numpy(
            train.labels[idx]
        )

    return batch_fn


# ----------------------------------------------------------------------------- training


def build_classifier(width: int, num_classes: int, depth: str = "resnet18") -> nn.Module:
    """torchvision ResNet (stride 32, as ImageNet models are trained) at base ``width``."""
    net = DEPTHS[depth](weights=None, num_classes=num_classes)
    if width != 64:
        set_base_width(net, type(net.layer1[0]), width)
        net.fc = nn.Linear(8 * width * net.layer1[0].expansion, num_classes)
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


def make_autocast(bf16: bool) -> Callable:
    if bf16:
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return lambda: torch.autocast("cpu", enabled=False)


def train_classifier(
    net: nn.Module,
    batch_fn: BatchFn,
    hold_img: torch.Tensor,
    hold_lab: torch.Tensor,
    args: argparse.Namespace,
) -> tuple[float, list[dict], float]:
    """SGD (Nesterov) with a one-cycle lr over ``args.steps`` steps; progress with ETA.

    Returns (held-out accuracy, the accuracy curve, minutes)."""
    opt = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.wd
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    autocast = make_autocast(args.bf16)
    curve = []
    start = time.perf_counter()
    loss_avg = acc_avg = None
    net.train()
    for step in range(args.steps):
        img, lab = batch_fn(step)
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
    return acc, curve, minutes


def save_weights(net: nn.Module, out: Path, meta: dict, half: bool = False) -> str:
    """The state dict (floats as float16 when ``half``) and ``<out>.json``; returns the digest."""
    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().contiguous().clone()
        state[k] = v.half() if half and v.is_floating_point() else v
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    meta = {**meta, "threads": torch.get_num_threads(), "torch": torch.__version__}
    meta["sha256_16"] = digest
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest})")
    return digest


def recipe(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.rsplit("\n\n", 1)[0],
        epilog="example:\n" + __doc__.rsplit("\n\n", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="folder or tar of class folders")
    p.add_argument("--out", type=Path, required=True, help="the .pth to write (+ .json)")
    p.add_argument("--depth", choices=tuple(DEPTHS), default="resnet18", help="ResNet depth")
    p.add_argument("--width", type=int, default=32, help="base width (64 = standard ResNet)")
    p.add_argument("--image-size", type=int, default=32, help="side images are stored at")
    p.add_argument("--input-size", type=int, default=64, help="side the network sees")
    p.add_argument("--steps", type=int, default=5000, help="SGD steps")
    p.add_argument("--batch", type=int, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=0.1, help="peak lr of the one-cycle schedule")
    p.add_argument("--wd", type=float, default=5e-4, help="weight decay")
    p.add_argument("--holdout", type=int, default=5000, help="used where there is no test/")
    p.add_argument("--seed", type=int, default=3407, help="seed of init and batches")
    p.add_argument("--eval-every", type=int, default=0, help="held-out accuracy every N steps")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU)")
    p.add_argument("--half", action="store_true", help="store the floats as float16")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return pretrain(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def pretrain(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise UserError(f"--out: {args.out} exists; remove it or choose another name")
    for name in ("width", "image_size", "input_size", "steps", "batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    torch.set_flush_denormal(True)
    sets = read_image_folders(args.data, args.image_size)
    train, held = (
        (sets["train"], sets["test"])
        if "test" in sets
        else hold_out(sets["train"], args.holdout, args.seed)
    )
    hold_img = to_input(held.images, args.input_size)
    hold_lab = torch.from_numpy(held.labels)
    torch.manual_seed(args.seed)
    net = build_classifier(args.width, len(train.classes), args.depth)
    net = net.to(memory_format=torch.channels_last)
    batches = folder_batches(train, args.batch, args.input_size, args.seed)
    acc, curve, minutes = train_classifier(net, batches, hold_img, hold_lab, args)
    meta = {
        "what": f"width-{args.width} {args.depth} (torchvision layout) pretrained as a "
        f"{len(train.classes)}-way classifier of {args.data.name} "
        f"({args.image_size} px images seen at {args.input_size} px)",
        "args": recipe(args),
        "classes": list(train.classes),
        "num_train": int(len(train.labels)),
        "num_holdout": int(len(held.labels)),
        "holdout": "the data's test/ (or val/) folder" if "test" in sets else "held-out train",
        "holdout_acc": acc,
        "curve": curve,
        "minutes": minutes,
        "dtype": "float16" if args.half else "float32",
    }
    save_weights(net, args.out, meta, half=args.half)
    return 0


if __name__ == "__main__":
    sys.exit(main())
