"""What a model can be given: a clip file, a waveform with its sample rate, or a (frames, n_mels) feature array.

Everything becomes numpy here (torch tensors included, without importing torch), so both engines see one form.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from voxaug.clips import FEATURE_SUFFIX
from voxaug.errors import VoxaugError, file_error, not_a_file
from voxaug.runtime.frontend import (
    FrontendSettings, audio_suffixes, check_audio_rate, check_resampling, feature_values_problem, read_audio, resample,
    silence_problem, unsupported_format,
)

ClipInput = Any  # str | Path | np.ndarray | torch.Tensor
FLOAT32_MAX = float(np.finfo(np.float32).max)


def path_argument(value: object, what: str, argument: str) -> Path:
    """``value`` as a Path, refused in one line unless it is text or a path object (``Path(None)`` is a bare
    TypeError from deep inside pathlib); a path object of bytes (``os.scandir`` of a bytes folder) is decoded."""
    if not isinstance(value, (str, os.PathLike)):
        raise VoxaugError(f"{argument}: expected the path of {what} as text or a path object, got "
                          f"{type(value).__name__} {value!r}")
    return Path(os.fsdecode(value))


def clip_list(clips: ClipInput | Iterable[ClipInput], rows_are_clips: bool = False) -> list[ClipInput]:
    """Clips as a list, from any iterable (a generator too): one path, waveform or feature array is one clip, not an
    iterable of characters or rows, unless ``rows_are_clips`` (an array or tensor holding a batch of clips)."""
    one_array = not rows_are_clips and (hasattr(clips, "detach") or (isinstance(clips, np.ndarray)
                                                                     and clips.dtype != object))
    if isinstance(clips, (str, bytes, bytearray, os.PathLike)) or one_array:  # bytes: one clip, refused by as_numpy
        return [clips]
    try:
        iterator = iter(clips)
    except TypeError:  # None, a number: neither a clip nor a collection of clips
        raise VoxaugError(f"clips: expected a clip (a path, a waveform or a feature array) or a list of clips, "
                          f"got {type(clips).__name__}") from None
    return list(iterator)  # outside the try: a TypeError a generator raises midway is its own, not a wrong type


def all_clip_files(clips: list[ClipInput]) -> bool:
    """Whether ``clips`` is non-empty and every clip is a file path (read at its own rate), none an array."""
    return bool(clips) and all(isinstance(clip, (str, os.PathLike)) for clip in clips)


def refuse_unused_sample_rate(clips: list[ClipInput], sample_rate: int | None) -> None:
    """``sample_rate`` describes waveform arrays; a clip file is read at its own rate, so where every clip is a file
    the argument would be silently ignored."""
    if sample_rate is not None and all_clip_files(clips):
        raise VoxaugError(f"sample_rate={sample_rate!r} is for waveform arrays, and {os.fsdecode(clips[0])} is a "
                          "clip file, read at its own rate; leave sample_rate out")


def unreadable_clip(path: Path, exc: OSError) -> VoxaugError:
    """A clip file that the system refused to look at or read (a name too long for the file system, a folder that
    cannot be searched), in one line naming it rather than a bare OSError."""
    return file_error(path, f"cannot read the clip ({exc.strerror or exc})")


def clip_digest(x: ClipInput, sample_rate: int | None = None, name: str = "clip") -> str:
    """The first 16 hex digits of the SHA-256 of a clip's content (a file's bytes; an array's float32 values, shape
    and sample rate): the same clip under another name, or given to a later command, has the same digest."""
    digest = hashlib.sha256()
    if isinstance(x, (str, os.PathLike)):
        path = Path(os.fsdecode(x))
        try:  # exists() too raises OSError: a name too long, a folder that cannot be searched
            if path.exists() and not path.is_file():  # a pipe would block the read forever, /dev/zero never end it
                raise file_error(path, not_a_file(path, "clip"))
            with open(x, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise unreadable_clip(path, exc) from None
    else:
        values = np.ascontiguousarray(as_numpy(x, name))
        digest.update(f"{values.shape}|{sample_rate}|".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]


def enrolled_twin_digest(x: ClipInput, digest: str, recorded: dict[str, str]) -> str:
    """``digest`` (``x``'s own), or, where that is not among the ``recorded`` digests but a twin's is (``x.pt`` beside
    ``x.wav``: the features and the audio of one clip), the twin's: the clip was enrolled through its twin, which
    of the two a folder gives depends on the model (an export that takes audio, or no torch to read `.pt`)."""
    if not recorded or digest in recorded or not isinstance(x, (str, os.PathLike)):  # nothing to match: no twin read
        return digest
    path = Path(os.fsdecode(x))
    if path.suffix.lower() not in (FEATURE_SUFFIX,) + audio_suffixes():
        return digest
    for twin in twin_files(path):
        twin_digest = clip_digest(twin)
        if twin_digest in recorded:
            return twin_digest
    return digest


def twin_files(path: Path) -> list[Path]:
    """The clip files beside ``path`` of its stem and another clip suffix in any case (``x.WAV``, ``x.Flac``: as
    ``one_file_per_clip`` pairs them), `.pt` first, one per suffix (a case-insensitive file system finds one file
    under every spelling). Each spelling is looked up, a few stats, rather than the folder listed: a flat folder of
    10,000 clips would be listed once per clip."""
    twins = []
    for suffix in (FEATURE_SUFFIX,) + audio_suffixes():
        if suffix == path.suffix.lower():
            continue
        spellings = ("".join(letters) for letters in product(*(dict.fromkeys((c.lower(), c.upper())) for c in suffix)))
        found = next((twin for twin in map(path.with_suffix, spellings) if twin.is_file()), None)
        if found is not None:
            twins.append(found)
    return twins


@dataclass
class Clip:
    """One utterance as either ``waveform`` (N,) at the model's rate or ``features`` (T, n_mels); ``name`` for errors."""

    name: str
    waveform: np.ndarray | None = None
    features: np.ndarray | None = None


def as_numpy(values: Any, name: str = "clip") -> np.ndarray:
    """A numpy float32 copy of a floating-point array-like or (CPU or CUDA) torch tensor. Other dtypes are
    refused: integer PCM would be read unscaled, and booleans, complex numbers or text are no signal; so are wider
    floats beyond float32's range, which the copy would turn into Inf."""
    if isinstance(values, (bytes, bytearray)):  # numpy reads them as one string or as uint8, neither a signal
        raise VoxaugError(f"{name}: got {type(values).__name__}; give a clip file's path as text or a path object "
                          "(os.fsdecode turns a bytes path into one), or audio as a float waveform with its sample_rate")
    if hasattr(values, "detach"):
        values = values.detach()
        if values.is_meta:  # else a bare NotImplementedError from .cpu()
            raise VoxaugError(f"{name}: a tensor on the meta device holds no values")
        values = values.cpu()
        if str(values.layout) != "torch.strided":  # a sparse tensor: .numpy() takes dense ones only
            values = values.to_dense()
        if values.is_floating_point() and values.element_size() < 8:  # numpy has no bfloat16: widen it here, as
            values = values.float()  # astype below would; float64 stays, for the range check below
        values = values.numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise VoxaugError(f"{name}: not an array of numbers ({exc})") from None
    if array.dtype.kind != "f":
        raise VoxaugError(f"{name}: expected floating-point values, got dtype {array.dtype}"
                          + (" (scale integer PCM to [-1, 1] first)" if array.dtype.kind in "iu" else ""))
    if array.dtype.itemsize > 4 and array.size:
        largest = float(np.max(np.abs(array), initial=0.0, where=np.isfinite(array)))
        if largest > FLOAT32_MAX:
            raise VoxaugError(f"{name}: values as large as {largest:.3g} overflow float32, the model's precision "
                              f"(largest {FLOAT32_MAX:.3g})")
    return array.astype(np.float32)


def read_feature_file(path: Path, n_mels: int) -> np.ndarray:
    """A `.pt` feature tensor (needs torch: refused in one line, naming the train extra, when it is absent)."""
    from voxaug.safeio import import_torch

    import_torch(path, "feature file")
    from voxaug.data.validate import load_feature_file

    return load_feature_file(path, n_mels).numpy()


def read_clip_file(path: Path, frontend: FrontendSettings) -> Clip:
    """A clip file by its suffix: audio read with the numpy reader at the model's rate, or `.pt` features."""
    suffix = path.suffix.lower()
    if suffix in audio_suffixes():
        return Clip(str(path), waveform=read_audio(path, frontend.sample_rate))
    if suffix == FEATURE_SUFFIX:
        frontend.refuse_feature_file(path)
        return Clip(str(path), features=read_feature_file(path, frontend.n_mels))
    raise file_error(path, unsupported_format(path, "clip type", (FEATURE_SUFFIX,) + audio_suffixes()))


def to_clip(x: ClipInput, sample_rate: int | None, frontend: FrontendSettings, name: str | None = None) -> Clip:
    """Sort ``x`` into a waveform or features; a file is read (audio with the numpy reader, at the model's rate)."""
    model_rate, n_mels = frontend.sample_rate, frontend.n_mels
    if isinstance(x, (str, os.PathLike)):  # a Path, a PurePath, an os.DirEntry from os.scandir
        path = Path(os.fsdecode(x))
        try:  # the readers' own checks (exists, is_file) raise OSError for a name too long for the file system
            return read_clip_file(path, frontend)
        except OSError as exc:
            raise unreadable_clip(path, exc) from None
    name = name or "clip"
    values = as_numpy(x, name)
    if sample_rate is not None:
        if values.ndim != 1 or not len(values):
            raise VoxaugError(f"{name}: a waveform is one mono channel of shape (samples,), got shape {values.shape}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise VoxaugError(f"{name}: sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
        check_audio_rate(int(sample_rate), name)
        if not np.isfinite(values).all():
            raise VoxaugError(f"{name}: the waveform holds NaN or infinite samples")
        silent = silence_problem(float(np.abs(values).max()))
        if silent:
            raise VoxaugError(f"{name}: the waveform {silent}")
        if sample_rate != model_rate:
            check_resampling(name, int(sample_rate), model_rate)
            values = resample(values, int(sample_rate), model_rate)
        return Clip(name, waveform=values)
    if values.ndim != 2 or values.shape[1] != n_mels:
        transposed = values.ndim == 2 and values.shape[0] == n_mels
        hint = "transposed? features are (frames, n_mels)" if transposed else "for a waveform, pass its sample_rate too"
        raise VoxaugError(f"{name}: features must have shape (frames, {n_mels}), got {values.shape} ({hint})")
    if not len(values):
        raise VoxaugError(f"{name}: features hold no frames (shape {values.shape})")
    problem = feature_values_problem(float(np.abs(values).max()))
    if problem:
        raise VoxaugError(f"{name}: {problem}")
    return Clip(name, features=values)
