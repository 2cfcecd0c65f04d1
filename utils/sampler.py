"""Deterministic, resumable batch sampling.

Each batch is a list of ``(index, sample_seed)`` pairs. The order of an epoch and every
per-sample seed depend only on ``(seed, stream, epoch)``, so a run resumed at iteration
``it`` sees exactly the batches, and the augmentations, that the uninterrupted run saw —
whatever the number of data-loader workers. Processes take disjoint strided shares of
the (padded) permutation, as ``DistributedSampler`` does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def _mix(*parts: int) -> int:
    """Combine integers into one 63-bit seed (splitmix-style, deterministic)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x ^= (p + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class EpochBatchSampler:
    """Batches of ``(index, sample_seed)`` for one process; ``drop_last`` semantics."""

    def __init__(
        self, size: int, batch_size: int, seed: int, stream: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.size, self.batch_size = size, batch_size
        self.seed, self.stream, self.rank, self.world = seed, stream, rank, world
        self.per_rank = -(-size // world)  # ceil: the permutation is padded by wrapping
        self.batches_per_epoch = self.per_rank // batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, batch: int) -> None:
        """The next iteration starts at batch ``batch`` of epoch ``epoch``."""
        self.epoch, self.start = epoch, batch

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.stream, epoch))
        perm = torch.randperm(self.size, generator=g).tolist()
        total = self.per_rank * self.world
        perm = (perm * (-(-total // self.size)))[:total]
        mine = perm[self.rank : total : self.world]
        batches = []
        for b in range(self.batches_per_epoch):
            idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
            pos = b * self.batch_size
            batches.append(
                [
                    (i, _mix(self.seed, self.stream, epoch, self.rank, pos + k))
                    for k, i in enumerate(idx)
                ]
            )
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self.epoch_batches(self.epoch)[self.start :]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


def step_seed(seed: int, rank: int, iteration: int) -> int:
    """Seed of the global RNG for one training step (makes resume exact without RNG state)."""
    return _mix(seed, 7919, rank, iteration)
