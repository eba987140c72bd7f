"""Batched whole-utterance inference from a packed store: embeddings and logits in input order."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from voxaug.data.batching import frame_budget, whole_batches
from voxaug.data.store import PackedStore
from voxaug.progress import progress_bar


def autocast_for(device: torch.device, enabled: bool = True) -> torch.autocast:
    """Mixed precision on CUDA (unless ``enabled`` is False), plain float32 on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def run_model(
    model: nn.Module,
    store: PackedStore,
    indices: np.ndarray,
    device: torch.device,
    max_frames: int | None = None,
    amp: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, E) and logits (N, C) for ``indices``, in that order, on the CPU in float32; ``amp=False``
    runs the model in float32 on CUDA too (a run trained with --no-amp is evaluated as it trains). ``progress``
    counts the utterances done: the homework's 4,000 test clips take minutes on a CPU, silent without it."""
    was_training = model.training
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    position = {int(index): row for row, index in enumerate(indices)}
    embeddings = logits = None
    with progress_bar(enabled=progress, total=len(indices), desc="classify", unit="utt", leave=False) as bar:
        for batch in whole_batches(store, indices, max_frames=max_frames or frame_budget(device)):
            with autocast_for(device, amp):
                batch_embeddings, batch_logits = model(batch.features.to(device), batch.lengths.to(device))
            if embeddings is None:
                embeddings = torch.empty(len(indices), batch_embeddings.shape[1])
                logits = torch.empty(len(indices), batch_logits.shape[1])
            rows = torch.tensor([position[int(i)] for i in batch.indices])
            embeddings[rows] = batch_embeddings.float().cpu()
            logits[rows] = batch_logits.float().cpu()
            bar.update(len(rows))
    model.train(was_training)
    return embeddings, logits


def accuracy(model: nn.Module, store: PackedStore, indices: np.ndarray, device: torch.device,
             amp: bool = True) -> float | None:
    """Top-1 accuracy of the classifier on whole utterances (no augmentation); None for no utterances."""
    if len(indices) == 0:
        return None
    _, logits = run_model(model, store, indices, device, amp=amp)
    labels = torch.as_tensor(store.labels[np.asarray(indices)])
    return int((logits.argmax(dim=1) == labels).sum()) / len(indices)  # exact, as the DDP count is
