"""Audio file reading: soundfile for I/O, torchaudio's resampler, stereo averaged to mono."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio
from scipy.io import wavfile

from voxaug.runtime.frontend import audio_suffixes, check_resampling, read_mono, refuse_silence
from voxaug.safeio import atomic_output

__all__ = ["audio_suffixes", "read_audio", "write_audio"]


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform at ``sample_rate``, resampled by torchaudio; clear errors
    for bad files (the checks are the torch-free runtime's, ``voxaug.runtime.frontend.read_mono``)."""
    samples, file_rate = read_mono(path)
    mono = torch.from_numpy(samples)
    if file_rate != sample_rate:
        check_resampling(path, file_rate, int(sample_rate))
        mono = torchaudio.functional.resample(mono, file_rate, int(sample_rate))
    refuse_silence(path, float(mono.abs().max()))
    return mono


def write_audio(path: str | Path, waveform: torch.Tensor, sample_rate: int) -> None:
    """Write a float32 WAV, lossless, so features recomputed from it match the originals.

    scipy's writer, not libsndfile's: libsndfile adds a PEAK chunk holding the time of writing to
    float WAVs, so the same waveform written a second later gave different bytes (and ``voxaug
    synth`` different files for the same seed). Written atomically: a full disk leaves the previous file."""
    if Path(path).suffix.lower() != ".wav":
        raise ValueError(f"{path}: write_audio writes .wav files")
    with atomic_output(path, "wb") as handle:
        wavfile.write(handle, int(sample_rate), waveform.detach().cpu().numpy().astype(np.float32))
