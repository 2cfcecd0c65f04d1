"""The demo benchmark: every strategy on FashionScenes v2 at 1/16 and 1/8 labels, three seeds.

    python tools/demo_benchmark.py [--jobs 2] [--only-report] [any flag of ssl_benchmark.py]

``tools/ssl_benchmark.py`` with the demo's defaults: ``--config configs/demo.yaml --name demo
--labels 125 250 --seeds 3407 1 2`` (runs in ``runs/demo_benchmark/``, the report in
``docs/demo_benchmark_*``, the copies of the finished runs in ``docs/demo_runs/``). Every
flag of ``ssl_benchmark.py`` is accepted and replaces the default it names; see its --help
for what is run and written.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from tools import ssl_benchmark  # noqa: E402

DEFAULTS = {
    "config": REPO / "configs" / "demo.yaml",
    "name": "demo",
    "labels": [125, 250],
    "seeds": [3407, 1, 2],
}
EXAMPLES = """examples:
  python tools/demo_benchmark.py --jobs 2                       # the 24 runs of the README (~1 h)
  python tools/demo_benchmark.py --methods supervised mix_label --labels 125 --seeds 3407
  python tools/demo_benchmark.py --only-report                  # tables and plots of finished runs
"""


def build_parser():
    return ssl_benchmark.build_parser("demo_benchmark.py", __doc__, EXAMPLES, DEFAULTS)


def main(argv: list[str] | None = None) -> int:
    return ssl_benchmark.main(argv, build_parser())


if __name__ == "__main__":
    ssl_benchmark.cli(main)
