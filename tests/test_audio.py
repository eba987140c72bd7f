"""Audio folders as a data source: the VoxCeleb-style tree, resampling, mono mix, the front end's
match with `voxaug synth`'s features, bad files (clear errors, skip-and-count, --strict)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from voxaug.audio import audio_suffixes, read_audio, write_audio
from voxaug.clips import one_file_per_clip
from voxaug.data.audio_store import open_dataset_store
from voxaug.data.sources import ClipFolderSource, load_clip, open_source
from voxaug.data.split import stratified_split
from voxaug.errors import VoxaugError
from voxaug.features import FrontendConfig, frames_for, log_mel
from voxaug.safeio import safe_torch_load
from voxaug.synth import SynthConfig, generate

from conftest import unreadable_to_this_process

WAV_SYNTH = SynthConfig(speakers=4, utterances=8, unseen=0, min_seconds=0.8, max_seconds=1.2, seed=3,
                        write_training_audio=True)


@pytest.fixture(scope="module")
def wav_synth(tmp_path_factory) -> Path:
    """`voxaug synth` output with the training audio as OUT/wav/<speaker>/session<k>/<n>.wav."""
    out = tmp_path_factory.mktemp("wavsynth") / "data"
    generate(out, WAV_SYNTH, progress=False)
    return out


def tone(seconds: float = 1.0, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 3 * freq * t)).astype(np.float32)


def test_tree_gives_speakers_from_the_first_level_and_videos_from_the_second(wav_synth):
    source = open_source(wav_synth / "wav")
    assert isinstance(source, ClipFolderSource)
    assert source.speakers == [f"spk{i:03d}" for i in range(WAV_SYNTH.speakers)]
    training = json.loads((wav_synth / "metadata.json").read_text())["speakers"]  # the test clips are not training audio
    assert len(source.utterances) == sum(len(entries) for entries in training.values()) < WAV_SYNTH.speakers * WAV_SYNTH.utterances
    for utterance in source.utterances:
        assert utterance.path.suffix == ".wav"
        assert utterance.key.split("/")[0] == utterance.speaker
        assert utterance.group == utterance.path.parent.name and utterance.group.startswith("session")


def test_validation_split_keeps_whole_videos_out_of_training(wav_synth, tmp_path):
    store, skipped = open_dataset_store(open_source(wav_synth / "wav"), tmp_path / "cache", progress=False, workers=0)
    training = json.loads((wav_synth / "metadata.json").read_text())["speakers"]
    assert skipped == [] and len(store) == sum(len(entries) for entries in training.values())
    train, val = stratified_split(store.labels, 0.25, seed=0, groups=store.groups)
    assert len(val) > 0 and set(train).isdisjoint(val)
    train_videos = {(store.speakers[store.labels[i]], store.groups[i]) for i in train}
    val_videos = {(store.speakers[store.labels[i]], store.groups[i]) for i in val}
    assert train_videos.isdisjoint(val_videos), "a video must not sit on both sides of the split"
    for label in range(len(store.speakers)):
        assert (store.labels[train] == label).any(), "every speaker keeps training data"


def test_wav_tree_features_match_the_synth_pt_features(wav_synth):
    """The front end on `voxaug synth --wav` audio gives the features synth wrote as uttr-*.pt."""
    frontend = FrontendConfig()
    for speaker, index in (("spk000", 1), ("spk002", 5)):  # clip 0 of each speaker is a test clip, not training audio
        name = "uttr-" + hashlib.sha1(f"{WAV_SYNTH.seed}|{speaker}|{index}".encode()).hexdigest()[:24] + ".pt"
        written = safe_torch_load(wav_synth / name, "features")
        wav = next((wav_synth / "wav" / speaker).rglob(f"{index:05d}.wav"))
        recomputed = load_clip(wav, frontend)
        assert recomputed.shape == written.shape
        torch.testing.assert_close(recomputed, written, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_a_file_at_another_rate_is_resampled_to_the_front_end_rate(tmp_path, rate):
    reference = tone(1.0, 16000)
    soundfile.write(tmp_path / "ref.wav", reference, 16000, subtype="FLOAT")
    other = torchaudio.functional.resample(torch.from_numpy(reference), 16000, rate).numpy()
    soundfile.write(tmp_path / "other.wav", other, rate, subtype="FLOAT")
    waveform = read_audio(tmp_path / "other.wav", 16000)
    assert abs(waveform.numel() - reference.size) <= 1
    frontend = FrontendConfig()
    features = load_clip(tmp_path / "other.wav", frontend)
    assert features.shape == (frames_for(reference.size, frontend), 40) == load_clip(tmp_path / "ref.wav", frontend).shape


def test_stereo_is_the_mean_of_its_channels(tmp_path):
    left, right = tone(0.5, freq=300.0), tone(0.5, freq=700.0)
    soundfile.write(tmp_path / "stereo.flac", np.stack([left, right], axis=1), 16000, subtype="PCM_24")
    mono = read_audio(tmp_path / "stereo.flac", 16000)
    np.testing.assert_allclose(mono.numpy(), (left + right) / 2, atol=1e-5)


def test_front_end_settings_are_configurable(tmp_path):
    soundfile.write(tmp_path / "a.wav", tone(0.5), 16000)
    frontend = FrontendConfig(n_mels=64, hop_ms=20.0)
    features = load_clip(tmp_path / "a.wav", frontend)
    assert features.shape == (frames_for(8000, frontend), 64)
    with pytest.raises(VoxaugError, match="n_mels"):
        FrontendConfig(n_mels=0)


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "corrupt": folder / "corrupt.wav",
        "empty": folder / "empty.wav",
        "zero-length": folder / "zero.wav",
        "silent": folder / "silent.flac",
        "unsupported": folder / "clip.m4a",
    }
    files["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEnot really audio" + bytes(range(256)))
    files["empty"].write_bytes(b"")
    soundfile.write(files["zero-length"], np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(files["silent"], np.zeros(8000, dtype=np.float32), 16000)
    files["unsupported"].write_bytes(b"not read by libsndfile")
    return files


@pytest.mark.parametrize("kind, needle", [
    ("corrupt", "not a readable audio file"), ("empty", "empty"), ("zero-length", "no samples"),
    ("silent", "silent"), ("unsupported", "unsupported"),
])
def test_bad_audio_gives_one_clear_error_naming_the_file(tmp_path, kind, needle):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(VoxaugError) as caught:
        load_clip(path, FrontendConfig())
    message = str(caught.value)
    assert message.startswith(str(path)) and needle in message and "\n" not in message


def test_a_truncated_wav_is_refused_not_read_as_a_shorter_clip(tmp_path):
    """libsndfile reads the samples a cut-off WAV still holds and says nothing; the file is broken, and identify
    would answer for half a clip (docs/safety.md: a truncated audio file is one line and exit status 2)."""
    whole = tmp_path / "whole.wav"
    write_audio(whole, torch.from_numpy(tone(1.0)), 16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert load_clip(whole, FrontendConfig()).shape[0] == frames_for(16000)
    with pytest.raises(VoxaugError) as caught:
        load_clip(cut, FrontendConfig())
    message = str(caught.value)
    assert message.startswith(str(cut)) and "truncated" in message and "\n" not in message
    from voxaug.runtime.frontend import read_audio as read_audio_without_torch

    with pytest.raises(VoxaugError, match="truncated"):
        read_audio_without_torch(cut, 16000)


def test_audio_at_a_rate_too_low_for_speech_is_refused_before_resampling(tmp_path):
    path = tmp_path / "slow.wav"
    soundfile.write(path, np.sin(np.arange(16000) / 3).astype(np.float32), 500)  # up to 16 kHz: 32 times the samples
    with pytest.raises(VoxaugError, match="sample rate 500 Hz is under 1000 Hz") as caught:
        load_clip(path, FrontendConfig())
    assert str(caught.value).startswith(str(path))


def test_a_rate_prime_to_the_models_is_refused_naming_the_file_before_building_its_filter(tmp_path):
    from voxaug.runtime.frontend import read_audio as read_audio_without_torch

    path = tmp_path / "odd.wav"
    soundfile.write(path, tone(0.1, rate=16001), 16001)  # a 16000 x 16013 filter: gigabytes, for 0.1 s of audio
    for read in (lambda: load_clip(path, FrontendConfig()), lambda: read_audio_without_torch(path, 16000)):
        with pytest.raises(VoxaugError, match="sample rate 16001 Hz has no small common factor") as caught:
            read()
        assert str(caught.value).startswith(str(path))
    soundfile.write(tmp_path / "cd.wav", tone(0.1, rate=44100), 44100)  # the common rates are not refused
    assert load_clip(tmp_path / "cd.wav", FrontendConfig()).shape[1] == 40


def test_an_odd_n_fft_is_refused():
    with pytest.raises(VoxaugError, match="n_fft must be even, got 401"):
        FrontendConfig(n_fft=401)


def test_hidden_files_and_folders_are_not_clips(wav_synth, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(wav_synth / "wav" / "spk000", root / "spk000")
    clips = sorted((root / "spk000").rglob("*.wav"))
    shutil.copy(clips[0], clips[0].parent / f"._{clips[0].name}")  # what macOS leaves beside each file on a share
    (root / "spk000" / ".trash").mkdir()
    shutil.copy(clips[0], root / "spk000" / ".trash" / "deleted.wav")
    assert one_file_per_clip(root, (".wav",)) == clips


def test_a_folder_that_cannot_be_listed_is_refused_not_skipped(wav_synth, tmp_path, monkeypatch):
    root = tmp_path / "tree"
    shutil.copytree(wav_synth / "wav" / "spk000", root / "spk000")
    locked = next(p for p in sorted((root / "spk000").iterdir()) if p.is_dir())
    listing = os.scandir

    def permission_denied(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", permission_denied)  # the tests run as root, whom chmod does not stop
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(locked))}: cannot list this folder \(Permission denied\)"):
        one_file_per_clip(root, (".wav",))


def test_an_audio_file_the_user_may_not_read_is_refused_as_such_not_as_a_damaged_file(wav_synth, open_folder):
    """A clip of mode 000 (or another account's) was "not a readable audio file (System error.)", libsndfile's word
    for a refused open, which reads as a damaged file; the tests run as root, whom modes do not stop."""
    clip = open_folder / "locked.wav"
    shutil.copy(next((wav_synth / "wav").rglob("*.wav")), clip)
    with unreadable_to_this_process(clip), pytest.raises(VoxaugError) as refused:
        read_audio(clip, 16000)
    assert str(refused.value) == f"{clip}: audio file cannot be read (Permission denied)"


def test_symlinked_video_folders_are_read_once_and_a_broken_clip_link_is_refused(wav_synth, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(wav_synth / "wav" / "spk000", root / "spk000")
    clips = sorted((root / "spk000").rglob("*.wav"))
    elsewhere = tmp_path / "elsewhere" / "video9"
    elsewhere.mkdir(parents=True)
    shutil.move(clips[-1], elsewhere / clips[-1].name)
    (root / "spk000" / "video9").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(root / "spk000", target_is_directory=True)  # a loop: entered once
    found = one_file_per_clip(root / "spk000", (".wav",))
    assert len(found) == len(clips) and root / "spk000" / "video9" / clips[-1].name in found
    (root / "spk001").mkdir()
    (root / "spk001" / "borrowed").symlink_to(elsewhere, target_is_directory=True)  # one clip under two speakers
    with pytest.raises(VoxaugError, match=r"spk001/borrowed/.*: the same file as .*spk000/video9/.* \(through a link\)"):
        ClipFolderSource(root)
    (root / "spk001" / "borrowed").unlink()
    (root / "spk000" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    with pytest.raises(VoxaugError, match=r"gone\.wav: a clip's symbolic link points to nothing"):
        one_file_per_clip(root / "spk000", (".wav",))


def test_speaker_folders_spelling_one_name_in_two_unicode_forms_are_refused(wav_synth, tmp_path):
    """Zoë/ made on Linux (NFC) beside Zoë/ copied from macOS (NFD) would train and index two speakers that print
    alike, and `enroll --remove Zoë` would pick one of them by how the name was typed."""
    root = tmp_path / "tree"
    typed, from_mac = "Zo\u00eb", "Zoe\u0308"
    shutil.copytree(wav_synth / "wav" / "spk000", root / typed)
    assert ClipFolderSource(root).speakers == [typed]
    shutil.copytree(wav_synth / "wav" / "spk001", root / from_mac)
    with pytest.raises(VoxaugError) as refused:
        ClipFolderSource(root)
    assert str(refused.value) == (f"{root}: speaker folders 'Zoe\\u0308', 'Zo\\xeb' are one name in different "
                                  "Unicode spellings (one of them made on macOS?); merge them into one folder")


def test_a_front_end_other_than_the_one_pt_twins_are_made_with_reads_the_audio_twin(wav_synth, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(wav_synth / "wav" / "spk000", root / "spk000")
    for clip in (root / "spk000").rglob("*.wav"):
        torch.save(log_mel(read_audio(clip, 16000)), clip.with_suffix(".pt"))  # as synth writes its twins
    assert {u.path.suffix for u in ClipFolderSource(root).utterances} == {".pt"}
    eight_khz = ClipFolderSource(root, FrontendConfig(sample_rate=8000, f_max=3800.0))
    assert {u.path.suffix for u in eight_khz.utterances} == {".wav"}


def test_two_audio_files_of_one_clip_are_refused_by_name(wav_synth, tmp_path):
    """x.wav and x.flac are the same clip in two formats, or two clips with one name: either way which one to
    use is the user's call, so the folder is refused instead of one being kept silently."""
    root = tmp_path / "tree"
    shutil.copytree(wav_synth / "wav" / "spk000", root / "spk000")
    clip = sorted((root / "spk000").rglob("*.wav"))[0]
    shutil.copy(clip, clip.with_suffix(".pt"))  # a features twin, as synth writes, is not a second audio file
    assert one_file_per_clip(root, (".pt", ".wav", ".flac"), audio_first=True)[0] == clip
    soundfile.write(clip.with_suffix(".flac"), read_audio(clip, 16000).numpy(), 16000)
    with pytest.raises(VoxaugError, match=rf"{re.escape(str(clip.with_suffix('.flac')))} and {clip.name}: "
                                          "two files of one clip; keep one"):
        one_file_per_clip(root, (".pt", ".wav", ".flac"))


def _tree_with_bad_files(wav_synth: Path, tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for speaker in ("spk000", "spk001"):
        shutil.copytree(wav_synth / "wav" / speaker, root / speaker)
    bad = _bad_files(tmp_path / "bad")
    shutil.copy(bad["corrupt"], root / "spk000" / "session0" / "99998.wav")
    shutil.copy(bad["silent"], root / "spk001" / "99999.flac")
    return root


def test_bad_files_in_a_corpus_are_skipped_and_counted(wav_synth, tmp_path, capsys):
    root = _tree_with_bad_files(wav_synth, tmp_path)
    source = open_source(root)
    store, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, workers=0)
    assert len(store) == len(source.utterances) - 2
    assert sorted(s["key"] for s in skipped) == ["spk000/session0/99998.wav", "spk001/99999.flac"]
    err = capsys.readouterr().err
    assert "skipped 2 of" in err and "99998.wav" in err and "--strict" not in err  # train says it, in its summary
    assert "99998.wav" not in " ".join(store.keys)
    with pytest.raises(VoxaugError, match="99998.wav|99999.flac"):  # a cached store with skips is refused too
        open_dataset_store(source, tmp_path / "cache", progress=False, workers=0, strict=True)


def test_skip_warnings_are_never_written_to_stdout(wav_synth, tmp_path, capsys, monkeypatch):
    """Each skipped file was said with ``tqdm.write``, and the count with ``print``, which both write to stdout when
    the process has no stderr (started with ``2>&-``): among the command's output (identify's JSON lines, say)."""
    source = open_source(_tree_with_bad_files(wav_synth, tmp_path))
    monkeypatch.setattr(sys, "stderr", None)
    store, skipped = open_dataset_store(source, tmp_path / "cache", progress=True, workers=0)
    assert len(skipped) == 2 and len(store) == len(source.utterances) - 2
    assert capsys.readouterr().out == ""


def test_strict_stops_at_the_first_bad_file(wav_synth, tmp_path):
    source = open_source(_tree_with_bad_files(wav_synth, tmp_path))
    with pytest.raises(VoxaugError, match=r"99998\.wav: not a readable audio file.*--strict"):
        open_dataset_store(source, tmp_path / "cache", progress=False, workers=0, strict=True)


def test_parallel_featurising_matches_in_process(wav_synth, tmp_path):
    source = open_source(wav_synth / "wav")
    serial, _ = open_dataset_store(source, tmp_path / "a", progress=False, workers=0)
    parallel, _ = open_dataset_store(source, tmp_path / "b", progress=False, workers=2)
    assert serial.keys == parallel.keys and (serial.lengths == parallel.lengths).all()
    np.testing.assert_array_equal(np.asarray(serial.features), np.asarray(parallel.features))
    torch.testing.assert_close(serial.utterance(3), log_mel(read_audio(source.utterances[3].path, 16000)))


def test_frontend_table_in_toml_is_read_and_checked(tmp_path):
    from voxaug.config import resolve_config

    good = tmp_path / "good.toml"
    good.write_text("[frontend]\nn_mels = 32\nhop_ms = 12.5\n")
    config = resolve_config("cpu", good, frontend_overrides={"n_mels": 48})
    assert config.frontend == {"n_mels": 48, "hop_ms": 12.5}  # the command line wins key by key
    config.validate()
    bad = tmp_path / "bad.toml"
    bad.write_text("[frontend]\nmels = 32\n")
    with pytest.raises(VoxaugError, match="unknown settings.*mels"):
        resolve_config("cpu", bad).validate()


@pytest.mark.parametrize("rate, implied", [(8000, {"f_max": 4000.0}), (16000, {}), (22050, {"n_fft": 1024}),
                                           (48000, {"n_fft": 2048})])
def test_a_sample_rate_alone_gives_a_working_front_end_from_the_command_line_or_a_file(tmp_path, rate, implied):
    """Nyquist caps f_max and the 25 ms window sets n_fft, unless those are given too."""
    from voxaug.config import resolve_config

    on_the_line = resolve_config("cpu", frontend_overrides={"sample_rate": rate})
    toml = tmp_path / "rate.toml"
    toml.write_text(f"[frontend]\nsample_rate = {rate}\n")
    in_a_file = resolve_config("cpu", toml)
    for config in (on_the_line, in_a_file):
        assert config.frontend == {"sample_rate": rate, **implied}
        settings = FrontendConfig.from_dict(config.frontend)
        assert settings.win_length <= settings.n_fft and settings.f_max <= rate / 2
    toml.write_text(f"[frontend]\nsample_rate = {rate}\nn_fft = 4096\nf_max = 3000.0\n")
    assert resolve_config("cpu", toml).frontend == {"sample_rate": rate, "n_fft": 4096, "f_max": 3000.0}


def test_written_wavs_do_not_depend_on_the_time_of_writing(tmp_path):
    """libsndfile stamps float WAVs with the time; a second apart the same waveform gave other bytes."""
    wave = torch.linspace(-0.5, 0.5, 1600)
    write_audio(tmp_path / "a.wav", wave, 16000)
    time.sleep(1.1)
    write_audio(tmp_path / "b.wav", wave, 16000)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert torch.equal(read_audio(tmp_path / "a.wav", 16000), wave)


@pytest.mark.parametrize("damage", ["{not json", '{"fingerprint": "x", "skipped": 5}', "[1, 2]"])
def test_a_damaged_list_of_skipped_files_rebuilds_the_store_as_a_damaged_features_file_does(wav_synth, tmp_path,
                                                                                            damage):
    source = open_source(_tree_with_bad_files(wav_synth, tmp_path))
    store, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, warn=False)
    assert len(skipped) == 2
    listed = json.loads((store.folder / "skipped.json").read_text())
    (store.folder / "skipped.json").write_text(damage.replace('"x"', json.dumps(listed["fingerprint"])))
    again, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, warn=False)
    assert again.rebuilt and len(skipped) == 2 and again.keys == store.keys


def test_commands_that_read_data_skip_the_bad_files_train_skipped_whatever_the_cache_holds(wav_synth, tmp_path):
    """embed and evaluate skip the files train skipped (so they see its clips and its split) even when its packed
    store is gone; predict, whose CSV needs every clip, refuses them; embed under torchrun names them once."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    root = _tree_with_bad_files(wav_synth, tmp_path)

    def run(*args: object, cache: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, [str(a) for a in (*args, "--cache-dir", tmp_path / cache, "-q")])
        return result.exit_code, result.output

    code, output = run("train", root, "--out", tmp_path / "run", "--steps", "2", "--batch", "4", "--segment", "32",
                       "--d-model", "16", "--heads", "2", "--layers", "1", "--embedding-dim", "8", "--workers", "0",
                       "--device", "cpu", cache="trained")
    assert code == 0, output
    assert "skipped 2 unreadable audio files (listed above; --strict makes them an error)" in output, output
    clips = len(open_source(root).utterances) - 2
    code, output = run("embed", "--ckpt", tmp_path / "run" / "last.pt", root, "--out", tmp_path / "emb", cache="fresh")
    assert code == 0, output
    assert len(np.load(tmp_path / "emb" / "embeddings.npy")) == clips
    code, output = run("predict", "--ckpt", tmp_path / "run" / "best.pt", root, "--out", tmp_path / "p.csv", cache="fresh")
    assert code == 2 and "99998.wav" in output and not (tmp_path / "p.csv").exists(), output
    assert "a row for every clip" in output and "--strict" not in output, output  # predict has no --strict
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "voxaug",
               "embed", "--ckpt", tmp_path / "run" / "last.pt", root, "--out", tmp_path / "emb2",
               "--cache-dir", tmp_path / "ddp", "--device", "cpu", "-q"]
    shared = subprocess.run([str(a) for a in command], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert shared.returncode == 0, shared.stderr
    assert shared.stderr.count("warning: skipped 2 of") == 1, shared.stderr  # said by rank 0 only
    assert shared.stderr.count("warning: skipped ") == 3, shared.stderr  # each bad file, then the count
    assert "--strict" not in shared.stderr, shared.stderr  # train's option, not embed's


def test_a_wav_the_disk_cuts_short_keeps_the_old_file_and_names_it(tmp_path, monkeypatch):
    """write_audio (synth's audio) wrote straight into its file: a full disk left a torn WAV where the old one
    was, and a bare "No space left on device" that named no file."""
    target = tmp_path / "clip.wav"
    write_audio(target, torch.full((800,), 0.1), 16000)
    before = target.read_bytes()

    def disk_fills(handle, data):
        handle.write(data.tobytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("scipy.io.wavfile._array_tofile", disk_fills)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(target))}: cannot write: No space left on device"):
        write_audio(target, torch.full((1600,), 0.2), 16000)
    assert target.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["clip.wav"]


def test_a_tree_named_by_a_relative_or_an_absolute_path_keeps_one_packed_store(wav_synth, tmp_path, monkeypatch):
    """`voxaug train data/wav` then `voxaug embed $PWD/data/wav` (or from another folder) is one dataset in one cache
    folder: its features are reused, not computed again each time the path is spelled the other way."""
    cache = tmp_path / "cache"
    monkeypatch.chdir(wav_synth)
    first, _ = open_dataset_store(open_source("wav"), cache, progress=False, workers=0)
    monkeypatch.chdir(tmp_path)
    second, _ = open_dataset_store(open_source(wav_synth / "wav"), cache, progress=False, workers=0)
    monkeypatch.chdir(wav_synth.parent)
    third, _ = open_dataset_store(open_source(Path(wav_synth.name) / "wav"), cache, progress=False, workers=0)
    assert first.rebuilt and first.folder == second.folder == third.folder
    assert not second.rebuilt and not third.rebuilt


@pytest.mark.parametrize("peak", [1e-40, 1e-9])
def test_a_clip_quieter_than_any_recorder_step_is_refused_as_silent(tmp_path, peak):
    """Samples of 1e-9 (or subnormal) give log-mel features at the floor, bit for bit an all-zero clip's, which is
    refused as silent: they were embedded and identified at cosine 0.48 all the same."""
    from voxaug.api.inputs import to_clip
    from voxaug.runtime.frontend import FrontendSettings
    from voxaug.runtime.frontend import read_audio as read_audio_numpy

    quiet = tmp_path / "quiet.wav"
    soundfile.write(quiet, np.full(8000, peak, dtype=np.float32), 16000, subtype="FLOAT")
    for read in (lambda: load_clip(quiet, FrontendConfig()), lambda: read_audio_numpy(quiet, 16000)):
        with pytest.raises(VoxaugError, match=rf"^{re.escape(str(quiet))}: audio is silent \(its loudest sample"):
            read()
    with pytest.raises(VoxaugError, match="the waveform is silent"):
        to_clip(np.full(8000, peak, dtype=np.float32), 16000, FrontendSettings(), "quiet")
    one_step = tmp_path / "one_step.wav"  # the quietest sound 16-bit audio holds is still sound
    soundfile.write(one_step, np.tile(np.array([1, -1, 0, 0], dtype=np.int16), 2000), 16000, subtype="PCM_16")
    assert load_clip(one_step, FrontendConfig()).shape[1] == 40


def test_a_flac_whose_header_claims_2_to_the_36_samples_is_one_error_not_a_huge_allocation(tmp_path):
    """STREAMINFO's 36-bit sample count is only a claim: a 40 kB FLAC declaring 2**36 - 1 samples of 8 channels had
    soundfile allocate 2 TiB for it up front, and the command ended in `unexpected MemoryError` (status 3)."""
    from voxaug.runtime.frontend import read_audio as read_audio_numpy

    flac = tmp_path / "huge.flac"
    samples = np.random.default_rng(0).uniform(-0.1, 0.1, (16000, 8)).astype(np.float32)
    soundfile.write(flac, samples, 16000, subtype="PCM_16")
    data = bytearray(flac.read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # STREAMINFO: ... 3 bits channels - 1, 5 bits depth - 1, 36 bits samples
    data[18:26] = (fields | (1 << 36) - 1).to_bytes(8, "big")
    flac.write_bytes(bytes(data))
    assert soundfile.info(flac).frames == (1 << 36) - 1
    for read in (lambda: load_clip(flac, FrontendConfig()), lambda: read_audio_numpy(flac, 16000)):
        with pytest.raises(VoxaugError, match=rf"^{re.escape(str(flac))}: truncated FLAC file: its header declares "
                                              rf"{(1 << 36) - 1} samples and 16000 are present$"):
            read()


def test_a_flac_whose_header_leaves_its_length_unknown_is_read_to_its_end(tmp_path):
    """Streaming encoders write STREAMINFO's sample count as 0 (unknown): the file was refused as `not a readable audio
    file (Internal psf_fseek() failed.)`, though libsndfile decodes it whole."""
    from voxaug.runtime.frontend import read_audio as read_audio_numpy

    samples = np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype(np.float32)
    known, streamed = tmp_path / "known.flac", tmp_path / "streamed.flac"
    soundfile.write(known, samples, 16000, subtype="PCM_16")
    data = bytearray(known.read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # STREAMINFO: ... 3 bits channels - 1, 5 bits depth - 1, 36 bits samples
    data[18:26] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")
    streamed.write_bytes(bytes(data))
    assert soundfile.info(streamed).frames != 16000  # libsndfile's "unknown"
    assert np.array_equal(read_audio_numpy(streamed, 16000), read_audio_numpy(known, 16000))
    assert torch.equal(load_clip(streamed, FrontendConfig()), load_clip(known, FrontendConfig()))


@pytest.mark.parametrize("damage", ["another dataset's", "deleted"])
def test_a_list_of_skipped_files_from_another_dataset_or_gone_rebuilds_the_store(wav_synth, tmp_path, damage):
    """skipped.json replaced by another dataset's (which skipped none) or deleted read as "nothing skipped": embed
    and train stopped saying a clip was left out, and predict, which refuses a store that lacks clips, wrote a row
    fewer than the folder holds."""
    source = open_source(_tree_with_bad_files(wav_synth, tmp_path))
    store, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, workers=0, warn=False)
    assert len(skipped) == 2
    if damage == "deleted":
        (store.folder / "skipped.json").unlink()
    else:
        clean, none = open_dataset_store(open_source(wav_synth / "wav"), tmp_path / "cache", progress=False, workers=0)
        assert none == []
        shutil.copy(clean.folder / "skipped.json", store.folder / "skipped.json")
    again, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, workers=0, warn=False)
    assert again.rebuilt and sorted(s["key"] for s in skipped) == ["spk000/session0/99998.wav", "spk001/99999.flac"]
    with pytest.raises(VoxaugError, match="99998.wav|99999.flac"):
        open_dataset_store(source, tmp_path / "cache", progress=False, workers=0, strict=True)


ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
"""The C locale with UTF-8 mode turned off (Python turns it on for the C locale unless ``PYTHONUTF8=0``): file names
decode as ASCII, so every byte of ``José`` past the ``s`` comes back as one of ``os.fsdecode``'s surrogates."""


def test_audio_whose_name_is_not_ascii_or_not_utf8_is_read_under_any_locale(tmp_path):
    """soundfile encodes a ``str`` file name strictly in the file system encoding, so every clip under a folder such as
    ``José/`` was skipped as "not a readable audio file ('ascii' codec can't encode ...)" under ``LC_ALL=C`` (train
    stopped: every file unreadable), and a Latin-1 name (not UTF-8) was skipped so under a UTF-8 locale too."""
    latin1 = tmp_path / os.fsdecode(b"caf\xe9") / "1.wav"
    latin1.parent.mkdir()
    soundfile.write(os.fsencode(latin1), tone(), 16000)
    assert read_audio(latin1, 16000).shape == (16000,)
    accented = tmp_path / "José 中文" / "1.wav"
    accented.parent.mkdir()
    soundfile.write(accented, tone(), 16000)
    script = ("import sys; from voxaug.runtime.frontend import read_mono; "
              "print(read_mono(sys.argv[1])[0].shape[0])")
    result = subprocess.run([sys.executable, "-c", script, str(accented)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **ASCII_LOCALE})
    assert result.returncode == 0 and result.stdout.strip() == "16000", result.stderr


def test_an_unreadable_audio_file_is_named_once_as_text_not_again_as_python_bytes(tmp_path):
    """Opened by its bytes name, soundfile's error repeated the path as a bytes literal after the file already
    named: "x.wav: not a readable audio file (Error opening b'/.../Jos\\xc3\\xa9/x.wav': Error in WAV file ...)"."""
    bad = tmp_path / "José" / "x.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(VoxaugError) as refused:
        read_audio(bad, 16000)
    assert re.fullmatch(rf"{re.escape(str(bad))}: not a readable audio file \([^/]+\)", str(refused.value)), \
        str(refused.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
@pytest.mark.parametrize("scan", ["clip folder", "--noise-dir", "--rir-dir"])
@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_pipe_or_device_under_a_clip_name_in_a_scanned_folder_is_refused_not_left_out(tmp_path, scan, special):
    """A named pipe (or a link to /dev/zero) named x.wav in a speaker, noise or RIR folder was silently left out,
    as a link to nothing no longer is: the folder's clips were one fewer than the user put there, without a word."""
    from voxaug.augment.noise import load_noise_features
    from voxaug.augment.wave import audio_files_in

    folder = tmp_path / "spk000"
    folder.mkdir()
    soundfile.write(folder / "a.wav", tone(), 16000)
    torch.save(torch.randn(50, 40), folder / "b.pt")
    odd = folder / ("x.pt" if scan == "--noise-dir" else "x.wav")
    if special == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to(special)
    found = "a named pipe" if special == "fifo" else "a character device"
    scanners = {"clip folder": (lambda: ClipFolderSource(tmp_path), f"expected a clip file, found {found}"),
                "--noise-dir": (lambda: load_noise_features(folder),
                                f"--noise-dir: expected a noise feature file, found {found}"),
                "--rir-dir": (lambda: audio_files_in(folder, "--rir-dir"), f"--rir-dir: expected an audio file, found {found}")}
    read, problem = scanners[scan]
    with pytest.raises(VoxaugError, match=f"^{re.escape(f'{odd}: {problem}')}$"):
        read()


def test_a_clip_directly_in_a_clip_folder_dataset_is_refused_as_enroll_speakers_dir_refuses_it(tmp_path):
    """`evaluate --enroll D` (and train, embed, --test, --impostors) silently left out D/x.wav, a clip of no speaker,
    where `enroll --speakers-dir D` refused the same folder: the two enrolled different clips from it."""
    root = tmp_path / "enroll"
    (root / "spk000").mkdir(parents=True)
    soundfile.write(root / "spk000" / "a.wav", tone(), 16000)
    soundfile.write(root / "x.WAV", tone(), 16000)
    (root / "notes.txt").write_text("not a clip")  # other files are the folder's own business
    (root / "._y.wav").write_bytes(b"\x00\x05\x16\x07")  # nor are hidden files clips
    with pytest.raises(VoxaugError, match=f"^{re.escape(str(root))}: holds clips of no speaker \\(x\\.WAV\\); clips go in "
                                          r"ROOT/<speaker>/$"):
        open_source(root)
    (root / "x.WAV").unlink()
    assert [u.key for u in open_source(root).utterances] == ["spk000/a.wav"]


def test_folders_nested_past_the_recursion_limit_are_one_error_naming_the_folder_not_a_crash(tmp_path):
    """A clip folder nested about a thousand levels deep made every scan a RecursionError (os.walk recursed once per
    level before Python 3.12), which the CLI called "unexpected" with exit 3; the limit is lowered here to keep the
    tree small."""
    root = tmp_path / "spk000"
    deepest = root.joinpath(*["a"] * 150)
    deepest.mkdir(parents=True)
    soundfile.write(deepest / "x.wav", tone(0.1), 16000)
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 100)
    try:
        found = one_file_per_clip(root, (".wav",))
    except VoxaugError as exc:
        assert str(exc) == f"{root}: folders nested too deep to list (past Python's recursion limit)"
    else:  # an os.walk that does not recurse lists it
        assert found == [deepest / "x.wav"]
    finally:
        sys.setrecursionlimit(limit)


def test_speaker_folders_without_clips_are_left_out_with_one_warning_line(tmp_path, capsys):
    """A speaker folder holding no clips (only .m4a files, as VoxCeleb2 ships them, or none) was left out of train,
    embed and evaluate without a word, where `enroll --speakers-dir` refused it; it is still no speaker."""
    root = tmp_path / "tree"
    for speaker in ("spk000", "spk001"):
        (root / speaker).mkdir(parents=True)
        soundfile.write(root / speaker / "a.wav", tone(), 16000)
    (root / "spk002" / "video0").mkdir(parents=True)
    (root / "spk002" / "video0" / "00001.m4a").write_bytes(b"not read")
    assert open_source(root).speakers == ["spk000", "spk001"]
    clips = ", ".join((".pt",) + audio_suffixes())  # .mp3, .ogg, ... too where libsndfile reads them
    assert capsys.readouterr().err == (f"warning: {root}: 1 of the 3 speaker folders holds no clips ('spk002'), so it "
                                       f"is left out (clips are {clips})\n")
    (root / "empty").mkdir()
    assert open_source(root).speakers == ["spk000", "spk001"]
    assert capsys.readouterr().err == (f"warning: {root}: 2 of the 4 speaker folders hold no clips (first 'empty'), so "
                                       f"they are left out (clips are {clips})\n")
    assert ClipFolderSource(root, warn=False).speakers == ["spk000", "spk001"] and capsys.readouterr().err == ""


def test_librispeech_given_above_its_subsets_warns_that_the_subsets_were_read_as_speakers(tmp_path, capsys):
    """LibriSpeech unpacks every subset into LibriSpeech/<subset>/<speaker>/<chapter>/: given that folder, train ran
    without a word on two "speakers", train-clean-100 and dev-clean. Given a subset, its speakers and chapters
    (sessions) are read, and the text files beside them are no clips."""
    root = tmp_path / "LibriSpeech"
    for subset, speaker, chapter in (("train-clean-100", "19", "198"), ("train-clean-100", "26", "495"),
                                     ("dev-clean", "84", "121123")):
        folder = root / subset / speaker / chapter
        folder.mkdir(parents=True)
        soundfile.write(folder / f"{speaker}-{chapter}-0000.flac", tone(), 16000, format="FLAC")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text(f"{speaker}-{chapter}-0000 HELLO\n")
    for name in ("SPEAKERS.TXT", "README.TXT"):
        (root / name).write_text("x\n")
    assert open_source(root).speakers == ["dev-clean", "train-clean-100"]
    assert capsys.readouterr().err == (
        f"warning: {root}: 2 of the 2 speakers hold every clip three or more folders down (first 'dev-clean': "
        "dev-clean/84/121123/84-121123-0000.flac); a speaker is DATA's first folder level, so if the folders below "
        f"them are the speakers, give {root / 'dev-clean'} as DATA\n")
    subset = open_source(root / "train-clean-100")
    assert capsys.readouterr().err == ""
    assert [(u.speaker, u.group) for u in subset.utterances] == [("19", "198"), ("26", "495")]


def _tree_with_ogg_and_mp3(tmp_path: Path) -> Path:
    """Two speakers of .wav clips; spk000 also has an .ogg (real, read), a damaged .mp3 and an .m4a (no format
    libsndfile reads), and spk001 a .mp3 kept beside the .wav it was converted to."""
    root = tmp_path / "tree"
    for speaker in ("spk000", "spk001"):
        (root / speaker / "video0").mkdir(parents=True)
        for n in range(2):
            soundfile.write(root / speaker / "video0" / f"{n}.wav", tone(freq=300.0 + 100 * n), 16000)
    soundfile.write(root / "spk000" / "video0" / "2.ogg", tone(), 16000, format="OGG", subtype="VORBIS")
    (root / "spk000" / "video0" / "3.mp3").write_bytes(b"ID3 fake mp3")
    (root / "spk000" / "video0" / "4.m4a").write_bytes(b"not read")
    (root / "spk001" / "video0" / "0.mp3").write_bytes(b"ID3 the original of 0.wav")
    return root


def test_audio_of_an_unread_format_in_a_corpus_is_skipped_and_named_not_left_out_without_a_word(tmp_path, capsys):
    """docs/training-from-audio.md: an unsupported file is reported on one line (`warning: skipped <file>: ...`) and
    skipped, with a count. An .ogg or .mp3 clip beside .wav ones was left out of train, embed and evaluate without a
    word (and `--strict` let it pass); a format's original beside the .wav made from it is still no clip of its own."""
    from voxaug.data.audio_store import require_audio

    root = _tree_with_ogg_and_mp3(tmp_path)
    source = open_source(root)
    require_audio(source)  # an .ogg clip is audio, not precomputed features: `--augment wave` takes the tree
    store, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, workers=0)
    assert len(store) == 5 and "spk000/video0/2.ogg" in store.keys
    assert sorted(s["key"] for s in skipped) == ["spk000/video0/3.mp3", "spk000/video0/4.m4a"]
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "4.m4a: unsupported clip type '.m4a'" in err and "skipped 2 of 7" in err
    assert "3.mp3: not a readable audio file" in err
    with pytest.raises(VoxaugError, match="3.mp3"):
        open_dataset_store(source, tmp_path / "cache", progress=False, workers=0, strict=True)


def test_hw4_features_of_another_suffix_are_features_not_audio(tmp_path):
    """HW4's metadata.json may name its feature files as it likes (``uttr-1.pth``); only audio of a format that is
    no clip is audio to be skipped: such features were taken for audio, so `--augment wave` was not refused up front
    and a damaged feature file was skipped with a warning, not refused by name as a `.pt` one is."""
    from hw4_factory import make_hw4, rewrite_metadata
    from voxaug.data.audio_store import has_audio, require_audio

    root = make_hw4(tmp_path / "hw4")
    for path in root.glob("uttr-*.pt"):
        path.rename(path.with_suffix(".pth"))

    def renamed(metadata: dict) -> None:
        for entries in metadata["speakers"].values():
            for entry in entries:
                entry["feature_path"] = entry["feature_path"].replace(".pt", ".pth")

    rewrite_metadata(root, renamed)
    source = open_source(root)
    assert not has_audio(source)
    with pytest.raises(VoxaugError, match="--augment wave needs an audio source"):
        require_audio(source)
    source.utterances[0].path.write_bytes(b"damaged")
    with pytest.raises(VoxaugError, match=re.escape(source.utterances[0].path.name)):
        open_dataset_store(source, tmp_path / "cache", progress=False, workers=0)


def test_an_original_beside_the_wav_named_after_its_whole_name_is_no_clip_of_its_own(tmp_path):
    """A folder converted with ``ffmpeg -i x.mp3 x.mp3.wav`` keeps each original beside its clip: x.mp3 was listed as
    a clip of its own, in the place of x.mp3.wav (both keyed ``x.mp3``), so the clip was lost, its original skipped
    with a warning by train, and the folder refused by enroll --speakers-dir, identify DIR and --noise-dir."""
    folder = tmp_path / "spk000"
    folder.mkdir()
    for name in ("a", "b"):
        soundfile.write(folder / f"{name}.mp3.wav", tone(), 16000)
        (folder / f"{name}.mp3").write_bytes(b"ID3 the original")
    (folder / "c.ogg").write_bytes(b"OggS a sound of its own")
    assert [p.name for p in one_file_per_clip(folder, (".pt", ".wav", ".flac"))] == ["a.mp3.wav", "b.mp3.wav", "c.ogg"]
