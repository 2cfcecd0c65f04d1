"""engine/data.py: the split folder of a config (and what a missing one says), the datasets of
a made-up registry entry, and the loaders' position derived from the iteration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dataset.registry import DATASETS, DatasetSpec
from engine import data
from utils.errors import UserError
from utils.sampler import EpochBatchSampler

NAME = "tiny_made_up"


class Ids(Dataset):
    """One mode of the made-up dataset: its ids, and what it was built from."""

    def __init__(self, root: Path, ids: list[str], mode: str, num_classes: int) -> None:
        self.root, self.ids, self.mode, self.num_classes = root, ids, mode, num_classes

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, _sample_seed = item  # what EpochBatchSampler yields
        return {"index": torch.tensor(index)}


@pytest.fixture
def tiny(monkeypatch, tmp_path) -> dict:
    """A registry entry of three classes whose root is ``tmp_path/root``, and its config."""
    spec = DatasetSpec(
        classes=("a", "b", "c"),
        pool_size=None,
        palette=lambda: [0] * 768,
        make=lambda root, ids, mode, d, n: Ids(root, ids, mode, n),
        prepare=lambda root: root / "prepared",
        split_command=lambda txt_dir, n, seed: f"draw {txt_dir} {n} {seed}",
    )
    monkeypatch.setitem(DATASETS, NAME, spec)
    return {
        "Seed": 7,
        "Network": {"num_class": 3},
        "Dataset": {
            "name": NAME,
            "data_dir": str(tmp_path / "root"),
            "txt_dir": str(tmp_path / "splits"),
            "num_labels": 2,
            "split": "seed",
        },
    }


def write_split(cfg: dict, labeled, unlabeled, valid, split: str = "7") -> Path:
    folder = Path(cfg["Dataset"]["txt_dir"]) / str(cfg["Dataset"]["num_labels"]) / split
    folder.mkdir(parents=True)
    for kind, ids in (("labeled", labeled), ("unlabeled", unlabeled), ("valid", valid)):
        (folder / f"{kind}_filename.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder


def test_split_name_is_the_seed_or_the_named_split(tiny):
    assert data.split_name(tiny) == "7"
    tiny["Dataset"]["split"] = "3407"
    assert data.split_name(tiny) == "3407"
    del tiny["Dataset"]["split"]  # an older config without the key: the seed's
    assert data.split_name(tiny) == "7"


def test_a_missing_seed_split_says_how_to_draw_it(tiny):
    with pytest.raises(UserError, match=r"split folder not found: .*/splits/2/7 ") as err:
        data.split_folder(tiny)
    message = str(err.value)
    assert "Dataset.num_labels=2, Seed=7" in message
    assert f"draw it with: draw {tiny['Dataset']['txt_dir']} 2 7" in message


def test_a_missing_named_split_says_which_files_to_write(tiny):
    tiny["Dataset"]["split"] = "mine"
    with pytest.raises(UserError, match=r"Dataset.num_labels=2, Dataset.split=mine\); write its"):
        data.split_folder(tiny)


def test_a_present_split_folder_is_returned(tiny):
    folder = write_split(tiny, ["x", "y"], ["z"], ["v"])
    assert data.split_folder(tiny) == folder


def test_build_datasets_reads_the_split_and_prepares_the_root(tiny):
    write_split(tiny, ["x", "y"], ["z", "w", "u"], ["v"])
    out = data.build_datasets(tiny)
    assert {mode: ds.ids for mode, ds in out.items()} == {
        "labeled": ["x", "y"],
        "unlabeled": ["z", "w", "u"],
        "valid": ["v"],
    }
    root = Path(tiny["Dataset"]["data_dir"]) / "prepared"
    assert all(ds.root == root and ds.num_classes == 3 for ds in out.values())
    assert out["labeled"].mode == "labeled" and out["valid"].mode == "valid"


def test_build_datasets_without_unlabeled_images_gives_none(tiny):
    write_split(tiny, ["x", "y"], [], ["v"])
    assert data.build_datasets(tiny)["unlabeled"] is None


def test_build_datasets_checks_the_classes_and_the_labeled_count(tiny):
    write_split(tiny, ["x"], ["z"], ["v"])
    with pytest.raises(UserError, match="labeled_filename.txt lists 1 ids, expected 2"):
        data.build_datasets(tiny)
    tiny["Network"]["num_class"] = 4
    with pytest.raises(UserError, match=f"Network.num_class: got 4, expected 3 for {NAME}"):
        data.build_datasets(tiny)


def test_class_names_and_palette_of_the_entry(tiny):
    assert data.class_names(tiny) == ("a", "b", "c")
    assert data.palette(tiny) == [0] * 768


@pytest.mark.parametrize("start", [0, 1, 2, 3, 7])
def test_the_loader_cycle_starts_where_the_iteration_says(start):
    """``cycle`` from iteration ``start`` yields what an uninterrupted run yields from there
    (3 batches an epoch: epoch ``start // 3``, batch ``start % 3``), across epoch ends."""
    size, bs = 7, 2

    def stream(first: int) -> list[list[int]]:
        sampler = EpochBatchSampler(size, bs, seed=5)
        dataset = Ids(Path("."), [str(i) for i in range(size)], "labeled", 3)
        loader = DataLoader(dataset, batch_sampler=sampler)
        it = data.cycle(loader, sampler, first)
        return [next(it)["index"].tolist() for _ in range(8)]

    whole = stream(0)
    assert len({tuple(b) for b in whole[:3]}) == 3  # three different batches an epoch
    assert whole[3:6] != whole[:3]  # the next epoch is another permutation
    assert stream(start)[: 8 - start] == whole[start:]
