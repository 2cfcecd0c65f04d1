"""Predict masks for your images with a trained checkpoint: palette PNG masks (class index per
pixel, in the dataset's colours: VOC's colour map for VOC and FashionScenes, Cityscapes' own
for Cityscapes) and side-by-side overlays (image | image blended with the mask).

The network is the run's result (the teacher, or the student of a supervised run) and the
config is the checkpoint's own, as in evaluate.py; --config uses another file (its model
keys must agree with the checkpoint's; a checkpoint of the paper code needs it). No dataset
is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataset.base import read_image
from dataset.transforms import normalize
from engine.checkpoints import inference_config, load_trained_checkpoint, result_model_key
from engine.data import palette
from engine.evaluation import EVAL_MODES, predict
from engine.run import build_network_for_eval
from utils.checkpoint import load_weights
from utils.command_line import ArgumentParser
from utils.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


EXAMPLES = """examples:
  python predict.py --checkpoint runs/x/best.pth --input photo.jpg --output out/
  python predict.py --checkpoint runs/x/best.pth --input folder/ --output out/ --mode sliding
  -> out/photo.png (the mask) and out/photo_overlay.jpg
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="predict.py", description=__doc__, epilog=EXAMPLES)
    p.add_argument("--checkpoint", required=True, metavar="PTH", help="latest.pth / best.pth")
    p.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help=f"an image file or a folder of images ({', '.join(sorted(IMAGE_SUFFIXES))})",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="predict with this config instead of the checkpoint's own",
    )
    p.add_argument(
        "--mode",
        choices=EVAL_MODES[:2],
        default="whole",
        help="the whole image in one forward (default), or sliding windows of "
        "Training.eval_crop_size",
    )
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="mask opacity in the overlay (default 0.5)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="Section.key=value",
        help="config overrides (e.g. Training.eval_crop_size=[769,769])",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def list_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--input {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    raise UserError(f"--input not found: {path}")


def overlay(img: np.ndarray, mask: np.ndarray, palette: list[int], alpha: float) -> Image.Image:
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[mask]
    blend = (img * (1 - alpha) + colours * alpha).astype(np.uint8)
    return Image.fromarray(np.concatenate([img, blend], axis=1))


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        state = load_trained_checkpoint(args.checkpoint)
        cfg = inference_config(state, Path(args.checkpoint), args.config, args.overrides)
        files = list_inputs(Path(args.input))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = build_network_for_eval(cfg).to(device).eval()
        which = result_model_key(state)
        load_weights(model, state[which], f"{args.checkpoint} ({which})")
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        colours = palette(cfg)
        for f in files:
            img = read_image(f)  # uint8 [3,H,W]; a bad file is a UserError naming it
            probs = predict(
                model,
                normalize(img[None].to(device)),
                args.mode,
                cfg["Training"]["eval_crop_size"],
                args.flip,
            )
            mask = probs.max(1).indices[0].to(torch.uint8).cpu().numpy()
            png = Image.fromarray(mask, mode="P")
            png.putpalette(colours)
            png.save(out / f"{f.stem}.png")
            rgb = img.permute(1, 2, 0).numpy()
            overlay(rgb, mask, colours, args.alpha).save(out / f"{f.stem}_overlay.jpg", quality=92)
        print(f"wrote {len(files)} mask(s) and overlay(s) to {out}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
