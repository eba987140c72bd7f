"""`wave`: waveform augmentation with audiomentations, applied before the front end.

The chain is Gaussian noise at a random SNR, gain, background noise from ``--noise-dir`` (e.g.
MUSAN) and room impulse responses from ``--rir-dir``, each with its own probability. It runs in the
data-loading workers (``voxaug.data.wave_batches``) on audio sources only, so the batch pipeline's
``wave`` step is a pass-through that only carries the settings.

Deliberately left out of the default chain: pitch shift, time stretch and other transforms that
change the voice itself, because for speaker identification they change who is speaking.
"""

from __future__ import annotations

import codecs
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from voxaug.augment.base import (
    BatchAugmentation, TrainBatch, check_folder, check_probability, check_range, register_augmentation,
)
from voxaug.clips import files_under, unread_audio, without_originals
from voxaug.errors import VoxaugError, counted, file_error, not_a_file, not_a_folder
from voxaug.runtime.frontend import (
    UNKNOWN_FRAMES, audio_suffixes, check_audio_rate, libsndfile_reason, refuse_unreadable, silence_problem,
    unsupported_format,
)

RIR_OPTION = "--rir-dir"

_USABLE: set[tuple[str, str, int, int]] = set()
"""(option, path, size, mtime) of noise and RIR files whose samples were read and found usable, so a process that
builds the pipeline more than once reads each file once (per option: a RIR is used by its first channel only)."""


def check_samples(path: Path, option: str) -> None:
    """Refuse a file whose samples hold NaN or Inf (they would poison every mix) or are silent as a clip is (a silent
    RIR silences every example it is applied to; audiomentations skips a noise too quiet to scale, so it would never
    be added), in the channels the chain uses; read in blocks, so a long noise file is never held whole."""
    stat = path.stat()
    key = (option, str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _USABLE:
        return
    peak, channels = 0.0, 1
    try:
        for block in soundfile.blocks(str(path), blocksize=1 << 16, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise file_error(path, f"{option}: audio holds NaN or Inf samples")
            peak, channels = max(peak, float(np.abs(used_channel(block, option)).max(initial=0.0))), block.shape[1]
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:  # a FLAC shorter than its header says
        raise unreadable(path, option, exc) from exc
    problem = silence_problem(peak)
    if problem:
        where = (" in its first channel" if option == RIR_OPTION else " in its mono mix") if channels > 1 else ""
        raise file_error(path, f"{option}: audio {problem}{where}")
    _USABLE.add(key)


def unreadable(path: Path, option: str, error: Exception) -> VoxaugError:
    """The refusal of a noise or RIR file that soundfile cannot read, with the reason a clip gets
    (:func:`libsndfile_reason`: an MP3 holding no MPEG audio is not said to be missing)."""
    reason = libsndfile_reason(error) if isinstance(error, soundfile.LibsndfileError) else str(error).strip()[:200]
    return file_error(path, f"{option}: not a readable audio file ({reason})")


def used_channel(block: np.ndarray, option: str) -> np.ndarray:
    """The samples the chain uses of a (frames, channels) block: a RIR's first channel (see
    ``voxaug.augment.impulse``), a noise's mono mix (a stereo noise whose channels cancel is silent there)."""
    return block[:, 0] if option == RIR_OPTION else block.mean(axis=1)


def refuse_unencodable_name(path: Path, option: str) -> None:
    """audiomentations opens noise and RIR files by their ``str`` path, which soundfile encodes strictly in the file
    system encoding: a path it cannot spell (``José.wav`` under ``LC_ALL=C``, Latin-1 bytes under UTF-8) was refused
    with a codec error ("'ascii' codec can't encode ..."); this says why and what to do instead."""
    encoding = sys.getfilesystemencoding()
    try:
        str(path).encode(encoding)
    except UnicodeEncodeError:
        remedy = "rename it" if codecs.lookup(encoding).name == "utf-8" else "rename it, or run under a UTF-8 locale"
        raise file_error(path, f"{option}: audiomentations opens noise and RIR files by a name in the file system's "
                               f"encoding ({encoding}), which cannot spell this one; {remedy}") from None


def refuse_unread_formats(listed: list[Path], files: list[Path], option: str) -> None:
    """Refuse audio of a format the chain does not take (``x.m4a``), which would be left out without a word."""
    unread = unread_audio(listed, {file.with_suffix("") for file in files}, audio_suffixes())
    if unread:
        raise file_error(unread[0], f"{option}: {unsupported_format(unread[0], 'audio format', audio_suffixes())}")


def listed_noises(noise_list: Path) -> set[str]:
    """The audio file names a RIRS_NOISES ``noise_list`` names (``--noise-id ... RIRS_NOISES/<folder>/<name>.wav``)."""
    try:
        text = noise_list.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise file_error(noise_list, f"{RIR_OPTION}: cannot be read ({exc.strerror})") from exc
    return {Path(token).name for token in text.split() if token.lower().endswith(audio_suffixes())}


def refuse_listed_noises(files: list[Path]) -> None:
    """Refuse, as an RIR, a file its folder's ``noise_list`` names a noise: RIRS_NOISES keeps its isotropic noises
    beside its real RIRs (``real_rirs_isotropic_noises``), and a minute of noise convolved as a room smears every
    example into noise, a hundred times slower than a real RIR."""
    noises: dict[Path, set[str]] = {}
    for path in files:
        noise_list = path.parent / "noise_list"
        if path.parent not in noises:
            noises[path.parent] = listed_noises(noise_list) if noise_list.is_file() else set()
        if path.name in noises[path.parent]:
            raise file_error(path, f"{RIR_OPTION}: {noise_list} names it a noise, not an impulse response; give "
                                   f"{RIR_OPTION} a folder of RIRs only (such as RIRS_NOISES/simulated_rirs)")


def audio_files_in(folder: str | Path, option: str) -> list[Path]:
    """Every readable, non-empty, finite, not silent audio file of at least 1 kHz under ``folder`` (as a clip must be),
    less the originals of files converted from them (``x.mp3`` beside ``x.wav``); errors name the folder or the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise file_error(folder, f"{option}: {not_a_folder(folder)}")
    listed = list(files_under(folder))
    files = without_originals(sorted(p for p in listed if p.suffix.lower() in audio_suffixes()))
    for path in files:
        if path.is_symlink() and not path.exists():  # left out, it would silently leave its noise out
            raise file_error(path, f"{option}: a symbolic link that points to nothing ({os.readlink(path)})")
        if not path.is_file():  # a named pipe or a device, likewise
            raise file_error(path, f"{option}: {not_a_file(path, 'audio file')}")
    if not files:
        raise file_error(folder, f"{option}: holds no audio files ({', '.join(audio_suffixes())})")
    refuse_unread_formats(listed, files, option)
    if option == RIR_OPTION:
        refuse_listed_noises(files)
    for path in files:
        refuse_unencodable_name(path, option)
        refuse_unreadable(path, f"{option}: audio file")
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            raise unreadable(path, option, exc) from exc
        if info.frames <= 0:
            raise file_error(path, f"{option}: audio file holds no samples")
        # under 1 kHz a file holds nothing above 500 Hz: as noise it misses speech's band, as an RIR it filters it away
        check_audio_rate(info.samplerate, f"{path}: {option}")
        if info.frames == UNKNOWN_FRAMES:  # audiomentations reads a file whole, by the length its header declares
            raise file_error(path, f"{option}: its header leaves its length unknown (a streamed FLAC), and noise and "
                                   "RIR files are read by that length; re-encode it (flac or sox writes the length)")
        check_samples(path, option)
    return files


def sample_rates(files: list[Path]) -> dict[str, int]:
    """Each file's sample rate, by its path as given (the noise transform keys it by the path it draws)."""
    return {str(path): soundfile.info(str(path)).samplerate for path in files}


def example_seed(seed: int, epoch: int, position: int) -> int:
    """One 32-bit seed per training example, from (run seed, epoch, position in the epoch) only,
    so the augmentation an example gets does not depend on the number of workers or on resuming."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


@register_augmentation
class WaveAugmentation(BatchAugmentation):
    """Settings of the waveform chain; applied per example in the data workers (``apply``), not here.

    ``snr_*``: AddGaussianSNR; ``gain_*``: Gain (dB); ``noise_*``: AddBackgroundNoise from
    ``noise_dir`` at an SNR in [noise_min_snr_db, noise_max_snr_db]; ``rir_*``: ApplyImpulseResponse
    from ``rir_dir``, by each RIR's first channel. A folder left unset drops its transform.
    """

    name = "wave"
    order = 0

    def __init__(
        self,
        snr_p: float = 0.5,
        min_snr_db: float = 5.0,
        max_snr_db: float = 40.0,
        gain_p: float = 0.5,
        min_gain_db: float = -6.0,
        max_gain_db: float = 6.0,
        noise_dir: str | None = None,
        noise_p: float = 0.5,
        noise_min_snr_db: float = 3.0,
        noise_max_snr_db: float = 30.0,
        rir_dir: str | None = None,
        rir_p: float = 0.5,
    ) -> None:
        for label, value in (("--wave-snr-p (wave snr_p)", snr_p), ("--wave-gain-p (wave gain_p)", gain_p),
                             ("--noise-p (wave noise_p)", noise_p), ("--rir-p (wave rir_p)", rir_p)):
            check_probability(label, value)
        check_range("wave min_snr_db/max_snr_db", min_snr_db, max_snr_db, -200.0, 200.0)
        check_range("wave min_gain_db/max_gain_db", min_gain_db, max_gain_db, -200.0, 200.0)
        check_range("wave noise_min_snr_db/noise_max_snr_db", noise_min_snr_db, noise_max_snr_db, -200.0, 200.0)
        for label, folder in (("--noise-dir (wave noise_dir)", noise_dir), ("--rir-dir (wave rir_dir)", rir_dir)):
            check_folder(label, folder)
        self.snr_p, self.min_snr_db, self.max_snr_db = snr_p, min_snr_db, max_snr_db
        self.gain_p, self.min_gain_db, self.max_gain_db = gain_p, min_gain_db, max_gain_db
        self.noise_dir, self.noise_p = noise_dir, noise_p
        self.noise_min_snr_db, self.noise_max_snr_db = noise_min_snr_db, noise_max_snr_db
        self.rir_dir, self.rir_p = rir_dir, rir_p
        self._noise_files = audio_files_in(noise_dir, "--noise-dir") if noise_dir is not None else []
        self._rir_files = audio_files_in(rir_dir, RIR_OPTION) if rir_dir is not None else []
        self._noise_rates = sample_rates(self._noise_files)
        self._chain: Any = None

    def __call__(self, batch: TrainBatch, generator: Any) -> TrainBatch:
        """Pass-through: the waveform was already augmented before the front end, in the workers."""
        return batch

    def resampled_noise_warning(self, sample_rate: int) -> str | None:
        """One line saying how many ``--noise-dir`` files are at another rate than ``sample_rate`` (each excerpt drawn
        from them is resampled, on every draw) and how to avoid it; None when all are at that rate."""
        others = Counter(rate for rate in self._noise_rates.values() if rate != sample_rate)
        if not others:
            return None
        rates = ", ".join(f"{count} at {rate} Hz" for rate, count in sorted(others.items()))
        return (f"warning: {self.noise_dir}: --noise-dir: {sum(others.values())} of "
                f"{counted(len(self._noise_rates), 'noise file')} are not at the audio's {sample_rate} Hz ({rates}); "
                f"every excerpt drawn from them is resampled, several times the cost of reading it; resample the "
                f"folder to {sample_rate} Hz once to avoid that")

    def chain(self) -> Any:
        """The audiomentations ``Compose`` (built once per process, on first use)."""
        if self._chain is None:
            from audiomentations import AddGaussianSNR, Compose, Gain

            from voxaug.augment.background import QuietlyResampledBackgroundNoise
            from voxaug.augment.impulse import FirstChannelImpulseResponse

            transforms = [
                AddGaussianSNR(min_snr_db=self.min_snr_db, max_snr_db=self.max_snr_db, p=self.snr_p),
                Gain(min_gain_db=self.min_gain_db, max_gain_db=self.max_gain_db, p=self.gain_p),
            ]
            if self._noise_files:
                transforms.append(QuietlyResampledBackgroundNoise(
                    self._noise_rates, sounds_path=[str(p) for p in self._noise_files],
                    min_snr_db=self.noise_min_snr_db, max_snr_db=self.noise_max_snr_db, p=self.noise_p,
                ))
            if self._rir_files:
                transforms.append(FirstChannelImpulseResponse(ir_path=[str(p) for p in self._rir_files], p=self.rir_p))
            self._chain = Compose(transforms, p=1.0, shuffle=False)
        return self._chain

    def apply(self, waveform: np.ndarray, sample_rate: int, seed: int) -> np.ndarray:
        """Augment one mono float32 waveform; the same ``seed`` always gives the same result.

        audiomentations draws from Python's and numpy's global generators, so both are seeded here, per
        example, and put back afterwards: with ``--workers 0`` this runs in the caller's own process.
        """
        saved = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            out = self.chain()(samples=np.ascontiguousarray(waveform, dtype=np.float32), sample_rate=sample_rate)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        return np.nan_to_num(np.asarray(out, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
