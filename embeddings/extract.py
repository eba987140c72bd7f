"""Unit-norm speaker embeddings (and classifier logits) for whole utterances or averaged windows,
batched by length so that padding costs little."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from voxaug.data.batching import pad_batch
from voxaug.data.store import PackedStore
from voxaug.errors import VoxaugError, file_error
from voxaug.inference import autocast_for

MIN_FRAMES = 10


@dataclass
class Embedded:
    """Unit-norm float32 embeddings (N, E) and softmax probabilities (N, C), in input order."""

    embeddings: np.ndarray
    probabilities: np.ndarray


def check_length(features: torch.Tensor, name: object) -> None:
    if features.shape[0] < MIN_FRAMES:
        raise file_error(name, f"clip is {features.shape[0]} frames long; at least {MIN_FRAMES} (0.1 s) are needed")


def windows(features: torch.Tensor, window: int | None, hop: int | None) -> list[torch.Tensor]:
    """The whole utterance, or windows of ``window`` frames every ``hop`` (the last one flush with the end)."""
    length = features.shape[0]
    if window is None or length <= window:
        return [features]
    hop = hop or window
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] != length - window:
        starts.append(length - window)
    return [features[s : s + window] for s in starts]


def _length_buckets(lengths: list[int], max_frames: int, max_batch: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < max_batch and (stop - start + 1) * lengths[order[stop]] <= max_frames:
            stop += 1
        yield order[start:stop]
        start = stop


@torch.no_grad()
def embed_tensors(
    model: nn.Module,
    tensors: list[torch.Tensor],
    device: torch.device,
    window: int | None = None,
    hop: int | None = None,
    max_frames: int = 40000,
    max_batch: int = 64,
) -> Embedded:
    """Embed each (T, n_mels) tensor; windows of one utterance are averaged, then renormalised."""
    if window is not None and window < MIN_FRAMES:
        raise VoxaugError(f"--window must be at least {MIN_FRAMES} frames, got {window}")
    model.eval()
    pieces, owners = [], []
    for owner, tensor in enumerate(tensors):
        for piece in windows(tensor, window, hop):
            pieces.append(piece)
            owners.append(owner)
    lengths = [p.shape[0] for p in pieces]
    piece_embeddings: list[torch.Tensor | None] = [None] * len(pieces)
    piece_probs: list[torch.Tensor | None] = [None] * len(pieces)
    for bucket in _length_buckets(lengths, max_frames, max_batch):
        features, lengths_tensor = pad_batch([pieces[i] for i in bucket], pieces[bucket[0]].shape[1])
        with autocast_for(device):
            embeddings, logits = model(features.to(device), lengths_tensor.to(device))
        embeddings = F.normalize(embeddings.float(), dim=1).cpu()
        probs = torch.softmax(logits.float(), dim=1).cpu()
        for row, i in enumerate(bucket):
            piece_embeddings[i], piece_probs[i] = embeddings[row], probs[row]
    dim = piece_embeddings[0].shape[0]
    sums = torch.zeros(len(tensors), dim)
    prob_sums = torch.zeros(len(tensors), piece_probs[0].shape[0])
    counts = torch.zeros(len(tensors), 1)
    owner_index = torch.tensor(owners)
    sums.index_add_(0, owner_index, torch.stack(piece_embeddings))
    prob_sums.index_add_(0, owner_index, torch.stack(piece_probs))
    counts.index_add_(0, owner_index, torch.ones(len(pieces), 1))
    return Embedded(F.normalize(sums, dim=1).numpy().astype(np.float32), (prob_sums / counts).numpy())


def embed_store(
    model: nn.Module,
    store: PackedStore,
    indices: np.ndarray,
    device: torch.device,
    window: int | None = None,
    hop: int | None = None,
    chunk: int = 2048,
    max_frames: int = 40000,
    max_batch: int = 64,
    progress: bool = True,
) -> Embedded:
    """Embeddings of ``indices`` of a packed store, in that order; utterances are read in length
    order, ``chunk`` at a time, so memory stays bounded on large corpora."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(store.lengths[indices], kind="stable")
    embeddings = probabilities = None
    bar = tqdm(total=len(indices), desc="embed", unit="utt", disable=not progress, leave=False)
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        result = embed_tensors(model, [store.utterance(int(indices[r])) for r in rows], device, window, hop,
                               max_frames=max_frames, max_batch=max_batch)
        if embeddings is None:
            embeddings = np.empty((len(indices), result.embeddings.shape[1]), dtype=np.float32)
            probabilities = np.empty((len(indices), result.probabilities.shape[1]), dtype=np.float32)
        embeddings[rows], probabilities[rows] = result.embeddings, result.probabilities
        bar.update(len(rows))
    bar.close()
    if embeddings is None:
        raise VoxaugError("nothing to embed: the dataset has no utterances")
    return Embedded(embeddings, probabilities)
