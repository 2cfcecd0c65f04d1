"""Show the teacher's pseudo-labels for one image, in both spaces, as one PNG.

Panels, left to right: the image; y_cls, the teacher's label in logit space (argmax of its
softmax); y_rep, its label in representation space (argmax of softmax(cos(rep, prototypes) /
Loss.temp)), with the checkpoint's prototypes; where the two agree (what mix_label keeps)
and disagree (what it ignores); conf_cls and conf_rep, the two confidences (max softmax),
dark = 0, bright = 1, with the share of pixels at or above Loss.un_threshold and
Loss.weak_threshold in the titles. Below: the colours of the classes that appear. The maps
come from utils.strategies.teacher_predictions, the function the training step uses.

The teacher runs in eval mode (BatchNorm running statistics); --train-bn runs it as the
training step does, in train mode (here the statistics of this one image). The config is the
checkpoint's own (--config for another, or for a checkpoint of the paper code).

Two optional panels go after the image: --label, the ground truth (a PNG of stored class
indices; values outside 0..C-1, void or ignore, are drawn black), and --compare, the
prediction of another checkpoint's evaluated network (e.g. the supervised baseline's student;
its own config), so one picture holds image, truth, baseline, this teacher's two spaces.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.base import read_image, read_label_array  # noqa: E402
from dataset.transforms import normalize  # noqa: E402
from engine.checkpoints import (  # noqa: E402
    inference_config,
    load_teacher,
    load_trained_checkpoint,
    result_model_key,
)
from engine.data import class_names, palette  # noqa: E402
from engine.evaluation import predict_whole  # noqa: E402
from engine.run import build_network_for_eval  # noqa: E402
from utils.checkpoint import load_weights  # noqa: E402
from utils.command_line import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.strategies import TeacherPredictions, teacher_predictions  # noqa: E402

MIN_PANEL = 256  # panels are scaled up to at least this height (nearest for label maps)
GAP, TITLE = 6, 34
BACKGROUND, TEXT = (32, 32, 32), (235, 235, 235)
AGREE, DISAGREE = (90, 170, 90), (220, 50, 50)
# dark blue -> teal -> yellow, for confidences in [0, 1]
RAMP = np.array([[20, 20, 80], [30, 110, 150], [80, 180, 120], [250, 230, 60]], np.float32)

EXAMPLES = """examples:
  python tools/show_pseudo_labels.py --checkpoint runs/fashionscenes_mix_label_125_seed3407/best.pth \\
      --input data/FashionScenes/JPEGImages/train_00042.jpg --output pseudo.png
  python tools/show_pseudo_labels.py --checkpoint best_model.pth --config configs/voc.yaml \\
      --input 2007_000032.jpg        # a checkpoint of the paper code
  python tools/show_pseudo_labels.py --checkpoint runs/camvid_mix/best.pth \\
      --input data/camvid/test/0001TP_008550.png --label data/camvid/testannot/0001TP_008550.png \\
      --compare runs/camvid_sup/best.pth    # with the truth and the supervised prediction
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="show_pseudo_labels.py", description=__doc__, epilog=EXAMPLES)
    p.add_argument("--checkpoint", required=True, metavar="PTH", help="latest.pth / best.pth")
    p.add_argument("--input", required=True, metavar="IMAGE", help="one image file")
    p.add_argument(
        "--output",
        default=None,
        metavar="PNG",
        help="the picture to write (default: <image name>_pseudo_labels.png here)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="use this config instead of the checkpoint's own",
    )
    p.add_argument(
        "--label",
        default=None,
        metavar="PNG",
        help="ground truth of the image (stored class indices; others drawn black)",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="PTH",
        help="another checkpoint whose evaluated network's prediction is drawn too",
    )
    p.add_argument(
        "--train-bn",
        action="store_true",
        help="run the teacher in train mode (BatchNorm statistics of this image), as training does",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="Section.key=value",
        help="config overrides (e.g. Loss.temp=0.1 to see another tau)",
    )
    return p


# ------------------------------------------------------------------------------ maps


@torch.no_grad()
def pseudo_label_maps(
    teacher: torch.nn.Module, proto: torch.Tensor, img: torch.Tensor, tau: float
) -> TeacherPredictions:
    """The teacher's predictions for one ``uint8 [3,H,W]`` image at its size, in both spaces."""
    logits, rep = teacher(normalize(img[None]))
    return teacher_predictions(logits, rep, proto, tau, tuple(img.shape[-2:]), need_rep=True)


def colour(label: np.ndarray, palette: list[int]) -> np.ndarray:
    """Class indices -> palette colours; an index outside the palette's classes is black."""
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    inside = (label >= 0) & (label < len(colours))
    return np.where(inside[..., None], colours[np.where(inside, label, 0)], 0).astype(np.uint8)


@torch.no_grad()
def prediction(net: torch.nn.Module, img: torch.Tensor) -> np.ndarray:
    """The argmax of ``net`` (eval mode) for one ``uint8 [3,H,W]`` image, at its size: the
    whole-image prediction that evaluate.py and predict.py score."""
    return predict_whole(net, normalize(img[None])).argmax(1)[0].numpy()


def ramp(conf: np.ndarray) -> np.ndarray:
    """``[H,W]`` in [0, 1] -> ``[H,W,3]`` uint8 along ``RAMP``."""
    pos = np.clip(conf, 0.0, 1.0) * (len(RAMP) - 1)
    low = np.minimum(pos.astype(int), len(RAMP) - 2)
    frac = (pos - low)[..., None]
    return (RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _conf_line(conf: np.ndarray, un: float, weak: float) -> str:
    """Its mean and the share of pixels at or above the two thresholds."""

    def share(threshold: float) -> str:
        return f"{100 * float((conf >= threshold).mean()):.0f}%"

    return f"mean {conf.mean():.2f} | >={un:g}: {share(un)} | >={weak:g}: {share(weak)}"


def picture(
    img: np.ndarray,
    t: TeacherPredictions,
    names: tuple[str, ...],
    palette: list[int],
    thresholds: tuple[float, float],
    note: str = "",
    extra: list[tuple[str, str, np.ndarray]] = (),
) -> Image.Image:
    """The panels side by side with their titles, the legend below; ``extra`` label maps
    ``(title, second line, labels)`` go right after the image."""
    y_cls, y_rep = t.y_cls[0].cpu().numpy(), t.y_rep[0].cpu().numpy()
    conf_cls, conf_rep = t.conf_cls[0].cpu().numpy(), t.conf_rep[0].cpu().numpy()
    agree = y_cls == y_rep
    un, weak = thresholds
    panels = [  # (title, second line, picture)
        ("image", "", img),
        *((title, line, colour(labels, palette)) for title, line, labels in extra),
        ("y_cls", "logit space", colour(y_cls, palette)),
        ("y_rep", "representation space", colour(y_rep, palette)),
        ("agreement", f"{100 * agree.mean():.0f}% agree (green), the rest not (red)",
         np.where(agree[..., None], AGREE, DISAGREE).astype(np.uint8)),
        ("conf_cls", _conf_line(conf_cls, un, weak), ramp(conf_cls)),
        ("conf_rep", _conf_line(conf_rep, un, weak), ramp(conf_rep)),
    ]  # fmt: skip
    h, w = img.shape[:2]
    scale = max(1, -(-MIN_PANEL // h))
    ph, pw = h * scale, w * scale
    font, small = _font(15), _font(13)
    shown = [y_cls, y_rep, *(labels for _, _, labels in extra)]
    present = sorted({c for m in shown for c in np.unique(m).tolist() if 0 <= c < len(names)})
    per_row = max(2, (len(panels) * (pw + GAP)) // 170)
    legend_rows = -(-(len(present) + 2) // per_row) + (1 if note else 0)  # + the ramp
    width = len(panels) * (pw + GAP) + GAP
    height = TITLE + ph + GAP + legend_rows * 22 + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k, (title, line, array) in enumerate(panels):
        x = GAP + k * (pw + GAP)
        resample = Image.Resampling.BILINEAR if k == 0 else Image.Resampling.NEAREST
        sheet.paste(Image.fromarray(array).resize((pw, ph), resample), (x, TITLE))
        draw.text((x, 2), title, fill=TEXT, font=font)
        draw.text((x, 18), line, fill=TEXT, font=small)
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    top = TITLE + ph + GAP
    for k, c in enumerate(present):
        x, y = GAP + (k % per_row) * 170, top + (k // per_row) * 22
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=tuple(int(v) for v in colours[c]))
        draw.text((x + 20, y + 1), f"{c} {names[c]}", fill=TEXT, font=small)
    k = len(present) + (len(present) % per_row == per_row - 1)  # the ramp takes two slots
    x, y = GAP + (k % per_row) * 170, top + (k // per_row) * 22
    draw.text((x, y + 1), "confidence 0", fill=TEXT, font=small)
    bar = ramp(np.tile(np.linspace(0, 1, 150), (14, 1)))
    sheet.paste(Image.fromarray(bar), (x + 95, y + 2))
    draw.text(
        (x + 250, y + 1),
        f"1   (thresholds: Loss.un_threshold {un:g}, Loss.weak_threshold {weak:g})",
        fill=TEXT,
        font=small,
    )
    if note:
        draw.text((GAP, top + (legend_rows - 1) * 22), note, fill=DISAGREE, font=small)
    return sheet


def extra_panels(args, img: torch.Tensor, names: tuple[str, ...]) -> list:
    """The --label and --compare panels (class maps at the image's size)."""
    extra = []
    if args.label:
        label = read_label_array(Path(args.label))
        if label.shape != tuple(img.shape[-2:]):
            raise UserError(
                f"--label {args.label} is {label.shape[1]}x{label.shape[0]} (WxH) but the "
                f"image is {img.shape[-1]}x{img.shape[-2]}"
            )
        void = float((label >= len(names)).mean())
        extra.append(("ground truth", f"{100 * void:.0f}% void / ignored (black)", label))
    if args.compare:
        path = Path(args.compare)
        state = load_trained_checkpoint(path)
        cfg = inference_config(state, path, args.config, args.overrides)
        if class_names(cfg) != names:
            raise UserError(f"--compare {path}: its classes differ from the checkpoint's")
        net = build_network_for_eval(cfg)
        key = result_model_key(state)
        load_weights(net, state[key], f"{path} ({key})")
        strategy = state.get("strategy") or "checkpoint"
        extra.append(
            (f"{strategy} prediction", f"{path.parent.name} ({key})", prediction(net.eval(), img))
        )
    return extra


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ckpt = Path(args.checkpoint)
        _, cfg, teacher, proto = load_teacher(ckpt, args.config, args.overrides)
        teacher.train(args.train_bn)
        img = read_image(Path(args.input))  # a bad file is a UserError naming it
        loss = cfg["Loss"]
        maps = pseudo_label_maps(teacher, proto, img, loss["temp"])
        extra = extra_panels(args, img, class_names(cfg))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = class_names(cfg)
    empty = [c for c in range(proto.shape[0]) if not bool(proto[c].any())]
    note = (
        f"{len(empty)} of {proto.shape[0]} prototypes are all zero (never updated): y_rep "
        f"cannot choose {', '.join(names[c] for c in empty[:6])}"
        + (" ..." if len(empty) > 6 else "")
        if empty
        else ""
    )
    sheet = picture(
        img.permute(1, 2, 0).numpy(),
        maps,
        names,
        palette(cfg),
        (loss["un_threshold"], loss["weak_threshold"]),
        note,
        extra,
    )
    out = Path(args.output or f"{Path(args.input).stem}_pseudo_labels.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    agree = float((maps.y_cls == maps.y_rep).float().mean())
    print(f"wrote {out} (agreement of the two spaces {100 * agree:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
