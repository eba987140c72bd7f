"""The interface every batch augmentation implements, and the registry that finds them by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import math

import torch

from voxaug.errors import VoxaugError


@dataclass
class TrainBatch:
    """A training batch as augmentations see it.

    ``labels`` and ``weights`` are (B, K): each example's loss is ``sum_k weights[:, k] * L(labels[:, k])``.
    Without mixing K = 1 and the weight is 1.
    """

    features: torch.Tensor  # (B, T, n_mels)
    lengths: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B, K)
    weights: torch.Tensor  # (B, K)

    @classmethod
    def from_labels(cls, features: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> "TrainBatch":
        labels = labels.view(-1, 1)
        return cls(features, lengths, labels, torch.ones(labels.shape, dtype=features.dtype, device=features.device))

    def dominant_labels(self) -> torch.Tensor:
        """The label with the largest weight per example (what accuracy on a mixed batch counts)."""
        return self.labels.gather(1, self.weights.argmax(dim=1, keepdim=True)).squeeze(1)


class BatchAugmentation(ABC):
    """One augmentation of a training batch on the training device, vectorised over examples.

    Randomness comes only from the ``generator`` passed in, so runs are reproducible and resumable.
    """

    name: ClassVar[str]
    order: ClassVar[int]

    @property
    def label_copies(self) -> int:
        """Classes each speaker gets in the head (``speed`` makes a perturbed speaker a new class)."""
        return 1

    def bind(self, speakers: int) -> None:
        """Told the number of training speakers before the first batch; most augmentations ignore it."""

    def check_bands(self, n_mels: int) -> None:
        """Told the data's mel-band count before any data is read, to refuse what cannot apply to it."""

    def bind_hop(self, hop_ms: float) -> None:
        """Told the front end's frame hop in ms before the first batch; only augmentations timed in seconds use it."""

    def bind_mel_range(self, f_min_hz: float, f_max_hz: float) -> None:
        """Told the front end's mel range in Hz before the first batch; only augmentations that warp frequency use it."""

    @abstractmethod
    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        """Return the augmented batch; shapes of features and lengths are kept unless documented."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


AUGMENTATIONS: dict[str, type[BatchAugmentation]] = {}


def real_frames(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T) boolean mask, True on each example's real frames and False on its padding."""
    return torch.arange(frames, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def log_power_peak(features: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1) each example's largest log power over its real cells: ``exp(x - peak)`` never overflows,
    and reverb and noise, being linear in power, give the same log result up to adding the peak back."""
    masked = features.float().masked_fill(~real.unsqueeze(2), float("-inf"))
    peak = masked.amax(dim=(1, 2), keepdim=True)
    return torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 draws from ``generator`` on ``device`` (the generator's device)."""
    return torch.rand(shape, generator=generator, device=device)


MAX_WHOLE = 2**31 - 1
"""Largest whole-number setting (frames, bands, steps, batch): counts go into int64 tensor arithmetic, and a
larger one would overflow there after minutes of preparation instead of being refused up front."""


def check_probability(label: str, value: object) -> None:
    """Refuse anything but a number in [0, 1], naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise VoxaugError(f"{label} must be a probability in [0, 1], got {value!r}")


def check_folder(label: str, folder: object) -> None:
    """Refuse a folder setting that is neither unset (None) nor a path; an empty name too, which would read the
    working directory as the folder, and one of only whitespace, as ``--noise-dir`` refuses them."""
    if folder == "":
        raise VoxaugError(f"{label} is an empty folder name, which would read the working directory; "
                          "give a folder or leave it out")
    if isinstance(folder, str) and not folder.strip():
        raise VoxaugError(f"{label} {folder!r} is a folder name of only whitespace; give a folder or leave it out")
    if folder is not None and not isinstance(folder, str):
        raise VoxaugError(f"{label} must be a folder path, got {folder!r}")


def check_number(label: str, value: object, low: float, high: float) -> None:
    """Refuse anything but a finite number in [low, high], naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise VoxaugError(f"{label} must be a number in [{low:g}, {high:g}], got {value!r}")


def check_range(label: str, low: object, high: object, lowest: float, highest: float) -> None:
    """Refuse a (minimum, maximum) pair outside [lowest, highest] or in the wrong order."""
    check_number(label, low, lowest, highest)
    check_number(label, high, lowest, highest)
    if low > high:  # type: ignore[operator]
        raise VoxaugError(f"{label}: minimum {low} exceeds maximum {high}")


def register_augmentation(cls: type[BatchAugmentation]) -> type[BatchAugmentation]:
    """Class decorator: make ``cls`` available to ``--augment`` under ``cls.name``."""
    AUGMENTATIONS[cls.name] = cls
    return cls


def total_loss(model: Any, logits: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
    """Mean over the batch of the weighted per-target losses (the margin applies per target)."""
    per_example = sum(batch.weights[:, k] * model.loss(logits, batch.labels[:, k]) for k in range(batch.labels.shape[1]))
    return per_example.mean()
