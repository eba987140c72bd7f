"""`reverb`: room reverberation imitated on log-mel frames.

Physics: a room impulse response is a direct path followed by a tail whose energy decays
exponentially, by 60 dB over the reverberation time RT60, i.e. as exp(−13.8 t / RT60). Convolving
speech with it smears each frame's *power* forward in time: the expected power of output frame t
is Σ_τ k(τ) · P(t − τ), with k(0) the direct path and k(τ > 0) ∝ exp(−13.8 τ·hop / RT60) the tail,
their balance set by the direct-to-reverberant ratio (DRR). The kernel sums to 1, so reverberation
moves energy later in time and never creates it: each output frame is a weighted average of the
frames up to it, and the tail that would ring past the utterance's end is lost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from voxaug.augment.base import (
    BatchAugmentation, TrainBatch, check_probability, check_range, log_power_peak, real_frames, register_augmentation,
    uniform,
)
from voxaug.errors import VoxaugError
from voxaug.runtime.frontend import FrontendSettings

DECAY_60_DB = 6.0 * math.log(10.0)
"""ln(10⁶) ≈ 13.8: the energy decay exponent over one RT60."""


def decay_kernels(rt60_s: torch.Tensor, drr_db: torch.Tensor, taps: int, hop_s: float) -> torch.Tensor:
    """(B, taps) energy kernels summing to 1: the direct path at tap 0, then an exponential tail."""
    delay = torch.arange(1, taps, device=rt60_s.device, dtype=torch.float32).unsqueeze(0) * hop_s  # (1, taps-1)
    decay = -DECAY_60_DB * delay / rt60_s.unsqueeze(1)  # (B, taps-1) log energy
    tail = torch.exp(decay)
    total = tail.sum(dim=1, keepdim=True)
    # normalised to sum 1; where an RT60 far below the hop underflows every tap (0 / 0), by softmax, which is the
    # same sum-1 decay computed stably (not used throughout: its rounding would move every trained figure)
    tail = torch.where(total >= torch.finfo(tail.dtype).tiny, tail / total, torch.softmax(decay, dim=1))
    tail = tail * 10 ** (-drr_db.unsqueeze(1) / 10)  # tail energy = direct / DRR
    kernel = torch.cat([torch.ones_like(rt60_s).unsqueeze(1), tail], dim=1)  # (B, taps)
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_augmentation
class Reverb(BatchAugmentation):
    """With probability ``p`` per example, smear its mel power along time with an exponential decay of
    RT60 in [``min_rt60``, ``max_rt60``] s and a DRR in [``min_drr_db``, ``max_drr_db``] dB, then
    take the log again. Padding is untouched; ``hop_ms`` is the front end's frame hop: unless given, the
    trainer's front end's (``bind_hop``), the default front end's before it is told.

    Why: the same speaker sounds different in a dry booth and a reverberant hall, and each training
    speaker is heard in only a few rooms.
    """

    name = "reverb"
    order = 12

    def __init__(self, p: float = 0.5, min_rt60: float = 0.2, max_rt60: float = 0.8, min_drr_db: float = -3.0,
                 max_drr_db: float = 12.0, hop_ms: float | None = None) -> None:
        check_probability("--reverb-p (reverb p)", p)
        check_range("reverb min_rt60/max_rt60 (seconds)", min_rt60, max_rt60, 0.01, 5.0)
        check_range("reverb min_drr_db/max_drr_db", min_drr_db, max_drr_db, -40.0, 60.0)
        if hop_ms is not None and (isinstance(hop_ms, bool) or not isinstance(hop_ms, (int, float))
                                   or not 0 < hop_ms <= 100):
            raise VoxaugError(f"reverb hop_ms must be a frame hop in (0, 100] ms, got {hop_ms!r}")
        self.p = float(p)
        self.min_rt60, self.max_rt60 = float(min_rt60), float(max_rt60)
        self.min_drr_db, self.max_drr_db = float(min_drr_db), float(max_drr_db)
        self.hop_ms = FrontendSettings.hop_ms if hop_ms is None else float(hop_ms)
        self._hop_given = hop_ms is not None

    def bind_hop(self, hop_ms: float) -> None:
        """Take the front end's hop, unless ``hop_ms`` was given (features of a hop the front end does not know)."""
        if not self._hop_given:
            self.hop_ms = float(hop_ms)

    @property
    def taps(self) -> int:
        """Kernel length in frames: the tail down by 60 dB at the longest RT60."""
        return max(2, int(math.ceil(self.max_rt60 * 1000 / self.hop_ms)) + 1)

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        features, lengths = batch.features, batch.lengths  # (B, T, F), (B,)
        size, frames, bands = features.shape
        device = features.device
        rt60 = self.min_rt60 + (self.max_rt60 - self.min_rt60) * uniform((size,), generator, device)  # (B,)
        drr = self.min_drr_db + (self.max_drr_db - self.min_drr_db) * uniform((size,), generator, device)  # (B,)
        chosen = uniform((size,), generator, device) < self.p  # (B,)
        taps = min(self.taps, frames)
        kernel = decay_kernels(rt60, drr, taps, self.hop_ms / 1000)  # (B, taps)
        real = real_frames(lengths, frames)  # (B, T)
        peak = log_power_peak(features, real)  # (B, 1, 1)
        power = torch.exp(features.float() - peak) * real.unsqueeze(2)  # (B, T, F), zero power in padding
        signal = power.permute(0, 2, 1).reshape(1, size * bands, frames)  # one channel per (example, band)
        weight = kernel.flip(1).repeat_interleave(bands, dim=0).unsqueeze(1)  # (B*F, 1, taps), causal
        smeared = F.conv1d(F.pad(signal, (taps - 1, 0)), weight, groups=size * bands)  # (1, B*F, T)
        smeared = smeared.view(size, bands, frames).permute(0, 2, 1)  # (B, T, F)
        reverberant = (torch.log(smeared.clamp(min=torch.finfo(torch.float32).tiny)) + peak).to(features.dtype)
        keep = (chosen.unsqueeze(1) & real).unsqueeze(2)  # (B, T, 1)
        return TrainBatch(torch.where(keep, reverberant, features), lengths, batch.labels, batch.weights)
