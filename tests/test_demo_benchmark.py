"""tools/demo_benchmark.py (tools/ssl_benchmark.py with the demo's defaults): aggregation,
table, CSV, resumability and report on fake run folders (no training)."""

import csv
import json
import math
import sys
from pathlib import Path

import pytest

from tools import demo_benchmark
from tools import ssl_benchmark as db

# final mIoU of fake runs: (method, labels) -> one value per seed 3407, 1, 2
FAKE = {
    ("supervised", 125): [40.0, 42.0, 44.0],
    ("mix_label", 125): [50.0, 53.0, 56.0],
    ("supervised", 250): [60.0, 60.0, 60.0],
    ("mix_label", 250): [61.0, 62.0, 66.0],
}
SEEDS = (3407, 1, 2)


def make_run(runs_dir: Path, key: db.RunKey, miou: float, evals: list[tuple[int, float]]):
    """A run folder as the engine leaves it: summary.json and metrics.jsonl."""
    d = runs_dir / key.name
    d.mkdir(parents=True)
    summary = {
        "strategy": key.method,
        "miou": miou,
        "best_miou": miou + 1.0,
        "per_class_iou": {},
        "iterations": 300,
        "wall_seconds": 12.5,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    lines = []
    for it, value in evals:
        lines.append({"iter": it, "sup": 1.0, "agreement": value / 100, "mask_ratio": 0.5})
        lines.append({"iter": it, "miou": value, "best_miou": value})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    for (method, labels), values in FAKE.items():
        for seed, miou in zip(SEEDS, values):
            make_run(runs, db.RunKey(method, labels, seed), miou, [(100, miou / 2), (300, miou)])
    return runs


def keys(methods=("supervised", "mix_label"), labels=(125, 250)):
    return db.plan(methods, labels, SEEDS)


def demo_bench(runs_dir: Path, out: Path, methods=("supervised", "mix_label"), labels=(125, 250)):
    """The demo's benchmark (FashionScenes: a pool of 2,000 train scenes) over fake runs."""
    return db.Benchmark(
        "demo", "fashionscenes6", ("bg", "top"), 2000, methods, labels, SEEDS, runs_dir, out
    )


def test_stat_is_mean_and_sample_std():
    s = db.stat([50.0, 53.0, 56.0])
    assert s.mean == pytest.approx(53.0)
    assert s.std == pytest.approx(3.0)  # sqrt((9 + 0 + 9) / 2)
    assert s.n == 3
    assert db.stat([7.0]) == db.Stat(7.0, 0.0, 1)


def test_aggregate_groups_by_method_and_labels(runs_dir):
    stats = db.aggregate(db.load_rows(runs_dir, keys()))
    assert set(stats) == set(FAKE)
    assert stats[("supervised", 125)].mean == pytest.approx(42.0)
    assert stats[("supervised", 125)].std == pytest.approx(2.0)
    assert stats[("mix_label", 250)].mean == pytest.approx(63.0)
    assert stats[("mix_label", 250)].std == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    assert stats[("supervised", 250)].std == 0.0


def test_table_has_mean_std_and_gain_over_supervised(runs_dir):
    stats = db.aggregate(db.load_rows(runs_dir, keys()))
    table = db.format_table(stats, ("supervised", "ori_pseudo", "mix_label"), (125, 250), 2000)
    lines = table.strip().splitlines()
    assert "1/16 (125)" in lines[0] and "1/8 (250)" in lines[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]
    }
    assert rows["supervised"] == ["42.00 ± 2.00 (n=3)", "–", "60.00 ± 0.00 (n=3)", "–"]
    assert rows["mix_label"] == ["53.00 ± 3.00 (n=3)", "+11.00", "63.00 ± 2.65 (n=3)", "+3.00"]
    assert rows["ori_pseudo"] == ["–", "–", "–", "–"]  # no runs: shown as missing


def test_csv_has_one_row_per_finished_run(runs_dir, tmp_path):
    ks = keys(methods=("supervised", "mix_label", "cross_label"))
    rows = db.load_rows(runs_dir, ks)
    assert len(rows) == 12  # cross_label never ran
    path = tmp_path / "r.csv"
    db.write_csv(rows, path)
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == db.CSV_FIELDS
    got = {(r["method"], int(r["labels"]), int(r["seed"])): float(r["miou"]) for r in read}
    want = {(m, n, s): v for (m, n), vs in FAKE.items() for s, v in zip(SEEDS, vs)}
    assert got == want
    assert all(float(r["best_miou"]) == float(r["miou"]) + 1 for r in read)


def test_mean_curve_uses_common_iterations_and_last_record_wins(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [
        {"iter": 20, "sup": 2.0},
        {"iter": 50, "miou": 10.0, "best_miou": 10.0},
        {"iter": 50, "miou": 12.0, "best_miou": 12.0},  # resumed run logged 50 again
        {"iter": 100, "miou": 30.0, "best_miou": 30.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    train, evals = db.read_metrics(path)
    assert [r["iter"] for r in train] == [20]
    assert [(r["iter"], r["miou"]) for r in evals] == [(50, 12.0), (100, 30.0)]
    other = [{"iter": 50, "miou": 20.0}, {"iter": 75, "miou": 25.0}, {"iter": 100, "miou": 40.0}]
    iters, mean = db.mean_curve([evals, other], "miou")
    assert iters == [50, 100]
    assert mean == pytest.approx([16.0, 35.0])
    assert db.mean_curve([[], train], "miou") == ([], [])


def test_finished_runs_are_skipped_and_commands_carry_overrides(runs_dir, monkeypatch):
    calls = []

    class Done:
        returncode = 0

    def fake_run(cmd, cwd, env):
        calls.append(cmd)
        return Done()

    monkeypatch.setattr(db.subprocess, "run", fake_run)
    config = Path("configs/demo.yaml")
    failed = db.run_all(keys(methods=("supervised", "cross_label")), runs_dir, config)
    assert failed == []
    assert len(calls) == 6  # the 6 cross_label runs; the supervised ones have summary.json
    cmd = calls[0]
    assert cmd[0] == sys.executable and cmd[1].endswith("cross_label.py")
    assert cmd[cmd.index("--work-dir") + 1] == str(runs_dir / "cross_label_125_3407")
    assert cmd[cmd.index("--config") + 1] == str(config)
    assert cmd[-2:] == ["Dataset.num_labels=125", "Seed=3407"]
    # --set overrides go to every run, before the run's own label count and seed
    calls.clear()
    db.run_all(keys(methods=("cross_label",)), runs_dir, config, 1, ("Dataset.txt_dir=x",))
    assert len(calls) == 6 and all(c[-3:-2] == ["Dataset.txt_dir=x"] for c in calls)
    parser = demo_benchmark.build_parser()
    assert db.parse_args(["--set", "A.b=1", "C.d=2"], parser).set == ["A.b=1", "C.d=2"]


def test_failed_run_is_reported_and_interrupt_stops(runs_dir, monkeypatch):
    class Result:
        returncode = 1

    monkeypatch.setattr(db.subprocess, "run", lambda cmd, cwd, env: Result())
    ks = [db.RunKey("cross_label", 125, 1)]
    assert db.run_all(ks, runs_dir, Path("c.yaml")) == ks
    Result.returncode = 130
    with pytest.raises(KeyboardInterrupt):
        db.run_all(ks, runs_dir, Path("c.yaml"))


def test_only_report_without_matplotlib_writes_csv_and_table(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "out"
    out.mkdir()
    files = db.ReportFiles(out, "demo")
    files.doc.write_text(f"intro\n{db.TABLE_BEGIN}\nold\n{db.TABLE_END}\nend\n")
    argv = ["--only-report", "--runs-dir", str(runs_dir), "--out", str(out)]
    assert demo_benchmark.main(argv + ["--methods", "supervised", "mix_label"]) == 0
    assert files.csv.name == "demo_benchmark_results.csv" and files.csv.is_file()
    table = files.table.read_text()
    assert "1/16 (125)" in table and "+11.00" in table
    doc = files.doc.read_text()
    assert doc.startswith("intro\n") and doc.endswith(f"{db.TABLE_END}\nend\n")
    assert "old" not in doc and table in doc
    assert not list(out.glob("*.png"))


def test_plots_are_written_when_matplotlib_is_present(runs_dir, tmp_path):
    pytest.importorskip("matplotlib")
    ks = keys()
    rows = db.load_rows(runs_dir, ks)
    bench = demo_bench(runs_dir, tmp_path)
    paths = db.make_plots(bench, rows, [], ks)
    names = ("demo_benchmark_miou.png", "demo_benchmark_curves.png", "demo_benchmark_pseudo.png")
    assert sorted(p.name for p in paths) == sorted(names)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_parallel_jobs_split_the_cores_between_runs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(db.os, "cpu_count", lambda: 4)
    assert db.run_env(2)["OMP_NUM_THREADS"] == "2"
    assert db.run_env(8)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in db.run_env(1)  # one job: the run's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert db.run_env(2)["OMP_NUM_THREADS"] == "3"  # the user's choice wins


def test_curves_ignore_unfinished_runs(runs_dir, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    partial = runs_dir / "mix_label_125_9"
    partial.mkdir()
    (partial / "metrics.jsonl").write_text(json.dumps({"iter": 20, "agreement": 0.1}) + "\n")
    seen = []
    real = db.mean_curve
    monkeypatch.setattr(
        db, "mean_curve", lambda runs, field: seen.append(len(runs)) or real(runs, field)
    )
    ks = db.plan(("supervised", "mix_label"), (125,), (*SEEDS, 9))
    bench = demo_bench(runs_dir, tmp_path, labels=(125,))
    db.make_plots(bench, db.load_rows(runs_dir, ks), [], ks)
    assert seen and max(seen) == 3  # the three finished seeds, never the partial fourth
