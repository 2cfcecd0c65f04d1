"""tools/pseudo_label_accuracy.py: per-class counts of the teacher's pseudo-labels, by hand."""

from __future__ import annotations

import torch

from tools.pseudo_label_accuracy import count, main, table


class FixedTeacher(torch.nn.Module):
    """Returns the same logits and representations for any input (at the image size)."""

    def __init__(self, logits: torch.Tensor, rep: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.rep = logits, rep

    def forward(self, x):
        return self.logits, self.rep


def test_precision_confidence_agreement_and_recall_counts():
    # four pixels in a row; truth 0, 0, 1, ignored
    label = torch.tensor([[0, 0, 1, -1]])
    # y_cls: 0 (conf 0.993), 1 (conf 0.62: wrong and unsure), 1 (0.993, right), 0 (ignored)
    logits = torch.tensor([[5.0, 0.0, 0.0, 5.0], [0.0, 0.5, 5.0, 0.0]])[None, :, None, :]
    # y_rep: 0, 0 (disagrees with y_cls, right), 1, 0
    rep = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])[None, :, None, :]
    proto = torch.eye(2)
    dataset = [{"img": torch.zeros(3, 1, 4, dtype=torch.uint8), "label": label}] * 2
    totals = count(FixedTeacher(logits, rep), proto, dataset, 0.5, 0.97, 2, limit=0)
    per_image = {
        "cls": [1, 2], "cls_ok": [1, 1],
        "conf": [1, 1], "conf_ok": [1, 1],
        "rep": [2, 1], "rep_ok": [2, 1],
        "mix": [1, 1], "mix_ok": [1, 1],
        "true": [2, 1],
        "cls_hit": [1, 1], "rep_hit": [2, 1], "mix_hit": [1, 1],
    }  # fmt: skip
    for key, expected in per_image.items():
        assert totals[key].tolist() == [2 * v for v in expected], key  # two images
    rows = table(totals, ("a", "b"), 0.97).splitlines()
    # class b: true share 1/3; y_cls precision 1/2; confident 1/1; y_rep 1/1; mix 1/1;
    # mix keeps 1 of b's 2 y_cls pixels; recall 1/1 each
    assert rows[3] == "| b | 33.3 | 50.0 | 100.0 | 100.0 | 100.0 | 50.0 | 100.0 / 100.0 / 100.0 |"
    assert rows[4].startswith("| all pixels | 100.0 | 66.7 | 100.0 | 100.0 | 100.0 | 66.7 |")
    assert count(FixedTeacher(logits, rep), proto, dataset, 0.5, 0.97, 2, limit=1)[
        "true"
    ].tolist() == [2, 1]


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
