"""Check a dataset before training: read every label once and report, per split.

For the configured split (``<txt_dir>/<num_labels>/<split>/``; where it is not drawn yet,
a folder dataset's own images: those with a mask as "labeled", the other training images as
"unlabeled", the validation images as "valid"):

- labeled and valid: images without a mask and ids without an image (missing pairs),
  image / mask size mismatches, unreadable files (and colours an rgb mask's table lacks),
  mask values that are neither a class 0..C-1 nor the ignore value (the first files and
  their values), a split whose only non-zero value is the ignore value 255 (the foreground
  may be stored as 255), the share of the pixels of each class and of ignored pixels, and
  the classes absent from the labeled split (a warning);
- unlabeled: images that are missing or unreadable (their masks, if any, are not read).

Images are opened for their size, masks decoded as training decodes them. The report goes
to stdout; nothing is written. Exit status 2 on errors, with one summary line on stderr
naming the first; 0 otherwise.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.command_line import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.labels import IGNORE_VALUE  # noqa: E402

MODES = ("labeled", "unlabeled", "valid")
SHOWN = 3  # examples named per kind of problem
FOREGROUND_AS_IGNORE = "your foreground may be stored as 255, which is the ignore value"

EXAMPLES = """examples:
  python tools/check_dataset.py my.yaml
  python tools/check_dataset.py configs/ade20k.yaml Dataset.data_dir=/data/ADEChallengeData2016
"""


@dataclass
class SplitReport:
    """What one split's files hold: problems by kind (messages), pixel counts by train id."""

    mode: str
    images: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    stored: set[int] = field(default_factory=set)  # stored mask values seen
    ignore_stored: set[int] = field(default_factory=set)  # those that decode to ignore

    def add(self, kind: str, message: str) -> None:
        self.problems[kind].append(message)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header; a UserError where it cannot be read."""
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as pil:
            return pil.size[1], pil.size[0]
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read image {path}: {reason}") from None


def _decode_table(ds, stored: np.ndarray, path: Path) -> tuple[np.ndarray, list[int]]:
    """Each stored value of a mask decoded alone, as training decodes it: a 256-entry table
    (value -> train id, 255 ignore) and the values training refuses."""
    table = np.full(256, IGNORE_VALUE, dtype=np.uint8)
    bad = []
    for value in np.unique(stored).tolist():
        try:
            table[value] = ds.decode_label(np.full((1, 1), value, dtype=np.uint8), path)[0, 0]
        except UserError:
            bad.append(value)
    return table, bad


def check_labeled(ds, report: SplitReport, expected: str, show_progress: bool) -> None:
    """Every image of ``ds`` and its mask (labeled or valid mode)."""
    for name in tqdm(ds.ids, desc=report.mode, disable=not show_progress, leave=False):
        report.images += 1
        try:
            size = _image_size(ds.image_path(name))
        except UserError as err:
            kind = "missing pairs" if "not found" in str(err) else "unreadable files"
            report.add(kind, f"{name}: {err}")
            size = None
        try:
            path = ds.label_path(name)
        except UserError as err:
            report.add("missing pairs", f"{name}: {err}")
            continue
        if not path.is_file():
            report.add("missing pairs", f"{name}: no mask {path}")
            continue
        try:
            stored = ds.read_label(path)
        except UserError as err:
            report.add("unknown colours" if "colour" in str(err) else "unreadable files", str(err))
            continue
        if size is not None and stored.shape != size:
            report.add(
                "size mismatches",
                f"mask {path} is {stored.shape[1]}x{stored.shape[0]} (WxH), its image "
                f"{size[1]}x{size[0]}",
            )
        table, bad = _decode_table(ds, stored, path)
        if bad:
            report.add(
                "values outside the classes", f"{path} has values {bad[:8]} outside {expected}"
            )
        values = np.unique(stored).tolist()
        report.stored.update(values)
        report.ignore_stored.update(v for v in values if table[v] == IGNORE_VALUE and v not in bad)
        report.pixels += np.bincount(table[stored].ravel(), minlength=256)


def check_unlabeled(ds, report: SplitReport, show_progress: bool) -> None:
    for name in tqdm(ds.ids, desc=report.mode, disable=not show_progress, leave=False):
        report.images += 1
        try:
            _image_size(ds.image_path(name))
        except UserError as err:
            kind = "missing pairs" if "not found" in str(err) else "unreadable files"
            report.add(kind, f"{name}: {err}")


def foreground_as_ignore(report: SplitReport) -> bool:
    """Masks whose only non-zero stored value is 255, and 255 is ignored."""
    return report.stored - {0} == {IGNORE_VALUE} and IGNORE_VALUE in report.ignore_stored


def describe(report: SplitReport, classes: tuple[str, ...]) -> list[str]:
    """The lines of one split's report."""
    lines = [f"{report.mode}: {report.images} images"]
    for kind, messages in report.problems.items():
        lines.append(f"  {kind}: {len(messages)}")
        lines += [f"    {m}" for m in messages[:SHOWN]]
        if len(messages) > SHOWN:
            lines.append(f"    ... and {len(messages) - SHOWN} more")
    if report.mode == "unlabeled":
        return lines
    if foreground_as_ignore(report):
        lines.append(f"  only 0 and 255 are stored: {FOREGROUND_AS_IGNORE}")
    total = int(report.pixels.sum())
    if total:
        shares = [f"{name} {100 * report.pixels[c] / total:.1f}%" for c, name in enumerate(classes)]
        shares.append(f"ignored {100 * report.pixels[IGNORE_VALUE] / total:.1f}%")
        lines.append("  pixels: " + ", ".join(shares))
        absent = [name for c, name in enumerate(classes) if report.pixels[c] == 0]
        if absent:
            what = "warning: classes absent" if report.mode == "labeled" else "classes absent"
            lines.append(f"  {what}: {', '.join(absent)}")
    return lines


def errors(report: SplitReport) -> list[str]:
    """One line per problem of the split, the first of each kind first."""
    out = [f"{report.mode}: {messages[0]}" for messages in report.problems.values()]
    if report.mode != "unlabeled" and foreground_as_ignore(report):
        out.append(f"{report.mode}: only 0 and 255 are stored: {FOREGROUND_AS_IGNORE}")
    return out


def split_ids(cfg: dict) -> tuple[dict[str, list[str]], str]:
    """The ids of the configured split, or (a folder dataset whose split is not drawn yet)
    of its images; and where they come from."""
    from dataset.splits import read_split
    from engine.data import DATASETS, split_folder, split_name

    data = cfg["Dataset"]
    try:
        folder = split_folder(cfg)
    except UserError:
        layout = DATASETS[data["name"]].layout
        if layout is None:
            raise
        fine, train, val = layout(data).pools()
        chosen = set(fine)
        ids = {"labeled": fine, "unlabeled": [i for i in train if i not in chosen], "valid": val}
        return ids, "its images (no split drawn yet): labeled = those with a mask"
    return read_split(data["txt_dir"], data["num_labels"], split_name(cfg)), f"split {folder}"


def check(cfg: dict, show_progress: bool = False) -> tuple[list[str], list[str]]:
    """The report's lines and the errors (one line each) of a config's dataset."""
    from engine.data import DATASETS, class_names

    data = cfg["Dataset"]
    spec = DATASETS[data["name"]]
    classes = class_names(cfg)
    num_classes = cfg["Network"]["num_class"]
    ids, source = split_ids(cfg)
    root = Path(spec.prepare(Path(data["data_dir"]).expanduser()))
    lines = [f"{data['name']} at {root}, {len(classes)} classes; {source}"]
    found = []
    for mode in MODES:
        report = SplitReport(mode)
        if ids[mode]:
            ds = spec.make(root, ids[mode], mode, data, num_classes)
            if mode == "unlabeled":
                check_unlabeled(ds, report, show_progress)
            else:
                check_labeled(ds, report, _expected(ds, num_classes), show_progress)
        lines += describe(report, classes)
        found += errors(report)
    return lines, found


def _expected(ds, num_classes: int) -> str:
    """The stored values a mask may hold, in words."""
    decoder = getattr(ds, "decoder", None)  # a folder dataset's: its ignore values
    return decoder.expected() if decoder else f"0..{num_classes - 1} (and the ignore value)"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="check_dataset.py", description=__doc__, epilog=EXAMPLES)
    p.add_argument("config", metavar="CONFIG", help="YAML config (any Dataset.name)")
    p.add_argument(
        "overrides", nargs="*", default=[], metavar="Section.key=value", help="config overrides"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.config import load_config  # imports torch

    try:
        cfg = load_config(args.config, args.overrides)
        lines, found = check(cfg, show_progress=sys.stderr.isatty())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if found:
        more = f" (and {len(found) - 1} more problems, above)" if len(found) > 1 else ""
        print(f"error: {found[0]}{more}", file=sys.stderr)
        return 2
    print("no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
