"""`noise`: additive background noise imitated on log-mel frames.

Physics: speech and an independent noise add as waveforms, so their expected powers add in every
time-frequency cell: P_out = P_speech + P_noise. The noise is scaled so that the utterance's mean
power over its real frames and bands is ``snr`` dB above the noise's. Without a folder the noise
is stationary and coloured: a power spectrum with a random tilt across mel bands (from dark,
rumbling noise to bright hiss) that is the same in every frame. With ``noise_dir``, each example
gets a random stretch of a real noise recording's log-mel features instead.
Adding power never lowers any cell, and lifts none by more than the noise power put there.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from voxaug.augment.base import (
    BatchAugmentation, TrainBatch, check_folder, check_probability, check_range, log_power_peak, real_frames,
    register_augmentation, uniform,
)
from voxaug.augment.channel import DB_TO_LOG_POWER
from voxaug.clips import files_under
from voxaug.errors import VoxaugError, file_error, not_a_file, not_a_folder

FEATURE_SUFFIX = ".pt"


def load_noise_features(folder: str | Path) -> list[torch.Tensor]:
    """Every ``.pt`` log-mel tensor (frames, n_mels) under ``folder``, as float32 log power relative to the file's
    loudest cell (the SNR sets the level, so any log scale, dB-like included, stays finite); errors name the file."""
    from voxaug.safeio import safe_torch_load

    folder = Path(folder)
    if not folder.is_dir():
        raise file_error(folder, f"--noise-dir: {not_a_folder(folder)}")
    files = sorted(p for p in files_under(folder) if p.suffix.lower() == FEATURE_SUFFIX)
    for path in files:
        if path.is_symlink() and not path.exists():  # left out, it would silently leave its noise out
            raise file_error(path, f"--noise-dir: a symbolic link that points to nothing ({os.readlink(path)})")
        if not path.is_file():  # a named pipe or a device, likewise
            raise file_error(path, f"--noise-dir: {not_a_file(path, 'noise feature file')}")
    if not files:
        raise file_error(folder, f"--noise-dir: holds no noise feature files ({FEATURE_SUFFIX}) for the 'noise' augmentation")
    noises = []
    for path in files:
        tensor = safe_torch_load(path, "noise feature file")
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or min(tensor.shape) < 1 or not tensor.is_floating_point():
            raise file_error(path, "--noise-dir: expected a float tensor of log-mel features (frames, n_mels)")
        if not torch.isfinite(tensor).all():
            raise file_error(path, "--noise-dir: noise features hold NaN or Inf values")
        noises.append(tensor.float() - tensor.float().max())
    bands = {int(t.shape[1]) for t in noises}
    if len(bands) > 1:
        raise file_error(folder, f"--noise-dir: noise files disagree on n_mels ({sorted(bands)})")
    return noises


@register_augmentation
class AdditiveNoise(BatchAugmentation):
    """With probability ``p`` per example, add noise power at an SNR drawn from [``min_snr_db``,
    ``max_snr_db``] relative to the example's own mean power. The built-in noise is stationary with a
    spectral tilt of up to ±``max_tilt_db`` dB from the lowest to the highest mel band; ``noise_dir``
    (``--noise-dir``) takes log-mel ``.pt`` noise recordings instead. Padding is untouched.

    Why: every recording has a noise floor of its own (fans, traffic, crowds), and a speaker heard
    only against a few of them is partly recognised by the noise.
    """

    name = "noise"
    order = 14

    def __init__(self, p: float = 0.5, min_snr_db: float = 5.0, max_snr_db: float = 30.0, max_tilt_db: float = 12.0,
                 noise_dir: str | None = None) -> None:
        check_probability("--noise-p (noise p)", p)
        check_range("noise min_snr_db/max_snr_db", min_snr_db, max_snr_db, -30.0, 100.0)
        check_range("noise max_tilt_db", 0.0, max_tilt_db, 0.0, 60.0)
        check_folder("noise noise_dir", noise_dir)
        self.p, self.min_snr_db, self.max_snr_db = float(p), float(min_snr_db), float(max_snr_db)
        self.max_tilt_db, self.noise_dir = float(max_tilt_db), noise_dir
        self._noises = load_noise_features(noise_dir) if noise_dir is not None else []

    def _stationary(self, size: int, frames: int, bands: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
        """(B, T, F) coloured noise power of mean 1: a random tilt across bands, the same in every frame."""
        tilt = (2 * uniform((size, 1), generator, device) - 1) * self.max_tilt_db  # (B, 1) dB, low to high band
        ramp = torch.linspace(-0.5, 0.5, bands, device=device).unsqueeze(0)  # (1, F)
        shape = torch.exp(tilt * ramp * DB_TO_LOG_POWER)  # (B, F)
        return (shape / shape.mean(dim=1, keepdim=True)).unsqueeze(1).expand(size, frames, bands)

    def check_bands(self, n_mels: int) -> None:
        if self._noises and int(self._noises[0].shape[1]) != n_mels:
            raise VoxaugError(f"{self.noise_dir}: noise features have {self._noises[0].shape[1]} mel bands, "
                              f"the training features {n_mels}")

    def _recorded(self, real: torch.Tensor, bands: int, generator: torch.Generator) -> torch.Tensor:
        """(B, T, F) noise power from random files at random offsets (looped when shorter), relative to each
        stretch's loudest real cell: a stretch far below its file's peak (a pause in a recording on a dB scale)
        would underflow to no power, and an SNR below about -6 dB then scaled that zero to inf and gave NaN."""
        size, frames = real.shape
        device = real.device
        self.check_bands(bands)
        picks = (uniform((size,), generator, device) * len(self._noises)).long().clamp(max=len(self._noises) - 1)
        starts = uniform((size,), generator, device)
        rows = []
        for pick, start in zip(picks.tolist(), starts.tolist()):
            noise = self._noises[pick]
            offset = int(start * noise.shape[0])
            index = (torch.arange(frames) + offset) % noise.shape[0]
            rows.append(noise[index])
        logs = torch.stack(rows).to(device)  # (B, T, F)
        return torch.exp((logs - log_power_peak(logs, real)).clamp(max=0.0))  # padding may be louder: capped

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        features, lengths = batch.features, batch.lengths  # (B, T, F), (B,)
        size, frames, bands = features.shape
        device = features.device
        snr_db = self.min_snr_db + (self.max_snr_db - self.min_snr_db) * uniform((size,), generator, device)  # (B,)
        chosen = uniform((size,), generator, device) < self.p  # (B,)
        real = real_frames(lengths, frames)  # (B, T)
        noise = (self._recorded(real, bands, generator) if self._noises
                 else self._stationary(size, frames, bands, generator, device))
        peak = log_power_peak(features, real)  # (B, 1, 1)
        power = torch.exp(features.float() - peak) * real.unsqueeze(2)  # (B, T, F), relative to the peak
        cells = lengths.clamp(min=1) * bands  # (B,) real cells
        speech = power.sum(dim=(1, 2)) / cells  # (B,) mean power over real cells
        noise_mean = (noise * real.unsqueeze(2)).sum(dim=(1, 2)) / cells  # (B,)
        scale = speech * 10 ** (-snr_db / 10) / noise_mean.clamp(min=torch.finfo(torch.float32).tiny)  # (B,)
        noisy = (torch.log((power + scale.view(size, 1, 1) * noise).clamp(min=torch.finfo(torch.float32).tiny))
                 + peak).to(features.dtype)
        keep = (chosen.unsqueeze(1) & real).unsqueeze(2)  # (B, T, 1)
        return TrainBatch(torch.where(keep, noisy, features), lengths, batch.labels, batch.weights)

