"""Batches from the packed store: random fixed-length segments for training, whole utterances
grouped by length for evaluation, embedding and prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from voxaug.data.store import PackedStore
from voxaug.errors import VoxaugError


@dataclass
class Batch:
    """Padded features (B, T, n_mels), real lengths (B,), labels (B,) and store indices (B,)."""

    features: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.features.to(device, non_blocking=True),
            self.lengths.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.indices,
        )


def check_sampler(count: int, batch_size: int, segment: int, rank: int, world: int) -> None:
    """Refuse what no training sampler can draw from: no utterances, a non-positive batch or segment."""
    if count == 0:
        raise VoxaugError("no training utterances left after the validation split")
    if batch_size <= 0 or segment <= 0:
        raise VoxaugError(f"batch size and segment must be positive, got {batch_size} and {segment}")
    check_shard(count, rank, world)


def check_shard(count: int, rank: int, world: int) -> None:
    """Refuse a rank outside the world, or fewer training utterances than ranks."""
    if not 0 <= rank < world:
        raise VoxaugError(f"rank {rank} is outside a world of {world} processes")
    if count < world:
        raise VoxaugError(f"{count} training utterances cannot be shared by {world} processes; use fewer processes")


def rank_share(permuted: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's permutation: every ``world``-th item, all shares equally long. A copy:
    a view would carry the whole permutation into the sampler state each rank saves and sends to rank 0."""
    share = len(permuted) // world
    return permuted[rank : share * world : world].clone()


def pad_batch(tensors: list[torch.Tensor], n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a list of (T_i, n_mels) tensors into (B, max T, n_mels) float32 plus lengths (B,): float32 as the
    models are, whatever default dtype the calling process set."""
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    padded = torch.zeros(len(tensors), int(lengths.max()), n_mels, dtype=torch.float32)
    for row, tensor in enumerate(tensors):
        padded[row, : tensor.shape[0]] = tensor
    return padded, lengths


class SegmentSampler:
    """Random fixed-length training segments, one epoch-wise permutation of the training set at a time.

    All randomness comes from one seeded ``torch.Generator`` whose state, with the permutation and
    cursor, is the sampler's state: a resumed run draws exactly the batches it would have drawn.
    Under DDP every rank draws the same permutation (same seed) and takes every ``world``-th item
    of it, so ranks see different utterances; the last ``len % world`` items of an epoch are left
    out so that every rank's share has the same length and the ranks' generators stay in step.
    """

    def __init__(
        self,
        store: PackedStore,
        indices: np.ndarray,
        batch_size: int,
        segment: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        check_sampler(len(indices), batch_size, segment, rank, world)
        self.store, self.indices = store, torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.segment = batch_size, segment
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.cursor = 0
        self.order = self._new_order()

    def _new_order(self) -> torch.Tensor:
        permuted = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
        return rank_share(permuted, self.rank, self.world)

    def next_batch(self) -> Batch:
        chosen, count = [], 0
        while count < self.batch_size:
            if self.cursor >= len(self.order):
                self.epoch += 1
                self.cursor = 0
                self.order = self._new_order()
            take = self.order[self.cursor : self.cursor + self.batch_size - count]
            chosen.append(take)
            count += len(take)
            self.cursor += len(take)
        picked = torch.cat(chosen)
        lengths = torch.as_tensor(self.store.lengths[picked.numpy()])
        spans = torch.clamp(lengths, max=self.segment)
        room = (lengths - spans + 1).to(torch.float64)
        starts = (torch.rand(len(picked), generator=self.generator, dtype=torch.float64) * room).long()
        features = torch.zeros(len(picked), self.segment, self.store.n_mels)
        for row, (index, start, span) in enumerate(zip(picked.tolist(), starts.tolist(), spans.tolist())):
            features[row, :span] = self.store.segment(index, start, span)
        labels = torch.as_tensor(self.store.labels[picked.numpy()])
        return Batch(features, spans, labels, picked)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "cursor": self.cursor, "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.cursor, self.order = int(state["epoch"]), int(state["cursor"]), state["order"]


def frame_budget(device: torch.device) -> int:
    """Padded frames per evaluation batch. On the CPU small batches are faster (attention memory
    grows with T² per batch: 4,000 frames embed about twice as fast as 40,000); a GPU wants big ones."""
    return 40000 if device.type == "cuda" else 4000


def length_buckets(lengths: list[int] | np.ndarray, max_frames: int, max_batch: int = 64) -> Iterator[list[int]]:
    """Positions of ``lengths`` sorted by length and cut into batches of at most ``max_batch`` items
    and ``max_frames`` padded frames (a longer item gets a batch of its own): little padding, bounded memory."""
    order = sorted(range(len(lengths)), key=lambda i: int(lengths[i]))
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < max_batch and (stop - start + 1) * int(lengths[order[stop]]) <= max_frames:
            stop += 1
        yield order[start:stop]
        start = stop


def whole_batches(
    store: PackedStore,
    indices: np.ndarray,
    max_frames: int = 4000,
    max_batch: int = 64,
) -> Iterator[Batch]:
    """Whole utterances in length order, batched by :func:`length_buckets`."""
    indices = np.asarray(indices, dtype=np.int64)
    for positions in length_buckets(store.lengths[indices], max_frames, max_batch):
        chunk = indices[positions]
        features, lengths = pad_batch([store.utterance(int(i)) for i in chunk], store.n_mels)
        yield Batch(features, lengths, torch.as_tensor(store.labels[chunk]), torch.as_tensor(chunk))
