"""Split files: ``<txt_dir>/<num_labels>/<split>/{labeled,unlabeled,valid}_filename.txt``.

``<split>`` is the seed the split was drawn with (the paper's layout, e.g. ``3407``) or a
name (e.g. ``u2pl`` for a split imported from another repository). One image id per line. Drawing is deterministic for a seed: the pool is sorted first, so
the result depends on the seed and the set of ids alone, not on their order on disk.

The unlabeled list is empty where every training image is labeled (CamVid's 367: the
full-label ceiling); such a split trains ``supervised.py`` only (``engine/run.py`` says so to
the other strategies). The labeled and valid lists are never empty.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from utils.errors import UserError

SPLIT_KINDS = ("labeled", "unlabeled", "valid")
# ``Dataset.split`` spelling of the paper's layout: the split folder named by ``Seed``.
SEED_SPLIT = "seed"
# The standard label counts (SPEC section 6): VOC classic (drawn from the 1,464 finely
# annotated train ids) and blended (from the 10,582 train_aug ids); Cityscapes.
VOC_CLASSIC = (92, 183, 366, 732, 1464)
VOC_BLENDED = (662, 1323, 2646, 5291)
CITYSCAPES_SPLITS = (186, 372, 744, 1488)
# CamVid: 1/16, 1/8, 1/4 of the 367 train images, and all of them (the full-label ceiling)
CAMVID_SPLITS = (23, 46, 92, 367)


def split_dir(txt_dir: str | Path, num_labels: int, split: str | int) -> Path:
    """The folder of one split: ``split`` is a seed or a split name."""
    return Path(txt_dir) / str(num_labels) / str(split)


def split_file(txt_dir: str | Path, num_labels: int, split: str | int, kind: str) -> Path:
    return split_dir(txt_dir, num_labels, split) / f"{kind}_filename.txt"


def draw_split(pool: Iterable[str], num_labels: int, seed: int) -> tuple[list[str], list[str]]:
    """Draw ``num_labels`` labeled ids from ``pool``; the rest are unlabeled. Both sorted."""
    ids = sorted(set(pool))
    if not 0 < num_labels <= len(ids):
        raise UserError(f"num_labels={num_labels} must be between 1 and the pool size {len(ids)}")
    labeled = set(random.Random(seed).sample(ids, num_labels))
    return sorted(labeled), [i for i in ids if i not in labeled]


def write_split(
    txt_dir: str | Path,
    num_labels: int,
    split: str | int,
    labeled: list[str],
    unlabeled: list[str],
    valid: list[str],
) -> Path:
    """Write the three files of one split (a seed or a name) and return its folder."""
    out = split_dir(txt_dir, num_labels, split)
    out.mkdir(parents=True, exist_ok=True)
    for kind, ids in zip(SPLIT_KINDS, (labeled, unlabeled, valid)):
        path = out / f"{kind}_filename.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{i}\n" for i in ids))
        tmp.replace(path)
    return out


def read_ids(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Read one id list; a missing file, or an empty one unless ``allow_empty``, is a
    ``UserError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file not found: {path}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids and not allow_empty:
        raise UserError(f"split file is empty: {path}")
    return ids


def read_split(txt_dir: str | Path, num_labels: int, split: str | int) -> dict[str, list[str]]:
    """Read ``labeled``, ``unlabeled`` and ``valid`` id lists of one split (``unlabeled`` may
    be empty: every training image labeled)."""
    return {
        k: read_ids(split_file(txt_dir, num_labels, split, k), allow_empty=k == "unlabeled")
        for k in SPLIT_KINDS
    }
