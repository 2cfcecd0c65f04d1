"""tools/fetch_imagenet_weights.py: saves what torchvision's weights API returns; without
internet one clear line (the API is replaced by stand-ins here: no test downloads)."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from tools import fetch_imagenet_weights as fetch_tool
from utils.errors import UserError


class FakeWeights:
    url = "https://example.invalid/resnet101.pth"

    def __init__(self, result):
        self.result = result

    def get_state_dict(self, progress: bool = True):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_saves_the_state_dict_atomically(tmp_path, monkeypatch):
    state = {"conv1.weight": torch.ones(2, 3, 1, 1)}
    monkeypatch.setitem(fetch_tool.WEIGHTS, "resnet101", FakeWeights(state))
    out = fetch_tool.fetch("resnet101", tmp_path / "pretrained" / "resnet101.pth")
    loaded = torch.load(out, weights_only=True)
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])


def test_no_internet_is_one_line_naming_the_url(tmp_path, monkeypatch, capsys):
    offline = FakeWeights(urllib.error.URLError("Name or service not known"))
    monkeypatch.setitem(fetch_tool.WEIGHTS, "resnet101", offline)
    with pytest.raises(UserError, match=r"cannot download https://example\.invalid"):
        fetch_tool.fetch("resnet101", tmp_path / "x.pth")
    assert fetch_tool.main(["--out", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot download")
    assert not (tmp_path / "x.pth").exists()
