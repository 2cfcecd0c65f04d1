"""tools/ssl_benchmark.py, the dataset-agnostic parts: rates named from the registry's pool
size, the label-ceiling row, per-class IoU, file names derived from --name, the committed
copies of finished runs, and the CSV as the record of runs whose folders are gone. On fake
run folders of a CamVid-like dataset (no training)."""

import csv
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

from engine import data as engine_data
from tools import demo_benchmark
from tools import ssl_benchmark as sb

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("road", "car", "pedestrian")
POOL = 367  # CamVid's train images
SEEDS = (3407, 1, 2)
LABELS = (46, 92)
CEILING = 367
# final mIoU of fake runs: (method, labels) -> one value per seed 3407, 1, 2
FAKE = {
    ("supervised", 46): [50.0, 52.0, 54.0],
    ("mix_label", 46): [55.0, 56.0, 57.0],
    ("supervised", 92): [60.0, 60.0, 60.0],
    ("mix_label", 92): [61.0, 63.0, 65.0],
    ("supervised", CEILING): [70.0, 71.0, 72.0],
}


def per_class(key: sb.RunKey, miou: float) -> dict:
    """road = mIoU + 10, car = mIoU, pedestrian = mIoU - 10 (supervised) or - 20 (mix_label);
    pedestrian absent from one run's validation set (None, as the engine writes NaN)."""
    ped = miou - (10 if key.method == "supervised" else 20)
    if key == sb.RunKey("supervised", 92, 2):
        ped = None
    return {"road": miou + 10, "car": miou, "pedestrian": ped}


def make_run(runs_dir: Path, key: sb.RunKey, miou: float) -> Path:
    """A run folder as the engine leaves it, with a checkpoint that must not be copied."""
    d = runs_dir / key.name
    d.mkdir(parents=True, exist_ok=True)
    summary = {
        "strategy": key.method,
        "miou": miou,
        "best_miou": miou + 1.0,
        "per_class_iou": per_class(key, miou),
        "iterations": 300,
        "wall_seconds": 12.5,
        "num_labels": key.labels,
        "seed": key.seed,
    }
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    records = [
        {"iter": 100, "sup": 1.0, "agreement": 0.5, "mask_ratio": 0.4},
        {"iter": 100, "miou": miou / 2, "best_miou": miou / 2},
        {"iter": 300, "miou": miou, "best_miou": miou},
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "config.yaml").write_text(f"Seed: {key.seed}\n")
    (d / "latest.pth").write_bytes(b"not a small file")
    return d


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    for (method, labels), values in FAKE.items():
        for seed, miou in zip(SEEDS, values):
            make_run(runs, sb.RunKey(method, labels, seed), miou)
    return runs


def bench(runs_dir: Path, out: Path, **changes) -> sb.Benchmark:
    b = sb.Benchmark(
        name="camvid",
        dataset="camvid_like",
        classes=CLASSES,
        pool_size=POOL,
        methods=("supervised", "mix_label"),
        labels=LABELS,
        seeds=SEEDS,
        runs_dir=runs_dir,
        out=out,
        ceiling=CEILING,
        ceiling_seeds=SEEDS,
    )
    return dataclasses.replace(b, **changes)


def table_rows(table: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of the body rows of the markdown tables in ``table``."""
    lines = [
        line
        for line in table.strip().splitlines()
        if line.startswith("| ") and not line.startswith("| method |")
    ]
    return {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines
    }


def read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- rates and names


def test_rates_are_named_from_the_pool_size():
    # CamVid's shipped splits are 1/16, 1/8, 1/4 of 367 rounded, and all of it
    assert [sb.rate_name(n, 367) for n in (23, 46, 92, 367)] == [
        "1/16 (23)",
        "1/8 (46)",
        "1/4 (92)",
        "all (367)",
    ]
    assert sb.rate_name(125, 2000) == "1/16 (125)"  # FashionScenes, exact
    assert sb.rate_name(662, 10582) == "1/16 (662)"  # VOC blended: 661.4 rounded up
    assert sb.rate_name(186, 2975) == "1/16 (186)"  # Cityscapes
    assert sb.rate_name(1875, 2000) == "1875 labels"  # not a 1/d of the pool
    assert sb.rate_name(100, 367) == "100 labels"


def test_file_names_follow_the_name(tmp_path):
    files = sb.ReportFiles(tmp_path, "camvid")
    assert files.csv == tmp_path / "camvid_benchmark_results.csv"
    assert files.per_class_csv == tmp_path / "camvid_benchmark_per_class.csv"
    assert files.table == tmp_path / "camvid_benchmark_table.md"
    assert files.per_class_table == tmp_path / "camvid_benchmark_per_class.md"
    assert files.doc == tmp_path / "camvid_benchmark.md"
    assert files.runs == tmp_path / "camvid_runs"
    assert [files.plot(k).name for k in sb.PLOTS] == [
        "camvid_benchmark_miou.png",
        "camvid_benchmark_curves.png",
        "camvid_benchmark_pseudo.png",
        "camvid_benchmark_per_class.png",
    ]


@pytest.fixture
def camvid_like(monkeypatch) -> None:
    """A registry entry shaped like CamVid (11 classes, a pool of 367) under another name."""
    classes = tuple(f"class{i}" for i in range(11))
    spec = dataclasses.replace(
        engine_data.DATASETS["fashionscenes6"], classes=classes, pool_size=367
    )
    monkeypatch.setitem(engine_data.DATASETS, "camvid_like", spec)


def test_pool_size_classes_and_defaults_come_from_the_config_and_registry(camvid_like, tmp_path):
    camvid = ["Dataset.name=camvid_like", "Network.num_class=11", "Dataset.num_labels=46"]
    args = sb.parse_args(
        ["--config", "configs/demo.yaml", "--set", *camvid, "--out", str(tmp_path)]
    )
    b = sb.benchmark(args)
    assert (b.dataset, b.pool_size, len(b.classes)) == ("camvid_like", 367, 11)
    assert b.name == "demo"  # the config's file name
    assert b.labels == (46,) and b.seeds == (3407,)  # the config's num_labels and Seed
    assert b.runs_dir == REPO / "runs" / "demo_benchmark"
    assert b.ceiling is None and b.ceiling_seeds == ()
    args = sb.parse_args(
        ["--config", "configs/demo.yaml", "--set", *camvid, "--name", "camvid"]
        + ["--labels", "46", "92", "--seeds", "3407", "1", "2", "--ceiling", "367"]
    )
    b = sb.benchmark(args)
    assert b.runs_dir == REPO / "runs" / "camvid_benchmark"
    assert b.labels == (46, 92) and b.ceiling_seeds == SEEDS
    args = sb.parse_args(["--config", "configs/demo.yaml", "--set", *camvid, "--labels", "400"])
    with pytest.raises(sb.UserError, match="400 labels: expected 1..367"):
        sb.benchmark(args)


def test_demo_defaults_and_bad_command_lines(capsys):
    args = sb.parse_args([], demo_benchmark.build_parser())
    assert args.config == REPO / "configs" / "demo.yaml" and args.name == "demo"
    assert args.labels == [125, 250] and args.seeds == [3407, 1, 2]
    b = sb.benchmark(args)
    assert b.pool_size == 2000 and b.runs_dir == REPO / "runs" / "demo_benchmark"
    args = sb.parse_args(["--labels", "125"], demo_benchmark.build_parser())
    assert args.labels == [125] and args.seeds == [3407, 1, 2]  # one default replaced
    for argv in (
        [],
        ["--config", "c.yaml", "--ceiling-seeds", "1"],
        ["--config", "c.yaml", "--name", "a/b"],
    ):
        with pytest.raises(SystemExit) as exc:
            sb.parse_args(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--config is required" in err and "needs --ceiling" in err and "--name" in err


# --------------------------------------------------------------------------- the ceiling


def test_ceiling_runs_are_planned_once_per_ceiling_seed(tmp_path):
    b = bench(tmp_path / "runs", tmp_path / "out")
    keys = b.run_keys()
    assert len(keys) == 2 * 2 * 3 + 3
    assert keys[-3:] == [sb.RunKey("supervised", 367, s) for s in SEEDS]
    one = bench(tmp_path / "runs", tmp_path / "out", ceiling_seeds=(3407,))
    assert one.run_keys()[-1] == sb.RunKey("supervised", 367, 3407) and len(one.run_keys()) == 13
    # a ceiling that is also a planned rate adds no run
    same = bench(tmp_path / "runs", tmp_path / "out", labels=(46, 367))
    assert len(same.run_keys()) == 12


def test_ceiling_row_has_its_mean_and_its_gain_at_each_rate(runs_dir, tmp_path):
    b = bench(runs_dir, tmp_path)
    stats = sb.aggregate(sb.load_rows(runs_dir, b.run_keys()))
    table = sb.format_table(stats, b.methods, b.labels, POOL, CEILING)
    lines = table.strip().splitlines()
    assert lines[0] == "| method | 1/8 (46) mIoU | gain | 1/4 (92) mIoU | gain |"
    rows = table_rows(table)
    assert rows["supervised"] == ["52.00 ± 2.00 (n=3)", "–", "60.00 ± 0.00 (n=3)", "–"]
    assert rows["mix_label"] == ["56.00 ± 1.00 (n=3)", "+4.00", "63.00 ± 2.00 (n=3)", "+3.00"]
    assert rows["supervised, all 367 labeled (ceiling)"] == [
        "71.00 ± 1.00 (n=3)",
        "+19.00",
        "71.00 ± 1.00 (n=3)",
        "+11.00",
    ]
    assert list(rows)[-1].endswith("(ceiling)")
    part = sb.format_table(stats, b.methods, b.labels, 2000, 1875)  # no such runs
    assert table_rows(part)["supervised, 1875 of 2000 labeled (ceiling)"] == ["–"] * 4


def test_ceiling_run_command_is_supervised_with_the_ceiling_labels(tmp_path, monkeypatch):
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(sb.subprocess, "run", lambda cmd, cwd, env: calls.append(cmd) or Done())
    b = bench(tmp_path / "runs", tmp_path / "out", ceiling_seeds=(3407,))
    sb.run_all(b.run_keys(), b.runs_dir, Path("c.yaml"), 1, ("Dataset.txt_dir=s",), b.files.runs)
    assert len(calls) == 13
    last = calls[-1]
    assert last[1].endswith("supervised.py")
    assert last[-3:] == ["Dataset.txt_dir=s", "Dataset.num_labels=367", "Seed=3407"]


# --------------------------------------------------------------------------- per class


def test_per_class_csv_and_table(runs_dir, tmp_path):
    b = bench(runs_dir, tmp_path / "out")
    sb.report(b)
    rows = read(b.files.per_class_csv)
    assert tuple(rows[0]) == ("method", "labels", "seed", *CLASSES)
    assert len(rows) == 15
    got = {(r["method"], int(r["labels"]), int(r["seed"])): r for r in rows}
    assert got[("mix_label", 46, 1)] == {
        "method": "mix_label",
        "labels": "46",
        "seed": "1",
        "road": "66.0000",
        "car": "56.0000",
        "pedestrian": "36.0000",
    }
    assert got[("supervised", 92, 2)]["pedestrian"] == ""  # absent class: an empty cell

    text = b.files.per_class_table.read_text()
    sections = text.split("**")
    assert sections[1] == "1/8 (46)" and sections[3] == "1/4 (92)"
    at46, at92 = table_rows(sections[2]), table_rows(sections[4])
    assert at46["supervised (n=3)"] == ["62.00", "52.00", "42.00"]
    assert at46["mix_label (n=3)"] == ["66.00", "56.00", "36.00"]
    assert at46["gain: mix_label"] == ["+4.00", "+4.00", "-6.00"]
    assert at46["supervised, all 367 labeled (ceiling) (n=3)"] == ["81.00", "71.00", "61.00"]
    assert at46["gain: supervised, all 367 labeled (ceiling)"] == ["+19.00", "+19.00", "+19.00"]
    assert "gain: supervised" not in at46  # no gain of supervised over itself
    # the absent pedestrian is left out of supervised's mean at 92: (50 + 50) / 2
    assert at92["supervised (n=3)"] == ["70.00", "60.00", "50.00"]
    assert at92["gain: mix_label"] == ["+3.00", "+3.00", "-7.00"]
    # a new doc gets both tables between its markers
    doc = b.files.doc.read_text()
    assert sb.TABLE_BEGIN in doc and sb.PER_CLASS_BEGIN in doc
    assert text in doc and b.files.table.read_text() in doc


def test_per_class_gain_plot(runs_dir, tmp_path):
    pytest.importorskip("matplotlib")
    b = bench(runs_dir, tmp_path / "out")
    written = sb.report(b)
    names = {p.name for p in written}
    assert {f"camvid_benchmark_{k}.png" for k in sb.PLOTS} <= names
    assert b.files.plot("per_class").stat().st_size > 1000


def test_report_without_matplotlib_writes_every_table_under_the_name(
    runs_dir, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "out"
    written = sb.report(bench(runs_dir, out))
    assert sorted(p.name for p in written) == [
        "camvid_benchmark.md",
        "camvid_benchmark_per_class.csv",
        "camvid_benchmark_per_class.md",
        "camvid_benchmark_results.csv",
        "camvid_benchmark_table.md",
    ]
    assert not list(out.glob("*.png"))


# --------------------------------------------------------------------------- persistence


def test_finished_runs_are_copied_and_count_as_finished_without_the_run_folders(
    runs_dir, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    b = bench(runs_dir, out)
    sb.report(b)
    first = {p: p.read_bytes() for p in (b.files.csv, b.files.per_class_csv, b.files.table)}
    copy = b.files.runs / "mix_label_46_1"
    assert sorted(p.name for p in copy.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
    ]
    assert (copy / "summary.json").read_bytes() == (
        runs_dir / copy.name / "summary.json"
    ).read_bytes()
    assert not list(b.files.runs.rglob("*.pth"))

    shutil.rmtree(runs_dir)  # a later session: runs/ is gone, the copies were committed
    (out / "camvid_benchmark_results.csv").unlink()  # and the report is rebuilt from them
    (out / "camvid_benchmark_per_class.csv").unlink()
    assert all(sb.is_done(runs_dir, k, b.files.runs) for k in b.run_keys())
    assert not sb.is_done(runs_dir, b.run_keys()[0])  # the run folder alone would not say so
    calls = []
    monkeypatch.setattr(sb.subprocess, "run", lambda *a, **k: calls.append(a))
    assert sb.run_all(b.run_keys(), runs_dir, Path("c.yaml"), copies=b.files.runs) == []
    assert calls == []  # nothing to run again
    sb.report(b)
    assert {p: p.read_bytes() for p in first} == first
    # the curves read the copies' metrics.jsonl
    _, evals = sb.read_metrics(
        sb.run_folder(runs_dir, b.run_keys()[0], b.files.runs) / "metrics.jsonl"
    )
    assert [e["iter"] for e in evals] == [100, 300]


def test_a_run_is_copied_as_soon_as_it_finishes(tmp_path, monkeypatch):
    runs, copies = tmp_path / "runs", tmp_path / "out" / "x_runs"
    key = sb.RunKey("mix_label", 46, 1)

    class Done:
        returncode = 0

    def fake_run(cmd, cwd, env):  # the run writes its folder, then exits 0
        make_run(runs, key, 50.0)
        return Done()

    monkeypatch.setattr(sb.subprocess, "run", fake_run)
    assert sb.run_all([key], runs, Path("c.yaml"), copies=copies) == []
    assert (copies / key.name / "summary.json").is_file()
    assert not (copies / key.name / "latest.pth").exists()


def test_csv_rows_of_runs_without_folders_are_kept_and_reported(runs_dir, tmp_path, monkeypatch):
    """The demo's case: its CSV was committed, its run folders were not (and had no copies)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    b = bench(runs_dir, out)
    sb.report(b)
    before = {p: p.read_bytes() for p in (b.files.csv, b.files.table, b.files.per_class_csv)}
    shutil.rmtree(runs_dir)
    shutil.rmtree(b.files.runs)
    written = sb.report(b)
    assert {p: p.read_bytes() for p in before} == before  # rewritten byte for byte
    assert b.files.doc in written

    # a run found again replaces its row; a recorded run outside the plan stays in the CSV
    # but not in the table
    make_run(runs_dir, sb.RunKey("mix_label", 46, 1), 59.0)
    sb.report(bench(runs_dir, out, labels=(46,), ceiling=None, ceiling_seeds=()))
    rows = read(b.files.csv)
    assert len(rows) == 15
    assert [
        r["miou"] for r in rows if (r["method"], r["labels"], r["seed"]) == ("mix_label", "46", "1")
    ] == ["59.0000"]
    rows46 = table_rows(b.files.table.read_text())
    assert list(rows46) == ["supervised", "mix_label"]
    assert rows46["mix_label"] == ["57.00 ± 2.00 (n=3)", "+5.00"]


def test_the_committed_demo_report_is_reproduced_from_its_csv(tmp_path, monkeypatch):
    """``tools/demo_benchmark.py --only-report`` with no run folder: the committed CSV,
    table and doc come back unchanged."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "docs"
    out.mkdir()
    names = ("demo_benchmark_results.csv", "demo_benchmark_table.md", "demo_benchmark.md")
    for name in names:
        shutil.copyfile(REPO / "docs" / name, out / name)
    argv = ["--only-report", "--out", str(out), "--runs-dir", str(tmp_path / "no_runs")]
    assert demo_benchmark.main(argv) == 0
    for name in names:
        assert (out / name).read_bytes() == (REPO / "docs" / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_parallel_runs_write_their_console_to_their_folder_and_report_what_is_left(
    tmp_path, monkeypatch, capsys
):
    runs, copies = tmp_path / "runs", tmp_path / "out" / "x_runs"
    keys = [sb.RunKey("supervised", 46, s) for s in (1, 2, 3)]

    class Done:
        returncode = 0

    def fake_run(cmd, cwd, env, stdout, stderr):  # a run prints, writes its folder, exits 0
        assert stderr is sb.subprocess.STDOUT
        stdout.write(f"progress of {cmd[-1]}\n")
        seed = int(cmd[-1].split("=")[1])
        make_run(runs, sb.RunKey("supervised", 46, seed), 50.0)
        return Done()

    monkeypatch.setattr(sb.subprocess, "run", fake_run)
    (runs / keys[0].name).mkdir(parents=True)
    (runs / keys[0].name / "console.txt").write_text("an earlier, interrupted try\n")
    assert sb.run_all(keys, runs, Path("c.yaml"), jobs=2, copies=copies) == []
    assert (runs / keys[0].name / "console.txt").read_text() == (
        "an earlier, interrupted try\nprogress of Seed=1\n"  # appended, not overwritten
    )
    assert (runs / keys[2].name / "console.txt").read_text() == "progress of Seed=3\n"
    out = capsys.readouterr().out
    assert "progress of" not in out
    done = [line for line in out.splitlines() if line.startswith("done")]
    assert len(done) == 3
    assert sum("2 left" in line for line in done) == 1
    assert sum("1 left" in line for line in done) == 1
    assert sum("left" in line for line in done) == 2  # the last says nothing is left
