"""The log-mel front end in numpy, equal to ``voxaug.features.log_mel`` (torchaudio's MelSpectrogram):
periodic Hann window centred in ``n_fft``, reflect-padded centred frames, power 2, Slaney mel scale
and norm, ``log(mel + floor)``. Also torch-free audio reading with the same checks and the same
resampler as ``voxaug.audio`` (torchaudio's windowed-sinc ``resample`` with its default settings)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile

from voxaug.clips import CLIP_AUDIO_SUFFIXES, DECODED_AUDIO_SUFFIXES
from voxaug.errors import VoxaugError, file_error, not_a_file, refuse_unknown_keys
from voxaug.safeio import finite_number

LIBSNDFILE_CODECS = {".mp3": ("MP3", None), ".ogg": ("OGG", None), ".oga": ("OGG", None), ".opus": ("OGG", "OPUS"),
                     ".aif": ("AIFF", None), ".aiff": ("AIFF", None)}
"""(libsndfile format, subtype it must decode too) of each suffix in ``DECODED_AUDIO_SUFFIXES``: MP3 came with
libsndfile 1.1.0 and Opus with 1.0.29, and a build may leave either out."""


@lru_cache(maxsize=1)
def audio_suffixes() -> tuple[str, ...]:
    """The suffixes of audio read as clips: .wav, .flac and each decoded format the installed libsndfile reports
    (asked at run time: under a libsndfile without MP3, an .mp3 is named and refused as a format not read)."""
    formats = soundfile.available_formats()
    return CLIP_AUDIO_SUFFIXES + tuple(suffix for suffix in DECODED_AUDIO_SUFFIXES
                                       if _decodes(formats, *LIBSNDFILE_CODECS[suffix]))


def _decodes(formats: dict, major: str, subtype: str | None) -> bool:
    return major in formats and (subtype is None or subtype in soundfile.available_subtypes(major))


def unsupported_format(path: Path, kind: str, accepted: tuple[str, ...]) -> str:
    """Why ``path``, of a suffix not in ``accepted``, is refused as a ``kind`` ("clip type", "audio format"); for a
    format that libsndfile decodes where built with its codec, that the installed one was not."""
    lacking = path.suffix.lower() in DECODED_AUDIO_SUFFIXES
    why = f" (the installed libsndfile {soundfile.__libsndfile_version__} cannot decode it)" if lacking else ""
    return f"unsupported {kind} {path.suffix!r}{why}; accepted: {', '.join(accepted)}"


MAX_FEATURE_MAGNITUDE = 1e4
"""Log-mel features are logarithms, tens at most. The network's embeddings stop being finite past about 1e19 in
float32 and 1e5 in the float16 of CUDA inference."""


def feature_values_problem(largest: float) -> str | None:
    """What is wrong with features whose largest absolute value is ``largest`` (NaN if any is), or None."""
    if not math.isfinite(largest):
        return "features hold NaN or Inf values"
    if largest > MAX_FEATURE_MAGNITUDE:
        return (f"features hold values as large as {largest:.3g}; log-mel features are logarithms, far below "
                f"{MAX_FEATURE_MAGNITUDE:g}: is this a log-mel tensor?")
    return None


@dataclass(frozen=True)
class FrontendSettings:
    """Log-mel settings, the same fields as ``voxaug.features.FrontendConfig`` (which travels in checkpoints)."""

    sample_rate: int = 16000
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    f_min: float = 20.0
    f_max: float = 7600.0
    log_floor: float = 1e-6

    def __post_init__(self) -> None:
        for setting in fields(self):  # from a TOML or JSON file a value may be of any type
            value, whole = getattr(self, setting.name), setting.type == "int"
            if (isinstance(value, bool) or not isinstance(value, int if whole else (int, float))
                    or isinstance(value, float) and not math.isfinite(value)):
                raise VoxaugError(f"front end: {setting.name} must be {'an integer' if whole else 'a finite number'}, "
                                  f"got {value!r}")
            if not finite_number(value):  # an int too large for float arithmetic (5000 digits cannot be printed)
                raise VoxaugError(f"front end: {setting.name} is an integer beyond a float's range")
        if self.sample_rate <= 0 or self.n_mels <= 0:
            raise VoxaugError(f"front end: sample_rate and n_mels must be positive, got {self.sample_rate}, {self.n_mels}")
        if not 0 < self.hop_ms <= self.win_ms:
            raise VoxaugError(f"front end: need 0 < hop_ms <= win_ms, got hop {self.hop_ms}, win {self.win_ms}")
        if self.hop_length < 1:  # and so the window, which is at least as long
            raise VoxaugError(f"front end: hop_ms {self.hop_ms} is under one sample at {self.sample_rate} Hz")
        if self.win_length > self.n_fft:
            raise VoxaugError(f"front end: window of {self.win_length} samples exceeds n_fft {self.n_fft}")
        if self.n_fft % 2:  # centred frames of an odd n_fft count one fewer than every frame count here assumes
            raise VoxaugError(f"front end: n_fft must be even, got {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise VoxaugError(f"front end: need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")

    def audio_settings(self) -> list[str]:
        """The settings other than n_mels that differ from the defaults. They shape audio into features, so a
        model trained with any of them cannot use `.pt` features, which are made with the defaults."""
        given, usual = asdict(self), asdict(FrontendSettings(n_mels=self.n_mels))
        return sorted(key for key in given if given[key] != usual[key])

    def refuse_feature_file(self, path: str | Path) -> None:
        """Refuse a `.pt` clip for a model whose front end has :meth:`audio_settings`, naming them."""
        if self.audio_settings():
            raise file_error(path, f"log-mel features (.pt) are made with the default front end, and this model was "
                                   f"trained from audio with other settings ({', '.join(self.audio_settings())}); "
                                   "give the clip's audio file")

    @property
    def is_default(self) -> bool:
        """Whether these are the settings `voxaug synth`'s `.pt` features are made with: only then does a clip's
        `.pt` twin hold what this front end makes of its audio."""
        return self == FrontendSettings()

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FrontendSettings":
        refuse_unknown_keys(values, cls, "front end", "settings")
        return cls(**values)

    @classmethod
    def implied_by_rate(cls, values: dict, given: set[str]) -> dict:
        """What a sample rate the user ``given`` implies for the settings not given too: ``f_max`` down to its
        Nyquist frequency, ``n_fft`` up to the power of two that holds the window. Empty when no rate was given
        (or it is malformed, which ``from_dict`` refuses)."""
        rate, win_ms = values.get("sample_rate"), values.get("win_ms", cls.win_ms)
        if "sample_rate" not in given or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                 for v in (rate, win_ms)):
            return {}
        implied: dict = {}
        if "f_max" not in given and rate / 2 < cls.f_max:
            implied["f_max"] = rate / 2
        window = int(round(rate * win_ms / 1000))
        if "n_fft" not in given and window > cls.n_fft:
            implied["n_fft"] = 1 << (window - 1).bit_length()
        return implied


def frames_for(num_samples: int, settings: FrontendSettings) -> int:
    """Number of frames ``log_mel`` returns for ``num_samples`` samples (centred frames)."""
    return 1 + num_samples // settings.hop_length


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (as torchaudio and librosa)."""
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    linear = mels * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0))
    return np.where(mels >= 15.0, log_part, linear)


@lru_cache(maxsize=8)
def mel_filterbank(settings: FrontendSettings) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) Slaney-normalised triangular filters, as ``torchaudio.functional.melscale_fbanks``."""
    all_freqs = np.linspace(0, settings.sample_rate // 2, settings.n_fft // 2 + 1)
    mel_range = _hz_to_slaney_mel(np.array([settings.f_min, settings.f_max], dtype=np.float64))
    f_pts = _slaney_mel_to_hz(np.linspace(mel_range[0], mel_range[1], settings.n_mels + 2))
    f_diff = np.diff(f_pts)  # (n_mels + 1,)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (f_pts[2:] - f_pts[:-2]))[None, :]


@lru_cache(maxsize=8)
def analysis_window(settings: FrontendSettings) -> np.ndarray:
    """Periodic Hann window of ``win_length`` zero-padded to ``n_fft``, centred (as ``torch.stft``)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(settings.win_length) / settings.win_length)
    left = (settings.n_fft - settings.win_length) // 2
    return np.pad(window, (left, settings.n_fft - settings.win_length - left))


def log_mel(waveform: np.ndarray, settings: FrontendSettings) -> np.ndarray:
    """(N,) float waveform at ``settings.sample_rate`` -> (T, n_mels) float32 log-mel, T = 1 + N // hop."""
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise VoxaugError(f"front end expects a mono waveform of shape (samples,), got {waveform.shape}")
    half = settings.n_fft // 2
    if waveform.shape[0] <= half:
        raise VoxaugError(f"front end needs more than {half} samples, got {waveform.shape[0]}")
    padded = np.pad(waveform.astype(np.float64), (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, settings.n_fft)[:: settings.hop_length]  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames * analysis_window(settings), axis=1)) ** 2  # (T, n_freqs)
    mel = power @ mel_filterbank(settings)  # (T, n_mels)
    return np.log(mel + settings.log_floor).astype(np.float32)


RESAMPLE_ZERO_CROSSINGS = 6  # torchaudio.functional.resample's defaults: lowpass_filter_width, rolloff
RESAMPLE_ROLLOFF = 0.99


@lru_cache(maxsize=8)
def _resample_kernel(orig: int, new: int) -> tuple[np.ndarray, int]:
    """(new, 2 * width + orig) Hann-windowed sinc filters, one per output phase, built as torchaudio builds
    them for a float32 waveform: in float32 (float64 filters differ enough to move a quiet band's log-mel
    by 1e-3). Rates are already divided by their gcd."""
    one = np.float32
    base = min(orig, new) * RESAMPLE_ROLLOFF
    width = math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / base)
    offsets = np.arange(-width, width + orig, dtype=one)[None, :] / one(orig)
    t = (np.arange(0, -new, -1, dtype=one)[:, None] / one(new) + offsets) * one(base)
    t = np.clip(t, -RESAMPLE_ZERO_CROSSINGS, RESAMPLE_ZERO_CROSSINGS).astype(one)
    window = np.cos(t * one(math.pi / RESAMPLE_ZERO_CROSSINGS / 2)) ** 2
    t = t * one(math.pi)
    sinc = np.sin(t) / np.where(t == 0, one(1), t)
    sinc[t == 0] = 1
    return (sinc * window * one(base / orig)).astype(one), width


MAX_RESAMPLE_TAPS = 50_000_000
"""Filter coefficients (phases x taps) a resampling may build: 200 MB of float32. Common rates need under
a million; a rate prime to the model's (16001 Hz to 16000 Hz) would need 256 million, several GB."""


def resample_taps(orig_rate: int, new_rate: int) -> int:
    """How many filter coefficients resampling ``orig_rate`` to ``new_rate`` builds (torchaudio builds as many)."""
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    width = math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / (min(orig, new) * RESAMPLE_ROLLOFF))
    return new * (2 * width + orig)


def check_resampling(path: str | Path, orig_rate: int, new_rate: int) -> None:
    """Refuse, naming the file, a sample rate whose resampling filter would take gigabytes."""
    if orig_rate != new_rate and resample_taps(orig_rate, new_rate) > MAX_RESAMPLE_TAPS:
        raise file_error(path, f"sample rate {orig_rate} Hz has no small common factor with the model's {new_rate} Hz, "
                               "so resampling it would build a filter of several GB; convert the file to a common "
                               "rate (such as 16000, 44100 or 48000 Hz) first")


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """(N,) waveform from ``orig_rate`` to ``new_rate``, equal to ``torchaudio.functional.resample``'s defaults."""
    if orig_rate == new_rate:
        return waveform
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    kernel, width = _resample_kernel(orig, new)
    padded = np.pad(waveform.astype(np.float64), (width, width + orig))
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]  # (frames, taps)
    resampled = (windows @ kernel.T).reshape(-1)  # output sample n * new + phase
    # torchaudio takes the ceiling of the length in float32: the exact one is a sample longer for some long clips
    return resampled[: math.ceil(np.float32(new * waveform.shape[0] / orig))].astype(np.float32)


def wav_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes its header declares, bytes present) of a WAV file's sample data cut short, else None. libsndfile reads
    a truncated WAV without a word, as if it were a shorter recording."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk = handle.read(8)
            declared = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                present = size - position - 8
                # 0 and 0xFFFFFFFF: a header written before the length was known (streamed); nothing to compare
                return (declared, present) if declared not in (0, 0xFFFFFFFF) and present < declared else None
            position += 8 + declared + (declared & 1)
    return None


def mp3_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes its Xing/Info header declares, bytes present) of an MP3 file cut short, else None (an MP3 without that
    header states no length). mpg123 decodes a truncated MP3 as a shorter recording, with notes on stderr."""
    with open(path, "rb") as handle:
        head = handle.read(10)
        start = 0
        if len(head) == 10 and head[:3] == b"ID3":  # an ID3v2 tag first: its size is 4 bytes of 7 bits, a footer 10
            start = 10 + _synchsafe(head[6:10]) + (10 if head[5] & 0x10 else 0)
        handle.seek(start)
        frame = handle.read(64)
    tag = max(frame.find(b"Xing"), frame.find(b"Info"))  # after the first frame's header and side information
    if tag < 0 or len(frame) < tag + 16 or not frame[tag + 7] & 0x02:  # flag 2: the stream's byte count is given
        return None
    at = tag + 8 + (4 if frame[tag + 7] & 0x01 else 0)  # flag 1: a frame count comes first
    declared, present = int.from_bytes(frame[at:at + 4], "big"), path.stat().st_size - start
    return (declared, present) if present < declared else None


def _synchsafe(size: bytes) -> int:
    """An ID3v2 size: big-endian bytes of 7 bits each."""
    return sum((byte & 0x7F) << (7 * (len(size) - 1 - i)) for i, byte in enumerate(size))


OGG_SUFFIXES = tuple(suffix for suffix, (major, _) in LIBSNDFILE_CODECS.items() if major == "OGG")
OGG_MAX_PAGE = 27 + 255 + 255 * 255
"""An Ogg page's largest size in bytes: header, segment table, body."""


def ogg_unfinished(path: Path) -> bool:
    """Whether an Ogg file stops before its stream ends: its last whole page (its checksum right) lacks the
    end-of-stream flag. Bytes after that page (a tag a tool appended) are passed over, as libsndfile passes them;
    where the last two pages' span holds no whole page, nothing says the file is cut. libsndfile reads a truncated
    Ogg as a shorter recording, without a word."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 2 * OGG_MAX_PAGE))  # a cut page, and the whole one before it
        tail = handle.read()
    page = tail.rfind(b"OggS")
    while page >= 0:
        if _is_whole_ogg_page(tail, page):
            return not tail[page + 5] & 0x04
        page = tail.rfind(b"OggS", 0, page)
    return False


def _is_whole_ogg_page(data: bytes, page: int) -> bool:
    """Whether an Ogg page starts at ``page`` and ends within ``data``: its segment table and body fit, and its CRC
    (of the page with the CRC field zeroed) matches, as ``OggS`` met by chance in a page's audio all but never does."""
    if page + 27 > len(data):
        return False
    body = page + 27 + data[page + 26]
    end = body + sum(data[page + 27:body])  # past data too where the segment table is cut
    if end > len(data):
        return False
    stored = int.from_bytes(data[page + 22:page + 26], "little")
    return _ogg_crc(data[page:page + 22] + bytes(4) + data[page + 26:end]) == stored


def _ogg_crc_entry(index: int) -> int:
    """The CRC of the byte ``index``: a row of the table :func:`_ogg_crc` looks bytes up in."""
    crc = index << 24
    for _ in range(8):
        crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


_OGG_CRC_TABLE = tuple(_ogg_crc_entry(index) for index in range(256))


def _ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32: polynomial 0x04C11DB7, most significant bit first, no initial or final inversion."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[(crc >> 24) ^ byte]
    return crc


READ_BLOCK_FRAMES = 1 << 16
"""Frames decoded at a time. A header's frame count is only a claim: a FLAC of a few kB can declare 2**36
samples, and reading it in one go would allocate that much (hundreds of GB) before decoding a sample."""


UNKNOWN_FRAMES = 2**63 - 1
"""libsndfile's frame count for a file whose header leaves it unknown (a FLAC declaring 0 samples, as streaming
encoders write)."""


class _SequentialSoundFile(soundfile.SoundFile):
    """Read front to back, without the seek soundfile makes after every read to keep its own position: libsndfile
    cannot seek to the end of a FLAC whose header leaves its length unknown (or overstates it), so that seek failed
    (``Internal psf_fseek() failed``) once the last samples were decoded."""

    def seekable(self) -> bool:
        return False


def _decode(path: Path) -> tuple[np.ndarray, int, int]:
    """An audio file's samples (frames, channels) as float32, its sample rate and the frame count its header declares,
    read a block at a time until the end, so memory follows what the file holds, not what its header declares.
    Opened by its bytes name: soundfile encodes a str name strictly in the file system encoding, so a name such as
    ``José/1.wav`` failed under an ASCII locale (``LC_ALL=C``), as did one that is not UTF-8 under a UTF-8 one."""
    with _SequentialSoundFile(os.fsencode(path)) as audio:
        blocks = []
        while len(block := audio.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)):
            blocks.append(block)
        empty = np.zeros((0, audio.channels), dtype=np.float32)
        return (np.concatenate(blocks) if blocks else empty), audio.samplerate, audio.frames


def truncation_problem(path: Path, present: int, declared: int) -> str | None:
    """What is missing from a WAV, FLAC or Ogg file cut short, which libsndfile decoded without a word, else None.
    ``present``: the frames decoded; ``declared``: the frames its header declares. Checked after decoding, so that
    libsndfile's reason names a file damaged otherwise."""
    suffix = path.suffix.lower()
    shortfall = wav_shortfall(path) if suffix == ".wav" else None
    if shortfall is not None:
        return f"truncated WAV file: its header declares {shortfall[0]} bytes of samples and {shortfall[1]} are present"
    if suffix == ".flac" and present < declared != UNKNOWN_FRAMES:
        return f"truncated FLAC file: its header declares {declared} samples and {present} are present"
    if suffix in OGG_SUFFIXES and ogg_unfinished(path):
        return "truncated Ogg file: it stops before the end of its stream"
    return None


def libsndfile_reason(error: soundfile.LibsndfileError) -> str:
    """libsndfile's reason for refusing a file, but for the one it gives an MP3 that holds no MPEG audio ("File does
    not exist or is not a regular file"), which the checks before it have ruled out."""
    reason = error.error_string.strip()[:200]
    return "no audio stream found in it" if reason.startswith("File does not exist or is not a regular file") else reason


def refuse_unreadable(path: Path, what: str) -> None:
    """Refuse ``path`` when the system will not let it be read (mode 000, another account's file) with the system's
    reason, naming it as ``what``: libsndfile reports only "System error.", which reads as a damaged file."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise file_error(path, f"{what} cannot be read ({exc.strerror or exc})") from None


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """An audio file's samples averaged to mono float32, and its sample rate; bad files refused naming them."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, "audio file not found")
    if not path.is_file():  # a pipe or a device: its size of 0 is no empty file's
        raise file_error(path, not_a_file(path, "audio"))
    if path.suffix.lower() not in audio_suffixes():
        raise file_error(path, unsupported_format(path, "audio format", audio_suffixes()))
    if path.stat().st_size == 0:
        raise file_error(path, "audio file is empty (0 bytes)")
    refuse_unreadable(path, "audio file")
    mp3_short = mp3_shortfall(path) if path.suffix.lower() == ".mp3" else None  # before mpg123's notes on stderr
    if mp3_short is not None:
        raise file_error(path, f"truncated MP3 file: its header declares {mp3_short[0]} bytes of audio and "
                               f"{mp3_short[1]} are present")
    try:
        data, file_rate, declared = _decode(path)
    except soundfile.LibsndfileError as exc:  # its prefix names the file again, as the bytes _decode opened it by
        raise file_error(path, f"not a readable audio file ({libsndfile_reason(exc)})") from exc
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        raise file_error(path, f"not a readable audio file ({str(exc).strip()[:200]})") from exc
    if data.shape[0] == 0:
        raise file_error(path, "audio file holds no samples")
    truncated = truncation_problem(path, data.shape[0], declared)
    if truncated is not None:
        raise file_error(path, truncated)
    if not np.isfinite(data).all():
        raise file_error(path, "audio holds NaN or Inf samples")
    check_audio_rate(file_rate, str(path))
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(file_rate)


MIN_AUDIO_RATE = 1000
"""Below 1 kHz no speech band survives, and resampling such a rate up to 16 kHz multiplies the samples."""


def check_audio_rate(rate: int, name: str) -> None:
    if rate < MIN_AUDIO_RATE:
        raise VoxaugError(f"{name}: sample rate {rate} Hz is under {MIN_AUDIO_RATE} Hz, too low for speech")


SILENCE_PEAK = 2.0 ** -23
"""One step of 24-bit audio (-138 dBFS). A clip whose loudest sample is below it holds nothing a recorder captured:
its log-mel features sit at the front end's floor, as an all-zero clip's do, and would be identified all the same."""


def silence_problem(peak: float) -> str | None:
    """Why a clip of this peak amplitude is silent, or None when it holds sound."""
    if peak == 0.0:
        return "is silent (every sample is zero)"
    if peak < SILENCE_PEAK:
        return f"is silent (its loudest sample, {peak:.1e}, is below one step of 24-bit audio)"
    return None


def refuse_silence(path: str | Path, peak: float) -> None:
    problem = silence_problem(peak)
    if problem:
        raise file_error(path, f"audio {problem}")


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as a mono float32 waveform at ``sample_rate``; clear errors for bad files."""
    samples, file_rate = read_mono(path)
    check_resampling(path, file_rate, int(sample_rate))
    mono = resample(samples, file_rate, int(sample_rate))
    refuse_silence(path, float(np.abs(mono).max()))
    return mono
