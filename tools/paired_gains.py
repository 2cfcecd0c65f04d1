"""Paired gains over the baseline, seed by seed, from run folders' evaluation records.

    python tools/paired_gains.py RUNS_DIR [--iteration N] [--baseline supervised] [--out FILE]

Each folder ``<method>_<labels>_<seed>`` under ``RUNS_DIR`` (the layout of
``tools/ssl_benchmark.py``) holds a ``metrics.jsonl`` whose evaluation records carry ``iter``
and ``miou``. The value of a run is its mIoU at ``--iteration`` (default: its last
evaluation; a run without an evaluation at that iteration is left out and named). For each
label count and method, the table gives the mean ± standard deviation over seeds and, paired
with the baseline run of the same labels and seed, each seed's gain, the mean gain, the
standard deviation of the paired difference and their ratio (the benchmark's criterion: a
gain is clear when it exceeds two such deviations). This reads interrupted runs too, which is
what it is for: a grid stopped before its end can still be compared at its last common
evaluation.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from tools.ssl_benchmark import read_metrics, stat  # noqa: E402
from utils.command_line import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402

RUN_NAME = re.compile(r"^(?P<method>[a-z_]+)_(?P<labels>\d+)_(?P<seed>\d+)$")


def evaluations(path: Path) -> dict[int, float]:
    """``{iteration: miou}`` of a metrics.jsonl's evaluation records (the benchmark's reader:
    a resumed run's repeated iteration counts once, its last record)."""
    return {int(r["iter"]): float(r["miou"]) for r in read_metrics(path)[1]}


def collect(runs_dir: Path, iteration: int | None) -> tuple[dict, list[str]]:
    """``{(method, labels, seed): miou}`` and the names of runs left out (and why)."""
    if not runs_dir.is_dir():
        raise UserError(f"runs folder not found: {runs_dir}")
    values, left_out = {}, []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        match = RUN_NAME.match(folder.name)
        metrics = folder / "metrics.jsonl"
        if match is None or not metrics.is_file():
            continue
        evals = evaluations(metrics)
        at = iteration if iteration is not None else max(evals, default=None)
        if at is None or at not in evals:
            left_out.append(f"{folder.name} (evaluated at {sorted(evals) or 'no iteration'})")
            continue
        key = (match["method"], int(match["labels"]), int(match["seed"]))
        values[key] = evals[at]
    if not values:
        raise UserError(f"{runs_dir}: no run folder <method>_<labels>_<seed> with that evaluation")
    return values, left_out


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    summary = stat(xs)
    return summary.mean, summary.std


def table(values: dict, baseline: str) -> str:
    """The markdown table: per label count, the baseline first, then the other methods."""
    lines = [
        "| labels | method | mIoU mean ± sd (n) | gain per seed | mean gain | sd of the paired difference | gain / sd |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    for labels in sorted({k[1] for k in values}):
        methods = sorted({k[0] for k in values if k[1] == labels}, key=lambda m: (m != baseline, m))
        for method in methods:
            seeds = sorted(k[2] for k in values if k[:2] == (method, labels))
            mean, sd = _mean_sd([values[(method, labels, s)] for s in seeds])
            cells = [str(labels), method, f"{mean:.2f} ± {sd:.2f} (n={len(seeds)})"]
            paired = [s for s in seeds if (baseline, labels, s) in values]
            if method == baseline or not paired:
                cells += ["", "", "", ""]
            else:
                diffs = [
                    values[(method, labels, s)] - values[(baseline, labels, s)] for s in paired
                ]
                gain, dsd = _mean_sd(diffs)
                per_seed = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(paired, diffs))
                ratio = f"{gain / dsd:.1f}" if dsd > 0 else "–"
                cells += [per_seed, f"{gain:+.2f}", f"{dsd:.2f}", ratio]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


EXAMPLES = """examples:
  python tools/paired_gains.py runs/camvid_benchmark                  # at each run's last evaluation
  python tools/paired_gains.py docs/camvid_h200_interrupted --iteration 1500 \\
      --out docs/camvid_h200_table.md --plot docs/camvid_h200_curves.png
"""


def curves(runs_dir: Path) -> dict[tuple[str, int], dict[int, list[float]]]:
    """``{(method, labels): {iteration: [miou of each seed evaluated there]}}``."""
    out: dict[tuple[str, int], dict[int, list[float]]] = {}
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        match = RUN_NAME.match(folder.name)
        if match is None or not (folder / "metrics.jsonl").is_file():
            continue
        per_iter = out.setdefault((match["method"], int(match["labels"])), {})
        for it, miou in evaluations(folder / "metrics.jsonl").items():
            per_iter.setdefault(it, []).append(miou)
    return out


def plot_curves(runs_dir: Path, path: Path) -> bool:
    """Mean mIoU over seeds against iteration, one line per method and label count (needs
    matplotlib, an optional tool-only dependency: False without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (method, labels), per_iter in sorted(curves(runs_dir).items(), key=lambda kv: kv[0][1]):
        its = sorted(per_iter)
        means = [stat(per_iter[i]).mean for i in its]
        seeds = max(len(v) for v in per_iter.values())
        ax.plot(its, means, marker="o", label=f"{method}, {labels} labeled (n={seeds})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mIoU (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="paired_gains.py", description=__doc__, epilog=EXAMPLES)
    p.add_argument("runs_dir", type=Path, help="folder of <method>_<labels>_<seed> run folders")
    p.add_argument("--iteration", type=int, default=None, help="compare at this evaluation")
    p.add_argument("--baseline", default="supervised", help="the method gains are measured against")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    p.add_argument("--plot", type=Path, default=None, help="draw the mean curves into this PNG")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        values, left_out = collect(args.runs_dir, args.iteration)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    at = (
        f"at iteration {args.iteration}" if args.iteration is not None else "at the last evaluation"
    )
    text = f"mIoU {at}, {args.runs_dir}\n\n" + table(values, args.baseline)
    if left_out:
        text += "\nleft out: " + "; ".join(left_out) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.plot is not None:
        drawn = plot_curves(args.runs_dir, args.plot)
        print(f"wrote {args.plot}" if drawn else "no plot: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
