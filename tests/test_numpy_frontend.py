"""The torch-free front end: numpy log-mel equal to torchaudio's, and audio reading with the same checks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from voxaug.audio import read_audio as torch_read_audio
from voxaug.errors import VoxaugError
from voxaug.features import FrontendConfig, log_mel as torch_log_mel
from voxaug.runtime.frontend import FrontendSettings, log_mel, read_audio

TOLERANCE = 1e-4  # max abs difference in log-mel (the bar)


@pytest.fixture(scope="module")
def wavs(tiny_synth: Path) -> list[Path]:
    found = sorted(tiny_synth.rglob("*.wav"))
    assert len(found) >= 10
    return found


def worst_difference(paths: list[Path], config: FrontendConfig) -> float:
    settings = FrontendSettings.from_dict(config.to_dict())
    worst = 0.0
    for path in paths:
        waveform = read_audio(path, config.sample_rate)
        expected = torch_log_mel(torch.from_numpy(waveform), config).numpy()
        found = log_mel(waveform, settings)
        assert found.shape == expected.shape and found.dtype == np.float32
        worst = max(worst, float(np.abs(found - expected).max()))
    return worst


def test_numpy_log_mel_matches_torchaudio_on_wav_files(wavs):
    assert worst_difference(wavs, FrontendConfig()) <= TOLERANCE


def test_numpy_log_mel_matches_torchaudio_with_other_settings(wavs):
    config = FrontendConfig(n_mels=64, win_ms=32.0, hop_ms=12.0, n_fft=1024, f_min=0.0, f_max=8000.0, log_floor=1e-8)
    assert worst_difference(wavs[:4], config) <= TOLERANCE


def test_settings_mirror_the_checkpoint_front_end():
    assert FrontendConfig is FrontendSettings  # one definition for torch and the runtime
    config = FrontendConfig(n_mels=64, hop_ms=12.0)
    settings = FrontendSettings.from_dict(config.to_dict())
    assert settings.to_dict() == config.to_dict()
    assert (settings.win_length, settings.hop_length) == (config.win_length, config.hop_length)
    with pytest.raises(VoxaugError, match="unknown settings"):
        FrontendSettings.from_dict({**config.to_dict(), "dither": 0.1})
    with pytest.raises(VoxaugError, match="n_fft"):
        FrontendSettings(win_ms=50.0, n_fft=512)


@pytest.mark.parametrize("setting, message", [
    ({"n_mels": 40.0}, "n_mels must be an integer, got 40.0"),
    ({"n_fft": 512.5}, "n_fft must be an integer, got 512.5"),
    ({"sample_rate": "16k"}, "sample_rate must be an integer, got '16k'"),
    ({"n_mels": True}, "n_mels must be an integer, got True"),
    ({"hop_ms": "10"}, "hop_ms must be a finite number, got '10'"),
    ({"hop_ms": 0.01}, "hop_ms 0.01 is under one sample at 16000 Hz"),
    ({"sample_rate": 10**400}, "sample_rate is an integer beyond a float's range"),
    ({"win_ms": 10**400}, "win_ms is an integer beyond a float's range"),
])
def test_settings_of_the_wrong_type_or_under_one_sample_are_refused(setting, message):
    """Settings read from a TOML file or a checkpoint may be of any type; a hop under one sample rounds to 0."""
    with pytest.raises(VoxaugError, match=f"^front end: {re.escape(message)}$"):
        FrontendSettings.from_dict(setting)
    assert FrontendSettings(win_ms=25, hop_ms=10).hop_length == 160  # whole numbers are numbers too


def test_read_audio_gives_the_waveform_voxaug_audio_gives(wavs):
    expected = torch_read_audio(wavs[0], 16000).numpy()
    np.testing.assert_array_equal(read_audio(wavs[0], 16000), expected)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_files_at_other_rates_are_resampled_as_torchaudio_resamples_them(tmp_path, wavs, rate):
    clip = tmp_path / f"clip-{rate}.wav"
    sf.write(clip, torchaudio.functional.resample(torch_read_audio(wavs[0], 16000), 16000, rate).numpy(), rate)
    expected = torch_read_audio(clip, 16000)
    found = read_audio(clip, 16000)
    assert found.shape == tuple(expected.shape)
    assert np.abs(found - expected.numpy()).max() <= 1e-6
    assert np.abs(log_mel(found, FrontendSettings()) - torch_log_mel(expected).numpy()).max() <= TOLERANCE


def test_read_audio_refuses_bad_files_in_one_line_naming_them(tmp_path, wavs):
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([read_audio(wavs[0], 16000)] * 2, axis=1), 16000)
    assert read_audio(stereo, 16000).shape == read_audio(wavs[0], 16000).shape
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 16000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"not audio at all")
    m4a = tmp_path / "clip.m4a"
    m4a.write_bytes(b"not read by libsndfile")
    cases = {silent: "silent", empty: "empty", garbage: "not a readable audio file",
             tmp_path / "missing.wav": "not found", m4a: "unsupported audio format"}
    for path, problem in cases.items():
        with pytest.raises(VoxaugError) as caught:
            read_audio(path, 16000)
        message = str(caught.value)
        assert message.startswith(str(path)) and problem in message and "\n" not in message, message


def test_a_clip_resampled_from_44_1_khz_has_torchaudios_length(tmp_path):
    """torchaudio takes the output length's ceiling in float32: for this 4.1 s clip 65559 samples, where the
    exact ceiling is 65560. One sample more moves the last frame's reflect padding, and its log-mel by 0.39."""
    clip = tmp_path / "clip-44k.wav"
    sf.write(clip, np.random.default_rng(0).standard_normal(180697).astype(np.float32) * 0.1, 44100, subtype="FLOAT")
    expected = torch_read_audio(clip, 16000)
    found = read_audio(clip, 16000)
    assert found.shape == tuple(expected.shape) == (65559,)
    assert np.abs(log_mel(found, FrontendSettings()) - torch_log_mel(expected).numpy()).max() <= TOLERANCE
