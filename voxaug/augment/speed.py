"""`speed`: speed perturbation with each speed a speaker of its own (the WeSpeaker and 3D-Speaker recipe).

Physics: playing a recording ``α`` times faster shortens it to T/α and moves every frequency f to
α·f, so pitch and formants (what identifies a voice) shift too: a sped-up speaker is a new
speaker. On log-mel frames that is approximated by resampling the time axis (output frame j reads
input frame α·j) and warping the mel axis (output band m, centred at f_m, reads the input at
f_m/α), both by bilinear interpolation. Speed α ≠ 1 trains class ``label + k·S`` (S speakers, k the
factor's position), so the AM-Softmax head has (1 + len(factors))·S classes; inference answers
with the S original speakers only.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from voxaug.augment.base import BatchAugmentation, TrainBatch, real_frames, register_augmentation, uniform
from voxaug.errors import VoxaugError
from voxaug.runtime.frontend import FrontendSettings

F_MIN_HZ, F_MAX_HZ = FrontendSettings.f_min, FrontendSettings.f_max
"""The default front end's mel range (the homework's features), until the trainer binds its own (``bind_mel_range``)."""


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (the front end's scale)."""
    linear = hz / (200.0 / 3)
    return torch.where(hz < 1000, linear, 15.0 + torch.log(hz.clamp(min=1e-3) / 1000) / (math.log(6.4) / 27))


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return torch.where(mel < 15.0, mel * (200.0 / 3), 1000 * torch.exp((mel - 15.0) * (math.log(6.4) / 27)))


@lru_cache(maxsize=16)
def band_positions(bands: int, factor: float, f_min_hz: float = F_MIN_HZ, f_max_hz: float = F_MAX_HZ) -> torch.Tensor:
    """(bands,) fractional input band read by each output band at speed ``factor`` (clamped to the edges), for
    mel bands spanning [``f_min_hz``, ``f_max_hz``] as the front end's filterbank does."""
    if bands < 2:
        return torch.zeros(bands)
    mels = torch.linspace(float(hz_to_mel(torch.tensor(f_min_hz))), float(hz_to_mel(torch.tensor(f_max_hz))), bands + 2)
    centres = mel_to_hz(mels[1:-1].double())  # (F,) Hz
    wanted = (centres / factor).clamp(float(centres[0]), float(centres[-1]))
    upper = torch.searchsorted(centres, wanted).clamp(1, bands - 1)
    low, high = centres[upper - 1], centres[upper]
    return ((upper - 1) + (wanted - low) / (high - low)).float()


@register_augmentation
class SpeedPerturb(BatchAugmentation):
    """Each example is played at speed 1 or one of ``factors``, uniformly, and a perturbed example is
    labelled as a new speaker (``label + k·S``). The time axis keeps its size: a slower example is
    cut at the batch's length, a faster one ends earlier (its new length) and is padded with zeros.

    Why: the margin loss must separate three times as many voices, several of them close to each
    real speaker, which pushes embeddings to use the fine detail of pitch and formants.
    """

    name = "speed"
    order = 5

    def __init__(self, factors: list[float] | tuple[float, ...] = (0.9, 1.1)) -> None:
        if not isinstance(factors, (list, tuple)) or not factors:
            raise VoxaugError(f"speed factors must be a non-empty list of speeds, got {factors!r}")
        for factor in factors:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.5 <= factor <= 2.0 \
                    or factor == 1.0:
                raise VoxaugError(f"speed factors must be numbers in [0.5, 2] other than 1, got {factor!r}")
        if len(set(factors)) != len(factors):
            raise VoxaugError(f"speed factors name a speed twice: {list(factors)}")
        self.factors = [float(f) for f in factors]
        self._speakers: int | None = None
        self._mel_range = (F_MIN_HZ, F_MAX_HZ)

    @property
    def label_copies(self) -> int:
        return 1 + len(self.factors)

    def bind(self, speakers: int) -> None:
        self._speakers = speakers

    def bind_mel_range(self, f_min_hz: float, f_max_hz: float) -> None:
        """Warp band centres of the front end's range: from the default one, a narrowband front end (8 kHz audio,
        bands up to 4 kHz) was warped by about 80% of each factor."""
        self._mel_range = (float(f_min_hz), float(f_max_hz))

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        if self._speakers is None:
            raise VoxaugError("speed: the number of speakers is not known (the trainer binds it)")
        features, lengths = batch.features, batch.lengths  # (B, T, F), (B,)
        size, frames, bands = features.shape
        device = features.device
        choice = (uniform((size,), generator, device) * self.label_copies).long().clamp(max=self.label_copies - 1)
        speeds = torch.tensor([1.0] + self.factors, device=device)[choice]  # (B,)
        warps = [band_positions(bands, f, *self._mel_range) for f in self.factors]
        rows = torch.stack([torch.arange(bands, dtype=torch.float32)] + warps).to(device)[choice]  # (B, F)
        read_at = torch.arange(frames, device=device).unsqueeze(0) * speeds.unsqueeze(1)  # (B, T) input frame
        grid_x = (2 * read_at / max(frames - 1, 1) - 1).unsqueeze(1).expand(size, bands, frames)  # (B, F, T)
        grid_y = (2 * rows / max(bands - 1, 1) - 1).unsqueeze(2).expand(size, bands, frames)  # (B, F, T)
        grid = torch.stack([grid_x, grid_y], dim=3).to(features.dtype)  # (B, F, T, 2), of the features' dtype
        warped = F.grid_sample(features.transpose(1, 2).unsqueeze(1), grid, mode="bilinear",
                               padding_mode="border", align_corners=True)  # (B, 1, F, T)
        new_lengths = (((lengths - 1).float() / speeds).floor().long() + 1).clamp(0, frames)  # (B,); empty stays empty
        warped = warped.squeeze(1).transpose(1, 2) * real_frames(new_lengths, frames).unsqueeze(2).to(features.dtype)
        warped = torch.where((choice == 0).view(size, 1, 1), features, warped)  # speed 1: exactly the input
        labels = batch.labels + (choice * self._speakers).unsqueeze(1)  # (B, K)
        return TrainBatch(warped.contiguous(), new_lengths, labels, batch.weights)
