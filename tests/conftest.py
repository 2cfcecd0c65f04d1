"""Shared fixtures: the embedded demo data (generated once per session) and a tiny split of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset.splits import draw_split, read_ids, write_split
from demo.fashion_scenes import ensure_fashion_scenes

REPO = Path(__file__).resolve().parents[1]
# The tiny split of the end-to-end tests: labeled / unlabeled drawn from the first
# TINY_POOL train scenes, the first TINY_VALID val scenes for validation.
TINY_LABELS, TINY_POOL, TINY_VALID, TINY_SEED = 16, 48, 6, 3407


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    """``data/FashionScenes`` under the repository root (what configs/demo.yaml reads)."""
    return Path(ensure_fashion_scenes(REPO / "data" / "FashionScenes"))


@pytest.fixture(scope="session")
def tiny_split(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split folder root holding ``16/3407/{labeled,unlabeled,valid}_filename.txt``:
    16 labeled and 32 unlabeled train scenes, 6 val scenes."""
    sets = fashion_root / "ImageSets" / "Segmentation"
    pool = read_ids(sets / "train.txt")[:TINY_POOL]
    labeled, unlabeled = draw_split(pool, TINY_LABELS, TINY_SEED)
    valid = read_ids(sets / "val.txt")[:TINY_VALID]
    txt_dir = tmp_path_factory.mktemp("tiny_split")
    write_split(txt_dir, TINY_LABELS, TINY_SEED, labeled, unlabeled, valid)
    return txt_dir
