"""engine/cli.py: the command line (parsing, which config, which run folder, one-line errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import config_path, default_work_dir, main, one_line, parse_args
from engine.config import DEFAULT_CONFIG, load_config
from utils.strategies import get_strategy


def test_config_is_the_flag_else_the_run_folders_else_the_demo(tmp_path: Path) -> None:
    assert config_path(parse_args("mix_label", ["--config", "x.yaml"])) == Path("x.yaml")
    assert config_path(parse_args("mix_label", ["--work-dir", str(tmp_path)])) == DEFAULT_CONFIG
    (tmp_path / "config.yaml").write_text("Seed: 1\n")
    args = parse_args("mix_label", ["--work-dir", str(tmp_path), "Seed=2"])
    assert config_path(args) == tmp_path / "config.yaml" and args.overrides == ["Seed=2"]


def test_default_work_dir_names_dataset_strategy_labels_and_seed() -> None:
    cfg = load_config(DEFAULT_CONFIG, ["Seed=5"])
    assert default_work_dir(cfg, get_strategy("cross_label")) == Path(
        "runs/fashionscenes6_cross_label_125_seed5"
    )


def test_one_line_keeps_a_workers_message_only() -> None:
    exc = RuntimeError(
        "Caught X.\nOriginal Traceback (most recent call last):\n  ...\nValueError: bad"
    )
    assert one_line(exc) == "bad"
    assert one_line(KeyError()) == "KeyError"


def test_a_bad_key_stops_before_anything_is_written(tmp_path, capsys) -> None:
    work = tmp_path / "run"
    assert main("mix_label", ["--work-dir", str(work), "Loss.un_treshold=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Loss.un_threshold" in err
    assert not work.exists()


def test_a_paper_flag_names_the_override() -> None:
    with pytest.raises(SystemExit):
        parse_args("mix_label", ["--num_labels", "92"])
