"""Fetch torchvision's ImageNet ResNet weights into ``pretrained/`` (needs internet), for
``Network.pretrained`` of the VOC / Cityscapes configs.

    python -m tools.fetch_imagenet_weights                       # resnet101 -> pretrained/resnet101.pth
    python -m tools.fetch_imagenet_weights --arch resnet50 --out pretrained/resnet50.pth

It goes through torchvision's own weights API (``ResNet101_Weights.IMAGENET1K_V1``: the
``resnet101-63fe2227.pth`` checkpoint) and writes the state dict atomically. The deep-stem
``resnet101_deepstem`` backbone needs the "ResNet-101 v1c" checkpoint of the mmcv / mmseg
model zoo (``resnet101_v1c``; keys ``stem.*`` or ``conv1.0 ...``): download it from there by
hand; ``Network.pretrained`` reads either layout. Without internet this stops with one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torchvision.models as tvm

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = {
    "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": tvm.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1,
}


def fetch(arch: str, out: Path) -> Path:
    """Download ``arch``'s ImageNet weights through torchvision and save them at ``out``."""
    weights = WEIGHTS[arch]
    try:
        state = weights.get_state_dict(progress=True)
    except OSError as err:  # URLError, socket errors, no route to the host
        reason = " ".join(str(getattr(err, "reason", err)).split()) or type(err).__name__
        raise UserError(
            f"cannot download {weights.url} ({reason}); on a machine with internet run "
            f"python -m tools.fetch_imagenet_weights --arch {arch} and copy {out} here"
        ) from None
    save_checkpoint(state, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m tools.fetch_imagenet_weights --arch resnet101",
    )
    p.add_argument("--arch", choices=list(WEIGHTS), default="resnet101", help="backbone")
    p.add_argument("--out", type=Path, default=None, help="default: pretrained/<arch>.pth")
    args = p.parse_args(argv)
    out = args.out or REPO / "pretrained" / f"{args.arch}.pth"
    try:
        fetch(args.arch, out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}; set Network.pretrained={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
