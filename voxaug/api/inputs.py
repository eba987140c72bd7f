"""What a model can be given: a clip file, a waveform with its sample rate, or a (frames, n_mels) feature array.

Everything becomes numpy here (torch tensors included, without importing torch), so both engines see one form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxaug.clips import FEATURE_SUFFIX
from voxaug.errors import VoxaugError, file_error
from voxaug.runtime.frontend import AUDIO_SUFFIXES, read_audio, resample

ClipInput = Any  # str | Path | np.ndarray | torch.Tensor


@dataclass
class Clip:
    """One utterance as either ``waveform`` (N,) at the model's rate or ``features`` (T, n_mels); ``name`` for errors."""

    name: str
    waveform: np.ndarray | None = None
    features: np.ndarray | None = None


def as_numpy(values: Any) -> np.ndarray:
    """A numpy float32 copy of an array-like or a (CPU or CUDA) torch tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def read_feature_file(path: Path, n_mels: int) -> np.ndarray:
    """A `.pt` feature tensor (needs torch: refused in one line, naming the train extra, when it is absent)."""
    from voxaug.safeio import import_torch

    import_torch(path, "feature file")
    from voxaug.data.validate import load_feature_file

    return load_feature_file(path, n_mels).numpy()


def to_clip(x: ClipInput, sample_rate: int | None, model_rate: int, n_mels: int, name: str | None = None) -> Clip:
    """Sort ``x`` into a waveform or features; a file is read (audio with the numpy reader, at the model's rate)."""
    if isinstance(x, (str, Path)):
        path = Path(x)
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            return Clip(str(path), waveform=read_audio(path, model_rate))
        if suffix == FEATURE_SUFFIX:
            return Clip(str(path), features=read_feature_file(path, n_mels))
        raise file_error(path, f"unsupported clip type {path.suffix!r}; accepted: .pt, {', '.join(AUDIO_SUFFIXES)}")
    values = as_numpy(x)
    name = name or "clip"
    if sample_rate is not None:
        if values.ndim != 1:
            raise VoxaugError(f"{name}: a waveform is one mono channel of shape (samples,), got shape {values.shape}")
        if sample_rate <= 0:
            raise VoxaugError(f"{name}: sample_rate must be positive, got {sample_rate}")
        if sample_rate != model_rate:
            values = resample(values, sample_rate, model_rate)
        return Clip(name, waveform=values)
    if values.ndim != 2 or values.shape[1] != n_mels:
        raise VoxaugError(f"{name}: features must have shape (frames, {n_mels}), got {values.shape} "
                          "(for a waveform, pass its sample_rate too)")
    if not np.isfinite(values).all():
        raise VoxaugError(f"{name}: features hold NaN or infinite values")
    return Clip(name, features=values)
