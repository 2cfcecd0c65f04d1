"""Batched evaluation: consecutive images of equal size go through the network together, and
the confusion matrix is the same as one image at a time, also with mixed image sizes."""

from __future__ import annotations

import pytest
import torch

from engine.evaluation import evaluate, same_size_batches
from network import build_model


class MixedSizes(torch.utils.data.Dataset):
    """Images and labels of a few sizes, in an order where sizes repeat and change."""

    sizes = [(40, 48)] * 5 + [(48, 40)] * 2 + [(40, 48)] * 3 + [(32, 32)]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        h, w = self.sizes[i]
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        label = torch.randint(-1, 5, (h, w), generator=g)
        return {"img": img, "label": label}


def test_same_size_batches_keep_order_split_on_size_and_cap():
    items = [
        (torch.full((1, 1, h, w), float(k)), torch.zeros(1, h, w))
        for k, (h, w) in enumerate(MixedSizes.sizes)
    ]
    batches = list(same_size_batches(iter(items), 3))
    assert [len(b[0]) for b in batches] == [3, 2, 2, 3, 1]
    order = [int(v) for img, _ in batches for v in img[:, 0, 0, 0]]
    assert order == list(range(len(items)))
    for img, label in batches:
        assert img.shape[-2:] == label.shape[-2:]


@pytest.mark.parametrize("mode", ["whole", "sliding", "crop"])
def test_batched_evaluation_equals_one_image_at_a_time(mode: str):
    torch.manual_seed(0)
    model = build_model("resnet18", 5, 16, 8, None, base_width=8, decoder_channels=16).eval()
    one = evaluate(model, MixedSizes(), 5, torch.device("cpu"), mode, (32, 32), progress=False)
    many = evaluate(
        model, MixedSizes(), 5, torch.device("cpu"), mode, (32, 32), progress=False, batch_size=4
    )
    assert torch.equal(one.mat, many.mat)
    assert int(one.mat.sum()) > 0
