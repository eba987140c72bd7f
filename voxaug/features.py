"""The log-mel front end shared by `voxaug synth`, audio datasets and `voxaug identify`.

Its settings travel inside every checkpoint, so a clip is featurised exactly as training data was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torchaudio

from voxaug.errors import VoxaugError


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel settings: 16 kHz, 40 bins, 25 ms window, 10 ms hop by default (the homework's features)."""

    sample_rate: int = 16000
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    f_min: float = 20.0
    f_max: float = 7600.0
    log_floor: float = 1e-6

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise VoxaugError(f"front end: sample_rate must be positive, got {self.sample_rate}")
        if self.n_mels <= 0:
            raise VoxaugError(f"front end: n_mels must be positive, got {self.n_mels}")
        if not 0 < self.hop_ms <= self.win_ms:
            raise VoxaugError(f"front end: need 0 < hop_ms <= win_ms, got hop {self.hop_ms}, win {self.win_ms}")
        if self.win_length > self.n_fft:
            raise VoxaugError(f"front end: window of {self.win_length} samples exceeds n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise VoxaugError(f"front end: need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FrontendConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise VoxaugError(f"front end: unknown settings {sorted(unknown)}; accepted: {sorted(known)}")
        return cls(**values)


@lru_cache(maxsize=8)
def _mel_transform(config: FrontendConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate,
        n_fft=config.n_fft,
        win_length=config.win_length,
        hop_length=config.hop_length,
        f_min=config.f_min,
        f_max=config.f_max,
        n_mels=config.n_mels,
        power=2.0,
        center=True,
        norm="slaney",
        mel_scale="slaney",
    )


def log_mel(waveform: torch.Tensor, config: FrontendConfig = FrontendConfig()) -> torch.Tensor:
    """Mono waveform (samples,) at ``config.sample_rate`` -> float32 log-mel features (frames, n_mels)."""
    if waveform.dim() != 1:
        raise VoxaugError(f"front end expects a mono waveform of shape (samples,), got {tuple(waveform.shape)}")
    with torch.no_grad():
        mel = _mel_transform(config)(waveform.to(torch.float32))  # (n_mels, frames)
        return torch.log(mel + config.log_floor).transpose(0, 1).contiguous()


def frames_for(num_samples: int, config: FrontendConfig = FrontendConfig()) -> int:
    """Number of feature frames ``log_mel`` returns for a waveform of ``num_samples``."""
    return 1 + num_samples // config.hop_length
