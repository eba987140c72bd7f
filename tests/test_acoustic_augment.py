"""The acoustic augmentations (channel, reverb, noise), speed perturbation as new speakers, and the margin warm-up."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import straight_and_resumed, tiny_config
from voxaug.augment import AdditiveNoise, ChannelColour, Reverb, SpeedPerturb, TrainBatch, build_pipeline
from voxaug.augment.base import real_frames
from voxaug.augment.channel import DB_TO_LOG_POWER
from voxaug.augment.speed import band_positions
from voxaug.checkpoint import load_checkpoint, load_model
from voxaug.cli.main import app
from voxaug.errors import VoxaugError
from voxaug.safeio import atomic_torch_save
from voxaug.train import Trainer, margin_at

runner = CliRunner()


def speech_like(lengths: list[int], bands: int = 40, seed: int = 0) -> TrainBatch:
    """Log-mel-like features (natural-log power around -4), zero in padding; labels 0..B-1."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    features = torch.randn(len(lengths), max(lengths), bands, generator=g) * 2 - 4
    features = features * real_frames(lengths_t, max(lengths)).unsqueeze(2)
    return TrainBatch.from_labels(features, lengths_t, torch.arange(len(lengths)))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def power(batch: TrainBatch) -> torch.Tensor:
    """(B, T, F) linear power on real frames, 0 in padding."""
    real = real_frames(batch.lengths, batch.features.shape[1]).unsqueeze(2)
    return torch.exp(batch.features) * real


# ---- channel -------------------------------------------------------------------------------------------


def test_channel_adds_one_smooth_curve_per_example_within_its_bounds():
    batch = speech_like([80, 50, 20])
    out = ChannelColour(p=1.0, terms=3, max_db=3.0, gain_db=6.0)(batch, gen(1))
    shift = out.features - batch.features  # (B, T, F)
    for i, length in enumerate([80, 50, 20]):
        curve = shift[i, :length]
        assert torch.allclose(curve, curve[0].expand_as(curve), atol=1e-5), "the same curve in every frame"
        assert float(curve[0].abs().max()) <= (3 * 3.0 + 6.0) * DB_TO_LOG_POWER + 1e-5
        assert torch.all(shift[i, length:] == 0)
    assert not torch.allclose(shift[0, 0], shift[1, 0]), "each example draws its own channel"


def test_the_default_input_normalisation_removes_exactly_what_channel_adds():
    from voxaug.augment.pipeline import DEFAULT_AUGMENT
    from voxaug.model import ModelConfig, utterance_mean_normalise

    batch = speech_like([80, 50, 20])
    coloured = ChannelColour(p=1.0, terms=3, max_db=3.0, gain_db=6.0)(batch, gen(1))
    assert not torch.allclose(coloured.features, batch.features)
    assert torch.allclose(utterance_mean_normalise(coloured.features, coloured.lengths),
                          utterance_mean_normalise(batch.features, batch.lengths), atol=1e-5)
    assert ModelConfig().input_norm == "mean" and "channel" not in DEFAULT_AUGMENT.split(",")


def test_channel_with_p_zero_is_the_identity():
    batch = speech_like([30, 10])
    assert torch.equal(ChannelColour(p=0.0)(batch, gen()).features, batch.features)


# ---- reverb --------------------------------------------------------------------------------------------


def test_reverb_moves_energy_later_and_never_creates_it():
    batch = speech_like([120, 70, 33], seed=2)
    out = Reverb(p=1.0, min_rt60=0.3, max_rt60=0.9, min_drr_db=-5.0, max_drr_db=5.0)(batch, gen(3))
    before, after = power(batch), power(out)
    assert torch.all(after.sum(dim=(1, 2)) <= before.sum(dim=(1, 2)) * (1 + 1e-5)), "total energy up to its decay"
    running_max = torch.cummax(before, dim=1).values
    assert torch.all(after <= running_max * (1 + 1e-5)), "a frame is a weighted average of the frames up to it"
    assert torch.all(out.features[~real_frames(out.lengths, 120)] == 0)


def test_reverb_tail_decays_at_the_drawn_rt60():
    """One loud frame in silence: the following frames decay by about 60 dB per RT60, never rising."""
    features = torch.full((1, 100, 4), -20.0)
    features[0, 10] = 0.0
    batch = TrainBatch.from_labels(features, torch.tensor([100]), torch.tensor([0]))
    out = Reverb(p=1.0, min_rt60=0.5, max_rt60=0.5, min_drr_db=0.0, max_drr_db=0.0)(batch, gen())
    tail = out.features[0, 11:60, 0]
    assert torch.all(tail[1:] <= tail[:-1] + 1e-5)
    drop_db = float(tail[0] - tail[40]) / DB_TO_LOG_POWER  # 40 frames = 0.4 s
    assert drop_db == pytest.approx(60 * 0.4 / 0.5, abs=1.0)


def test_reverb_with_p_zero_is_the_identity():
    batch = speech_like([30, 10])
    assert torch.equal(Reverb(p=0.0)(batch, gen()).features, batch.features)


# ---- noise ---------------------------------------------------------------------------------------------


def test_noise_only_adds_power_at_the_drawn_snr():
    batch = speech_like([90, 60, 25], seed=4)
    out = AdditiveNoise(p=1.0, min_snr_db=10.0, max_snr_db=10.0)(batch, gen(5))
    before, after = power(batch), power(out)
    assert torch.all(after >= before * (1 - 1e-5)), "noise only adds power"
    added = (after - before).sum(dim=(1, 2)) / before.sum(dim=(1, 2))
    assert torch.allclose(added, torch.full_like(added, 0.1), rtol=1e-3), "10 dB below the utterance's own power"
    assert torch.all(out.features[~real_frames(out.lengths, 90)] == 0)


def test_noise_is_stationary_and_coloured():
    batch = speech_like([64, 64], seed=6)
    out = AdditiveNoise(p=1.0, min_snr_db=0.0, max_snr_db=0.0, max_tilt_db=12.0)(batch, gen(7))
    added = power(out) - power(batch)  # (B, T, F)
    per_frame = added / added[:, :1]
    assert torch.allclose(per_frame, torch.ones_like(per_frame), rtol=1e-2), "the same spectrum in every frame"
    tilt_db = (torch.log(added[:, 0, -1] / added[:, 0, 0]) / DB_TO_LOG_POWER).abs()
    assert torch.all(tilt_db <= 12.0 + 1e-3) and float(tilt_db.max()) > 0.1


def test_noise_from_a_folder_of_feature_files(tmp_path):
    folder = tmp_path / "noises"
    folder.mkdir()
    for index in range(2):
        atomic_torch_save(folder / f"n{index}.pt", torch.randn(50, 40) - 3)
    batch = speech_like([80, 40], seed=8)
    out = AdditiveNoise(p=1.0, min_snr_db=5.0, max_snr_db=5.0, noise_dir=str(folder))(batch, gen(9))
    added = (power(out) - power(batch)).sum(dim=(1, 2)) / power(batch).sum(dim=(1, 2))
    assert torch.allclose(added, torch.full_like(added, 10 ** -0.5), rtol=1e-3)
    with pytest.raises(VoxaugError, match="40 mel bands"):
        AdditiveNoise(noise_dir=str(folder))(speech_like([30], bands=24), gen())


@pytest.mark.parametrize("content, needle", [(b"not a tensor", "n0.pt"), (None, "holds no noise feature files")])
def test_noise_folder_problems_name_the_file(tmp_path, content, needle):
    folder = tmp_path / "noises"
    folder.mkdir()
    if content is not None:
        (folder / "n0.pt").write_bytes(content)
    with pytest.raises(VoxaugError, match=needle):
        AdditiveNoise(noise_dir=str(folder))


# ---- speed ---------------------------------------------------------------------------------------------


def test_speed_relabels_perturbed_examples_as_new_speakers_and_rescales_time():
    speed = SpeedPerturb()
    speed.bind(10)
    batch = speech_like([100] * 24, seed=10)
    batch.labels[:] = 3
    out = speed(batch, gen(11))
    copies = out.labels[:, 0] // 10
    assert set(copies.tolist()) == {0, 1, 2} and torch.all(out.labels[:, 0] % 10 == 3)
    expected = {0: 100, 1: 100, 2: 91}  # 0.9 is cut at the batch's 100 frames; 1.1 ends at 1 + 99 // 1.1
    for copy, length in zip(copies.tolist(), out.lengths.tolist()):
        assert length == expected[copy]
    unchanged = copies == 0
    assert torch.allclose(out.features[unchanged], batch.features[unchanged], atol=1e-5)
    assert speed.label_copies == 3 and build_pipeline("speed,specaug").label_copies == 3


def test_speed_warps_the_mel_axis_towards_higher_bands_when_faster():
    faster, slower = band_positions(40, 1.1), band_positions(40, 0.9)
    assert torch.all(faster[5:] < torch.arange(5, 40).float()), "band m reads a lower input band at speed 1.1"
    assert torch.all(slower[:-5] > torch.arange(0, 35).float())


def test_speed_needs_the_speaker_count():
    with pytest.raises(VoxaugError, match="number of speakers"):
        SpeedPerturb()(speech_like([20]), gen())


@pytest.fixture(scope="module")
def speed_run(tiny_synth, tmp_path_factory):
    run = tmp_path_factory.mktemp("speed") / "run"
    config = tiny_config(train={"steps": 40, "eval_every": 20}, augment={"names": ["speed"]})
    Trainer(config, tiny_synth, run, progress=False).fit()
    return run


def test_speed_triples_the_head_but_answers_only_original_speakers(speed_run, tiny_synth, tmp_path):
    state = load_checkpoint(speed_run / "best.pt")
    speakers = len(state["speakers"])
    assert state["config"]["model"]["num_classes"] == 3 * speakers
    assert state["class_speakers"] == [c % speakers for c in range(3 * speakers)]
    loaded = load_model(speed_run / "best.pt")
    features = torch.randn(3, 80, 40) - 4
    _, logits = loaded.model(features, torch.tensor([80, 60, 40]))
    assert logits.shape == (3, speakers)
    out = tmp_path / "submission.csv"
    result = runner.invoke(app, ["predict", str(tiny_synth), "--ckpt", str(speed_run / "best.pt"), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    answers = {row["Category"] for row in csv.DictReader(out.open())}
    assert answers <= set(state["speakers"])
    index = tmp_path / "spk.faiss"
    assert runner.invoke(app, ["embed", "--ckpt", str(speed_run / "best.pt"), str(tiny_synth), "--out",
                               str(tmp_path / "emb"), "--index", str(index), "-q"]).exit_code == 0
    clip = next((tiny_synth / "unseen" / "test").rglob("*.pt"))
    identified = runner.invoke(app, ["identify", "--index", str(index), "--json", str(clip)])
    assert identified.exit_code == 0, identified.output
    row = json.loads(identified.output.splitlines()[0])
    assert row["softmax"]["speaker"] in state["speakers"]


def test_a_checkpoint_without_the_class_mapping_still_loads(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    state.pop("class_speakers", None)
    state["config"]["model"].pop("num_speakers", None)
    old = tmp_path / "old.pt"
    atomic_torch_save(old, state)
    loaded = load_model(old)
    assert loaded.config.model.speakers == len(loaded.speakers) == loaded.config.model.num_classes


def test_a_tampered_class_mapping_is_refused(speed_run, tmp_path):
    state = load_checkpoint(speed_run / "best.pt")
    state["class_speakers"] = list(reversed(state["class_speakers"]))
    bad = tmp_path / "bad.pt"
    atomic_torch_save(bad, state)
    with pytest.raises(VoxaugError, match="class_speakers"):
        load_model(bad)


# ---- margin warm-up, determinism and exact resume -------------------------------------------------------


def test_margin_grows_from_zero_over_the_warmup():
    config = tiny_config(train={"margin_warmup": 100}, margin=0.2)
    assert margin_at(0, config) == 0.0 and margin_at(50, config) == pytest.approx(0.1)
    assert margin_at(100, config) == margin_at(5000, config) == pytest.approx(0.2)
    assert margin_at(0, tiny_config(margin=0.2)) == pytest.approx(0.2)


ACOUSTIC = ["speed", "reverb", "noise", "channel"]


def test_acoustic_augmentations_resume_exactly(tiny_synth, tmp_path, monkeypatch):
    def config():
        return tiny_config(train={"steps": 30, "eval_every": 15, "margin_warmup": 20}, augment={"names": ACOUSTIC})

    straight, resumed = straight_and_resumed(config, tiny_synth, tmp_path, monkeypatch, stop_at=22)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


# ---- bad option values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, needle",
    [
        (["--augment", "channel", "--channel-db", "-1"], "channel-db"),
        (["--augment", "reverb", "--reverb-p", "1.5"], "--reverb-p (reverb p)"),
        (["--augment", "noise", "--noise-p", "2"], "noise-p"),
        (["--augment", "noise", "--noise-dir", "/no/such/noise"], "/no/such/noise"),
        (["--augment", "noise,wave", "--noise-dir", "/tmp"], "both 'noise' and 'wave'"),
        (["--margin-warmup", "-5"], "margin-warmup"),
        (["--weight-decay", "-0.1"], "--weight-decay"),
    ],
)
def test_bad_values_are_refused_in_one_line_before_data_is_read(tmp_path, arguments, needle):
    result = runner.invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"), *arguments])
    text = result.output + (getattr(result, "stderr", "") or "")
    assert result.exit_code == 2, text
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in text
    assert "no-such-data" not in text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("params, needle", [
    ({"reverb": {"min_rt60": 0.9, "max_rt60": 0.2}}, "exceeds"),
    ({"noise": {"min_snr_db": "loud"}}, "loud"),
    ({"channel": {"terms": 0}}, "terms"),
    ({"speed": {"factors": [1.0]}}, "other than 1"),
    ({"speed": {"factors": []}}, "non-empty"),
])
def test_bad_strengths_in_a_config_table_are_refused(params, needle):
    with pytest.raises(VoxaugError, match=needle):
        build_pipeline(list(params), params)


@pytest.mark.parametrize("augmentation", [Reverb(p=1.0), AdditiveNoise(p=1.0)])
def test_power_domain_augmentations_do_not_overflow_on_large_log_values(augmentation):
    """Features on another log scale (dB-like values near 100) stay finite: power is taken relative to the peak."""
    batch = speech_like([40, 25], seed=12)
    loud = TrainBatch(batch.features * 25 + 60 * real_frames(batch.lengths, 40).unsqueeze(2), batch.lengths,
                      batch.labels, batch.weights)
    out = augmentation(loud, gen(13))
    assert torch.isfinite(out.features).all()
    assert torch.all(out.features[~real_frames(out.lengths, 40)] == 0)


@pytest.mark.parametrize("offset", [100.0, -150.0])
def test_noise_files_on_another_log_scale_still_add_noise_at_the_drawn_snr(tmp_path, offset):
    """Noise features near 100 (dB-like) overflowed exp() to inf and made every noisy cell NaN; near -150 they
    underflowed to zero power and no noise was added at all. The SNR sets the level, so the scale must not matter."""
    folder = tmp_path / "noises"
    folder.mkdir()
    atomic_torch_save(folder / "n0.pt", torch.randn(50, 40, generator=gen(14)) * 2 + offset)
    batch = speech_like([80, 40], seed=15)
    out = AdditiveNoise(p=1.0, min_snr_db=5.0, max_snr_db=5.0, noise_dir=str(folder))(batch, gen(16))
    assert torch.isfinite(out.features).all()
    added = (power(out) - power(batch)).sum(dim=(1, 2)) / power(batch).sum(dim=(1, 2))
    assert torch.allclose(added, torch.full_like(added, 10 ** -0.5), rtol=1e-3)


def test_speed_keeps_an_all_padding_row_empty_instead_of_giving_it_a_negative_length():
    """floor((0 - 1) / 0.9) + 1 is -1: a slowed empty row came out with length -1."""
    speed = SpeedPerturb(factors=[0.9])
    speed.bind(10)
    batch = speech_like([30] + [0] * 15, seed=17)
    out = speed(batch, gen(18))
    assert out.labels[1:].ge(10).any(), "some empty rows were slowed"
    assert out.lengths.tolist() == [int(out.lengths[0])] + [0] * 15
    assert torch.all(out.features[1:] == 0)


@pytest.mark.parametrize("snr_db", [5.0, -10.0])
def test_a_quiet_stretch_of_a_wide_range_noise_file_still_adds_noise_at_the_drawn_snr(tmp_path, snr_db):
    """Noise power was taken relative to the whole file's peak: a stretch 120 dB below it (a pause in dB-like
    features) underflowed to zero power, so no noise was added at 5 dB, and at -10 dB the zero was scaled to inf and
    every noisy cell came out NaN."""
    folder = tmp_path / "noises"
    folder.mkdir()
    features = torch.full((400, 40), -120.0)
    features[:20] = 0.0
    atomic_torch_save(folder / "n0.pt", features)
    batch = speech_like([50] * 16, seed=19)
    out = AdditiveNoise(p=1.0, min_snr_db=snr_db, max_snr_db=snr_db, noise_dir=str(folder))(batch, gen(20))
    assert torch.isfinite(out.features).all()
    added = (power(out) - power(batch)).sum(dim=(1, 2)) / power(batch).sum(dim=(1, 2))
    assert torch.allclose(added, torch.full_like(added, 10 ** (-snr_db / 10)), rtol=1e-3)


def test_a_noise_feature_file_with_no_mel_bands_is_refused_naming_it(tmp_path):
    """A (frames, 0) tensor passed the shape check and then failed in ``max()`` with torch's own RuntimeError, which
    the CLI reported as unexpected (exit 3)."""
    folder = tmp_path / "noises"
    folder.mkdir()
    atomic_torch_save(folder / "n0.pt", torch.zeros(50, 0))
    with pytest.raises(VoxaugError, match=r"n0\.pt: --noise-dir: expected a float tensor of log-mel features"):
        AdditiveNoise(noise_dir=str(folder))


def test_noise_feature_files_are_found_whatever_the_case_of_their_suffix(tmp_path):
    """Clip folders and the wave augmentation's noise folders take any case of a suffix; `noise` took only ``.pt``:
    a folder of ``.PT`` files was refused as holding none, and a ``.PT`` beside ``.pt`` files was silently left out."""
    folder = tmp_path / "noises"
    folder.mkdir()
    atomic_torch_save(folder / "a.pt", torch.randn(50, 40))
    atomic_torch_save(folder / "B.PT", torch.randn(30, 40))
    assert sorted(int(n.shape[0]) for n in AdditiveNoise(noise_dir=str(folder))._noises) == [30, 50]


def test_a_symbolic_link_to_nothing_in_a_noise_feature_folder_is_refused_naming_it(tmp_path):
    """It was left out without a word (a clip's is refused), so its noise was silently never added."""
    folder = tmp_path / "noises"
    folder.mkdir()
    atomic_torch_save(folder / "a.pt", torch.randn(50, 40))
    (folder / "gone.pt").symlink_to(tmp_path / "unmounted" / "gone.pt")
    with pytest.raises(VoxaugError, match=r"gone\.pt: --noise-dir: a symbolic link that points to nothing"):
        AdditiveNoise(noise_dir=str(folder))


def test_reverb_with_an_rt60_far_below_the_frame_hop_stays_finite():
    """With hop_ms 100 and an RT60 of 10 ms, exp(-13.8 * 0.1 / 0.01) underflowed every tail tap to 0 and normalising
    them was 0/0: every reverberant cell came out NaN (training stopped: the loss was NaN for 20 steps in a row)."""
    batch = speech_like([30, 20], seed=21)
    out = Reverb(p=1.0, min_rt60=0.01, max_rt60=0.01, min_drr_db=0.0, max_drr_db=0.0, hop_ms=100.0)(batch, gen(22))
    assert torch.isfinite(out.features).all()
    real = real_frames(batch.lengths, 30).unsqueeze(2)
    later = power(out)[:, 1:] - (power(batch)[:, 1:] + power(batch)[:, :-1]) / 2  # half direct, half one frame late
    assert torch.allclose(later * real[:, 1:], torch.zeros_like(later), atol=1e-6 * float(power(batch).max()))


def test_reverb_counts_its_rt60_in_the_training_front_ends_hop(tmp_path):
    """With a [frontend] hop_ms of 20 the kernel still took frames as 10 ms apart: every RT60 rang twice as long."""
    from voxaug.synth import SynthConfig, generate

    data = tmp_path / "data"
    generate(data, SynthConfig(speakers=2, utterances=4, unseen=0, min_seconds=0.5, max_seconds=0.6, seed=1,
                               write_training_audio=True), progress=False)
    config = tiny_config(augment={"names": ["reverb"], "reverb": {"p": 1.0, "min_rt60": 0.5, "max_rt60": 0.5,
                                                                   "min_drr_db": 0.0, "max_drr_db": 0.0}})
    config.frontend = {"hop_ms": 20.0}
    reverb = Trainer(config, data / "wav", tmp_path / "run", progress=False).pipeline.augmentations[0]
    assert reverb.hop_ms == 20.0
    features = torch.full((1, 100, 4), -20.0)
    features[0, 10] = 0.0
    out = reverb(TrainBatch.from_labels(features, torch.tensor([100]), torch.tensor([0])), gen())
    tail = out.features[0, 11:60, 0]
    drop_db = float(tail[0] - tail[20]) / DB_TO_LOG_POWER  # 20 frames of 20 ms = 0.4 s
    assert drop_db == pytest.approx(60 * 0.4 / 0.5, abs=1.0)
    given = Reverb(hop_ms=12.5)
    given.bind_hop(20.0)
    assert given.hop_ms == 12.5, "a hop given for features the front end does not describe is kept"


def test_speed_warps_the_mel_axis_of_the_training_front_ends_range(tmp_path):
    """At --sample-rate 8000 (mel bands up to 4 kHz) the warp took band centres from the default 20-7600 Hz range:
    a 1 kHz tone at speed 1.1 landed 0.33 bands short of where a 1.1 kHz tone lies (80% of the shift)."""
    import math

    from voxaug.features import log_mel
    from voxaug.synth import SynthConfig, generate

    data = tmp_path / "data"
    generate(data, SynthConfig(speakers=2, utterances=4, unseen=0, min_seconds=0.5, max_seconds=0.6, seed=1,
                               write_training_audio=True), progress=False)
    config = tiny_config(augment={"names": ["speed"], "speed": {"factors": [1.1]}})
    config.frontend = {"sample_rate": 8000, "f_max": 4000.0}
    trainer = Trainer(config, data / "wav", tmp_path / "run", progress=False)
    speed = trainer.pipeline.augmentations[0]
    seconds = torch.arange(8000) / 8000

    def tone(hz: float) -> torch.Tensor:
        return log_mel(0.3 * torch.sin(2 * math.pi * hz * seconds), trainer.frontend)

    def centre_band(features: torch.Tensor) -> float:
        weights = torch.exp(features).mean(dim=0)
        return float((weights / weights.sum() * torch.arange(features.shape[1])).sum())

    original = tone(1000.0)
    batch = TrainBatch.from_labels(original.expand(8, -1, -1).clone(), torch.full((8,), original.shape[0]),
                                   torch.zeros(8, dtype=torch.long))
    out = speed(batch, gen(3))
    faster = int((out.labels[:, 0] != 0).nonzero()[0])  # relabelled: played at 1.1
    warped = out.features[faster, : int(out.lengths[faster])]
    assert centre_band(warped) == pytest.approx(centre_band(tone(1100.0)), abs=0.1)
