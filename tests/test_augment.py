"""Batch augmentations: invariants for everything registered, then each augmentation's own promises."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import tiny_config
from voxaug.augment import AUGMENTATIONS, TrainBatch, build_pipeline, total_loss
from voxaug.augment.base import real_frames
from voxaug.augment.crop import RandomCrop
from voxaug.augment.mixup import Mixup, beta_sample
from voxaug.augment.pipeline import DEFAULT_AUGMENT, parse_names, resolve_names
from voxaug.augment.specaug import SpecAugment
from voxaug.config import resolve_config
from voxaug.errors import VoxaugError
from voxaug.inference import run_model
from voxaug.model import ModelConfig, build_model
from voxaug.train import Trainer

ALL = sorted(AUGMENTATIONS)


def padded_batch(lengths: list[int], bands: int = 40, seed: int = 0) -> TrainBatch:
    """Random features with zero padding past each length; labels 0..B-1."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    features = torch.randn(len(lengths), max(lengths), bands, generator=g) + 3.0  # (B, T, F), mean far from 0
    features = features * real_frames(lengths_t, max(lengths)).unsqueeze(2)
    return TrainBatch.from_labels(features, lengths_t, torch.arange(len(lengths)))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def augmentation(name: str):
    """The registered augmentation with default settings, told a speaker count (``speed`` needs one)."""
    made = AUGMENTATIONS[name]()
    made.bind(64)
    return made


def pipeline(names):
    built = build_pipeline(names)
    built.bind(64)
    return built


# ---- every registered augmentation ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_keeps_batch_structure_and_padding(name):
    batch = padded_batch([90, 60, 30, 12, 90, 45])
    out = augmentation(name)(batch, gen())
    size, frames, bands = out.features.shape
    assert size == 6 and bands == 40 and frames <= 90
    assert out.lengths.shape == (6,) and int(out.lengths.max()) <= frames and int(out.lengths.min()) >= 1
    assert out.labels.shape == out.weights.shape and out.labels.shape[0] == 6
    assert torch.allclose(out.weights.sum(dim=1), torch.ones(6))
    padding = ~real_frames(out.lengths, frames)
    assert torch.all(out.features[padding] == 0), "padding must stay padding"
    assert torch.isfinite(out.features).all()


@pytest.mark.parametrize("name", ALL)
def test_seeded_by_the_generator_only(name):
    batch = padded_batch([80, 50, 20, 64])
    augment = augmentation(name)
    torch.manual_seed(1)
    first = augment(batch, gen(3))
    torch.manual_seed(2)
    second = augment(batch, gen(3))
    assert torch.equal(first.features, second.features) and torch.equal(first.lengths, second.lengths)
    assert torch.equal(first.weights, second.weights)


@pytest.mark.parametrize("name", ALL)
def test_repr_names_its_parameters(name):
    text = repr(AUGMENTATIONS[name]())
    assert text.startswith(type(AUGMENTATIONS[name]()).__name__ + "(") and "=" in text


@pytest.mark.parametrize("name", ALL)
def test_has_name_and_order(name):
    cls = AUGMENTATIONS[name]
    assert cls.name == name and isinstance(cls.order, int)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=8),
    bands=st.integers(min_value=1, max_value=48),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_full_pipeline_on_random_shapes(lengths, bands, seed):
    batch = padded_batch(lengths, bands, seed)
    out = pipeline(ALL)(batch, gen(seed))
    size, frames, out_bands = out.features.shape
    assert size == len(lengths) and out_bands == bands
    assert torch.all(out.lengths <= frames) and torch.all(out.lengths >= 1)
    assert torch.all(out.features[~real_frames(out.lengths, frames)] == 0)
    assert torch.allclose(out.weights.sum(dim=1), torch.ones(size))
    assert torch.isfinite(out.features).all()


# ---- the pipeline and the registry ------------------------------------------------------------------


def test_none_is_the_identity():
    batch = padded_batch([40, 20])
    assert parse_names("none") == [] and parse_names([]) == []
    out = build_pipeline("none")(batch, gen())
    assert out is batch


def test_fixed_order_whatever_the_order_of_names():
    assert build_pipeline("mixup,specaug,crop").names == ["crop", "specaug", "mixup"]
    assert build_pipeline(["specaug", "mixup"]).names == build_pipeline("mixup,specaug").names


@pytest.mark.parametrize("spec", ["specaug,bogus", "bogus"])
def test_registry_refuses_unknown_names_listing_accepted(spec):
    with pytest.raises(VoxaugError, match="bogus") as error:
        build_pipeline(spec)
    for name in ALL + ["none"]:
        assert name in str(error.value)


def test_none_cannot_be_combined_and_names_cannot_repeat():
    with pytest.raises(VoxaugError, match="none"):
        parse_names("none,mixup")
    with pytest.raises(VoxaugError, match="twice"):
        parse_names("mixup,mixup")


@pytest.mark.parametrize("spec", ["", " ", ",,", "specaug,", "specaug,,mixup", ["", "mixup"], [""]])
def test_an_empty_name_is_refused_not_read_as_none(spec):
    with pytest.raises(VoxaugError, match="empty name"):
        parse_names(spec)
    assert parse_names(" specaug , mixup ") == ["specaug", "mixup"] and parse_names([]) == []


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"mixup": {"alpha": -1}}, "-1"),
        ({"mixup": {"alpha": 0}}, "alpha"),
        ({"specaug": {"freq_width": -2}}, "-2"),
        ({"specaug": {"time_width": 2.5}}, "2.5"),
        ({"specaug": {"value": "median"}}, "median"),
        ({"crop": {"min_frames": 0}}, "crop-min"),
        ({"crop": {"min_frames": 300, "max_frames": 100}}, "300"),
        ({"specaug": {"width": 3}}, "width"),
        ({"bogus": {}}, "bogus"),
    ],
)
def test_bad_strengths_are_refused_naming_the_value(params, needle):
    with pytest.raises(VoxaugError, match=needle):
        build_pipeline(ALL, params)


def test_default_is_used_when_no_names_are_given():
    assert resolve_names({}) == parse_names(DEFAULT_AUGMENT)
    assert resolve_names({"names": []}) == []


@pytest.mark.parametrize("names", [[1], 5, ["specaug", None]])
def test_names_that_are_not_a_list_of_strings_are_refused(names):
    """A TOML ``[augment] names = [1]`` or ``names = 5`` is a clean error, not a crash."""
    with pytest.raises(VoxaugError, match=r"\[augment\] names must be a list of augmentation names, got "):
        resolve_names({"names": names})


def test_toml_table_and_command_line_merge(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[augment]\nnames = ["specaug"]\n[augment.specaug]\nfreq_width = 5\ntime_masks = 3\n')
    config = resolve_config("cpu", toml, augment_overrides={"specaug": {"freq_width": 7}})
    assert config.augment == {"names": ["specaug"], "specaug": {"freq_width": 7, "time_masks": 3}}
    assert build_pipeline(config.augment["names"], config.augment).augmentations[0].time_masks == 3


# ---- specaug ------------------------------------------------------------------------------------------


def test_specaug_masks_stay_inside_real_frames_and_differ_per_example():
    lengths = [100, 100, 100, 100, 37, 12]
    batch = padded_batch(lengths)
    out = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=30, value=-50.0)(batch, gen(1))
    masked = out.features == -50.0  # (B, T, F)
    real = real_frames(batch.lengths, 100).unsqueeze(2)
    assert masked.any() and not (masked & ~real).any()
    patterns = [masked[i, :100].flatten() for i in range(4)]
    assert len({tuple(p.tolist()) for p in patterns}) == 4, "each example draws its own masks"
    assert torch.equal(out.features[~masked], batch.features[~masked])


def test_specaug_default_value_is_the_utterance_mean_over_real_frames():
    batch = padded_batch([50, 20])
    out = SpecAugment(freq_masks=1, freq_width=40, time_masks=0)(batch, gen(0))
    changed = out.features != batch.features
    for i, length in enumerate([50, 20]):
        mean = batch.features[i, :length].mean()
        assert changed[i].any()
        assert torch.allclose(out.features[i][changed[i]], mean.expand(int(changed[i].sum())))


def test_specaug_time_width_fraction_scales_with_length():
    batch = padded_batch([200, 20])
    for seed in range(20):
        out = SpecAugment(freq_masks=0, time_masks=1, time_width=0.25, value=-50.0)(batch, gen(seed))
        widths = (out.features[:, :, 0] == -50.0).sum(dim=1)
        assert widths[0] <= 50 and widths[1] <= 5


# ---- mixup --------------------------------------------------------------------------------------------


def test_beta_sampler_matches_beta_moments_and_is_seeded():
    for alpha in (0.2, 0.4, 2.0):
        draws = beta_sample(alpha, 100_000, gen(0), torch.device("cpu"))
        assert abs(float(draws.mean()) - 0.5) < 0.01
        assert abs(float(draws.var()) - 1 / (4 * (2 * alpha + 1))) < 0.01
        assert ((draws >= 0) & (draws <= 1)).all()
    assert torch.equal(beta_sample(0.3, 10, gen(5), torch.device("cpu")), beta_sample(0.3, 10, gen(5), torch.device("cpu")))


def test_mixup_mixes_over_the_union_and_weights_sum_to_one():
    batch = padded_batch([60, 30, 45, 10])
    out = Mixup(alpha=0.4)(batch, gen(2))
    assert out.labels.shape == (4, 2) and torch.allclose(out.weights.sum(1), torch.ones(4))
    partner = out.labels[:, 1]
    assert torch.equal(out.lengths, torch.maximum(batch.lengths, batch.lengths[partner]))
    lam = out.weights[:, 0]
    for i in range(4):
        j, both = int(partner[i]), int(min(batch.lengths[i], batch.lengths[int(partner[i])]))
        expected = lam[i] * batch.features[i, :both] + (1 - lam[i]) * batch.features[j, :both]
        assert torch.allclose(out.features[i, :both], expected, atol=1e-5)


@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_mixup_takes_the_partners_frames_where_only_the_partner_has_any_even_at_lambda_one_or_zero(lam, monkeypatch):
    import voxaug.augment.mixup as mixup

    monkeypatch.setattr(mixup, "beta_sample", lambda alpha, count, generator, device: torch.full((count,), lam))
    batch = padded_batch([60, 30, 45, 10])
    out = Mixup(alpha=0.3)(batch, gen(2))
    partner = out.labels[:, 1]
    assert not torch.equal(partner, torch.arange(4)), "the permutation must pair some examples with others"
    for i in range(4):
        j = int(partner[i])
        own, theirs = int(batch.lengths[i]), int(batch.lengths[j])
        both = min(own, theirs)
        expected = lam * batch.features[i, :both] + (1 - lam) * batch.features[j, :both]
        assert torch.allclose(out.features[i, :both], expected)
        longer = batch.features[j] if theirs > own else batch.features[i]  # a frame only one covers is kept
        assert torch.equal(out.features[i, both:max(own, theirs)], longer[both:max(own, theirs)])


def test_mixed_loss_is_the_weighted_sum_of_per_target_losses():
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, num_heads=2, ffn_dim=32, num_layers=1, kernel_size=3,
                                    embedding_dim=16, num_classes=6, margin=0.2))
    out = Mixup(alpha=0.3)(padded_batch([40, 30, 20, 40, 25, 33]), gen(4))
    _, logits = model(out.features, out.lengths)
    lam = out.weights[:, 0]
    expected = (lam * model.loss(logits, out.labels[:, 0]) + (1 - lam) * model.loss(logits, out.labels[:, 1])).mean()
    assert torch.allclose(total_loss(model, logits, out), expected)
    dominant = torch.where(lam >= 0.5, out.labels[:, 0], out.labels[:, 1])
    assert torch.equal(out.dominant_labels(), dominant)


def test_specaug_refuses_infinite_or_nan_strengths():
    for settings_ in ({"time_width": float("inf")}, {"time_width": float("nan")}, {"value": float("nan")},
                      {"value": float("inf")}):
        with pytest.raises(VoxaugError, match="specaug"):
            SpecAugment(**settings_)


def test_speed_perturbation_keeps_the_features_dtype():
    from voxaug.augment.speed import SpeedPerturb

    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        batch = padded_batch([40, 25, 33])
        batch = TrainBatch(batch.features.to(dtype), batch.lengths, batch.labels, batch.weights.to(dtype))
        speed = SpeedPerturb()
        speed.bind(speakers=3)
        out = speed(batch, gen(3))
        assert out.features.dtype == dtype and torch.isfinite(out.features.float()).all()


# ---- crop ---------------------------------------------------------------------------------------------


def test_crop_takes_one_length_per_batch_and_an_offset_per_example():
    features = torch.arange(120, dtype=torch.float32).view(1, 120, 1).expand(8, 120, 2).clone() + 1  # frame index + 1
    batch = TrainBatch.from_labels(features, torch.full((8,), 120), torch.arange(8))
    out = RandomCrop(min_frames=40, max_frames=60)(batch, gen(0))
    frames = out.features.shape[1]
    assert 40 <= frames <= 60 and torch.all(out.lengths == frames)
    starts = out.features[:, 0, 0]
    assert len(set(starts.tolist())) > 1, "offsets differ across examples"
    assert torch.equal(out.features[:, :, 0] - starts.unsqueeze(1), torch.arange(frames).float().expand(8, frames))


def test_crop_keeps_short_examples_whole_and_never_exceeds_the_batch():
    batch = padded_batch([50, 10])
    out = RandomCrop(min_frames=30, max_frames=300)(batch, gen(0))
    assert out.features.shape[1] <= 50 and int(out.lengths[1]) == 10
    assert torch.equal(out.features[1, :10], batch.features[1, :10])


# ---- training only ------------------------------------------------------------------------------------


def test_augmentations_never_touch_evaluation(tiny_synth, tmp_path):
    """Evaluation and run_model give the same numbers under any pipeline, and never call it."""
    plain = Trainer(tiny_config(augment={"names": []}), tiny_synth, tmp_path / "a", progress=False)
    augmented = Trainer(tiny_config(augment={"names": ["crop", "specaug", "mixup"]}), tiny_synth, tmp_path / "b", progress=False)
    assert augmented.pipeline.names == ["crop", "specaug", "mixup"]

    def refuse(*args, **kwargs):
        raise AssertionError("augmentation ran outside training")

    augmented.pipeline = refuse
    augmented.started = 0.0
    indices = augmented.val_indices
    emb_a, logits_a = run_model(plain.model, plain.store, indices, plain.device)
    emb_b, logits_b = run_model(augmented.model, augmented.store, indices, augmented.device)
    assert torch.equal(emb_a, emb_b) and torch.equal(logits_a, logits_b)
    augmented.run_dir.mkdir(parents=True)
    row = augmented.evaluate(None)
    assert row["val_acc"] is not None


def test_trainer_step_uses_the_pipeline_and_counts_dominant_labels(tiny_synth, tmp_path):
    trainer = Trainer(tiny_config(augment={"names": ["mixup", "specaug"]}), tiny_synth, tmp_path / "r", progress=False)
    calls = []
    original = trainer.pipeline

    def spy(batch, generator):
        calls.append(batch.features.shape)
        return original(batch, generator)

    trainer.pipeline = spy
    result = trainer.train_step()
    assert calls and result is not None and 0.0 <= result[1] <= 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_runs_on_the_batch_device_with_a_device_generator(name):
    batch = padded_batch([90, 60, 30])
    device = torch.device("cuda")
    batch = TrainBatch(batch.features.to(device), batch.lengths.to(device), batch.labels.to(device), batch.weights.to(device))
    out = augmentation(name)(batch, torch.Generator(device=device).manual_seed(0))
    assert out.features.device.type == "cuda" and out.weights.device.type == "cuda"
    assert torch.all(out.features[~real_frames(out.lengths, out.features.shape[1])] == 0)


def test_specaug_mean_fill_does_not_overflow_in_half_precision():
    """The utterance mean was summed in the features' dtype: 300 frames x 80 bands of -4 is -96000, past float16's
    65504, so every masked cell became -inf."""
    lengths = torch.tensor([300, 300])
    features = torch.full((2, 300, 80), -4.0, dtype=torch.float16)
    out = SpecAugment(freq_masks=2, time_masks=2)(TrainBatch.from_labels(features, lengths, torch.arange(2)), gen(4))
    assert out.features.dtype == torch.float16
    assert torch.equal(out.features, features), "the mean of a constant utterance is that constant"


def test_crop_draws_every_length_from_min_to_max_both_included():
    batch = padded_batch([90, 90])
    drawn = {RandomCrop(min_frames=40, max_frames=43)(batch, gen(seed)).features.shape[1] for seed in range(64)}
    assert drawn == {40, 41, 42, 43}


def test_crop_starts_at_every_offset_up_to_the_last():
    """An example of 30 frames cropped to 20 can start at any of 11 offsets, the last (10) included, or its last
    frame would never be trained on."""
    features = torch.arange(1, 31, dtype=torch.float32).view(1, 30, 1).expand(256, 30, 1).clone()  # frame index + 1
    batch = TrainBatch.from_labels(features, torch.full((256,), 30), torch.arange(256))
    out = RandomCrop(min_frames=20, max_frames=20)(batch, gen(0))
    assert out.features.shape[1] == 20
    assert set(out.features[:, 0, 0].tolist()) == set(range(1, 12))
