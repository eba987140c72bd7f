"""A synthetic multi-speaker corpus, generated locally in seconds and deterministic for a seed.

Speech is made by a source-filter model in the STFT domain: a glottal pulse train (speaker pitch,
breathiness) shaped by formant resonances scaled by the speaker's vocal-tract length, with the
speaker's spectral tilt and small per-vowel habits. Each utterance varies content, rate and
intonation; each recording session adds its own channel EQ, reverberation and noise at a random
SNR. Speaker identity is learnable, but a model can also memorise sessions and content, which is
exactly the overfitting voxaug's augmentations exist to fix. Waveforms go through the same
log-mel front end that audio datasets use.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchaudio

from voxaug.audio import write_audio
from voxaug.features import FrontendConfig, log_mel
from voxaug.errors import file_error
from voxaug.progress import progress_bar
from voxaug.safeio import atomic_output, atomic_torch_save, atomic_write_json, ensure_folder
from voxaug.synth_config import SynthConfig

# Average adult formants (F1, F2, F3) in Hz for eight vowels.
VOWELS = torch.tensor(
    [[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [660, 1720, 2410],
     [570, 840, 2410], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690]],
    dtype=torch.float32,
)
FRICATIVE_CENTRES = torch.tensor([2500.0, 4500.0, 6000.0, 3500.0])
SYNTH_N_FFT, SYNTH_HOP = 512, 128


@dataclass
class Voice:
    """What makes a speaker sound like themselves."""

    f0: float
    f0_range: float
    vocal_tract: float
    tilt: float
    breathiness: float
    bandwidth: float
    rate: float
    vowel_habits: torch.Tensor  # (vowels, 3) multiplicative formant shifts

    @classmethod
    def draw(cls, g: torch.Generator) -> "Voice":
        u = lambda lo, hi: float(lo + (hi - lo) * torch.rand((), generator=g))  # noqa: E731
        return cls(
            f0=u(95, 210), f0_range=u(1.0, 4.0), vocal_tract=u(0.88, 1.12), tilt=u(-1.0, 0.2),
            breathiness=u(0.05, 0.3), bandwidth=u(0.8, 1.3), rate=u(0.85, 1.2),
            vowel_habits=1 + 0.06 * (2 * torch.rand(len(VOWELS), 3, generator=g) - 1),
        )

    def for_utterance(self, g: torch.Generator) -> "Voice":
        """The same speaker on a given day: pitch, vocal effort (tilt) and rate drift per utterance."""
        u = lambda lo, hi: float(lo + (hi - lo) * torch.rand((), generator=g))  # noqa: E731
        return replace(self, f0=self.f0 * 2 ** (u(-2.5, 2.5) / 12), tilt=self.tilt + u(-0.25, 0.25),
                       rate=self.rate * u(0.85, 1.15), breathiness=self.breathiness * u(0.7, 1.3))


@dataclass
class Session:
    """A recording session (a 'video'): channel colour, room and noise shared by its clips."""

    eq: torch.Tensor  # (freq_bins,) linear gain
    rt60: float
    snr_db: float
    noise_tilt: float

    @classmethod
    def draw(cls, g: torch.Generator) -> "Session":
        knots = 10 ** ((torch.rand(8, generator=g) * 2 - 1) * 10 / 20)  # up to +-10 dB
        eq = torch.nn.functional.interpolate(knots[None, None], size=SYNTH_N_FFT // 2 + 1, mode="linear",
                                             align_corners=True)[0, 0]
        u = lambda lo, hi: float(lo + (hi - lo) * torch.rand((), generator=g))  # noqa: E731
        return cls(eq=eq, rt60=u(0.0, 0.7), snr_db=u(0, 25), noise_tilt=u(-1.0, 0.0))


def _generator(*parts: object) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(seed)


def _frame_tracks(voice: Voice, seconds: float, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-frame pitch, voicing, formants, fricative centre and loudness for one utterance's content."""
    frames = int(seconds * 16000 / SYNTH_HOP)
    frames_per_s = 16000 / SYNTH_HOP
    voiced, formants, fric, loud = [], [], [], []
    while len(voiced) < frames:
        if torch.rand((), generator=g) < 0.45:
            length = int(frames_per_s * (0.05 + 0.07 * float(torch.rand((), generator=g))) / voice.rate)
            centre = FRICATIVE_CENTRES[int(torch.randint(len(FRICATIVE_CENTRES), (), generator=g))]
            voiced += [0.0] * length
            formants += [formants[-1] if formants else VOWELS[0] * voice.vocal_tract] * length
            fric += [float(centre)] * length
            loud += [0.5] * length
        vowel = int(torch.randint(len(VOWELS), (), generator=g))
        length = int(frames_per_s * (0.08 + 0.14 * float(torch.rand((), generator=g))) / voice.rate)
        target = VOWELS[vowel] * voice.vowel_habits[vowel] / voice.vocal_tract
        voiced += [1.0] * length
        formants += [target] * length
        fric += [0.0] * length
        loud += [1.0] * length
        if torch.rand((), generator=g) < 0.15:
            pause = int(frames_per_s * 0.1 * float(torch.rand((), generator=g)))
            voiced += [0.0] * pause
            formants += [target] * pause
            fric += [0.0] * pause
            loud += [0.02] * pause
    smooth = lambda x, k: torch.nn.functional.avg_pool1d(  # noqa: E731
        x.T[None], k, stride=1, padding=k // 2, count_include_pad=False)[0].T
    formant_track = smooth(torch.stack(formants[:frames]), 5)[:frames]  # (frames, 3) coarticulation
    voicing = smooth(torch.tensor(voiced[:frames])[:, None], 3)[:frames, 0]
    loudness = smooth(torch.tensor(loud[:frames])[:, None], 5)[:frames, 0]
    phrase = torch.linspace(0, 1, frames)
    contour = (voice.f0_range * (torch.sin(2 * math.pi * phrase * float(1 + 2 * torch.rand((), generator=g))) * 0.5
               - phrase * 0.6))
    f0 = voice.f0 * 2 ** (contour / 12)
    return {"voicing": voicing, "formants": formant_track, "fricative": torch.tensor(fric[:frames]),
            "loudness": loudness, "f0": f0}


def synthesise(voice: Voice, session: Session, seconds: float, g: torch.Generator) -> torch.Tensor:
    """One utterance's waveform at 16 kHz, float32, peak-normalised with a random gain."""
    voice = voice.for_utterance(g)
    tracks = _frame_tracks(voice, seconds, g)
    frames = tracks["f0"].shape[0]
    samples = (frames - 1) * SYNTH_HOP
    f0 = torch.nn.functional.interpolate(tracks["f0"][None, None], size=samples, mode="linear")[0, 0]
    f0 = f0 * (1 + 0.01 * torch.randn(samples, generator=g))  # jitter
    phase = torch.cumsum(f0 / 16000, dim=0)
    pulses = 2 * torch.frac(phase) - 1  # sawtooth glottal source
    noise = torch.randn(samples, generator=g)
    window = torch.hann_window(SYNTH_N_FFT)
    stft = lambda x: torch.stft(x, SYNTH_N_FFT, SYNTH_HOP, window=window, return_complex=True)  # noqa: E731
    voiced_spec, noise_spec = stft(pulses), stft(noise)  # (freq, frames)
    frames = min(frames, voiced_spec.shape[1])
    freqs = torch.linspace(0, 8000, SYNTH_N_FFT // 2 + 1)[:, None]  # (freq, 1)
    formants = tracks["formants"][:frames].T  # (3, frames)
    widths = torch.tensor([80.0, 110.0, 160.0])[:, None] * voice.bandwidth
    gains = torch.tensor([1.0, 0.6, 0.35])[:, None]
    envelope = sum(gains[k] / (1 + ((freqs - formants[k]) / widths[k]) ** 2) for k in range(3))  # (freq, frames)
    envelope = envelope * (freqs.clamp(min=50) / 500) ** voice.tilt
    fric_centre = tracks["fricative"][:frames]
    fric_env = torch.exp(-0.5 * ((freqs - fric_centre) / 900) ** 2) * (fric_centre > 0)
    voicing = tracks["voicing"][:frames]
    spec = (voiced_spec[:, :frames] * envelope * voicing * (1 - voice.breathiness)
            + noise_spec[:, :frames] * (envelope * voicing * voice.breathiness * 0.3 + fric_env * (1 - voicing) * 0.08))
    spec = spec * tracks["loudness"][:frames] * session.eq[:, None]
    wave = torch.istft(spec, SYNTH_N_FFT, SYNTH_HOP, window=window, length=samples)
    if session.rt60 > 0.05:
        rir_len = int(session.rt60 * 16000)
        t = torch.arange(rir_len) / 16000
        rir = torch.randn(rir_len, generator=g) * torch.exp(-6.9 * t / session.rt60)
        rir[0] = 1.0
        wave = torchaudio.functional.fftconvolve(wave, rir / rir.norm())[:samples]
    wave = wave / wave.abs().max().clamp(min=1e-8)
    coloured = torch.cumsum(torch.randn(samples, generator=g), 0) * (-session.noise_tilt) * 0.02
    background = torch.randn(samples, generator=g) + coloured
    background = background - background.mean()
    scale = wave.pow(2).mean().sqrt() / background.pow(2).mean().sqrt().clamp(min=1e-8) * 10 ** (-session.snr_db / 20)
    wave = wave + scale * background
    gain = 0.1 + 0.8 * float(torch.rand((), generator=g))
    return (gain * wave / wave.abs().max().clamp(min=1e-8)).to(torch.float32)


def _save_features(path: Path, features: torch.Tensor) -> None:
    """Written as checkpoints are: a write cut short (a full disk) is one error naming the clip, not torch's own."""
    atomic_torch_save(path, features.clone())


def check_room(out: Path, config: SynthConfig, frontend: FrontendConfig) -> None:
    """Refuse, before anything is generated, a corpus larger than the free space where it is to be written (a
    count typed with a few zeros too many would otherwise run out of memory or disk part-way)."""
    seconds = (config.min_seconds + config.max_seconds) / 2
    feature_bytes = seconds * 1000 / frontend.hop_ms * frontend.n_mels * 4
    audio_bytes = seconds * frontend.sample_rate * 4  # float32 WAV
    trained, held_out = config.trained_clips, config.held_out_clips
    needed = trained * (feature_bytes + (audio_bytes if config.write_training_audio else 0)) \
        + held_out * (feature_bytes + audio_bytes)
    existing = next(place for place in (out.absolute(), *out.absolute().parents) if place.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise file_error(out, f"the corpus would take about {needed / 1e9:.3g} GB ({trained + held_out} clips), and "
                              f"{free / 1e9:.3g} GB are free there; ask for fewer speakers or utterances")


def generate(out: str | Path, config: SynthConfig = SynthConfig(), progress: bool = True) -> dict:
    """Write the corpus to ``out`` in the HW4 layout plus ``unseen/{enroll,test}/<speaker>/`` (speakers to
    enrol without training) and ``unseen/impostors/<speaker>/`` (speakers never enrolled: open-set checks).

    Returns a summary (counts). Same seed, same files (with the same number of torch threads: a float
    reduction split over more threads rounds differently, by 1e-4 at most).
    """
    config.validate()
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):  # files of an earlier corpus would stay beside the new one
        raise file_error(out, "output folder is not empty; synth writes a corpus into a new or empty folder and "
                              "deletes nothing")
    frontend = FrontendConfig()
    check_room(out, config, frontend)
    created = not out.exists()
    ensure_folder(out)
    try:
        return _write_corpus(out, config, frontend, progress)
    except BaseException:  # Ctrl-C, SIGTERM, a full disk: a partial corpus would make the rerun refuse the folder
        _remove_partial_corpus(out, config, created)
        raise


def _feature_name(seed: int, speaker: str, index: int) -> str:
    return "uttr-" + hashlib.sha1(f"{seed}|{speaker}|{index}".encode()).hexdigest()[:24] + ".pt"


def _corpus_entries(config: SynthConfig) -> set[str]:
    """The names synth writes at the top of its folder: what an interrupted run removes, and nothing else."""
    features = {_feature_name(config.seed, f"spk{speaker:03d}", index)
                for speaker in range(config.speakers) for index in range(config.utterances)}
    return features | {"wav", "unseen", "mapping.json", "metadata.json", "testdata.json", "test_labels.csv"}


def _remove_partial_corpus(out: Path, config: SynthConfig, created: bool) -> None:
    """Remove what this run wrote in ``out`` (empty or absent before it), and ``out`` if this run created it and
    nothing else is there, so that the same command can simply be run again; a file another writer put there
    meanwhile stays. Best effort: the error that stopped the run is the one to report."""
    ours = _corpus_entries(config)
    with contextlib.suppress(OSError):
        for entry in out.iterdir():
            if entry.name not in ours:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if created:
            out.rmdir()


def _write_corpus(out: Path, config: SynthConfig, frontend: FrontendConfig, progress: bool) -> dict:
    """The body of :func:`generate`, writing into the existing folder ``out``."""
    speakers = [f"spk{index:03d}" for index in range(config.speakers)]
    unseen = [f"new{index:03d}" for index in range(config.unseen)]
    impostors = [f"imp{index:03d}" for index in range(config.impostors)]
    metadata: dict[str, list] = {s: [] for s in speakers}
    test_entries, test_labels = [], []
    total = config.trained_clips + config.held_out_clips
    bar = progress_bar(enabled=progress, total=total, desc=f"synth {out}", unit="utt", leave=False)

    def make(speaker: str, voice: Voice, sessions: list[Session], index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        g = _generator(config.seed, speaker, index)
        session_id = int(torch.randint(len(sessions), (), generator=g))
        seconds = config.min_seconds + (config.max_seconds - config.min_seconds) * float(torch.rand((), generator=g))
        wave = synthesise(voice, sessions[session_id], seconds, g)
        bar.update(1)
        return wave, log_mel(wave, frontend), session_id

    for speaker in speakers:
        g = _generator(config.seed, speaker, "voice")
        voice = Voice.draw(g)
        sessions = [Session.draw(g) for _ in range(config.sessions_per_speaker)]
        n_test = max(1, int(round(config.test_fraction * config.utterances))) if config.test_fraction > 0 else 0
        for index in range(config.utterances):
            wave, features, session_id = make(speaker, voice, sessions, index)
            name = _feature_name(config.seed, speaker, index)
            _save_features(out / name, features)
            entry = {"feature_path": name, "mel_len": int(features.shape[0])}
            if index < n_test:
                test_entries.append(entry)
                test_labels.append((name, speaker))
            else:
                metadata[speaker].append(entry)
            if config.write_training_audio and index >= n_test:  # training audio: testdata.json's clips stay out
                write_audio(out / "wav" / speaker / f"session{session_id}" / f"{index:05d}.wav", wave, frontend.sample_rate)

    for speaker in unseen + impostors:
        g = _generator(config.seed, speaker, "voice")
        voice = Voice.draw(g)
        sessions = [Session.draw(g) for _ in range(config.sessions_per_speaker)]
        newcomer = speaker in unseen
        for index in range(config.enroll_per_unseen + config.test_per_unseen if newcomer else config.test_per_unseen):
            wave, features, _ = make(speaker, voice, sessions, index)
            part = ("enroll" if index < config.enroll_per_unseen else "test") if newcomer else "impostors"
            folder = out / "unseen" / part / speaker
            folder.mkdir(parents=True, exist_ok=True)
            _save_features(folder / f"{index:03d}.pt", features)
            write_audio(folder / f"{index:03d}.wav", wave, frontend.sample_rate)
    bar.close()

    atomic_write_json(out / "mapping.json", {
        "speaker2id": {s: i for i, s in enumerate(speakers)},
        "id2speaker": {str(i): s for i, s in enumerate(speakers)},
    })
    atomic_write_json(out / "metadata.json", {"n_mels": frontend.n_mels, "speakers": metadata})
    atomic_write_json(out / "testdata.json", {"n_mels": frontend.n_mels, "utterances": test_entries})
    with atomic_output(out / "test_labels.csv", "w") as handle:
        handle.write("Id,Category\n" + "".join(f"{name},{speaker}\n" for name, speaker in test_labels))
    return {
        "speakers": config.speakers,
        "train_utterances": sum(len(v) for v in metadata.values()),
        "test_utterances": len(test_entries),
        "unseen_speakers": config.unseen,
        "impostors": config.impostors,
    }
