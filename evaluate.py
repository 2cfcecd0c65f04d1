"""Evaluate a checkpoint on the validation split of a config; print the per-class IoU table
and write it as JSON.

    python evaluate.py --config configs/voc.yaml --checkpoint runs/x/best.pth [--mode whole]
    python evaluate.py ... --mode sliding --flip --scales 0.75,1.0,1.25
    torchrun --nproc_per_node=4 evaluate.py ...        # sharded; the confusion matrix is summed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from engine.config import DEFAULT_CONFIG, load_config
from engine.data import build_datasets, class_names
from engine.evaluation import EVAL_MODES, evaluate, format_table
from engine.run import (
    MODEL_KEYS,
    amp_dtype_for,
    build_network_for_eval,
    check_resume_compatible,
    result_model_key,
)
from utils.checkpoint import load_checkpoint
from utils.dist import init_distributed, is_dist, is_main_process
from utils.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--checkpoint", required=True, help="latest.pth / best.pth of a run")
    p.add_argument("--mode", choices=EVAL_MODES, default=None, help="default: Training.eval_mode")
    p.add_argument("--flip", action="store_true", help="average with the flipped image")
    p.add_argument("--scales", default="1.0", help="comma-separated, e.g. 0.75,1.0,1.25")
    p.add_argument(
        "--model",
        choices=("auto", "teacher", "student"),
        default="auto",
        help="auto: the teacher, or the student of a supervised run",
    )
    p.add_argument("--out", default=None, help="JSON file (default: beside the checkpoint)")
    p.add_argument("overrides", nargs="*", help="Section.key=value config overrides")
    return p.parse_args(argv)


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
        cfg = load_config(args.config, args.overrides)
        scales = parse_scales(args.scales)
        state = load_checkpoint(args.checkpoint, required=("teacher", "student", "config"))
        check_resume_compatible(state["config"], cfg, Path(args.checkpoint), MODEL_KEYS)
        datasets = build_datasets(cfg)
        device, _, _ = init_distributed()
        which = args.model
        if which == "auto":
            which = result_model_key(state)
        model = build_network_for_eval(cfg).to(device)
        model.load_state_dict(state[which])
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
        names = class_names(cfg["Dataset"]["name"])
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
