"""`channel`: a random microphone/channel colouring and level, applied to log-mel frames.

Physics: a linear channel with frequency response H(f) multiplies the power spectrum by |H(f)|²,
so on a log power scale it *adds* 10·log10|H(f)|² dB to every frame. A microphone or a phone line
has a smooth response, so across mel bands it is well described by a few low-order cosine terms;
a level change adds the same number of dB to every band. Both are constant over the utterance.
"""

from __future__ import annotations

import math

import torch

from voxaug.augment.base import (
    BatchAugmentation, TrainBatch, check_number, check_probability, real_frames, register_augmentation, uniform,
)
from voxaug.errors import VoxaugError

DB_TO_LOG_POWER = math.log(10.0) / 10.0
"""Features are natural-log power: x dB of power is x · ln(10) / 10 in feature units."""


def cosine_basis(terms: int, bands: int, device: torch.device) -> torch.Tensor:
    """(terms, bands) cosines cos(π k (m + ½) / M), k = 1..terms: smooth curves across the mel axis."""
    k = torch.arange(1, terms + 1, device=device, dtype=torch.float32).unsqueeze(1)
    m = torch.arange(bands, device=device, dtype=torch.float32).unsqueeze(0)
    return torch.cos(math.pi * k * (m + 0.5) / bands)


@register_augmentation
class ChannelColour(BatchAugmentation):
    """Add a random smooth EQ curve (``terms`` cosines across the mel bands, each of amplitude up to
    ``max_db``) and a random gain in [−``gain_db``, ``gain_db``] to every real frame of an example,
    with probability ``p`` per example. Padding is untouched.

    Why: utterances of one speaker recorded on different microphones and channels differ by exactly
    such a curve, and a model that has only seen each speaker through a few channels memorises them.
    """

    name = "channel"
    order = 16

    def __init__(self, p: float = 1.0, terms: int = 3, max_db: float = 3.0, gain_db: float = 6.0) -> None:
        check_probability("channel p", p)
        if not isinstance(terms, int) or isinstance(terms, bool) or not 1 <= terms <= 16:
            raise VoxaugError(f"channel terms must be a whole number in [1, 16], got {terms!r}")
        check_number("--channel-db (channel max_db)", max_db, 0.0, 40.0)
        check_number("channel gain_db", gain_db, 0.0, 40.0)
        self.p, self.terms, self.max_db, self.gain_db = float(p), terms, float(max_db), float(gain_db)

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        features, lengths = batch.features, batch.lengths  # (B, T, F), (B,)
        size, frames, bands = features.shape
        device = features.device
        amplitudes = (2 * uniform((size, self.terms), generator, device) - 1) * self.max_db  # (B, K) dB
        gain = (2 * uniform((size, 1), generator, device) - 1) * self.gain_db  # (B, 1) dB
        chosen = (uniform((size, 1), generator, device) < self.p).float()  # (B, 1)
        curve_db = (amplitudes @ cosine_basis(self.terms, bands, device) + gain) * chosen  # (B, F)
        real = real_frames(lengths, frames).unsqueeze(2).to(features.dtype)  # (B, T, 1)
        shifted = features + (curve_db * DB_TO_LOG_POWER).to(features.dtype).unsqueeze(1) * real
        return TrainBatch(shifted, lengths, batch.labels, batch.weights)
