"""What fixes a run's training and validation utterances, as a model file records it (torch-free)."""

from __future__ import annotations

from typing import NamedTuple


class TrainingSplit(NamedTuple):
    """A run's seed, validation fraction and split version (``voxaug.data.split``)."""

    seed: int
    val_fraction: float
    version: int
