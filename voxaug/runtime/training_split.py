"""What fixes a run's training and validation utterances, as a model file records it (torch-free)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import NamedTuple

import numpy as np

SPLIT_PARTS = ("train", "val")


class TrainingSplit(NamedTuple):
    """A run's seed, validation fraction and split version (``voxaug.data.split``)."""

    seed: int
    val_fraction: float
    version: int


def encode_split_clips(record: dict[str, np.ndarray]) -> str:
    """A run's clip digests (``voxaug.data.split.split_record``) as text for an ONNX export's metadata: each part's
    int64 digests, little-endian, in base64 (8 bytes a clip, not the 20 of decimal JSON)."""
    return json.dumps({part: base64.b64encode(np.asarray(record[part], dtype="<i8").tobytes()).decode("ascii")
                       for part in SPLIT_PARTS})


def decode_split_clips(text: str) -> dict[str, np.ndarray]:
    """:func:`encode_split_clips`'s text as the record again; ValueError where it is not that."""
    try:
        parts = json.loads(text)
        if not isinstance(parts, dict) or sorted(parts) != list(SPLIT_PARTS) or not all(
                isinstance(value, str) for value in parts.values()):
            raise ValueError("not the 'train' and 'val' digests")
        raw = {part: base64.b64decode(parts[part], validate=True) for part in SPLIT_PARTS}
    except (binascii.Error, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if any(len(data) % 8 for data in raw.values()):
        raise ValueError("digests are 8 bytes each")
    return {part: np.frombuffer(data, dtype="<i8").astype(np.int64) for part, data in raw.items()}
