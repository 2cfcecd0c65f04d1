"""Prototypes: first update copies the mean, later ones follow the EMA, absent classes stay,
rep-space probabilities, and identical results with two processes."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.errors import UserError
from utils.prototypes import Prototypes, proto_similarity

# one image, D=2, 2x3 pixels; rep[:, :, i, j] listed as pixel vectors in raster order
PIXELS = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [100.0, 100.0], [-1.0, 0.0]]
LABELS = [0, 0, 1, 1, 1, -1]
VALID = [True, True, True, True, False, False]


def make_batch(pixels, labels, valid, h=2, w=3):
    rep = torch.tensor(pixels).t().reshape(1, -1, h, w)
    label = torch.tensor(labels).reshape(1, h, w)
    mask = torch.tensor(valid).reshape(1, h, w)
    return rep, label, mask


def test_first_update_copies_class_mean_and_leaves_absent_classes():
    protos = Prototypes(num_classes=3, dim=2, alpha=0.9)
    protos.update(*make_batch(PIXELS, LABELS, VALID))
    # class 0: mean of (1,2),(3,4); class 1: mean of (5,6),(7,8) (the invalid (100,100) excluded)
    expected = torch.tensor([[2.0, 3.0], [6.0, 7.0], [0.0, 0.0]])
    torch.testing.assert_close(protos.proto, expected)
    assert protos.proto.dtype == torch.float32


def test_later_updates_follow_ema_formula():
    protos = Prototypes(num_classes=3, dim=2, alpha=0.9)
    protos.update(*make_batch(PIXELS, LABELS, VALID))
    # second batch: class 1 mean (2,0); class 2 first seen, mean (1,1); class 0 absent
    pixels = [[1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [1.0, 1.0], [9.0, 9.0], [9.0, 9.0]]
    labels = [1, 1, 2, 2, 0, 0]
    valid = [True, True, True, True, False, False]
    protos.update(*make_batch(pixels, labels, valid))
    expected = torch.tensor(
        [
            [2.0, 3.0],  # absent: untouched
            [0.9 * 6.0 + 0.1 * 2.0, 0.9 * 7.0 + 0.1 * 0.0],  # EMA
            [1.0, 1.0],  # was all zero: copied
        ]
    )
    torch.testing.assert_close(protos.proto, expected)


def test_update_computes_in_float32_for_half_inputs():
    protos = Prototypes(num_classes=3, dim=2, alpha=0.99)
    rep, label, mask = make_batch(PIXELS, LABELS, VALID)
    protos.update(rep.to(torch.bfloat16), label, mask)
    assert protos.proto.dtype == torch.float32
    torch.testing.assert_close(protos.proto[:2], torch.tensor([[2.0, 3.0], [6.0, 7.0]]))


def test_update_keeps_buffer_identity():
    protos = Prototypes(num_classes=3, dim=2)
    buffer = protos.proto
    protos.update(*make_batch(PIXELS, LABELS, VALID))
    assert protos.proto is buffer


def test_probs_hand_computed_two_classes():
    protos = Prototypes(num_classes=2, dim=2)
    protos.proto.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    rep = torch.tensor([[3.0, 4.0], [0.0, -5.0]]).t().reshape(1, 2, 1, 2)
    probs = protos.probs(rep, tau=0.5)
    assert probs.shape == (1, 2, 1, 2)
    # pixel 0: cos = (0.6, 0.8) -> softmax(1.2, 1.6); pixel 1: cos = (0, -1) -> softmax(0, -2)
    p0 = 1 / (1 + math.exp(0.4))
    p1 = 1 / (1 + math.exp(-2.0))
    expected = torch.tensor([[[[p0, p1]], [[1 - p0, 1 - p1]]]])
    torch.testing.assert_close(probs, expected)


def test_zero_prototype_gives_cosine_zero():
    proto = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    rep = torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)
    sim = proto_similarity(rep, proto)
    torch.testing.assert_close(sim.flatten(), torch.tensor([0.0, 0.6]))


def test_state_dict_roundtrip_and_bad_shape():
    protos = Prototypes(num_classes=3, dim=2)
    protos.update(*make_batch(PIXELS, LABELS, VALID))
    other = Prototypes(num_classes=3, dim=2)
    other.load_state_dict(protos.state_dict())
    torch.testing.assert_close(other.proto, protos.proto)
    with pytest.raises(UserError, match="proto"):
        Prototypes(num_classes=4, dim=2).load_state_dict(protos.state_dict())


# ---- two processes -------------------------------------------------------------------


def rank_batches(rank: int):
    """Two steps of different data per rank; class 2 only on rank 1, class 3 nowhere."""
    g = torch.Generator().manual_seed(100 + rank)
    steps = []
    for _ in range(2):
        rep = torch.randn(2, 4, 3, 3, generator=g)
        low, high = (0, 2) if rank == 0 else (1, 3)
        label = torch.randint(low, high, (2, 3, 3), generator=g)
        valid = torch.rand(2, 3, 3, generator=g) > 0.3
        steps.append((rep, label, valid))
    return steps


def _worker(rank: int, world_size: int, tmp_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_dir}/pg_init", rank=rank, world_size=world_size
    )
    try:
        protos = Prototypes(num_classes=4, dim=4, alpha=0.9)
        for rep, label, valid in rank_batches(rank):
            protos.update(rep, label, valid)
        torch.save(protos.proto, os.path.join(tmp_dir, f"proto_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_update_equals_single_process_on_concatenated_data(tmp_path):
    world_size = 2
    mp.spawn(_worker, args=(world_size, str(tmp_path)), nprocs=world_size, join=True)
    proto_0 = torch.load(tmp_path / "proto_0.pt")
    proto_1 = torch.load(tmp_path / "proto_1.pt")
    assert torch.equal(proto_0, proto_1)

    single = Prototypes(num_classes=4, dim=4, alpha=0.9)
    per_rank = [rank_batches(r) for r in range(world_size)]
    for step in range(2):
        rep, label, valid = (torch.cat([per_rank[r][step][i] for r in range(2)]) for i in range(3))
        single.update(rep, label, valid)
    torch.testing.assert_close(proto_0, single.proto)
    assert torch.count_nonzero(single.proto[2]) > 0  # class seen only on rank 1 reached rank 0
    assert torch.count_nonzero(single.proto[3]) == 0
