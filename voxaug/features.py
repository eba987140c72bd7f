"""The log-mel front end shared by `voxaug synth`, audio datasets and `voxaug identify`.

Its settings travel inside every checkpoint, so a clip is featurised exactly as training data was.
"""

from __future__ import annotations

import torch
import torchaudio

from voxaug.errors import VoxaugError
from voxaug.runtime.frontend import FrontendSettings

FrontendConfig = FrontendSettings
"""Log-mel settings: 16 kHz, 40 bins, 25 ms window, 10 ms hop by default (the homework's features). One
definition, torch-free, shared with the ONNX runtime's numpy front end (``voxaug.runtime.frontend``)."""


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
