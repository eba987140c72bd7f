"""MP3, Ogg (Vorbis and Opus) and AIFF clips, read wherever .wav and .flac are, as far as the installed libsndfile
decodes them: such a corpus (Common Voice ships MP3) had to be converted first, for no reason."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from voxaug.audio import read_audio as torch_read_audio
from voxaug.cli.common import expand_clips
from voxaug.cli.main import app
from voxaug.clips import one_file_per_clip
from voxaug.data.audio_store import open_dataset_store
from voxaug.data.sources import load_clip, open_source
from voxaug.errors import VoxaugError
from voxaug.features import FrontendConfig
from voxaug.runtime.frontend import FrontendSettings, audio_suffixes, log_mel, read_audio
from voxaug.train import Trainer

from conftest import tiny_config

TOLERANCE = 1e-4  # the checkpoint's and the numpy runtime's log-mel agree this closely on WAV (test_numpy_frontend)
ENCODINGS = {".mp3": {"format": "MP3"}, ".ogg": {"format": "OGG", "subtype": "VORBIS"},
             ".opus": {"format": "OGG", "subtype": "OPUS"}, ".aiff": {"format": "AIFF"}}
runner = CliRunner()


def voice(samples: int, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A tone in noise: every mel band holds sound after a lossy codec."""
    t = np.arange(samples) / rate
    noise = np.random.default_rng(seed).standard_normal(samples)
    return (0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise).astype(np.float32)


def encode(path: Path, waveform: np.ndarray, rate: int) -> Path:
    soundfile.write(path, waveform, rate, **ENCODINGS[path.suffix])
    return path


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture
def without_mp3(monkeypatch):
    """A libsndfile built without MP3 (before 1.1.0, or without mpg123), as ``audio_suffixes`` asks it."""
    formats = {name: text for name, text in soundfile.available_formats().items() if name != "MP3"}
    monkeypatch.setattr(soundfile, "available_formats", lambda: formats)
    audio_suffixes.cache_clear()
    yield
    audio_suffixes.cache_clear()


@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("suffix", sorted(ENCODINGS))
def test_a_decoded_clip_keeps_its_length_and_both_front_ends_agree_on_it_as_on_wav(tmp_path, suffix, rate):
    """Read at the model's 16 kHz (Opus at 48 kHz resampled as any rate is), of the WAV's length and aligned with it:
    an MP3's encoder delay and padding are taken off; the checkpoint's front end and the numpy runtime's agree."""
    original = voice(rate)
    soundfile.write(tmp_path / "clip.wav", original, rate)
    clip = encode(tmp_path / f"clip{suffix}", original, rate)
    wav = read_audio(tmp_path / "clip.wav", 16000)
    decoded = read_audio(clip, 16000)
    assert decoded.shape == wav.shape == (16000,)
    assert np.corrcoef(decoded, wav)[0, 1] > 0.9  # a delay of even one sample leaves the noise uncorrelated
    assert torch_read_audio(clip, 16000).shape == wav.shape
    checkpoint_features = load_clip(clip, FrontendConfig()).numpy()
    assert np.abs(checkpoint_features - log_mel(decoded, FrontendSettings())).max() <= TOLERANCE


@pytest.mark.parametrize("suffix", sorted(ENCODINGS))
def test_a_decoded_clip_too_short_for_the_front_end_is_refused_as_a_wav_is(tmp_path, suffix):
    """The codec's padding does not lengthen a clip past the front end's minimum (more than n_fft / 2 samples)."""
    short = encode(tmp_path / f"short{suffix}", voice(256), 16000)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(short))}: audio is 256 samples long; more than 256"):
        load_clip(short, FrontendConfig())
    assert load_clip(encode(tmp_path / f"long{suffix}", voice(257), 16000), FrontendConfig()).shape == (2, 40)


def test_a_folder_takes_decoded_clips_and_leaves_out_the_originals_of_converted_ones(tmp_path):
    """x.mp3 alone is a clip; beside the x.wav (or x.mp3.wav) converted from it, it is that file's original, as it was
    when .mp3 was not read; beside x.pt it is the clip's audio, read instead with ``audio_first``."""
    folder = tmp_path / "spk"
    folder.mkdir()
    encode(folder / "a.mp3", voice(4000), 16000)
    encode(folder / "b.ogg", voice(4000), 16000)
    for converted, original in (("c.wav", "c.mp3"), ("d.mp3.wav", "d.mp3")):
        soundfile.write(folder / converted, voice(4000), 16000)
        encode(folder / original, voice(4000), 16000)
    (folder / "e.pt").write_bytes(b"features")
    encode(folder / "e.opus", voice(4000), 16000)
    (folder / "f.m4a").write_bytes(b"no format libsndfile reads")
    suffixes = (".pt",) + audio_suffixes()
    assert [p.name for p in one_file_per_clip(folder, suffixes)] == ["a.mp3", "b.ogg", "c.wav", "d.mp3.wav", "e.pt",
                                                                     "f.m4a"]
    assert [p.name for p in one_file_per_clip(folder, suffixes, audio_first=True)][4] == "e.opus"
    encode(folder / "a.ogg", voice(4000), 16000)
    with pytest.raises(VoxaugError, match=r"a\.mp3 and a\.ogg: two files of one clip; keep one"):
        one_file_per_clip(folder, suffixes)


def _corpus_of_decoded_clips(tiny_synth: Path, root: Path) -> Path:
    """The unseen speakers' clips (2 x 6), each converted to one of the decoded formats in turn."""
    formats = sorted(ENCODINGS)
    for part in ("enroll", "test"):
        for speaker_dir in sorted((tiny_synth / "unseen" / part).iterdir()):
            for n, wav in enumerate(sorted(speaker_dir.glob("*.wav"))):
                waveform, rate = soundfile.read(wav, dtype="float32")
                (root / speaker_dir.name).mkdir(parents=True, exist_ok=True)
                encode(root / speaker_dir.name / f"{part}-{wav.stem}{formats[n % len(formats)]}", waveform, rate)
    return root


def test_a_corpus_of_mp3_ogg_opus_and_aiff_trains_embeds_enrols_and_identifies(tiny_synth, tmp_path):
    root = _corpus_of_decoded_clips(tiny_synth, tmp_path / "corpus")
    source = open_source(root)
    store, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, workers=0)
    assert len(store) == len(source.utterances) == 12 and skipped == []
    run = tmp_path / "run"
    Trainer(tiny_config(train={"steps": 4, "eval_every": 4, "warmup": 1}), root, run, progress=False, workers=0).fit()
    index = tmp_path / "spk.faiss"
    embedded = invoke("embed", root, "--ckpt", run / "best.pt", "--out", tmp_path / "emb", "--index", index,
                      "--backend", "none", "--score-norm", "none", "--device", "cpu", "-q")  # PLDA needs 3 speakers
    assert embedded.exit_code == 0, embedded.output
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape[0] == 12
    speaker = sorted(root.iterdir())[0]
    enrolled = invoke("enroll", "--index", index, "--speaker", "again", "--device", "cpu", speaker)
    assert enrolled.exit_code == 0, enrolled.output
    identified = invoke("identify", "--index", index, "--json", speaker)
    assert identified.exit_code == 0, identified.output
    answers = [json.loads(line) for line in identified.output.splitlines()]
    assert sorted(answer["clip"] for answer in answers) == sorted(str(clip) for clip in speaker.iterdir())


def _damaged(path: Path, how: str) -> Path:
    """``path`` cut to half its bytes, or with its audio overwritten by bytes no codec makes."""
    data = path.read_bytes()
    garbage = (bytes(range(256)) * len(data))[:len(data) - 40]
    path.write_bytes(data[:len(data) // 2] if how == "truncated" else data[:40] + garbage)
    return path


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
@pytest.mark.parametrize("suffix", [".mp3", ".ogg", ".opus"])
def test_a_damaged_mp3_or_ogg_is_refused_in_one_line_naming_it_as_a_damaged_wav_is(tmp_path, suffix, how):
    """libsndfile read a truncated MP3 or Ogg as a shorter recording, without a word; a corrupt MP3 was refused as a
    file that "does not exist"."""
    clip = _damaged(encode(tmp_path / f"clip{suffix}", voice(48000), 16000), how)
    with pytest.raises(VoxaugError) as refused:
        load_clip(clip, FrontendConfig())
    message = str(refused.value)
    expected = ("truncated MP3 file: its header declares" if (how, suffix) == ("truncated", ".mp3")
                else "truncated Ogg file: it stops before the end of its stream" if how == "truncated"
                else "not a readable audio file (")
    assert message.startswith(f"{clip}: {expected}") and "\n" not in message and "does not exist" not in message


def test_a_damaged_mp3_in_a_corpus_is_skipped_and_named_as_a_damaged_wav_is(tmp_path, capsys):
    root = tmp_path / "corpus"
    for speaker in ("spk000", "spk001"):
        (root / speaker).mkdir(parents=True)
        for n in range(2):
            encode(root / speaker / f"{n}.mp3", voice(16000, seed=n), 16000)
    _damaged(root / "spk001" / "1.mp3", "truncated")
    store, skipped = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    assert len(store) == 3 and [s["key"] for s in skipped] == ["spk001/1.mp3"]
    assert f"{root / 'spk001' / '1.mp3'}: truncated MP3 file" in capsys.readouterr().err


def test_under_a_libsndfile_without_mp3_an_mp3_is_named_and_refused_as_before_saying_why(tmp_path, without_mp3):
    """MP3 is read only where libsndfile reports it: elsewhere .mp3 stays a format that is no clip, named (skipped by
    train, refused by the commands that answer clips), and its original beside a converted .wav left out."""
    folder = tmp_path / "corpus" / "spk000"
    folder.mkdir(parents=True)
    for name in ("a.wav", "b.wav"):
        soundfile.write(folder / name, voice(16000), 16000)
    encode(folder / "a.mp3", voice(16000), 16000)
    encode(folder / "c.mp3", voice(16000), 16000)
    assert ".mp3" not in audio_suffixes() and ".ogg" in audio_suffixes()
    assert [p.name for p in one_file_per_clip(folder, (".pt",) + audio_suffixes())] == ["a.wav", "b.wav", "c.mp3"]
    why = f"(the installed libsndfile {soundfile.__libsndfile_version__} cannot decode it)"
    with pytest.raises(VoxaugError) as refused:
        read_audio(folder / "c.mp3", 16000)
    assert str(refused.value) == (f"{folder / 'c.mp3'}: unsupported audio format '.mp3' {why}; accepted: "
                                  f"{', '.join(audio_suffixes())}")
    with pytest.raises(VoxaugError) as refused:  # identify, enroll and embed refuse a folder's clips so
        expand_clips([folder])
    assert str(refused.value).startswith(f"{folder / 'c.mp3'}: unsupported clip type '.mp3' {why}")
    shutil.copytree(folder, tmp_path / "corpus" / "spk001")
    store, skipped = open_dataset_store(open_source(tmp_path / "corpus"), tmp_path / "cache", progress=False,
                                        workers=0)
    assert len(store) == 4 and [s["key"] for s in skipped] == ["spk000/c.mp3", "spk001/c.mp3"]


def test_mp3_and_ogg_noise_and_rir_folders_feed_the_wave_chain(tmp_path):
    """--noise-dir and --rir-dir take the formats a clip may have; a converted file's original is no noise of its own."""
    from voxaug.augment.wave import WaveAugmentation

    noises, rooms = tmp_path / "noises", tmp_path / "rooms"
    noises.mkdir()
    rooms.mkdir()
    encode(noises / "babble.mp3", voice(16000, seed=1), 16000)
    encode(noises / "street.opus", voice(48000, rate=48000, seed=2), 48000)
    soundfile.write(noises / "hum.wav", voice(16000, seed=3), 16000)
    encode(noises / "hum.mp3", voice(16000, seed=3), 16000)  # the original hum.wav was converted from
    decay = np.exp(-np.arange(800) / 120.0) * np.random.default_rng(0).standard_normal(800)
    encode(rooms / "hall.ogg", decay.astype(np.float32), 16000)
    wave = WaveAugmentation(snr_p=0.0, gain_p=0.0, noise_dir=str(noises), noise_p=1.0, rir_dir=str(rooms), rir_p=1.0)
    assert [p.name for p in wave._noise_files] == ["babble.mp3", "hum.wav", "street.opus"]
    clean = voice(16000, seed=4)
    augmented = wave.apply(clean, 16000, seed=0)
    assert augmented.shape == clean.shape and np.isfinite(augmented).all() and not np.allclose(augmented, clean)


def test_a_store_packed_while_mp3_was_not_read_is_not_reused_once_it_is(tmp_path, monkeypatch, without_mp3):
    """The packed store's fingerprint held the clips and the front end only: a corpus packed while its .mp3 clips
    were skipped as unread (an older voxaug, or a libsndfile without MP3) kept skipping them from the cache."""
    root = tmp_path / "corpus"
    for speaker in ("spk000", "spk001"):
        (root / speaker).mkdir(parents=True)
        soundfile.write(root / speaker / "0.wav", voice(16000), 16000)
        encode(root / speaker / "1.mp3", voice(16000, seed=1), 16000)
    store, skipped = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    assert len(store) == 2 and len(skipped) == 2
    monkeypatch.undo()  # libsndfile with MP3 again
    audio_suffixes.cache_clear()
    store, skipped = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    assert len(store) == 4 and skipped == []


@pytest.mark.parametrize("suffix", [".ogg", ".opus"])
def test_an_ogg_with_bytes_after_its_last_page_is_read_whole_not_refused_as_truncated(tmp_path, suffix):
    """An ID3v1 tag a tool appended, or bytes that begin as a page header does but are no page (their CRC wrong),
    follow the last page: libsndfile reads the whole stream, and the check wanted a page ending at the file's end."""
    original = encode(tmp_path / f"clip{suffix}", voice(16000), 16000)
    expected = read_audio(original, 16000)
    for name, trailing in (("tagged", b"TAG" + bytes(125)), ("page-like", b"OggS" + bytes(23))):
        clip = tmp_path / f"{name}{suffix}"
        clip.write_bytes(original.read_bytes() + trailing)
        assert np.array_equal(read_audio(clip, 16000), expected), name


def test_a_wav_corpus_keeps_its_packed_store_whatever_formats_libsndfile_decodes(tmp_path, monkeypatch, without_mp3):
    """The formats read were in every clip folder's fingerprint: each WAV or FLAC corpus, which holds no clip they
    decide, was packed again (hours for a VoxCeleb2-sized one) once, and again whenever libsndfile changed."""
    root = tmp_path / "corpus"
    for speaker in ("spk000", "spk001"):
        (root / speaker).mkdir(parents=True)
        for n in range(2):
            soundfile.write(root / speaker / f"{n}.wav", voice(16000, seed=n), 16000)
    store, _ = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    assert store.rebuilt
    monkeypatch.undo()  # libsndfile with MP3 again
    audio_suffixes.cache_clear()
    store, skipped = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    assert not store.rebuilt and len(store) == 4 and skipped == []


def test_a_noise_folder_leaves_out_the_original_of_a_file_converted_into_another_decoded_format(tmp_path):
    """x.mp3 beside x.mp3.ogg (``ffmpeg -i "$f" "$f.ogg"``) is that file's original in a clip folder; a noise folder,
    read the same way, drew both, so that one noise came twice as often as the others."""
    from voxaug.augment.wave import audio_files_in

    noises = tmp_path / "noises"
    noises.mkdir()
    encode(noises / "babble.mp3", voice(16000, seed=1), 16000)
    encode(noises / "babble.mp3.ogg", voice(16000, seed=1), 16000)
    encode(noises / "street.ogg", voice(16000, seed=2), 16000)
    assert [p.name for p in one_file_per_clip(noises, (".pt",) + audio_suffixes())] == ["babble.mp3.ogg", "street.ogg"]
    assert [p.name for p in audio_files_in(noises, "--noise-dir")] == ["babble.mp3.ogg", "street.ogg"]
