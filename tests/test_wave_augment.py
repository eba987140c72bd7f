"""`wave`: audiomentations before the front end, in the data workers, reproducible for any number
of workers and across a resume, refused on precomputed features, never applied outside training."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from typer.testing import CliRunner

from voxaug.augment import TrainBatch, build_pipeline
from voxaug.augment.pipeline import parse_names
from voxaug.augment.wave import WaveAugmentation, example_seed
from voxaug.checkpoint import load_checkpoint
from voxaug.cli.main import app
from voxaug.data.audio_store import open_dataset_store
from voxaug.data.sources import load_clip, open_source
from voxaug.data.wave_batches import WaveBatchSource
from voxaug.errors import VoxaugError
from voxaug.features import FrontendConfig
from voxaug.synth import SynthConfig, generate
from voxaug.train import Trainer

from conftest import tiny_config, unreadable_to_this_process

runner = CliRunner()
WAV_SYNTH = SynthConfig(speakers=4, utterances=8, unseen=0, min_seconds=0.8, max_seconds=1.2, seed=5,
                        write_training_audio=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """`voxaug synth` output (HW4 `.pt` at the top, audio under wav/) plus a folder of noise wavs."""
    out = tmp_path_factory.mktemp("wave") / "data"
    generate(out, WAV_SYNTH, progress=False)
    rng = np.random.default_rng(0)
    (out / "noise").mkdir()
    for index in range(3):
        soundfile.write(out / "noise" / f"n{index}.wav", rng.normal(0, 0.1, 12000).astype(np.float32), 16000)
    rir = out / "rir"
    rir.mkdir()
    decay = np.exp(-np.arange(800) / 120.0).astype(np.float32) * rng.normal(0, 1, 800).astype(np.float32)
    decay[0] = 1.0
    soundfile.write(rir / "room.wav", decay, 16000)
    return out


def noisy() -> WaveAugmentation:
    return WaveAugmentation(snr_p=1.0, min_snr_db=10.0, max_snr_db=10.0, gain_p=0.0)


def test_wave_is_accepted_by_augment_and_composes_with_feature_augmentations():
    assert parse_names("wave,specaug,mixup") == ["wave", "specaug", "mixup"]
    pipeline = build_pipeline("mixup,wave,specaug")
    assert pipeline.names == ["wave", "specaug", "mixup"]


@pytest.mark.parametrize("params, needle", [
    ({"noise_p": 1.5}, "noise-p"),
    ({"snr_p": 2.0}, "--wave-snr-p"),
    ({"min_gain_db": 6.0, "max_gain_db": -6.0}, "gain"),
    ({"noise_dir": "/no/such/noise"}, "--noise-dir: folder not found"),
    ({"rir_dir": "EMPTY"}, "--rir-dir: holds no audio"),
    ({"noise_dir": "CORRUPT"}, "bad.wav: --noise-dir: not a readable audio file"),
    ({"noise_dir": "NAN"}, "nan.wav: --noise-dir: audio holds NaN or Inf samples"),
    ({"rir_dir": "SILENT"}, "zero.wav: --rir-dir: audio is silent"),
])
def test_bad_wave_settings_and_folders_are_refused(tmp_path, params, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "bad.wav").write_bytes(b"RIFFnot audio at all")
    (tmp_path / "nan").mkdir()
    samples = np.full(4000, 0.1, dtype=np.float32)
    samples[3000] = np.nan  # past the first block a quick look would read
    soundfile.write(tmp_path / "nan" / "nan.wav", np.concatenate([np.full(70000, 0.1, np.float32), samples]), 16000,
                    subtype="FLOAT")
    (tmp_path / "silent").mkdir()
    soundfile.write(tmp_path / "silent" / "zero.wav", np.zeros(800, dtype=np.float32), 16000)
    params = {k: str(tmp_path / v.lower()) if v in ("EMPTY", "CORRUPT", "NAN", "SILENT") else v
              for k, v in params.items()}
    with pytest.raises(VoxaugError, match=needle.replace("-", r"\-")):
        WaveAugmentation(**params)


def test_a_noise_file_the_user_may_not_read_is_refused_as_such_not_as_a_damaged_file(open_folder):
    """A noise of mode 000 was "--noise-dir: not a readable audio file (System error.)", libsndfile's word for a
    refused open."""
    noise = open_folder / "noise"
    noise.mkdir()
    noise.chmod(0o755)
    soundfile.write(noise / "hum.wav", np.full(1600, 0.1, dtype=np.float32), 16000)
    with unreadable_to_this_process(noise / "hum.wav"), pytest.raises(VoxaugError) as refused:
        WaveAugmentation(noise_dir=str(noise), noise_p=1.0)
    assert str(refused.value) == f"{noise / 'hum.wav'}: --noise-dir: audio file cannot be read (Permission denied)"


def test_noise_folders_leave_out_hidden_files_as_clip_folders_do(corpus, tmp_path):
    """A ``._room.wav`` that macOS leaves beside each file on a shared drive is not audio: it is left out, as
    it is from a speaker's clips, rather than refusing the whole folder."""
    rir = tmp_path / "rir"
    rir.mkdir()
    (rir / "room.wav").write_bytes((corpus / "rir" / "room.wav").read_bytes())
    (rir / "._room.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert WaveAugmentation(rir_dir=str(rir), rir_p=1.0)._rir_files == [rir / "room.wav"]


def test_a_noise_file_whose_name_the_locale_cannot_spell_is_refused_saying_why(tmp_path):
    """soundfile, which audiomentations opens noise and RIR files with, encodes a ``str`` name strictly in the file
    system encoding: ``José.wav`` under ``LC_ALL=C`` (and Latin-1 bytes under any locale) was refused as "not a
    readable audio file ('ascii' codec can't encode ...)", naming no cause the user could act on."""
    from test_audio import ASCII_LOCALE

    samples = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    latin1 = tmp_path / "latin1" / os.fsdecode(b"caf\xe9.wav")
    accented = tmp_path / "accented" / "José.wav"
    for path in (latin1, accented):
        path.parent.mkdir()
        soundfile.write(os.fsencode(path), samples, 16000, format="WAV")
    why = r": --rir-dir: audiomentations opens noise and RIR files by a name in the file system's encoding \(.+\)"
    with pytest.raises(VoxaugError, match=why + ", which cannot spell this one; rename it"):
        WaveAugmentation(rir_dir=str(latin1.parent))
    script = ("import sys; from voxaug.augment.wave import WaveAugmentation; from voxaug.errors import VoxaugError\n"
              "try: WaveAugmentation(rir_dir=sys.argv[1])\nexcept VoxaugError as exc: print(exc)")
    result = subprocess.run([sys.executable, "-c", script, str(accented.parent)], capture_output=True, timeout=120,
                            env={**os.environ, **ASCII_LOCALE})
    shown = result.stdout.decode("utf-8").strip()
    assert shown.startswith(str(accented)) and shown.endswith(
        "--rir-dir: audiomentations opens noise and RIR files by a name in the file system's encoding (ascii), which "
        "cannot spell this one; rename it, or run under a UTF-8 locale"), (shown, result.stderr)


def test_the_chain_is_reproducible_per_example_seed_and_changes_the_waveform(corpus):
    waveform = np.sin(np.arange(12000) / 7.0).astype(np.float32) * 0.5
    augment = noisy()
    first, again, other = (augment.apply(waveform, 16000, s) for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first, waveform)
    snr = 10 * np.log10(np.mean(waveform ** 2) / np.mean((first - waveform) ** 2))
    assert 8.5 < snr < 11.5
    off = WaveAugmentation(snr_p=0.0, gain_p=0.0)
    np.testing.assert_array_equal(off.apply(waveform, 16000, 1), waveform)
    full = WaveAugmentation(noise_dir=str(corpus / "noise"), noise_p=1.0, rir_dir=str(corpus / "rir"), rir_p=1.0)
    out = full.apply(waveform, 16000, 3)
    assert out.shape == waveform.shape and np.isfinite(out).all() and not np.allclose(out, waveform)
    assert example_seed(0, 1, 2) != example_seed(0, 2, 1)


def test_wave_is_refused_on_precomputed_features(corpus, tmp_path):
    pt_folder = tmp_path / "clips" / "alice"
    pt_folder.mkdir(parents=True)
    torch.save(torch.randn(50, 40), pt_folder / "a.pt")
    for data in (corpus, tmp_path / "clips"):  # the HW4 layout and a .pt clip folder
        config = tiny_config(augment={"names": ["wave", "specaug"]})
        with pytest.raises(VoxaugError, match="wave needs an audio source"):
            Trainer(config, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False, workers=0)
    assert not (tmp_path / "cache").exists(), "refused before any featurising"


def test_wave_reads_the_audio_twins_of_a_folder_that_has_both(corpus, tmp_path):
    """`voxaug synth --wav` writes each clip's `.pt` beside its `.wav`: `wave` augments the audio, so it reads it."""
    twins = tmp_path / "twins"
    shutil.copytree(corpus / "wav", twins)
    for clip in twins.rglob("*.wav"):
        torch.save(load_clip(clip, FrontendConfig()), clip.with_suffix(".pt"))
    config = tiny_config(augment={"names": ["wave", "specaug"]})
    trainer = Trainer(config, twins, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False, workers=0)
    assert isinstance(trainer.sampler, WaveBatchSource) and all(key.endswith(".wav") for key in trainer.store.keys)
    plain = Trainer(tiny_config(augment={"names": ["specaug"]}), twins, tmp_path / "plain", cache_dir=tmp_path / "cache",
                    progress=False, workers=0)
    assert all(key.endswith(".pt") for key in plain.store.keys), "without `wave` the features are read as before"


def _batches(source: WaveBatchSource, count: int) -> list[torch.Tensor]:
    return [source.next_batch().features for _ in range(count)]


def test_batches_do_not_depend_on_workers_and_resume_exactly(corpus, tmp_path):
    store, _ = open_dataset_store(open_source(corpus / "wav"), tmp_path / "cache", progress=False, workers=0)
    indices = np.arange(len(store))

    def make(workers: int) -> WaveBatchSource:
        return WaveBatchSource(store, corpus / "wav", indices, 8, 48, 0, FrontendConfig(), noisy(), workers)

    serial, parallel = make(0), make(2)
    expected = _batches(serial, 6)  # 6 x 8 > 32 utterances: crosses an epoch
    for a, b in zip(expected, _batches(parallel, 4)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = parallel.state_dict()  # workers have prefetched past batch 4; the state must not count those
    parallel.close()
    resumed = make(1)
    resumed.load_state_dict(state)
    for a, b in zip(expected[4:], _batches(resumed, 2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed.close()


def test_wave_changes_training_batches_only(corpus, tmp_path):
    config = tiny_config(augment={"names": ["wave"], "wave": {"snr_p": 1.0, "min_snr_db": 5.0, "max_snr_db": 5.0}})
    trainer = Trainer(config, corpus / "wav", tmp_path / "run", cache_dir=tmp_path / "cache", progress=False, workers=0)
    assert isinstance(trainer.sampler, WaveBatchSource)
    clean = WaveBatchSource(trainer.store, corpus / "wav", trainer.train_indices, config.batch, config.segment,
                            config.seed, trainer.frontend, None, 0)
    augmented, plain = trainer.sampler.next_batch(), clean.next_batch()
    assert torch.equal(augmented.indices, plain.indices) and torch.equal(augmented.lengths, plain.lengths)
    assert not torch.allclose(augmented.features, plain.features)
    batch = TrainBatch.from_labels(plain.features, plain.lengths, plain.labels)
    assert torch.equal(trainer.pipeline(batch, trainer.augment_generator).features, plain.features)
    for index in (0, len(trainer.store) - 1):  # evaluation and embedding read clean features
        path = corpus / "wav" / trainer.store.keys[index]
        torch.testing.assert_close(trainer.store.utterance(index), load_clip(path, trainer.frontend))


def test_resumed_wave_run_matches_an_uninterrupted_one(corpus, tmp_path):
    def config(steps: int):  # warm-up longer than the run: the learning rate doesn't depend on `steps`
        return tiny_config(train={"steps": steps, "warmup": 10, "eval_every": 3, "batch": 8, "segment": 48},
                           augment={"names": ["wave", "specaug"], "wave": {"noise_dir": str(corpus / "noise")}})

    cache = tmp_path / "cache"
    Trainer(config(6), corpus / "wav", tmp_path / "straight", cache_dir=cache, progress=False, workers=1).fit()
    Trainer(config(3), corpus / "wav", tmp_path / "split", cache_dir=cache, progress=False, workers=1).fit()
    Trainer(config(6), corpus / "wav", tmp_path / "split", cache_dir=cache, progress=False, workers=0).fit(resume=True)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, msg=name)


def test_a_failed_fit_stops_its_data_workers(corpus, tmp_path, monkeypatch):
    """A trainer kept after a failed fit (a notebook, a service) kept its `wave` data worker processes alive."""
    config = tiny_config(train={"steps": 6, "eval_every": 3, "batch": 8, "segment": 48}, augment={"names": ["wave"]})
    trainer = Trainer(config, corpus / "wav", tmp_path / "run", cache_dir=tmp_path / "cache", progress=False, workers=2)
    before = {child.pid for child in multiprocessing.active_children()}
    original_step = Trainer.train_step

    def failing_step(self):
        if self.step == 2:  # workers are running and prefetching by now
            raise RuntimeError("a step failed")
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="a step failed"):
        trainer.fit()
    assert {child.pid for child in multiprocessing.active_children()} == before


def test_train_cli_from_an_audio_tree_with_wave_and_noise(corpus, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", str(corpus / "wav"), "--out", str(run), "--augment", "wave,specaug", "--noise-dir", str(corpus / "noise"),
        "--noise-p", "0.8", "--n-mels", "32", "--workers", "1", "--steps", "4", "--eval-every", "4", "--batch", "8",
        "--segment", "48", "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32",
        "--device", "cpu", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "augment: wave,specaug" in result.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["augment"]["wave"]["noise_dir"] == str((corpus / "noise").resolve())
    assert saved["augment"]["wave"]["noise_p"] == 0.8
    assert saved["frontend"]["n_mels"] == 32
    assert load_checkpoint(run / "best.pt")["frontend"]["n_mels"] == 32


def test_train_cli_refuses_wave_options_without_wave(corpus, tmp_path):
    result = runner.invoke(app, ["train", str(corpus / "wav"), "--out", str(tmp_path / "run"), "--augment", "specaug",
                                 "--noise-dir", str(corpus / "noise")])
    assert result.exit_code == 2 and "--noise-dir" in result.output and "wave" in result.output


def test_a_toml_files_relative_noise_folder_is_recorded_absolute_against_the_files_folder(corpus, tmp_path,
                                                                                          monkeypatch):
    """The run records the folder: a --resume with the same file from another working directory finds it."""
    from voxaug.config import resolve_config

    toml = tmp_path / "configs" / "run.toml"
    toml.parent.mkdir()
    (tmp_path / "noise").symlink_to(corpus / "noise")
    toml.write_text('[augment]\nnames = ["wave"]\n[augment.wave]\nnoise_dir = "../noise"\nrir_dir = "%s"\n'
                    % os.path.relpath(corpus / "rir", toml.parent))
    for working in (corpus, tmp_path):
        monkeypatch.chdir(working)
        wave = resolve_config(toml_path=toml).augment["wave"]
        assert wave["noise_dir"] == str((corpus / "noise").resolve()) and wave["rir_dir"] == str((corpus / "rir").resolve())


def test_a_run_that_recorded_a_relative_noise_folder_resumes_with_its_toml_file(corpus, tmp_path, monkeypatch):
    """Runs made before folders were recorded absolute hold the TOML's relative folder, read against the working
    directory: resumed from there with the same file, it is the same folder, not a change."""
    monkeypatch.chdir(corpus)
    toml = corpus / "relative.toml"
    toml.write_text('[augment]\nnames = ["wave"]\n[augment.wave]\nnoise_dir = "noise"\n')
    command = ["train", str(corpus / "wav"), "--out", str(tmp_path / "run"), "--config", str(toml), "--eval-every", "2",
               "--batch", "8", "--segment", "48", "--d-model", "32", "--layers", "1", "--heads", "2",
               "--embedding-dim", "32", "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
               "--quiet"]
    try:
        assert runner.invoke(app, [*command, "--steps", "2"]).exit_code == 0
        saved = json.loads((tmp_path / "run" / "config.json").read_text())
        assert saved["augment"]["wave"]["noise_dir"] == str(corpus.resolve() / "noise")
        saved["augment"]["wave"]["noise_dir"] = "noise"  # as the run folder of an earlier voxaug holds it
        (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
        resumed = runner.invoke(app, [*command, "--steps", "4", "--resume"])
        assert resumed.exit_code == 0, resumed.output
    finally:
        toml.unlink()


def test_a_run_whose_checkpoint_recorded_a_relative_noise_folder_resumes(corpus, tmp_path, monkeypatch):
    """An earlier voxaug wrote the TOML's relative folder into last.pt too, not only config.json: the checkpoint's
    copy is read against the working directory as the command line reads config.json's, so it is not a change."""
    from voxaug.checkpoint import save_checkpoint

    monkeypatch.chdir(corpus)
    toml = corpus / "relative_in_checkpoint.toml"
    toml.write_text('[augment]\nnames = ["wave"]\n[augment.wave]\nnoise_dir = "noise"\n')
    run = tmp_path / "run"
    command = ["train", str(corpus / "wav"), "--out", str(run), "--config", str(toml), "--eval-every", "2",
               "--batch", "8", "--segment", "48", "--d-model", "32", "--layers", "1", "--heads", "2",
               "--embedding-dim", "32", "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
               "--quiet"]
    try:
        assert runner.invoke(app, [*command, "--steps", "2"]).exit_code == 0
        saved = json.loads((run / "config.json").read_text())
        saved["augment"]["wave"]["noise_dir"] = "noise"  # as the run folder of an earlier voxaug holds it
        (run / "config.json").write_text(json.dumps(saved))
        state = load_checkpoint(run / "last.pt")
        state["config"]["augment"]["wave"]["noise_dir"] = "noise"
        save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
        resumed = runner.invoke(app, [*command, "--steps", "4", "--resume"])
        assert resumed.exit_code == 0, resumed.output
        assert load_checkpoint(run / "last.pt")["step"] == 4
    finally:
        toml.unlink()


@pytest.mark.parametrize("segment, frontend", [(1, FrontendConfig()), (2, FrontendConfig()),
                                               (3, FrontendConfig(sample_rate=44100, n_fft=2048, f_max=7600.0))])
def test_a_segment_shorter_than_the_front_ends_window_still_gives_batches(corpus, tmp_path, segment, frontend):
    """The crop is (segment - 1) hops of samples; under n_fft // 2 + 1 samples the centred STFT cannot pad it."""
    store, _ = open_dataset_store(open_source(corpus / "wav", frontend), tmp_path / "cache", progress=False, workers=0)
    source = WaveBatchSource(store, corpus / "wav", np.arange(len(store)), 4, segment, 0, frontend, noisy(), 0)
    batch = source.next_batch()
    assert batch.features.shape == (4, segment, frontend.n_mels) and batch.lengths.tolist() == [segment] * 4
    assert torch.isfinite(batch.features).all()
    source.close()


def test_train_with_wave_and_a_tiny_segment_ends_cleanly(corpus, tmp_path):
    result = runner.invoke(app, ["train", str(corpus / "wav"), "--out", str(tmp_path / "run"), "--augment", "wave",
                                 "--segment", "2", "--steps", "2", "--eval-every", "2", "--batch", "4", "--warmup", "1",
                                 "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32",
                                 "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output


def test_a_python_api_resume_of_a_run_with_a_relative_noise_folder_is_not_a_change(corpus, tmp_path, monkeypatch):
    """Trainer.config_from_run gives the folder as the run recorded it (relative, from the Python API or an earlier
    voxaug): resume reads the saved and the given config against the working directory alike."""
    monkeypatch.chdir(corpus)
    config = tiny_config(train={"steps": 2, "eval_every": 2, "batch": 8, "segment": 48, "warmup": 1},
                         augment={"names": ["wave"], "wave": {"noise_dir": "noise"}})
    run = tmp_path / "run"
    Trainer(config, corpus / "wav", run, cache_dir=tmp_path / "cache", progress=False, workers=0).fit()
    resumed = Trainer.config_from_run(run, steps=4)
    assert resumed.augment["wave"]["noise_dir"] == "noise"
    Trainer(resumed, corpus / "wav", run, cache_dir=tmp_path / "cache", progress=False, workers=0, resume=True).fit()
    assert load_checkpoint(run / "last.pt")["step"] == 4


def test_the_chain_leaves_the_callers_global_generators_as_they_were():
    """``apply`` seeds Python's and numpy's global generators for audiomentations; with --workers 0 it runs in the
    trainer's (or an API user's) own process, whose global streams it used to leave reseeded."""
    import random

    waveform = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    first = WaveAugmentation(snr_p=1.0, gain_p=1.0).apply(waveform, 16000, seed=7)
    assert (np.random.rand(), random.random()) == expected
    assert np.array_equal(first, WaveAugmentation(snr_p=1.0, gain_p=1.0).apply(waveform, 16000, seed=7))


def test_a_toml_files_noise_folder_under_the_home_folder_is_recorded_with_its_tilde_expanded(corpus, tmp_path,
                                                                                             monkeypatch):
    """``noise_dir = "~/noise"`` was read against the TOML file's folder, as ``CONFIG_FOLDER/~/noise``: not found."""
    from voxaug.config import resolve_config

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "noise").symlink_to(corpus / "noise")
    (tmp_path / "home" / "rir").symlink_to(corpus / "rir")
    toml = tmp_path / "configs" / "run.toml"
    toml.parent.mkdir()
    toml.write_text('[augment]\nnames = ["wave"]\n[augment.wave]\nnoise_dir = "~/noise"\nrir_dir = "~/rir"\n')
    wave = resolve_config(toml_path=toml).augment["wave"]
    assert wave["noise_dir"] == str((corpus / "noise").resolve()) and wave["rir_dir"] == str((corpus / "rir").resolve())


def test_a_toml_files_noise_folder_under_an_unknown_users_home_is_one_error_naming_the_file(tmp_path, monkeypatch):
    """``noise_dir = "~nosuchuser/noise"``: expanding ``~`` raised RuntimeError, so `train --config` ended in
    ``unexpected RuntimeError: Could not determine home directory.`` (exit 3) naming neither the file nor the key."""
    from voxaug.config import resolve_config

    toml = tmp_path / "run.toml"
    toml.write_text('[augment]\nnames = ["wave"]\n[augment.wave]\nnoise_dir = "~voxaug_no_such_user/noise"\n')
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(toml))}: \[augment\.wave\] noise_dir "
                                          r"'~voxaug_no_such_user/noise': the home folder of '~voxaug_no_such_user' "
                                          r"cannot be found$"):
        resolve_config(toml_path=toml)


@pytest.mark.parametrize("declared, problem", [
    (0, r"its header leaves its length unknown \(a streamed FLAC\), and noise and RIR files are read by that length"),
    (32000, r"not a readable audio file \(Internal psf_fseek\(\) failed\.\)"),
])
def test_a_noise_flac_whose_header_hides_or_overstates_its_length_is_refused_naming_it(tmp_path, declared, problem):
    """Such a FLAC (STREAMINFO's sample count 0, as streaming encoders write, or more samples than it holds) ended
    `train --noise-dir` in ``unexpected LibsndfileError: Internal psf_fseek() failed.`` (exit 3), naming no file."""
    (tmp_path / "noise").mkdir()
    flac = tmp_path / "noise" / "n.flac"
    soundfile.write(flac, np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype(np.float32), 16000,
                    subtype="PCM_16")
    data = bytearray(flac.read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # STREAMINFO: ... 36 bits of sample count
    data[18:26] = ((fields & ~((1 << 36) - 1)) | declared).to_bytes(8, "big")
    flac.write_bytes(bytes(data))
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(flac))}: --noise-dir: {problem}"):
        WaveAugmentation(noise_dir=str(tmp_path / "noise"))


@pytest.mark.parametrize("arguments", [["--augment", "wave", "--noise-dir=~/noise"],
                                       ["--augment", "wave", "--rir-dir=~/rir"],
                                       ["--augment", "noise", "--noise-dir=~/noise"]])
def test_a_noise_or_rir_folder_given_as_tilde_after_an_equals_sign_is_under_the_home_folder(tmp_path, monkeypatch,
                                                                                           arguments):
    """bash leaves ``~`` as it is in ``--noise-dir=~/noise``: the folder was taken as ``./~/noise`` and refused as
    not found, where a TOML file's ``noise_dir = "~/noise"`` is under the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"), *arguments])
    folder = arguments[-1].split("=~/")[1]
    assert result.exit_code == 2 and result.output.startswith(f"error: {tmp_path / 'home' / folder}: "), result.output


def test_a_noise_file_below_one_step_of_24_bit_audio_is_refused_as_silent_as_a_clip_is(tmp_path):
    """Only an all-zero file was refused: a noise whose loudest sample is 1e-9 passed, then audiomentations found
    every stretch of it too quiet to scale and returned the example without noise (with a raw UserWarning)."""
    folder = tmp_path / "noise"
    folder.mkdir()
    samples = np.zeros(16000, dtype=np.float32)
    samples[5] = 1e-9
    soundfile.write(folder / "hiss.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(VoxaugError, match=r"hiss\.wav: --noise-dir: audio is silent \(its loudest sample, 1\.0e-09"):
        WaveAugmentation(noise_dir=str(folder))


@pytest.mark.parametrize("option", ["noise_dir", "rir_dir"])
def test_a_symbolic_link_to_nothing_in_a_noise_or_rir_folder_is_refused_naming_it(corpus, tmp_path, option):
    """It was left out without a word (a clip's is refused): a folder linked from an unmounted drive lost those
    noises silently, or was refused as holding no audio files at all."""
    folder = tmp_path / "sounds"
    folder.mkdir()
    (folder / "room.wav").write_bytes((corpus / "rir" / "room.wav").read_bytes())
    (folder / "gone.wav").symlink_to(tmp_path / "unmounted" / "gone.wav")
    label = "--noise-dir" if option == "noise_dir" else "--rir-dir"
    with pytest.raises(VoxaugError, match=rf"gone\.wav: {label}: a symbolic link that points to nothing"):
        WaveAugmentation(**{option: str(folder)})


@pytest.mark.parametrize("option, channels, used", [("noise_dir", "cancel", "mono mix"),
                                                    ("rir_dir", "first silent", "first channel")])
def test_a_stereo_file_silent_in_the_channels_the_chain_uses_is_refused_as_silent(tmp_path, option, channels, used):
    """The silence check took the loudest sample of either channel, but the chain mixes a noise to mono first: a
    noise with one channel the other's negative passed, and was never added. A RIR is applied by its first
    channel: a silent one would silence every example it is applied to."""
    folder = tmp_path / "sounds"
    folder.mkdir()
    decay = np.exp(-np.arange(800) / 120.0).astype(np.float32)
    pair = [decay, -decay] if channels == "cancel" else [np.zeros_like(decay), decay]
    soundfile.write(folder / "room.wav", np.stack(pair, axis=1), 16000, subtype="FLOAT")
    if option == "rir_dir":  # the same file as a noise, used by its mono mix, is not silent (nor taken as checked)
        assert WaveAugmentation(noise_dir=str(folder))
    label = "--noise-dir" if option == "noise_dir" else "--rir-dir"
    with pytest.raises(VoxaugError, match=rf"room\.wav: {label}: audio is silent .* in its {used}$"):
        WaveAugmentation(**{option: str(folder)})


def reverberated_by_audiomentations(tmp_path: Path, ir: np.ndarray, rate: int, waveform: np.ndarray,
                                    leave_length_unchanged: bool = True) -> np.ndarray:
    """audiomentations' own ApplyImpulseResponse on a mono RIR file, for comparison."""
    from audiomentations import ApplyImpulseResponse

    path = tmp_path / "mono" / "ir.wav"
    path.parent.mkdir(exist_ok=True)
    soundfile.write(path, ir, rate, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ApplyImpulseResponse(ir_path=str(path), p=1.0, leave_length_unchanged=leave_length_unchanged)(
            samples=waveform, sample_rate=16000)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_a_multichannel_rir_is_applied_by_its_first_channel_not_its_mono_mix(tmp_path, rate):
    """RIRS_NOISES' real RIRs are array (8-channel) and binaural (2-channel) recordings. audiomentations convolved
    a mono waveform with the mean of the channels, a response no microphone recorded (the direct sounds comb-filter,
    the tails partly cancel); Kaldi's wav-reverberate and lhotse take the first channel, and so does the chain."""
    rng = np.random.default_rng(3)
    tails = np.exp(-np.arange(1200) / 200.0)[:, None] * rng.standard_normal((1200, 4))
    tails[[0, 3, 7, 11], [0, 1, 2, 3]] = 1.0  # the direct sound reaches each microphone at its own delay
    folder = tmp_path / "rir"
    folder.mkdir()
    soundfile.write(folder / "array.wav", tails.astype(np.float32), rate, subtype="FLOAT")
    waveform = rng.normal(0, 0.1, 16000).astype(np.float32)
    wave = WaveAugmentation(snr_p=0.0, gain_p=0.0, rir_dir=str(folder), rir_p=1.0)
    expected = reverberated_by_audiomentations(tmp_path, tails[:, 0].astype(np.float32), rate, waveform)
    np.testing.assert_allclose(wave.apply(waveform, 16000, seed=1), expected, atol=1e-6)


def test_a_rir_at_another_rate_is_resampled_without_a_warning_per_file_and_worker(tmp_path):
    """A RIR at 44.1 kHz or 8 kHz (RIRS_NOISES has both) printed audiomentations' "had to be resampled ... This hurt
    execution time" once per file in every worker; it is resampled once per file per process, and quietly."""
    folder = tmp_path / "rir"
    folder.mkdir()
    decay = np.exp(-np.arange(4410) / 600.0) * np.random.default_rng(4).standard_normal(4410)
    soundfile.write(folder / "hall.wav", decay.astype(np.float32), 44100, subtype="FLOAT")
    wave = WaveAugmentation(snr_p=0.0, gain_p=0.0, rir_dir=str(folder), rir_p=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            wave.apply(np.ones(1600, dtype=np.float32), 16000, seed)
    assert [str(warning.message) for warning in caught] == []


@pytest.mark.parametrize("option", ["--noise-dir", "--rir-dir"])
def test_a_folder_under_an_unknown_users_home_given_on_the_command_line_is_one_error(tmp_path, option):
    """``--noise-dir=~nosuchuser/x`` ended in "unexpected RuntimeError: Could not determine home directory" (exit 3),
    naming neither the option nor the folder."""
    result = runner.invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"),
                                 "--augment", "wave", f"{option}=~voxaug_no_such_user/x"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: {option} '~voxaug_no_such_user/x': the home folder of "
                                     "'~voxaug_no_such_user' cannot be found"), result.output


@pytest.mark.parametrize("option", ["noise_dir", "rir_dir"])
def test_a_noise_or_rir_file_under_1000_hz_is_refused_naming_it_and_its_rate_as_a_clip_is(tmp_path, option):
    """A clip under 1 kHz is refused as too low for speech, but a noise or RIR file was taken: resampled to the
    speech's 16 kHz, an 800 Hz noise adds nothing above 400 Hz and an RIR that narrow low-passes the voice away."""
    folder = tmp_path / "sounds"
    folder.mkdir()
    decay = np.exp(-np.arange(400) / 60.0).astype(np.float32) * np.random.default_rng(0).standard_normal(400)
    soundfile.write(folder / "low.wav", decay.astype(np.float32), 800, subtype="FLOAT")
    label = "--noise-dir" if option == "noise_dir" else "--rir-dir"
    with pytest.raises(VoxaugError) as refused:
        WaveAugmentation(**{option: str(folder)})
    assert str(refused.value) == f"{folder / 'low.wav'}: {label}: sample rate 800 Hz is under 1000 Hz, too low for speech"


@pytest.mark.parametrize("option", ["noise_dir", "rir_dir"])
def test_an_m4a_noise_or_rir_file_is_refused_naming_it_not_left_out_without_a_word(tmp_path, option):
    """An .m4a (an .ogg, before libsndfile's Ogg was read) beside .wav noises was left out of the chain without a
    word, as a clip's used to be; the original of a .wav converted from it, beside it, is no file of its own, and an
    .ogg is a noise of its own."""
    from voxaug.runtime.frontend import audio_suffixes

    folder = tmp_path / "sounds"
    folder.mkdir()
    decay = np.exp(-np.arange(800) / 120.0).astype(np.float32) * np.random.default_rng(0).standard_normal(800)
    soundfile.write(folder / "room.wav", decay.astype(np.float32), 16000, subtype="FLOAT")
    (folder / "room.mp3").write_bytes(b"ID3 the original of room.wav")
    assert WaveAugmentation(**{option: str(folder)})
    soundfile.write(folder / "hall.ogg", decay.astype(np.float32), 16000, format="OGG", subtype="VORBIS")
    assert getattr(WaveAugmentation(**{option: str(folder)}), f"_{option[:-4]}_files") == [folder / "hall.ogg",
                                                                                          folder / "room.wav"]
    (folder / "cellar.m4a").write_bytes(b"not read")
    label = "--noise-dir" if option == "noise_dir" else "--rir-dir"
    with pytest.raises(VoxaugError) as refused:
        WaveAugmentation(**{option: str(folder)})
    assert str(refused.value) == (f"{folder / 'cellar.m4a'}: {label}: unsupported audio format '.m4a'; accepted: "
                                  f"{', '.join(audio_suffixes())}")


@pytest.mark.parametrize("option", ["noise_dir", "rir_dir"])
def test_a_noise_or_rir_mp3_holding_no_mpeg_audio_is_refused_with_the_reason_a_clip_gets(tmp_path, option):
    """libsndfile refuses such an MP3 as a file that "does not exist or is not a regular file": a clip is refused with
    the true reason, and --noise-dir and --rir-dir passed libsndfile's on about a file that is there."""
    from voxaug.runtime.frontend import audio_suffixes

    if ".mp3" not in audio_suffixes():
        pytest.skip("the installed libsndfile decodes no MP3")
    folder = tmp_path / "sounds"
    folder.mkdir()
    (folder / "junk.mp3").write_bytes(b"not MPEG audio, but named .mp3\n" * 100)
    label = "--noise-dir" if option == "noise_dir" else "--rir-dir"
    with pytest.raises(VoxaugError) as refused:
        WaveAugmentation(**{option: str(folder)})
    assert str(refused.value) == (f"{folder / 'junk.mp3'}: {label}: not a readable audio file (no audio stream found "
                                  "in it)")


def test_a_noise_that_rirs_noises_noise_list_names_is_refused_as_an_rir_naming_it(tmp_path):
    """RIRS_NOISES/real_rirs_isotropic_noises holds isotropic noises beside its RIRs, told apart only by its
    ``rir_list`` and ``noise_list``: ``--rir-dir`` on it convolved every example with minutes of noise as if a room,
    smearing it into noise at a hundred times a real RIR's cost."""
    folder = tmp_path / "RIRS_NOISES" / "real_rirs_isotropic_noises"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(6)
    decay = (np.exp(-np.arange(800) / 120.0) * rng.standard_normal(800)).astype(np.float32)
    rir = folder / "RVB2014_type1_rir_largeroom1_far_angla.wav"
    soundfile.write(rir, decay, 16000, subtype="FLOAT")
    corpus_folder = "RIRS_NOISES/real_rirs_isotropic_noises"
    (folder / "rir_list").write_text(f"--rir-id large --room-id room1 {corpus_folder}/{rir.name}\n")
    assert WaveAugmentation(rir_dir=str(folder))
    noise = folder / "RVB2014_type1_noise_largeroom1_1.wav"
    soundfile.write(noise, rng.normal(0, 0.1, 32000).astype(np.float32), 16000, subtype="FLOAT")
    (folder / "noise_list").write_text("--noise-id 1 --noise-type isotropic --bg-fg-type background "
                                       f"--room-linkage large {corpus_folder}/{noise.name}\n")
    assert WaveAugmentation(noise_dir=str(folder))
    with pytest.raises(VoxaugError) as refused:
        WaveAugmentation(rir_dir=str(folder.parent))
    assert str(refused.value) == (f"{noise}: --rir-dir: {folder / 'noise_list'} names it a noise, not an "
                                  "impulse response; give --rir-dir a folder of RIRs only (such as "
                                  "RIRS_NOISES/simulated_rirs)")


def test_the_first_channel_impulse_response_keeps_the_tail_when_asked_as_audiomentations_does(tmp_path):
    """``FirstChannelImpulseResponse`` re-implements ``ApplyImpulseResponse.apply`` and cut every output to the
    input's length even when built with ``leave_length_unchanged=False``, an option it inherits and accepts."""
    from voxaug.augment.impulse import FirstChannelImpulseResponse

    rng = np.random.default_rng(8)
    ir = (np.exp(-np.arange(900) / 150.0) * rng.standard_normal(900)).astype(np.float32)
    waveform = rng.normal(0, 0.1, 4000).astype(np.float32)
    expected = reverberated_by_audiomentations(tmp_path, ir, 16000, waveform, leave_length_unchanged=False)
    ours = FirstChannelImpulseResponse(ir_path=str(tmp_path / "mono" / "ir.wav"), p=1.0, leave_length_unchanged=False)
    out = ours(samples=waveform, sample_rate=16000)
    assert out.shape == (4000 + 900 - 1,)
    assert out.tobytes() == expected.tobytes()


def test_a_rir_rewritten_in_place_is_read_again_by_the_next_chain(tmp_path):
    """The first channels are cached per process, beyond one chain (audiomentations' cache was the chain's own): a
    RIR folder regenerated between two trainings in one process was checked anew but convolved as it was before."""
    folder = tmp_path / "rir"
    folder.mkdir()
    rng = np.random.default_rng(9)
    waveform = rng.normal(0, 0.1, 8000).astype(np.float32)
    for taps in (400, 1200):
        ir = (np.exp(-np.arange(taps) / 100.0) * rng.standard_normal(taps)).astype(np.float32)
        soundfile.write(folder / "room.wav", ir, 16000, subtype="FLOAT")
        wave = WaveAugmentation(snr_p=0.0, gain_p=0.0, rir_dir=str(folder), rir_p=1.0)
        expected = reverberated_by_audiomentations(tmp_path, ir, 16000, waveform)
        assert wave.apply(waveform, 16000, seed=1).tobytes() == expected.tobytes()


def test_noise_at_other_rates_is_said_once_not_per_file_and_worker(corpus, tmp_path):
    """audiomentations resamples a noise file at another rate on every draw and warned once per file in every
    data-loader worker (6 warnings of 2 lines for these 3 files and 2 workers); training says it in one line instead.
    Run as the command is, in a process of its own: pytest records the warnings a forked worker would print."""
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(1)
    for index, rate in enumerate((44100, 44100, 8000, 16000)):
        soundfile.write(noise / f"n{index}.wav", rng.normal(0, 0.1, rate).astype(np.float32), rate)
    command = [sys.executable, "-m", "voxaug", "train", str(corpus / "wav"), "--out", str(tmp_path / "run"), "-q",
               "--augment", "wave", "--noise-dir", str(noise), "--noise-p", "1", "--workers", "2", "--steps", "4",
               "--eval-every", "4", "--batch", "8", "--segment", "48", "--n-mels", "32", "--d-model", "32",
               "--layers", "1", "--heads", "2", "--warmup", "0", "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("had to be resampled") == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "--noise-dir" in line]
    assert warned == [f"warning: {noise}: --noise-dir: 3 of 4 noise files are not at the audio's 16000 Hz (1 at 8000 "
                      "Hz, 2 at 44100 Hz); every excerpt drawn from them is resampled, several times the cost of "
                      "reading it; resample the folder to 16000 Hz once to avoid that"], result.stderr


def test_a_relative_noise_dir_at_the_audios_rate_leaves_shown_warnings_shown_once(tmp_path, monkeypatch):
    """audiomentations draws a noise file by its absolute path: rates keyed by a relative ``--noise-dir``'s paths
    missed every lookup, so every draw, even at the audio's rate, reset which warnings the process had shown and a
    genuine warning (an excerpt too silent to add) came again on every draw instead of once."""
    monkeypatch.chdir(tmp_path)
    Path("noise").mkdir()
    tail_silent = np.concatenate([np.random.default_rng(0).normal(0, 0.1, 3200), np.zeros(28800)]).astype(np.float32)
    soundfile.write("noise/quiet_tail.wav", tail_silent, 16000)
    wave = WaveAugmentation(snr_p=0.0, gain_p=0.0, noise_dir="noise", noise_p=1.0)
    waveform = np.random.default_rng(1).normal(0, 0.1, 1600).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for seed in range(20):
            wave.apply(waveform, 16000, seed=seed)
    assert [str(w.message) for w in caught if "too silent" in str(w.message)] == [
        f"The file {tmp_path / 'noise' / 'quiet_tail.wav'} is too silent to be added as noise. Returning the input "
        "unchanged."]
