"""How right the teacher's pseudo-labels are, class by class, on the run's unlabeled images.

    python tools/pseudo_label_accuracy.py --checkpoint runs/X/latest.pth [--out FILE.md]

The unlabeled images of a split are unlabeled only to the method: CamVid, VOC and Cityscapes
have their labels, so a teacher's pseudo-labels can be scored against them. For every
unlabeled image of the checkpoint's split (its config: ``Dataset.txt_dir``,
``num_labels``, ``Seed``), whole, the teacher (eval mode: BatchNorm running statistics) gives
``y_cls`` / ``conf_cls`` and, with the checkpoint's prototypes, ``y_rep`` / ``conf_rep`` —
the function the training step uses (``utils.strategies.teacher_predictions``). Per class of
the pseudo-label, over the pixels with a true label (void / ignore left out):

- ``y_cls``: precision of the logit-space label (what ``ori_pseudo`` learns from), and the
  same over the pixels with ``conf_cls >= Loss.un_threshold`` (the confident ones);
- ``y_rep``: precision of the representation-space label;
- ``mix``: precision of ``y_cls`` where the two spaces agree (what ``mix_label`` keeps), and
  the share of the class's ``y_cls`` pixels that agreement keeps;
- the share of the truly-``c`` pixels that each pseudo-label names ``c`` (recall).

Rows are written as a markdown table (stdout, and ``--out``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.registry import DATASETS  # noqa: E402
from dataset.splits import read_split  # noqa: E402
from dataset.transforms import normalize  # noqa: E402
from engine.checkpoints import load_teacher  # noqa: E402
from engine.data import class_names, split_name  # noqa: E402
from utils.command_line import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.labels import IGNORE_INDEX  # noqa: E402
from utils.strategies import teacher_predictions  # noqa: E402

EXAMPLES = """examples:
  python tools/pseudo_label_accuracy.py --checkpoint runs/camvid_benchmark/mix_label_46_3407/latest.pth
  python tools/pseudo_label_accuracy.py --checkpoint runs/X/latest.pth --limit 50 --out pl.md
"""
COUNTS = ("cls", "cls_ok", "conf", "conf_ok", "rep", "rep_ok", "mix", "mix_ok", "true")
RECALL = ("cls_hit", "rep_hit", "mix_hit")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="pseudo_label_accuracy.py", description=__doc__, epilog=EXAMPLES)
    p.add_argument(
        "--checkpoint", required=True, metavar="PTH", help="a run's latest.pth / best.pth"
    )
    p.add_argument("--config", default=None, metavar="YAML", help="instead of the checkpoint's own")
    p.add_argument("--limit", type=int, default=0, help="only the first N unlabeled images")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    p.add_argument(
        "overrides", nargs="*", default=[], metavar="Section.key=value", help="overrides"
    )
    return p


@torch.no_grad()
def count(teacher, proto, dataset, tau: float, un: float, num_classes: int, limit: int) -> dict:
    """Per-class pixel counts (``COUNTS`` + ``RECALL``) over the dataset's images."""
    totals = {k: torch.zeros(num_classes, dtype=torch.long) for k in (*COUNTS, *RECALL)}
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    for i in range(n):
        item = dataset[i]
        img, label = item["img"], item["label"]
        logits, rep = teacher(normalize(img[None].float().div(255)))
        t = teacher_predictions(logits, rep, proto, tau, tuple(img.shape[-2:]), need_rep=True)
        valid = label != IGNORE_INDEX
        y_cls, y_rep, conf = t.y_cls[0][valid], t.y_rep[0][valid], t.conf_cls[0][valid]
        truth = label[valid]
        agree = y_cls == y_rep
        sel = {
            "cls": (y_cls, torch.ones_like(agree)),
            "conf": (y_cls, conf >= un),
            "rep": (y_rep, torch.ones_like(agree)),
            "mix": (y_cls, agree),
        }
        for name, (pred, keep) in sel.items():
            totals[name] += torch.bincount(pred[keep], minlength=num_classes)
            right = keep & (pred == truth)
            totals[name + "_ok"] += torch.bincount(pred[right], minlength=num_classes)
        totals["true"] += torch.bincount(truth, minlength=num_classes)
        for name, (pred, keep) in (("cls", sel["cls"]), ("rep", sel["rep"]), ("mix", sel["mix"])):
            totals[name + "_hit"] += torch.bincount(
                truth[keep & (pred == truth)], minlength=num_classes
            )
    return totals


def table(totals: dict, names: tuple[str, ...], un: float) -> str:
    def pct(a, b) -> str:
        return f"{100 * a / b:.1f}" if b > 0 else "–"

    head = (
        "| class | true share % | y_cls precision | y_cls precision, conf >= "
        f"{un:g} | y_rep precision | mix precision | mix keeps % of y_cls | recall y_cls / y_rep / mix |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|"]
    all_true = int(totals["true"].sum())
    rows = [*range(len(names)), None]
    for c in rows:
        pick = (lambda k: int(totals[k].sum())) if c is None else (lambda k, c=c: int(totals[k][c]))
        name = "all pixels" if c is None else names[c]
        recall = " / ".join(pct(pick(k), pick("true")) for k in RECALL)
        lines.append(
            f"| {name} | {pct(pick('true'), all_true)} | {pct(pick('cls_ok'), pick('cls'))} | "
            f"{pct(pick('conf_ok'), pick('conf'))} | {pct(pick('rep_ok'), pick('rep'))} | "
            f"{pct(pick('mix_ok'), pick('mix'))} | {pct(pick('mix'), pick('cls'))} | {recall} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ckpt = Path(args.checkpoint)
        state, cfg, teacher, proto = load_teacher(ckpt, args.config, args.overrides)
        teacher.eval()
        if not bool(proto.abs().sum() > 0):
            raise UserError(f"{ckpt}: its prototypes are all zero (a supervised run has none)")
        data = cfg["Dataset"]
        ids = read_split(data["txt_dir"], data["num_labels"], split_name(cfg))["unlabeled"]
        if not ids:
            raise UserError(f"{ckpt}: its split has no unlabeled images")
        spec = DATASETS[data["name"]]
        root = Path(spec.prepare(Path(data["data_dir"]).expanduser()))
        num_classes = cfg["Network"]["num_class"]
        dataset = spec.make(root, ids, "valid", data, num_classes)  # whole images with labels
        un = cfg["Loss"]["un_threshold"]
        totals = count(teacher, proto, dataset, cfg["Loss"]["temp"], un, num_classes, args.limit)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = len(ids) if args.limit <= 0 else min(args.limit, len(ids))
    text = (
        f"pseudo-labels of {ckpt} (iteration {state.get('iteration', '?')}) on {n} unlabeled "
        f"images of its split, teacher in eval mode; precision and recall in %\n\n"
        + table(totals, class_names(cfg), un)
    )
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
