"""Audio file reading: soundfile for I/O, torchaudio's resampler, stereo averaged to mono."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from scipy.io import wavfile

from voxaug.errors import file_error

AUDIO_SUFFIXES = (".wav", ".flac")


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform at ``sample_rate``; clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, "audio file not found")
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise file_error(path, f"unsupported audio format {path.suffix!r}; accepted: {', '.join(AUDIO_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise file_error(path, "audio file is empty (0 bytes)")
    try:
        data, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise file_error(path, f"not a readable audio file ({str(exc).strip()[:200]})") from exc
    if data.shape[0] == 0:
        raise file_error(path, "audio file holds no samples")
    if not np.isfinite(data).all():
        raise file_error(path, "audio holds NaN or Inf samples")
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if file_rate != sample_rate:
        mono = torchaudio.functional.resample(mono, int(file_rate), int(sample_rate))
    if float(mono.abs().max()) == 0.0:
        raise file_error(path, "audio is silent (every sample is zero)")
    return mono


def write_audio(path: str | Path, waveform: torch.Tensor, sample_rate: int) -> None:
    """Write a float32 WAV, lossless, so features recomputed from it match the originals.

    scipy's writer, not libsndfile's: libsndfile adds a PEAK chunk holding the time of writing to
    float WAVs, so the same waveform written a second later gave different bytes (and ``voxaug
    synth`` different files for the same seed)."""
    if Path(path).suffix.lower() != ".wav":
        raise ValueError(f"{path}: write_audio writes .wav files")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, int(sample_rate), waveform.detach().cpu().numpy().astype(np.float32))
