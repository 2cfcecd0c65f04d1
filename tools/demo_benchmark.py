"""The demo benchmark: every strategy on FashionScenes at 1/16 and 1/8 labels, three seeds.

    python tools/demo_benchmark.py [--methods supervised ori_pseudo mix_label cross_label]
                                   [--labels 125 250] [--seeds 3407 1 2]
                                   [--config configs/demo.yaml] [--runs-dir runs/demo_benchmark]
                                   [--out docs] [--jobs 1] [--set Section.key=value ...]
                                   [--only-report]

Each run is a subprocess of its entry script (``python mix_label.py --work-dir
runs/demo_benchmark/mix_label_125_3407 Dataset.num_labels=125 Seed=3407``), one after the
other, or ``--jobs`` at a time, each with ``OMP_NUM_THREADS`` = cores / jobs (on a shared
2-core machine two one-thread runs are less hurt by other load than one two-thread run). A run whose ``summary.json`` exists is not run again; an interrupted one resumes from
its ``latest.pth`` (the engine does that). Then the report is written into ``--out``:

- ``demo_benchmark_results.csv``: one row per run (method, labels, seed, miou, best_miou,
  wall_seconds, iterations);
- ``demo_benchmark_table.md``: mean ± std over seeds of the final mIoU per method and label
  count, and the gain over ``supervised``; the same table replaces the text between
  ``<!-- table:begin -->`` and ``<!-- table:end -->`` in ``<out>/demo_benchmark.md``;
- three PNG plots (needs matplotlib, an optional tool-only dependency; without it the CSV
  and the table are still written): final mIoU per method and rate, validation mIoU against
  iteration, pseudo-label agreement and mask ratio against iteration.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from utils.command_line import ArgumentParser  # noqa: E402
from utils.strategies import STRATEGIES  # noqa: E402

METHODS = tuple(STRATEGIES)
# the gains are measured against the strategy without pseudo-labels
BASELINE = next(name for name, s in STRATEGIES.items() if not s.semi_supervised)
LABELS = (125, 250)
SEEDS = (3407, 1, 2)
TRAIN_SIZE = 2000  # FashionScenes train scenes: 125 labels = 1/16, 250 = 1/8
CSV_NAME = "demo_benchmark_results.csv"
TABLE_NAME = "demo_benchmark_table.md"
DOC_NAME = "demo_benchmark.md"
TABLE_BEGIN, TABLE_END = "<!-- table:begin -->", "<!-- table:end -->"
CSV_FIELDS = ("method", "labels", "seed", "miou", "best_miou", "wall_seconds", "iterations")
PLOT_NAMES = {
    "miou": "demo_benchmark_miou.png",
    "curves": "demo_benchmark_curves.png",
    "pseudo": "demo_benchmark_pseudo.png",
}


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


# --------------------------------------------------------------------------- running


def plan(methods, labels, seeds) -> list[RunKey]:
    """All runs, labels outermost so that a partial benchmark covers one rate fully first."""
    return [RunKey(m, n, s) for n in labels for s in seeds for m in methods]


def is_done(runs_dir: Path, key: RunKey) -> bool:
    return (runs_dir / key.name / "summary.json").is_file()


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
) -> list[RunKey]:
    """Run the pending runs, ``jobs`` at a time (1: one after the other); return the failed."""
    pending = [k for k in keys if not is_done(runs_dir, k)]
    print(f"{len(keys) - len(pending)} of {len(keys)} runs done, {len(pending)} to run")
    env = run_env(jobs)

    def one(key: RunKey) -> int:
        t0 = time.time()
        print(f"start {key.name}", flush=True)
        cmd = run_command(key, runs_dir, config, overrides)
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        print(f"done  {key.name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        return rc

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(one, pending))
    if 130 in codes:  # a run was interrupted (Ctrl-C): so is the benchmark
        raise KeyboardInterrupt
    return [k for k, rc in zip(pending, codes) if rc != 0]


# --------------------------------------------------------------------------- reading runs


def load_rows(runs_dir: Path, keys: list[RunKey]) -> list[dict]:
    """One CSV row per finished run (runs without summary.json are skipped)."""
    rows = []
    for key in keys:
        path = runs_dir / key.name / "summary.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        rows.append(
            {
                "method": key.method,
                "labels": key.labels,
                "seed": key.seed,
                **{f: summary[f] for f in CSV_FIELDS[3:]},
            }
        )
    return rows


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


def rate_name(labels: int) -> str:
    ratio = TRAIN_SIZE / labels
    return f"1/{ratio:g} ({labels})" if ratio == int(ratio) else f"{labels} labels"


def format_table(stats: dict[tuple[str, int], Stat], methods, labels) -> str:
    """Markdown: mean ± std (n seeds) of final mIoU; gain of the mean over supervised."""
    head = "| method | " + " | ".join(f"{rate_name(n)} mIoU | gain" for n in labels) + " |"
    rule = "|---|" + "---:|---:|" * len(labels)
    lines = [head, rule]
    for m in methods:
        cells = []
        for n in labels:
            s, base = stats.get((m, n)), stats.get((BASELINE, n))
            cells.append(f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})" if s else "–")
            if s and base and m != BASELINE:
                cells.append(f"{s.mean - base.mean:+.2f}")
            else:
                cells.append("–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{row[k]:.4f}" if isinstance(row[k], float) else row[k]) for k in CSV_FIELDS}
            )


def replace_table(doc: Path, table: str) -> bool:
    """Put ``table`` between the table markers of ``doc``; False when there are none."""
    if not doc.is_file():
        return False
    text = doc.read_text()
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        return False
    doc.write_text(text[: begin + len(TABLE_BEGIN)] + "\n" + table + text[end:])
    return True


# --------------------------------------------------------------------------- plots


def make_plots(
    rows: list[dict], runs_dir: Path, keys: list[RunKey], methods, labels, out: Path
) -> list[Path]:
    """The three PNGs; none (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (the CSV and the table are written)")
        return []
    finished = [k for k in keys if is_done(runs_dir, k)]  # a partial run would cut the curves
    metrics = {k: read_metrics(runs_dir / k.name / "metrics.jsonl") for k in finished}
    low = min(labels)
    paths = [
        _plot_miou(plt, aggregate(rows), methods, labels, out / PLOT_NAMES["miou"]),
        _plot_curves(plt, metrics, methods, low, out / PLOT_NAMES["curves"]),
        _plot_pseudo(plt, metrics, methods, low, out / PLOT_NAMES["pseudo"]),
    ]
    return [p for p in paths if p is not None]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_miou(plt, stats, methods, labels, path: Path) -> Path:
    labels = [n for n in labels if any((m, n) in stats for m in methods)] or list(labels)
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
    ax.set_xticks(range(len(labels)), [rate_name(n) for n in labels])
    ax.set_ylabel("final mIoU (%)")
    ax.set_title("FashionScenes val mIoU, mean ± std over seeds")
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def _plot_curves(plt, metrics, methods, labels: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for m in methods:
        runs = [ev for k, (_, ev) in metrics.items() if k.method == m and k.labels == labels]
        iters, miou = mean_curve(runs, "miou")
        if iters:
            ax.plot(iters, miou, marker="o", label=f"{m} ({len(runs)} seeds)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"Validation mIoU during training, {rate_name(labels)}, mean over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _plot_pseudo(plt, metrics, methods, labels: int, path: Path) -> Path | None:
    semi = [m for m in methods if STRATEGIES[m].needs_rep]  # those with an agreement
    if not semi:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
    for field, ax in zip(("agreement", "mask_ratio"), axes):
        for m in semi:
            runs = [tr for k, (tr, _) in metrics.items() if k.method == m and k.labels == labels]
            iters, values = mean_curve(runs, field)
            if iters:
                ax.plot(iters, values, label=m)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("logit / rep-space label agreement", fontsize=9)
    axes[1].set_title("mask ratio (conf >= un_threshold)", fontsize=9)
    fig.suptitle(f"Teacher pseudo-labels, {rate_name(labels)}, mean over seeds", fontsize=10)
    return _save(plt, fig, path)


# --------------------------------------------------------------------------- report


def report(runs_dir: Path, keys: list[RunKey], methods, labels, out: Path) -> list[Path]:
    """Write the CSV, the table (also into the doc) and the plots; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(runs_dir, keys)
    write_csv(rows, out / CSV_NAME)
    table = format_table(aggregate(rows), methods, labels)
    (out / TABLE_NAME).write_text(table)
    written = [out / CSV_NAME, out / TABLE_NAME]
    if replace_table(out / DOC_NAME, table):
        written.append(out / DOC_NAME)
    written += make_plots(rows, runs_dir, keys, methods, labels, out)
    print(f"{len(rows)} of {len(keys)} runs finished\n\n{table}")
    return written


EXAMPLES = """examples:
  python tools/demo_benchmark.py --jobs 2                       # the 24 runs of the README (~1 h)
  python tools/demo_benchmark.py --methods supervised mix_label --labels 125 --seeds 3407
  python tools/demo_benchmark.py --only-report                  # tables and plots of finished runs
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="demo_benchmark.py", description=__doc__, epilog=EXAMPLES)
    p.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="strategies to run"
    )
    p.add_argument(
        "--labels", nargs="+", type=int, default=list(LABELS), help="labeled counts (125 250)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="seeds (3407 1 2)")
    p.add_argument(
        "--config",
        type=Path,
        default=REPO / "configs" / "demo.yaml",
        help="config of every run (default configs/demo.yaml)",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=REPO / "runs" / "demo_benchmark",
        help="folder of the run folders (default runs/demo_benchmark)",
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
    p.add_argument("--only-report", action="store_true", help="aggregate existing runs only")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = plan(args.methods, args.labels, args.seeds)
    failed = (
        []
        if args.only_report
        else run_all(keys, args.runs_dir, args.config, args.jobs, tuple(args.set))
    )
    for path in report(args.runs_dir, keys, args.methods, args.labels, args.out):
        print(f"wrote {path}")
    if failed:
        print("failed runs: " + ", ".join(k.name for k in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)
