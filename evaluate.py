"""Evaluate a checkpoint on the validation split: print the per-class IoU table and write it
as JSON.

The config is the checkpoint's own (the one it was trained with), so a checkpoint is all it
needs; --config evaluates it with another file (its model keys must agree with the
checkpoint's: backbone, classes, output stride, rep dim, widths, dataset), and trailing
Section.key=value overrides apply to either (e.g. another Dataset.data_dir). A checkpoint
of the paper code (model / ema_model / numpy prototypes) holds no config: give --config,
e.g. configs/voc.yaml; its ema_model is the teacher. The network
evaluated is the run's result: the teacher, or the student of a supervised run (--model).
Under torchrun each process takes a disjoint share of the images and the confusion matrix
is summed, so a sharded evaluation equals a one-process one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from engine.checkpoints import inference_config, load_trained_checkpoint, result_model_key
from engine.data import build_datasets, class_names
from engine.evaluation import EVAL_MODES, evaluate, format_table
from engine.run import amp_dtype_for, build_network_for_eval
from utils.checkpoint import load_weights
from utils.command_line import ArgumentParser
from utils.dist import init_distributed, is_dist, is_main_process
from utils.errors import UserError

EXAMPLES = """examples:
  python evaluate.py --checkpoint runs/voc_mix_label_662_seed3407/best.pth
  python evaluate.py --checkpoint CKPT --mode sliding --flip --scales 0.75,1.0,1.25
  python evaluate.py --checkpoint CKPT Dataset.data_dir=/data/VOC2012    # the data moved
  torchrun --nproc_per_node=4 evaluate.py --checkpoint CKPT               # sharded
  python evaluate.py --checkpoint checkpoints/VOC_92_mix_label/best_model.pth --config configs/voc.yaml
      # a checkpoint of the paper code (model / ema_model / prototypes; it holds no config)
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="evaluate.py", description=__doc__, epilog=EXAMPLES)
    p.add_argument(
        "--checkpoint", required=True, metavar="PTH", help="latest.pth / best.pth of a run"
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="evaluate with this config instead of the checkpoint's own",
    )
    p.add_argument(
        "--mode",
        choices=EVAL_MODES,
        default=None,
        help="whole image, sliding windows of Training.eval_crop_size, or one seeded random "
        "crop (the paper code's protocol); default: Training.eval_mode",
    )
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument(
        "--scales",
        default="1.0",
        help="comma-separated image scales whose predictions are averaged (default 1.0)",
    )
    p.add_argument(
        "--model",
        choices=("auto", "teacher", "student"),
        default="auto",
        help="auto: the teacher, or the student of a supervised run",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="JSON",
        help="result file (default: <checkpoint>_eval_<mode>.json beside the checkpoint)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="images of equal size per forward (default: the config's Dataset.batch_size)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="Section.key=value",
        help="config overrides (the model keys must still agree with the checkpoint's)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(
            f"--scales {text!r}: expected comma-separated numbers like 0.75,1.0"
        ) from None
    if not scales or min(scales) <= 0:
        raise UserError(f"--scales {text!r}: expected positive numbers")
    return scales


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scales = parse_scales(args.scales)
        state = load_trained_checkpoint(args.checkpoint)
        cfg = inference_config(state, Path(args.checkpoint), args.config, args.overrides)
        which = args.model
        if which == "auto":
            which = result_model_key(state)
        model = build_network_for_eval(cfg)
        load_weights(model, state[which], f"{args.checkpoint} ({which})")
        datasets = build_datasets(cfg)
        device, _, _ = init_distributed()
        model = model.to(device)
        mode = args.mode or cfg["Training"]["eval_mode"]
        cm = evaluate(
            model,
            datasets["valid"],
            cfg["Network"]["num_class"],
            device,
            mode=mode,
            crop=cfg["Training"]["eval_crop_size"],
            flip=args.flip,
            scales=scales,
            num_workers=min(2, cfg["Dataset"]["num_workers"]),
            amp_dtype=amp_dtype_for(cfg, device),
            batch_size=args.batch_size or cfg["Dataset"]["batch_size"],
        )
        # Asked while the process group exists: after it is destroyed every process is rank 0.
        reports = is_main_process()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if is_dist():
            torch.distributed.destroy_process_group()
    if reports:  # one process prints the table and writes the JSON
        names = class_names(cfg)
        iou = cm.iou()
        print(format_table(iou, names))
        out = (
            Path(args.out)
            if args.out
            else Path(args.checkpoint).with_name(f"{Path(args.checkpoint).stem}_eval_{mode}.json")
        )
        result = {
            "checkpoint": str(args.checkpoint),
            "model": which,
            "mode": mode,
            "flip": args.flip,
            "scales": scales,
            "miou": 100 * cm.miou(),
            "pixel_acc": 100 * cm.pixel_acc(),
            "per_class_iou": {
                n: (None if v != v else 100 * v) for n, v in zip(names, iou.tolist())
            },
            "iteration": state.get("iteration"),
            "confusion_matrix": cm.mat.cpu().tolist(),
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
