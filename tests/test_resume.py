"""engine/resume.py: which keys a resumed run may change, and the one-line refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from engine.config import DEFAULT_CONFIG, all_keys, load_config
from engine.resume import (
    MODEL_KEYS,
    RESUME_FIXED,
    RESUME_FREE,
    check_resume,
    check_resume_compatible,
)
from utils.errors import UserError

PATH = Path("run/latest.pth")


def test_the_key_lists_are_schema_keys_and_apart() -> None:
    keys = set(all_keys())
    assert set(RESUME_FIXED) <= keys and set(RESUME_FREE) <= keys
    assert set(MODEL_KEYS) <= set(RESUME_FIXED)
    assert not set(RESUME_FIXED) & set(RESUME_FREE)


@pytest.mark.parametrize("key", ["Seed", "Network.rep_dim", "Dataset.batch_size"])
def test_a_fixed_key_is_refused_naming_it_and_both_values(key: str) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    saved = copy.deepcopy(cfg)
    section, _, leaf = key.rpartition(".")
    node = saved[section] if section else saved
    old = node[leaf or key]
    node[leaf or key] = old + 1
    with pytest.raises(UserError) as err:
        check_resume_compatible(saved, cfg, PATH)
    assert f"{key} ({old + 1!r} -> {old!r})" in str(err.value) and str(PATH) in str(err.value)


def test_the_seed_split_and_the_seeds_folder_name_are_the_same_split() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    named = load_config(DEFAULT_CONFIG, [f"Dataset.split={cfg['Seed']}"])
    check_resume_compatible(cfg, named, PATH)


def test_free_keys_change_silently_other_keys_need_allow_changes() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    saved = load_config(DEFAULT_CONFIG, ["Training.log_interval=7", "Dataset.data_dir=elsewhere"])
    state = {"config": saved, "iteration": 2, "world_size": 1}
    assert check_resume(state, cfg, 1, PATH, allow=False) == []
    longer = load_config(DEFAULT_CONFIG, ["Training.total_iter=900"])
    with pytest.raises(UserError, match=r"Training.total_iter \(800 -> 900\)"):
        check_resume(state, longer, 1, PATH, allow=False)
    (note,) = check_resume(state, longer, 1, PATH, allow=True)
    assert "Training.total_iter" in note and "--allow-changes" in note
