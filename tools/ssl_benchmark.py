"""A semi-supervised benchmark on any dataset: every strategy at a few label counts and seeds.

    python tools/ssl_benchmark.py --config CONFIG [--name NAME]
                                  [--labels N ...] [--seeds S ...] [--methods M ...]
                                  [--ceiling N [--ceiling-seeds S ...]]
                                  [--runs-dir runs/NAME_benchmark] [--out docs] [--jobs 1]
                                  [--set Section.key=value ...] [--only-report]

Nothing here is specific to a dataset: the label counts and seeds default to the config's
``Dataset.num_labels`` and ``Seed``; the train pool that names the rates (``1/16 (125)``)
and the class names come from the dataset registry (``engine.data.DATASETS[Dataset.name]``);
every file is named after ``--name`` (default: the config's file name without ``.yaml``).

Each run is a subprocess of its entry script (``python mix_label.py --config CONFIG
--work-dir runs/NAME_benchmark/mix_label_125_3407 Dataset.num_labels=125 Seed=3407``), one
after the other, or ``--jobs`` at a time, each with ``OMP_NUM_THREADS`` = cores / jobs (on a
shared 2-core machine two one-thread runs are less hurt by other load than one two-thread
run; each run's console output then goes to ``<run>/console.txt`` and this console gets a
line per run started and finished, with the runs left and an estimate of the time to the
end). ``--ceiling N`` adds one ``supervised`` run with N labels per seed of
``--ceiling-seeds`` (default: ``--seeds``), the label ceiling; put N's split where the
runs read theirs (``--set Dataset.txt_dir=...`` applies to every run).

A run is finished when its ``summary.json`` exists in its run folder or in its copy: each
finished run's small files (``summary.json``, ``metrics.jsonl``, ``config.yaml``; never a
checkpoint) are copied to ``<out>/NAME_runs/<run>/``, which can be committed, so a later
session without ``runs/`` neither repeats the run nor loses it from the report. A finished
run is not run again; an interrupted one resumes from its ``latest.pth`` (the engine does
that). Then the report is written into ``--out``:

- ``NAME_benchmark_results.csv``: one row per run (method, labels, seed, miou, best_miou,
  wall_seconds, iterations). It is also the record of finished runs: a row whose run no
  folder holds (runs benchmarked before the copies existed) is kept and reported;
- ``NAME_benchmark_per_class.csv``: one row per run, one IoU column per class;
- ``NAME_benchmark_table.md``: mean ± std over seeds of the final mIoU per method and label
  count, the gain over ``supervised``, and the ceiling's row; the same table replaces the
  text between ``<!-- table:begin -->`` and ``<!-- table:end -->`` of ``NAME_benchmark.md``
  (created with the markers when missing);
- ``NAME_benchmark_per_class.md``: per rate, the mean IoU of each class per method and the
  gain of each semi-supervised method over ``supervised``; also put between
  ``<!-- per-class:begin -->`` and ``<!-- per-class:end -->`` of ``NAME_benchmark.md``;
- PNG plots (need matplotlib, an optional tool-only dependency; without it the CSVs and the
  tables are still written): final mIoU per method and rate (``_miou``), validation mIoU
  against iteration (``_curves``) and pseudo-label agreement and mask ratio (``_pseudo``) at
  the lowest rate, per-class gains over supervised (``_per_class``). A plot with nothing to
  show (no metrics.jsonl, no per-class numbers) is not written.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from utils.command_line import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.strategies import STRATEGIES  # noqa: E402

METHODS = tuple(STRATEGIES)
# the gains are measured against the strategy without pseudo-labels
BASELINE = next(name for name, s in STRATEGIES.items() if not s.semi_supervised)
TABLE_BEGIN, TABLE_END = "<!-- table:begin -->", "<!-- table:end -->"
PER_CLASS_BEGIN, PER_CLASS_END = "<!-- per-class:begin -->", "<!-- per-class:end -->"
KEY_FIELDS = ("method", "labels", "seed")
CSV_FIELDS = (*KEY_FIELDS, "miou", "best_miou", "wall_seconds", "iterations")
INT_FIELDS = ("labels", "seed", "iterations")
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")  # summary last: a copy is whole
PLOTS = ("miou", "curves", "pseudo", "per_class")


@dataclass(frozen=True)
class RunKey:
    """One benchmark run: a strategy at a label count with a seed."""

    method: str
    labels: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_{self.labels}_{self.seed}"


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1; 0 for one value) over seeds."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class ReportFiles:
    """Every file of a benchmark's report, named after the benchmark: ``<name>_benchmark*``."""

    out: Path
    name: str

    def _path(self, suffix: str) -> Path:
        return self.out / f"{self.name}_benchmark{suffix}"

    @property
    def csv(self) -> Path:
        return self._path("_results.csv")

    @property
    def per_class_csv(self) -> Path:
        return self._path("_per_class.csv")

    @property
    def table(self) -> Path:
        return self._path("_table.md")

    @property
    def per_class_table(self) -> Path:
        return self._path("_per_class.md")

    @property
    def doc(self) -> Path:
        return self._path(".md")

    @property
    def runs(self) -> Path:
        """The copies of the finished runs' small files."""
        return self.out / f"{self.name}_runs"

    def plot(self, kind: str) -> Path:
        assert kind in PLOTS, kind
        return self._path(f"_{kind}.png")


@dataclass(frozen=True)
class Benchmark:
    """What to run and report: the grid, the optional label ceiling, the dataset's facts."""

    name: str
    dataset: str  # Dataset.name of the config
    classes: tuple[str, ...]
    pool_size: int  # the train images the labeled ones are drawn from (names the rates)
    methods: tuple[str, ...]
    labels: tuple[int, ...]
    seeds: tuple[int, ...]
    runs_dir: Path
    out: Path
    ceiling: int | None = None  # supervised runs with this many labels, one per ceiling seed
    ceiling_seeds: tuple[int, ...] = ()

    @property
    def files(self) -> ReportFiles:
        return ReportFiles(self.out, self.name)

    def run_keys(self) -> list[RunKey]:
        """The grid, then the ceiling runs it does not hold already."""
        keys = plan(self.methods, self.labels, self.seeds)
        if self.ceiling is not None:
            keys += [RunKey(BASELINE, self.ceiling, s) for s in self.ceiling_seeds]
        return list(dict.fromkeys(keys))


# --------------------------------------------------------------------------- running


def plan(methods, labels, seeds) -> list[RunKey]:
    """All runs, labels outermost so that a partial benchmark covers one rate fully first."""
    return [RunKey(m, n, s) for n in labels for s in seeds for m in methods]


def run_folder(runs_dir: Path, key: RunKey, copies: Path | None = None) -> Path | None:
    """The folder holding the finished run's ``summary.json``: its run folder, else its copy
    under ``copies``; None while the run is not finished."""
    for base in (runs_dir, copies):
        if base is not None and (base / key.name / "summary.json").is_file():
            return base / key.name
    return None


def is_done(runs_dir: Path, key: RunKey, copies: Path | None = None) -> bool:
    return run_folder(runs_dir, key, copies) is not None


def persist(runs_dir: Path, key: RunKey, copies: Path) -> bool:
    """Copy a finished run's small files into ``copies/<run>``; False when it has not
    finished in ``runs_dir``."""
    src = runs_dir / key.name
    if not (src / "summary.json").is_file():
        return False
    dst = copies / key.name
    dst.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return True


def run_command(
    key: RunKey, runs_dir: Path, config: Path, overrides: tuple[str, ...] = ()
) -> list[str]:
    """The entry-script command line of one run; ``overrides`` come before the run's own."""
    return [
        sys.executable,
        str(REPO / f"{key.method}.py"),
        "--config",
        str(config),
        "--work-dir",
        str(runs_dir / key.name),
        *overrides,
        f"Dataset.num_labels={key.labels}",
        f"Seed={key.seed}",
    ]


def run_env(jobs: int) -> dict[str, str]:
    """With several jobs, each run gets an equal share of the cores as its thread count."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def run_all(
    keys: list[RunKey],
    runs_dir: Path,
    config: Path,
    jobs: int = 1,
    overrides: tuple[str, ...] = (),
    copies: Path | None = None,
) -> list[RunKey]:
    """Run the runs not finished (in ``runs_dir`` or ``copies``), ``jobs`` at a time (1: one
    after the other), copy each finished one into ``copies``; return the failed.

    With one job a run prints to this console; with several, each run's console output
    (progress bar included) goes to ``<run>/console.txt`` (appended: a resumed run adds to it)
    and this console gets one line per run started and finished, with how many are left and
    an estimate of the time to the end (mean time of the runs finished so far)."""
    pending = [k for k in keys if not is_done(runs_dir, k, copies)]
    print(f"{len(keys) - len(pending)} of {len(keys)} runs done, {len(pending)} to run")
    env = run_env(jobs)
    lock = threading.Lock()
    walls: list[float] = []

    def one(key: RunKey) -> int:
        t0 = time.time()
        cmd = run_command(key, runs_dir, config, overrides)
        if jobs == 1:
            print(f"start {key.name}", flush=True)
            rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        else:
            console = runs_dir / key.name / "console.txt"
            console.parent.mkdir(parents=True, exist_ok=True)
            print(f"start {key.name} (output: {console})", flush=True)
            with console.open("a") as out:
                rc = subprocess.run(
                    cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
                ).returncode
        if rc == 0 and copies is not None:
            persist(runs_dir, key, copies)
        wall = time.time() - t0
        with lock:
            walls.append(wall)
            left = len(pending) - len(walls)
            eta = math.ceil(left / jobs) * sum(walls) / len(walls)
            tail = f"; {left} left, about {eta / 60:.0f} min more" if left else ""
            print(f"done  {key.name}: exit {rc} after {wall:.0f} s{tail}", flush=True)
        return rc

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(one, pending))
    if 130 in codes:  # a run was interrupted (Ctrl-C): so is the benchmark
        raise KeyboardInterrupt
    return [k for k, rc in zip(pending, codes) if rc != 0]


# --------------------------------------------------------------------------- reading runs


def _summaries(runs_dir: Path, keys: list[RunKey], copies: Path | None):
    for key in keys:
        folder = run_folder(runs_dir, key, copies)
        if folder is not None:
            yield key, json.loads((folder / "summary.json").read_text())


def load_rows(runs_dir: Path, keys: list[RunKey], copies: Path | None = None) -> list[dict]:
    """One results row per finished run (runs without summary.json are skipped)."""
    return [
        {**_key_cells(key), **{f: summary[f] for f in CSV_FIELDS[3:]}}
        for key, summary in _summaries(runs_dir, keys, copies)
    ]


def load_per_class(
    runs_dir: Path, keys: list[RunKey], classes: Sequence[str], copies: Path | None = None
) -> list[dict]:
    """One row per finished run: the IoU (%) of each class from ``summary.json``'s
    ``per_class_iou`` (None for a class absent from the validation set)."""
    rows = []
    for key, summary in _summaries(runs_dir, keys, copies):
        iou = summary.get("per_class_iou", {})
        rows.append({**_key_cells(key), **{c: iou.get(c) for c in classes}})
    return rows


def _key_cells(key: RunKey) -> dict:
    return {"method": key.method, "labels": key.labels, "seed": key.seed}


def row_key(row: dict) -> RunKey:
    return RunKey(row["method"], int(row["labels"]), int(row["seed"]))


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV this tool wrote, typed back (ints, floats, None for an empty cell);
    no rows when the file does not exist."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {k: _parse_cell(k, v) for k, v in row.items() if k is not None}
            for row in csv.DictReader(f)
        ]


def _parse_cell(field: str, text: str | None):
    if field == "method":
        return text
    if text in ("", None):
        return None
    return int(text) if field in INT_FIELDS else float(text)


def merge_rows(found: list[dict], recorded: list[dict], keys: list[RunKey]) -> list[dict]:
    """The record of finished runs: the rows of the runs found (they win), then the rows
    recorded before whose runs are not found, in plan order; recorded rows outside the
    plan are kept after them, in their order."""
    fresh = {row_key(r): r for r in found}
    old = {row_key(r): r for r in recorded}
    planned = set(keys)
    rows = [fresh.get(k) or old[k] for k in keys if k in fresh or k in old]
    return rows + [r for k, r in old.items() if k not in planned]


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """Split a metrics.jsonl into training records and evaluation records (``miou``).

    A resumed run may log an iteration twice; the last record of an iteration wins.
    """
    train, evals = {}, {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                (evals if "miou" in record else train)[record["iter"]] = record
    return [train[i] for i in sorted(train)], [evals[i] for i in sorted(evals)]


def mean_curve(records_per_run: list[list[dict]], field: str) -> tuple[list[int], list[float]]:
    """Mean of ``field`` over runs at the iterations every run logged it."""
    tables = [{r["iter"]: r[field] for r in records if field in r} for records in records_per_run]
    tables = [t for t in tables if t]
    if not tables:
        return [], []
    iters = sorted(set.intersection(*(set(t) for t in tables)))
    return iters, [sum(t[i] for t in tables) / len(tables) for i in iters]


# --------------------------------------------------------------------------- aggregation


def stat(values: list[float]) -> Stat:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return Stat(mean, math.sqrt(var), n)


def aggregate(rows: list[dict], field: str = "miou") -> dict[tuple[str, int], Stat]:
    """``{(method, labels): Stat}`` of ``field`` over seeds."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["labels"])].append(float(row[field]))
    return {k: stat(v) for k, v in groups.items()}


def aggregate_per_class(
    rows: list[dict], classes: Sequence[str]
) -> dict[tuple[str, int], tuple[int, dict[str, float | None]]]:
    """``{(method, labels): (runs, {class: mean IoU over the runs that have it, or None})}``."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["labels"])].append(row)
    result = {}
    for k, group in groups.items():
        means = {}
        for c in classes:
            values = [r[c] for r in group if r.get(c) is not None]
            means[c] = sum(values) / len(values) if values else None
        result[k] = (len(group), means)
    return result


def rate_name(labels: int, pool_size: int) -> str:
    """``1/16 (125)`` where ``labels`` is a 1/d of the pool up to rounding (CamVid: 23 of
    367 is 1/16), ``all (367)`` for the whole pool, else ``1875 labels``."""
    if labels == pool_size:
        return f"all ({labels})"
    d = round(pool_size / labels)
    if d >= 2 and abs(pool_size / d - labels) < 1:
        return f"1/{d} ({labels})"
    return f"{labels} labels"


def ceiling_name(labels: int, pool_size: int) -> str:
    held = f"all {labels}" if labels == pool_size else f"{labels} of {pool_size}"
    return f"{BASELINE}, {held} labeled (ceiling)"


def format_table(
    stats: dict[tuple[str, int], Stat],
    methods,
    labels,
    pool_size: int,
    ceiling: int | None = None,
) -> str:
    """Markdown: mean ± std (n seeds) of final mIoU; gain of the mean over supervised. The
    ceiling's row repeats its mIoU under each rate, with its gain over that rate's
    supervised runs (the room unlabeled data could win)."""
    head = "| method | " + " | ".join(f"{rate_name(n, pool_size)} mIoU | gain" for n in labels)
    lines = [head + " |", "|---|" + "---:|---:|" * len(labels)]
    rows = [(m, m) for m in methods]
    if ceiling is not None:
        rows.append((ceiling_name(ceiling, pool_size), BASELINE))
    for i, (title, method) in enumerate(rows):
        is_ceiling = i == len(methods)
        cells = []
        for n in labels:
            s = stats.get((method, ceiling if is_ceiling else n))
            base = stats.get((BASELINE, n))
            cells.append(f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})" if s else "–")
            if s and base and (is_ceiling or method != BASELINE):
                cells.append(f"{s.mean - base.mean:+.2f}")
            else:
                cells.append("–")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_per_class(
    per_class: dict[tuple[str, int], tuple[int, dict[str, float | None]]],
    methods,
    labels,
    classes: Sequence[str],
    pool_size: int,
    ceiling: int | None = None,
) -> str:
    """Markdown, one table per rate with per-class numbers: the mean IoU of each method (and
    of the ceiling), then the gain of each semi-supervised method (and of the ceiling) over
    supervised, as differences of the means over seeds."""
    parts = []
    for n in labels:
        rows = [(m, (m, n)) for m in methods]
        if ceiling is not None:
            rows.append((ceiling_name(ceiling, pool_size), (BASELINE, ceiling)))
        if not any(k in per_class for _, k in rows):
            continue
        base = per_class.get((BASELINE, n), (0, {}))[1]
        lines = [
            f"**{rate_name(n, pool_size)}**: IoU (%) per class, mean over seeds; gain = "
            f"difference to {BASELINE}\n",
            "| method | " + " | ".join(classes) + " |",
            "|---|" + "---:|" * len(classes),
        ]
        gains = []
        for title, k in rows:
            runs, means = per_class.get(k, (0, {}))
            cells = [_num(means.get(c), "{:.2f}") for c in classes]
            lines.append(f"| {title} (n={runs}) | " + " | ".join(cells) + " |")
            if k[0] != BASELINE or k[1] != n:
                diffs = [_diff(means.get(c), base.get(c)) for c in classes]
                gains.append(f"| gain: {title} | " + " | ".join(diffs) + " |")
        parts.append("\n".join(lines + gains) + "\n")
    return "\n".join(parts)


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _diff(value: float | None, base: float | None) -> str:
    return "–" if value is None or base is None else f"{value - base:+.2f}"


# --------------------------------------------------------------------------- files


def write_csv(rows: list[dict], path: Path, fields: Sequence[str] = CSV_FIELDS) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in fields})


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def replace_table(doc: Path, table: str, begin: str = TABLE_BEGIN, end: str = TABLE_END) -> bool:
    """Put ``table`` between the markers ``begin`` and ``end`` of ``doc``; False when there
    are none."""
    if not doc.is_file():
        return False
    text = doc.read_text()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return False
    doc.write_text(text[: i + len(begin)] + "\n" + table + text[j:])
    return True


def doc_skeleton(bench: Benchmark) -> str:
    """A new ``<name>_benchmark.md``: the markers the report fills, and room for the prose."""
    files = bench.files
    return (
        f"# {bench.name} benchmark ({bench.dataset})\n\n"
        "The text between the markers is rewritten by every report of "
        f"`tools/ssl_benchmark.py --name {bench.name}`; the rest is not.\n\n"
        "Final mIoU (%) on the validation set, mean ± sample standard deviation over the "
        f"seeds; gain = difference of the means to `{BASELINE}`.\n\n"
        f"{TABLE_BEGIN}\n{TABLE_END}\n\n"
        f"Per-run numbers: [{files.csv.name}]({files.csv.name}), per class: "
        f"[{files.per_class_csv.name}]({files.per_class_csv.name}).\n\n"
        f"## Per-class IoU\n\n{PER_CLASS_BEGIN}\n{PER_CLASS_END}\n"
    )


# --------------------------------------------------------------------------- plots


def make_plots(
    bench: Benchmark, rows: list[dict], per_class: list[dict], keys: list[RunKey]
) -> list[Path]:
    """The PNGs that have something to show; none (with a note) without matplotlib.
    ``rows`` / ``per_class`` are the planned runs' rows; the curves read the metrics.jsonl
    of the finished ``keys`` (a partial run would cut the curves)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (the CSVs and the tables are written)")
        return []
    files, copies = bench.files, bench.files.runs
    folders = {k: run_folder(bench.runs_dir, k, copies) for k in keys}
    metrics = {k: read_metrics(f / "metrics.jsonl") for k, f in folders.items() if f}
    grid = [k for k in metrics if k.method in bench.methods and k.labels in bench.labels]
    metrics = {k: metrics[k] for k in grid}
    low = min(bench.labels)
    paths = [
        _plot_miou(plt, bench, aggregate(rows), files.plot("miou")) if rows else None,
        _plot_curves(plt, bench, metrics, low, files.plot("curves")),
        _plot_pseudo(plt, bench, metrics, low, files.plot("pseudo")),
        _plot_per_class(plt, bench, per_class, files.plot("per_class")) if per_class else None,
    ]
    return [p for p in paths if p is not None]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_miou(plt, bench: Benchmark, stats, path: Path) -> Path:
    methods = bench.methods
    labels = [n for n in bench.labels if any((m, n) in stats for m in methods)]
    labels = labels or list(bench.labels)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(labels))]
        s = [stats.get((m, n)) for n in labels]
        ax.bar(
            xs,
            [v.mean if v else 0 for v in s],
            width,
            yerr=[v.std if v else 0 for v in s],
            capsize=3,
            label=m,
        )
    top = stats.get((BASELINE, bench.ceiling)) if bench.ceiling is not None else None
    if top is not None:
        name = ceiling_name(bench.ceiling, bench.pool_size)
        ax.axhline(top.mean, color="grey", linestyle="--", linewidth=1, label=name)
    ax.set_xticks(range(len(labels)), [rate_name(n, bench.pool_size) for n in labels])
    ax.set_ylabel("final mIoU (%)")
    ax.set_title(f"{bench.dataset} val mIoU, mean ± std over seeds")
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def _plot_curves(plt, bench: Benchmark, metrics, labels: int, path: Path) -> Path | None:
    curves = []
    for m in bench.methods:
        runs = [ev for k, (_, ev) in metrics.items() if k.method == m and k.labels == labels]
        iters, miou = mean_curve(runs, "miou")
        if iters:
            curves.append((m, len(runs), iters, miou))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for m, n, iters, miou in curves:
        ax.plot(iters, miou, marker="o", label=f"{m} ({n} seeds)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("val mIoU (%)")
    rate = rate_name(labels, bench.pool_size)
    ax.set_title(f"Validation mIoU during training, {rate}, mean over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _plot_pseudo(plt, bench: Benchmark, metrics, labels: int, path: Path) -> Path | None:
    semi = [m for m in bench.methods if STRATEGIES[m].needs_rep]  # those with an agreement
    curves = {}
    for field in ("agreement", "mask_ratio"):
        for m in semi:
            runs = [tr for k, (tr, _) in metrics.items() if k.method == m and k.labels == labels]
            iters, values = mean_curve(runs, field)
            if iters:
                curves[(field, m)] = (iters, values)
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
    for field, ax in zip(("agreement", "mask_ratio"), axes):
        for m in semi:
            if (field, m) in curves:
                ax.plot(*curves[(field, m)], label=m)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("logit / rep-space label agreement", fontsize=9)
    axes[1].set_title("mask ratio (conf >= un_threshold)", fontsize=9)
    rate = rate_name(labels, bench.pool_size)
    fig.suptitle(f"Teacher pseudo-labels, {rate}, mean over seeds", fontsize=10)
    return _save(plt, fig, path)


def _plot_per_class(plt, bench: Benchmark, per_class: list[dict], path: Path) -> Path | None:
    """Per rate, the gain of each semi-supervised method over supervised, class by class."""
    means = aggregate_per_class(per_class, bench.classes)
    semi = [m for m in bench.methods if m != BASELINE]
    rates = [
        n for n in bench.labels if (BASELINE, n) in means and any((m, n) in means for m in semi)
    ]
    if not rates:
        return None
    classes = bench.classes
    fig, axes = plt.subplots(
        len(rates), 1, figsize=(max(6.4, 0.55 * len(classes) + 1.5), 2.6 * len(rates) + 0.6)
    )
    axes = [axes] if len(rates) == 1 else list(axes)
    width = 0.8 / len(semi)
    for ax, n in zip(axes, rates):
        base = means[(BASELINE, n)][1]
        for j, m in enumerate(semi):
            if (m, n) not in means:
                continue
            iou = means[(m, n)][1]
            xs = [i + (j - (len(semi) - 1) / 2) * width for i in range(len(classes))]
            gains = [
                iou[c] - base[c] if iou[c] is not None and base[c] is not None else 0
                for c in classes
            ]
            ax.bar(xs, gains, width, label=m)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("IoU gain (points)")
        ax.set_title(f"{bench.dataset}, {rate_name(n, bench.pool_size)}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(semi))
    fig.suptitle(f"Per-class IoU gain over {BASELINE}, mean over seeds", fontsize=10)
    return _save(plt, fig, path)


# --------------------------------------------------------------------------- report


def report(bench: Benchmark) -> list[Path]:
    """Copy the finished runs' small files, then write the CSVs, the tables (also into the
    doc) and the plots; return what was written. The CSVs already in ``out`` hold the runs
    finished before: a row whose run no folder holds is kept."""
    files, keys = bench.files, bench.run_keys()
    bench.out.mkdir(parents=True, exist_ok=True)
    for key in keys:
        persist(bench.runs_dir, key, files.runs)
    found = load_rows(bench.runs_dir, keys, files.runs)
    rows = merge_rows(found, read_csv(files.csv), keys)
    per_class = merge_rows(
        load_per_class(bench.runs_dir, keys, bench.classes, files.runs),
        read_csv(files.per_class_csv),
        keys,
    )
    write_csv(rows, files.csv)
    written = [files.csv]
    planned = set(keys)
    rows = [r for r in rows if row_key(r) in planned]
    per_class = [r for r in per_class if row_key(r) in planned]

    table = format_table(
        aggregate(rows), bench.methods, bench.labels, bench.pool_size, bench.ceiling
    )
    files.table.write_text(table)
    written.append(files.table)
    if not files.doc.exists():
        files.doc.write_text(doc_skeleton(bench))
    doc_changed = replace_table(files.doc, table)
    per_class_table = ""
    if per_class:
        write_csv(per_class, files.per_class_csv, (*KEY_FIELDS, *bench.classes))
        per_class_table = format_per_class(
            aggregate_per_class(per_class, bench.classes),
            bench.methods,
            bench.labels,
            bench.classes,
            bench.pool_size,
            bench.ceiling,
        )
        files.per_class_table.write_text(per_class_table)
        written += [files.per_class_csv, files.per_class_table]
        doc_changed |= replace_table(files.doc, per_class_table, PER_CLASS_BEGIN, PER_CLASS_END)
    if doc_changed:
        written.append(files.doc)
    written += make_plots(bench, rows, per_class, keys)
    print(
        f"{len(rows)} of {len(keys)} runs finished ({len(found)} in run folders or copies, "
        f"{len(rows) - len(found)} only in {files.csv.name})\n\n{table}\n{per_class_table}"
    )
    return written


# --------------------------------------------------------------------------- command line

EXAMPLES = """examples:
  python tools/ssl_benchmark.py --config configs/camvid.yaml --name camvid --labels 46 92 \\
      --seeds 3407 1 2 --ceiling 367 --jobs 2          # 4 methods x 2 rates x 3 seeds + 3 ceiling runs
  python tools/ssl_benchmark.py --config configs/camvid.yaml --name camvid --labels 46 92 \\
      --seeds 3407 1 2 --ceiling 367 --ceiling-seeds 3407   # one ceiling run
  python tools/ssl_benchmark.py --config configs/demo.yaml --name demo_lr \\
      --labels 125 --set Optim.lr=0.01                  # another budget, its own files
  python tools/ssl_benchmark.py --config configs/camvid.yaml --name camvid --labels 46 92 \\
      --seeds 3407 1 2 --ceiling 367 --only-report     # tables and plots of finished runs
"""

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def build_parser(
    prog: str = "ssl_benchmark.py",
    description: str = __doc__,
    examples: str = EXAMPLES,
    defaults: dict | None = None,
) -> argparse.ArgumentParser:
    """The command line; ``defaults`` (e.g. the demo's config, name, labels and seeds)
    replace the config-derived defaults."""
    defaults = dict(defaults or {})

    def default(key: str, otherwise: str) -> str:
        if key not in defaults:
            return otherwise
        value = defaults[key]
        value = value.relative_to(REPO) if isinstance(value, Path) else value
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    p = ArgumentParser(prog=prog, description=description, epilog=examples)
    p.add_argument(
        "--config",
        type=Path,
        help=f"config of every run ({'default ' if 'config' in defaults else ''}"
        f"{default('config', 'required')})",
    )
    p.add_argument(
        "--name",
        help="names every output: <out>/<name>_benchmark_*, <out>/<name>_runs/ and the "
        f"default runs folder (default: {default('name', 'the config file name less .yaml')})",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        type=int,
        help=f"labeled counts (default: {default('labels', 'the config Dataset.num_labels')})",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help=f"seeds (default: {default('seeds', 'the config Seed')})",
    )
    p.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="strategies to run"
    )
    p.add_argument(
        "--ceiling",
        type=int,
        metavar="N",
        help="also run supervised with N labels (the label ceiling), reported as its own row",
    )
    p.add_argument(
        "--ceiling-seeds",
        nargs="+",
        type=int,
        metavar="S",
        help="seeds of the ceiling runs (default: --seeds)",
    )
    p.add_argument(
        "--runs-dir", type=Path, help="folder of the run folders (default runs/<name>_benchmark)"
    )
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where the report goes")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each with cores/jobs threads (results do not depend on it)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="Section.key=value",
        help="config overrides for every run (e.g. Dataset.txt_dir=runs/other_splits)",
    )
    p.add_argument("--only-report", action="store_true", help="aggregate finished runs only")
    p.set_defaults(**defaults)
    return p


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        parser.error("--config is required")
    if args.name is not None and not NAME_PATTERN.fullmatch(args.name):
        parser.error(f"--name {args.name!r}: letters, digits, '_', '.', '-' only")
    if args.ceiling_seeds is not None and args.ceiling is None:
        parser.error("--ceiling-seeds needs --ceiling N")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    return args


def benchmark(args: argparse.Namespace) -> Benchmark:
    """The benchmark of a command line: the config (with ``--set``) names the dataset, whose
    registry entry gives the pool size and the classes, and the default labels and seed."""
    from engine.config import load_config
    from engine.data import class_names, pool_size

    cfg = load_config(args.config, args.set)
    pool = pool_size(cfg)
    name = args.name or Path(args.config).stem
    labels = tuple(args.labels or (cfg["Dataset"]["num_labels"],))
    seeds = tuple(args.seeds or (cfg["Seed"],))
    for n in (*labels, *([args.ceiling] if args.ceiling is not None else [])):
        if not 0 < n <= pool:
            raise UserError(f"{n} labels: expected 1..{pool} (the {cfg['Dataset']['name']} pool)")
    return Benchmark(
        name=name,
        dataset=cfg["Dataset"]["name"],
        classes=class_names(cfg),
        pool_size=pool,
        methods=tuple(args.methods),
        labels=labels,
        seeds=seeds,
        # absolute: the runs are started in the repository root, wherever this tool is
        runs_dir=(args.runs_dir or REPO / "runs" / f"{name}_benchmark").resolve(),
        out=args.out.resolve(),
        ceiling=args.ceiling,
        ceiling_seeds=tuple(args.ceiling_seeds or seeds) if args.ceiling is not None else (),
    )


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = parse_args(argv, parser)
    bench = benchmark(args)
    keys = bench.run_keys()
    failed = (
        []
        if args.only_report
        else run_all(
            keys,
            bench.runs_dir,
            args.config.resolve(),
            args.jobs,
            tuple(args.set),
            bench.files.runs,
        )
    )
    for path in report(bench):
        print(f"wrote {path}")
    if failed:
        print("failed runs: " + ", ".join(k.name for k in failed), file=sys.stderr)
        return 1
    return 0


def cli(entry: Callable[[], int] = main) -> None:
    """Exit with ``entry()``'s status; ``error:`` lines for bad input, 130 on Ctrl-C."""
    try:
        sys.exit(entry())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
