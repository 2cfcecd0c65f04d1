"""Every script's --help: the whole description, a help text for each option, examples."""

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# module -> arguments of its build_parser
PARSERS = {
    "evaluate": (),
    "predict": (),
    "engine.cli": ("mix_label",),
    "engine.config": (),
    "tools.make_splits": (),
    "tools.check_dataset": (),
    "tools.prepare_camvid": (),
    "tools.demo_benchmark": (),
    "tools.ssl_benchmark": (),
    "tools.build_demo_assets": (),
    "tools.demo_contact_sheet": (),
    "tools.show_pseudo_labels": (),
    "tools.paired_gains": (),
    "tools.pseudo_label_accuracy": (),
    "tools.pretrain_backbone": (),
    "demo.fashion_scenes": (),
}


@pytest.mark.parametrize("module", PARSERS)
def test_every_option_has_help_and_the_help_has_examples(module):
    parser = importlib.import_module(module).build_parser(*PARSERS[module])
    undocumented = [
        a.option_strings or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert not undocumented, undocumented
    text = parser.format_help()
    assert "example" in text.split("options:")[-1], text
    assert len(parser.description.strip().splitlines()) > 1, parser.description


def test_entry_scripts_open_their_help_with_their_docstring():
    from engine.cli import build_parser

    for strategy in ("supervised", "ori_pseudo", "mix_label", "cross_label"):
        doc = importlib.import_module(strategy).__doc__
        text = build_parser(strategy, doc).format_help()
        last = doc.strip().splitlines()[-1].strip()
        assert last in text and f"python {strategy}.py --work-dir runs/X" in text


def test_help_is_not_cut_after_the_first_line():
    out = subprocess.run(
        [sys.executable, "predict.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    doc = importlib.import_module("predict").__doc__.strip().splitlines()
    assert doc[-1].strip() in out.stdout and "examples:" in out.stdout
