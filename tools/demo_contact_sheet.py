"""Contact sheet of FashionScenes: scenes next to their colour-coded labels, with a legend.

Labels use the VOC palette; ignore (255) is drawn white. Generates the dataset first if
needed. Usage:
``python -m tools.demo_contact_sheet [--root data/FashionScenes] [--out docs/fashion_scenes_contact_sheet.png]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dataset.palette import voc_palette
from demo.fashion_scenes import (
    FASHION_CLASSES,
    NUM_TRAIN,
    NUM_VAL,
    SCENE_SIZE,
    ensure_fashion_scenes,
    scene_ids,
)
from utils.command_line import ArgumentParser
from utils.errors import UserError
from utils.labels import IGNORE_VALUE

GAP = 4
LEGEND_ROW = 14


def colour_label(label: np.ndarray) -> np.ndarray:
    """H x W label -> H x W x 3 uint8 in the VOC palette, ignore drawn white."""
    palette = np.asarray(voc_palette(), np.uint8).reshape(256, 3).copy()
    palette[IGNORE_VALUE] = 255
    return palette[label]


def read_scene(root: Path, scene_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The image (H x W x 3) and label (H x W) of one scene."""
    img = np.asarray(Image.open(root / "JPEGImages" / f"{scene_id}.jpg").convert("RGB"))
    label = np.asarray(Image.open(root / "SegmentationClassAug" / f"{scene_id}.png"))
    return img, label


def legend(width: int) -> Image.Image:
    """Swatch and name of each class (and of ignore), as many per row as fit."""
    palette = np.asarray(voc_palette()).reshape(256, 3)
    entries = [(name, tuple(int(v) for v in palette[c])) for c, name in enumerate(FASHION_CLASSES)]
    entries.append(("ignore", (255, 255, 255)))
    per_row = max(1, width // 110)
    rows = -(-len(entries) // per_row)
    sheet = Image.new("RGB", (width, rows * LEGEND_ROW + GAP), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for k, (name, colour) in enumerate(entries):
        x, y = (k % per_row) * 110 + GAP, (k // per_row) * LEGEND_ROW + GAP
        draw.rectangle([x, y, x + 9, y + 9], fill=colour, outline=(200, 200, 200))
        draw.text((x + 13, y - 1), name, fill=(230, 230, 230))
    return sheet


def contact_sheet(root: Path, ids: list[str], columns: int = 4) -> Image.Image:
    """Grid of ``image | label`` pairs, ``columns`` pairs per row, legend below."""
    cell = SCENE_SIZE
    pair_w = 2 * cell + GAP
    rows = -(-len(ids) // columns)
    width = columns * pair_w + (columns + 1) * GAP * 2
    grid = Image.new("RGB", (width, rows * (cell + GAP) + GAP), (40, 40, 40))
    for k, scene_id in enumerate(ids):
        img, label = read_scene(root, scene_id)
        x = GAP * 2 + (k % columns) * (pair_w + GAP * 2)
        y = GAP + (k // columns) * (cell + GAP)
        grid.paste(Image.fromarray(img), (x, y))
        grid.paste(Image.fromarray(colour_label(label)), (x + cell + GAP, y))
    key = legend(width)
    sheet = Image.new("RGB", (width, grid.height + key.height), (40, 40, 40))
    sheet.paste(grid, (0, 0))
    sheet.paste(key, (0, grid.height))
    return sheet


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m tools.demo_contact_sheet",
        description=__doc__,
        epilog="example:\n  python -m tools.demo_contact_sheet --split val --num 8 --out /tmp/val.png\n",
    )
    parser.add_argument(
        "--root", default="data/FashionScenes", help="dataset folder (generated if missing)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/fashion_scenes_contact_sheet.png"),
        help="PNG to write (default docs/fashion_scenes_contact_sheet.png)",
    )
    parser.add_argument(
        "--split", choices=("train", "val"), default="train", help="scenes of this split"
    )
    parser.add_argument("--num", type=int, default=12, help="number of scenes (default 12)")
    parser.add_argument("--columns", type=int, default=4, help="scenes per row (default 4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    available = NUM_TRAIN if args.split == "train" else NUM_VAL
    try:
        if not 0 < args.num <= available or args.columns < 1:
            raise UserError(
                f"--num {args.num} must be 1..{available} and --columns {args.columns} at least 1"
            )
        root = ensure_fashion_scenes(args.root)
        sheet = contact_sheet(root, scene_ids(args.split, args.num), args.columns)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
