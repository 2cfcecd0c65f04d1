"""tools/paired_gains.py: values at an evaluation, paired gains and their spread, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.paired_gains import collect, main, table


def write_run(root: Path, name: str, evals: dict[int, float]) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    lines = [json.dumps({"iter": 10, "sup": 1.0})]  # a training record: not an evaluation
    lines += [json.dumps({"iter": it, "miou": m, "best_miou": m}) for it, m in evals.items()]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_gains_are_paired_by_seed_at_the_asked_iteration(tmp_path: Path, capsys):
    write_run(tmp_path, "supervised_46_1", {500: 30.0, 1000: 34.0})
    write_run(tmp_path, "supervised_46_2", {500: 31.0, 1000: 36.0})
    write_run(tmp_path, "mix_label_46_1", {500: 33.0, 1000: 35.0})
    write_run(tmp_path, "mix_label_46_2", {500: 32.0, 1000: 40.0})
    write_run(tmp_path, "ori_pseudo_46_1", {500: 29.0})  # stopped before 1000
    (tmp_path / "notes").mkdir()  # not a run folder: ignored
    values, left_out = collect(tmp_path, 1000)
    assert values == {
        ("supervised", 46, 1): 34.0,
        ("supervised", 46, 2): 36.0,
        ("mix_label", 46, 1): 35.0,
        ("mix_label", 46, 2): 40.0,
    }
    assert left_out == ["ori_pseudo_46_1 (evaluated at [500])"]
    rows = table(values, "supervised").splitlines()
    assert rows[2].startswith("| 46 | supervised | 35.00 ± 1.41 (n=2) |")  # sd of 34, 36
    # gains +1 and +4: mean 2.5, sd sqrt(4.5) = 2.12, ratio 1.2
    assert rows[3] == (
        "| 46 | mix_label | 37.50 ± 3.54 (n=2) | 1: +1.00, 2: +4.00 | +2.50 | 2.12 | 1.2 |"
    )
    at_500 = table(collect(tmp_path, 500)[0], "supervised")
    assert "1: +3.00, 2: +1.00 | +2.00 | 1.41 | 1.4" in at_500  # mix_label at 500
    assert "1: -1.00 | -1.00 | 0.00 | –" in at_500  # ori_pseudo, one seed
    out = tmp_path / "t.md"
    assert main([str(tmp_path), "--out", str(out)]) == 0  # default: each run's last evaluation
    assert "| 46 | ori_pseudo | 29.00 ± 0.00 (n=1) | 1: -5.00 |" in out.read_text()
    assert "at the last evaluation" in capsys.readouterr().out


def test_a_missing_folder_is_one_line(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: runs folder not found")


def test_curves_gather_every_seed_at_every_evaluation(tmp_path: Path):
    from tools.paired_gains import curves, plot_curves

    write_run(tmp_path, "supervised_46_1", {500: 30.0, 1000: 34.0})
    write_run(tmp_path, "supervised_46_2", {500: 31.0})
    write_run(tmp_path, "mix_label_46_1", {500: 33.0})
    assert curves(tmp_path) == {
        ("supervised", 46): {500: [30.0, 31.0], 1000: [34.0]},
        ("mix_label", 46): {500: [33.0]},
    }
    pytest.importorskip("matplotlib")
    assert plot_curves(tmp_path, tmp_path / "c.png") and (tmp_path / "c.png").stat().st_size > 0
