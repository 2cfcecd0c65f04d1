"""Predict masks for images with a trained checkpoint: VOC-palette PNG masks and
side-by-side overlays (image | image blended with the mask).

    python predict.py --checkpoint runs/x/best.pth --input photo.jpg --output out/
    python predict.py --checkpoint runs/x/best.pth --input folder/ --output out/ --mode sliding
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataset.base import read_image
from dataset.palette import voc_palette
from dataset.transforms import normalize
from engine.config import validate
from engine.evaluation import EVAL_MODES, predict
from engine.run import build_network_for_eval, result_model_key
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--mode", choices=EVAL_MODES[:2], default="whole")
    p.add_argument("--flip", action="store_true")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    return p.parse_args(argv)


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
        state = load_checkpoint(args.checkpoint, required=("teacher", "student", "config"))
        cfg = validate(state["config"], f"{args.checkpoint} (config)")
        files = list_inputs(Path(args.input))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = build_network_for_eval(cfg).to(device).eval()
        model.load_state_dict(state[result_model_key(state)])
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        palette = voc_palette()
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
            png.putpalette(palette)
            png.save(out / f"{f.stem}.png")
            rgb = img.permute(1, 2, 0).numpy()
            overlay(rgb, mask, palette, args.alpha).save(out / f"{f.stem}_overlay.jpg", quality=92)
        print(f"wrote {len(files)} mask(s) and overlay(s) to {out}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
