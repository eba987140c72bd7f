"""Unit-norm speaker embeddings (and classifier probabilities) for whole utterances or averaged
windows, batched by length so that padding costs little; sharded over ranks under torchrun."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from voxaug.data.batching import frame_budget, length_buckets, pad_batch
from voxaug.data.store import PackedStore
from voxaug.distributed import DistContext
from voxaug.errors import VoxaugError, file_error
from voxaug.inference import autocast_for
from voxaug.progress import progress_bar

if TYPE_CHECKING:
    from voxaug.api.model import SpeakerModel

MIN_FRAMES = 10


@dataclass
class Embedded:
    """Unit-norm float32 embeddings (N, E) and softmax probabilities (N, C), in input order;
    ``per_rank``: how many pieces (utterances or windows) each rank embedded, under torchrun."""

    embeddings: np.ndarray
    probabilities: np.ndarray
    per_rank: list[int] | None = None


def check_length(features: torch.Tensor, name: object) -> None:
    if features.shape[0] < MIN_FRAMES:
        raise file_error(name, f"clip is {features.shape[0]} frames long; at least {MIN_FRAMES} (0.1 s) are needed")


def window_spans(length: int, window: int | None, hop: int | None) -> list[tuple[int, int]]:
    """(start, frames) of the whole utterance, or of windows of ``window`` frames every ``hop``
    (the last one flush with the end)."""
    if window is None or length <= window:
        return [(0, length)]
    hop = hop or window
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] != length - window:
        starts.append(length - window)
    return [(start, window) for start in starts]


def windows(features: torch.Tensor, window: int | None, hop: int | None) -> list[torch.Tensor]:
    """The whole utterance, or windows of ``window`` frames every ``hop`` (the last one flush with the end)."""
    if window is None or features.shape[0] <= window:
        return [features]
    return [features[s : s + n] for s, n in window_spans(features.shape[0], window, hop)]


def check_window(window: int | None, hop: int | None = None) -> None:
    """A window shorter than the shortest clip the network embeds, or a hop longer than the window (the frames
    between two windows would be embedded in none); checked by `embed` before the dataset is read."""
    if window is not None and window < MIN_FRAMES:
        raise VoxaugError(f"--window must be at least {MIN_FRAMES} frames, got {window}")
    if window is not None and hop is not None and hop > window:
        raise VoxaugError(f"--hop must be at most --window ({window} frames), got {hop}: a longer hop leaves the "
                          "frames between windows out of every embedding")


Pieces = list[tuple[int, int, int]]  # (owner, start frame, frames): a whole utterance or one window of it
PieceResults = dict[int, tuple[torch.Tensor, torch.Tensor | None]]  # piece -> (unit embedding, probabilities)


def _pieces(lengths: list[int], window: int | None, hop: int | None) -> Pieces:
    return [(owner, start, frames) for owner, length in enumerate(lengths)
            for start, frames in window_spans(length, window, hop)]


@torch.no_grad()
def _run_buckets(model: nn.Module, load: Callable[[int], torch.Tensor], buckets: list[list[int]],
                 device: torch.device, with_probabilities: bool = True) -> PieceResults:
    """Unit embeddings (and softmax probabilities) of the pieces in ``buckets``, one forward per bucket."""
    results: PieceResults = {}
    for bucket in buckets:
        tensors = [load(i) for i in bucket]
        features, lengths_tensor = pad_batch(tensors, tensors[0].shape[1])
        with autocast_for(device):
            embeddings, logits = model(features.to(device), lengths_tensor.to(device))
        embeddings = F.normalize(embeddings.float(), dim=1).cpu()
        probs = torch.softmax(logits.float(), dim=1).cpu() if with_probabilities else None
        for row, i in enumerate(bucket):  # copies: a row view pickles its whole batch (gather_to_main under torchrun)
            results[i] = (embeddings[row].clone(), None if probs is None else probs[row].clone())
    return results


def _average(pieces: Pieces, results: PieceResults, count: int) -> Embedded:
    """Each owner's pieces averaged (in piece order), embeddings renormalised; sums in float32 as the pieces are,
    whatever default dtype the calling process set."""
    owner_index = torch.tensor([owner for owner, _, _ in pieces])
    piece_embeddings = torch.stack([results[i][0] for i in range(len(pieces))])
    sums = torch.zeros(count, piece_embeddings.shape[1], dtype=torch.float32)
    counts = torch.zeros(count, 1, dtype=torch.float32)
    sums.index_add_(0, owner_index, piece_embeddings)
    counts.index_add_(0, owner_index, torch.ones(len(pieces), 1, dtype=torch.float32))
    probabilities = np.empty((count, 0), dtype=np.float32)
    if results[0][1] is not None:
        piece_probs = torch.stack([results[i][1] for i in range(len(pieces))])
        prob_sums = torch.zeros(count, piece_probs.shape[1], dtype=torch.float32)
        prob_sums.index_add_(0, owner_index, piece_probs)
        probabilities = (prob_sums / counts).numpy()
    return Embedded(F.normalize(sums, dim=1).numpy().astype(np.float32), probabilities)


@torch.no_grad()
def embed_tensors(
    model: nn.Module,
    tensors: list[torch.Tensor],
    device: torch.device,
    window: int | None = None,
    hop: int | None = None,
    max_frames: int | None = None,
    max_batch: int = 64,
) -> Embedded:
    """Embed each (T, n_mels) tensor; windows of one utterance are averaged, then renormalised."""
    check_window(window, hop)
    max_frames = max_frames or frame_budget(device)
    model.eval()
    pieces = _pieces([t.shape[0] for t in tensors], window, hop)

    def load(i: int) -> torch.Tensor:
        owner, start, frames = pieces[i]
        return tensors[owner] if frames == tensors[owner].shape[0] else tensors[owner][start : start + frames]

    buckets = list(length_buckets([frames for _, _, frames in pieces], max_frames, max_batch))
    return _average(pieces, _run_buckets(model, load, buckets, device), len(tensors))


def embed_store(
    model: nn.Module,
    store: PackedStore,
    indices: np.ndarray,
    device: torch.device,
    window: int | None = None,
    hop: int | None = None,
    chunk: int = 2048,
    max_frames: int | None = None,
    max_batch: int = 64,
    progress: bool = True,
    with_probabilities: bool = True,
    context: DistContext | None = None,
) -> Embedded | None:
    """Embeddings of ``indices`` of a packed store, in that order; utterances are read in length
    order, ``chunk`` at a time, so memory stays bounded on large corpora. ``with_probabilities=False``
    leaves out the softmax (N x speakers floats: 24 GB for 1M utterances of 6,000 speakers).

    Under torchrun (``context``) each chunk's length buckets are dealt to the ranks in turn and rank
    0 gathers and averages the results: the same batches as in one process, so the same numbers.
    Rank 0 gets the embeddings, the other ranks None.
    """
    check_window(window, hop)
    max_frames = max_frames or frame_budget(device)
    context = context or DistContext()
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise VoxaugError("nothing to embed: the dataset has no utterances")
    order = np.argsort(store.lengths[indices], kind="stable")
    embeddings = probabilities = None
    per_rank = [0] * context.world_size
    dealt = 0  # buckets dealt so far: the next one goes to rank dealt % world
    bar = progress_bar(enabled=progress and context.is_main, total=len(indices), desc="embed", unit="utt", leave=False)
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        pieces = _pieces([int(store.lengths[indices[r]]) for r in rows], window, hop)
        buckets = list(length_buckets([frames for _, _, frames in pieces], max_frames, max_batch))
        mine = [b for k, b in enumerate(buckets) if (dealt + k) % context.world_size == context.rank]
        dealt += len(buckets)

        def load(i: int) -> torch.Tensor:
            owner, begin, frames = pieces[i]
            return store.segment(int(indices[rows[owner]]), begin, frames)

        gathered = context.gather_to_main(_run_buckets(model, load, mine, device, with_probabilities))
        if gathered is not None:
            per_rank = [done + len(part) for done, part in zip(per_rank, gathered)]
            result = _average(pieces, {i: v for part in gathered for i, v in part.items()}, len(rows))
            if embeddings is None:
                embeddings = np.empty((len(indices), result.embeddings.shape[1]), dtype=np.float32)
                probabilities = np.empty((len(indices), result.probabilities.shape[1]), dtype=np.float32)
            embeddings[rows], probabilities[rows] = result.embeddings, result.probabilities
        bar.update(len(rows))
    bar.close()
    return Embedded(embeddings, probabilities, per_rank) if context.is_main else None


def refuse_too_long_for_export(model: "SpeakerModel", store: PackedStore, window: int | None,
                               indices: np.ndarray | None = None, offers_window: bool = True) -> None:
    """An export embeds at most ``MAX_FRAMES`` frames at once: a longer utterance among ``indices`` (default: all) of
    the store (or ``--window``) is refused before any is embedded, in one line naming it and the options that help
    (``--window`` only where the command ``offers_window``: embed does, evaluate does not)."""
    rows = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    if model.kind != "onnx" or len(rows) == 0:
        return
    from voxaug.runtime.onnx_model import MAX_FRAMES

    longest = int(rows[np.argmax(store.lengths[rows])])
    frames = int(store.lengths[longest])
    if window is not None and MAX_FRAMES < window < frames:
        raise VoxaugError(f"--window {window}: an ONNX export embeds at most {MAX_FRAMES} frames at once, and "
                          f"{store.keys[longest]} is longer ({frames} frames); give --window {MAX_FRAMES} or less")
    try:
        if offers_window:
            model.engine.model.refuse_too_long(min(frames, window or frames), remedy="average it over windows "
                                               f"(--window {MAX_FRAMES} or less), or embed with the checkpoint "
                                               "(--ckpt)")
        else:  # the export's own remedy: cut the clip, or use the checkpoint
            model.engine.model.refuse_too_long(frames)
    except VoxaugError as exc:
        raise file_error(store.keys[longest], str(exc)) from None


def embed_store_with_model(model: "SpeakerModel", store: PackedStore, window: int | None = None, hop: int | None = None,
                           progress: bool = True, indices: np.ndarray | None = None,
                           with_probabilities: bool = False) -> Embedded:
    """Utterances ``indices`` (default: all) of a packed store through a :class:`voxaug.SpeakerModel` (an ONNX
    export), one at a time, in that order; windows of one utterance are averaged, then renormalised, as
    :func:`embed_store` does, and so are their softmax probabilities when ``with_probabilities``."""
    check_window(window, hop)
    indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise VoxaugError("nothing to embed: the dataset has no utterances")
    rows, probabilities = [], []
    for index in progress_bar(indices.tolist(), enabled=progress, desc="embed", unit="utt", leave=False):
        # min_frames=1: a dataset's utterances are embedded whatever their length, as embed_store does with a checkpoint
        pieces = [model.embed_with_probabilities(store.segment(index, start, frames).numpy(), name=store.keys[index],
                                                 min_frames=1)
                  for start, frames in window_spans(int(store.lengths[index]), window, hop)]
        mean = np.mean([embedding for embedding, _ in pieces], axis=0)
        rows.append(mean / np.linalg.norm(mean))
        if with_probabilities:
            probabilities.append(np.mean([probs for _, probs in pieces], axis=0))
    return Embedded(np.stack(rows).astype(np.float32),
                    np.stack(probabilities).astype(np.float32) if with_probabilities
                    else np.empty((len(indices), 0), dtype=np.float32))
