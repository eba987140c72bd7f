"""Metamorphic properties of embedding and identification: a clip's embedding does not depend on its batch, its
padding or the order of the clips; an index answers the same whatever the order speakers were enrolled in, after an
append in two steps as after one enrolment, after an enrol and remove as if never enrolled, and flat as HNSW."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from voxaug.embeddings.extract import embed_tensors
from voxaug.embeddings.index import SpeakerIndex
from voxaug.embeddings.speaker_index import ScoringOptions, build_speaker_index
from voxaug.model import ModelConfig, build_model

KERNEL = 15  # the cpu preset's depthwise convolution
SMALL = dict(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, kernel_size=KERNEL, embedding_dim=24, num_classes=5)
SCORINGS = ("none", "asnorm")


def clustered(speakers: int, per: int, seed: int, dim: int = 16) -> tuple[np.ndarray, list[str]]:
    """Unit vectors around ``speakers`` random centres, labelled ``s<seed>-<i>``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((speakers, dim))
    vectors = np.repeat(centres, per, axis=0) + 0.4 * rng.standard_normal((speakers * per, dim))
    labels = [f"s{seed}-{i}" for i in range(speakers) for _ in range(per)]
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def trained_index(hnsw: bool = False, per: str = "speaker") -> SpeakerIndex:
    """A PLDA index of 8 training speakers with an AS-norm cohort, as `embed --index` builds one."""
    vectors, labels = clustered(8, 12, seed=0)
    return build_speaker_index(vectors, labels, None, per, hnsw, {}, {}, 0, 0.25,
                               ScoringOptions("plda", lda_dim=5, cohort_top_k=4))


def newcomers() -> dict[str, np.ndarray]:
    """Enrolment embeddings of 5 speakers the index was not built from."""
    vectors, labels = clustered(5, 4, seed=1)
    names = np.array(labels)
    return {name: vectors[names == name] for name in sorted(set(labels))}


def queries() -> np.ndarray:
    return np.concatenate([clustered(5, 2, seed=1)[0], clustered(3, 2, seed=2)[0]])


def answers(index: SpeakerIndex, score_norm: str, top_k: int = 4) -> list[list[tuple[str, float]]]:
    return index.search(queries(), top_k, score_norm=score_norm)


def assert_same_answers(first: list, second: list, atol: float = 1e-4) -> None:
    """The same speakers in the same order, with scores equal within ``atol``."""
    for ours, theirs in zip(first, second, strict=True):
        assert [name for name, _ in ours] == [name for name, _ in theirs]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=atol)


@pytest.mark.parametrize("length", [1, 7, KERNEL - 1, KERNEL, 64, 300])
@pytest.mark.parametrize("kind", ["conformer", "transformer-mean"])
def test_an_embedding_is_the_same_alone_and_padded_beside_a_much_longer_clip(kind, length):
    """Padding must not reach real frames through attention or the depthwise convolution (clips shorter than its
    kernel too)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, **SMALL)).eval()
    clip, long = torch.randn(length, 40), torch.randn(1000, 40)
    batch = torch.full((2, 1000, 40), 50.0)  # garbage in the padding
    batch[0, :length], batch[1] = clip, long
    with torch.no_grad():
        alone, alone_logits = model(clip[None], torch.tensor([length]))
        padded, padded_logits = model(batch, torch.tensor([length, 1000]))
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_logits[0], alone_logits[0], atol=1e-4, rtol=1e-5)


def test_embeddings_do_not_depend_on_batch_size_frame_budget_or_clip_order():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL))
    lengths = [12, 300, 40, 15, 64, 9, 128, 250, 33, 71]
    clips = [torch.randn(n, 40) for n in lengths]
    cpu = torch.device("cpu")
    one_by_one = embed_tensors(model, clips, cpu, max_batch=1).embeddings
    for options in (dict(max_batch=64, max_frames=100_000), dict(max_batch=3), dict(max_frames=500)):
        np.testing.assert_allclose(embed_tensors(model, clips, cpu, **options).embeddings, one_by_one, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(clips))
    shuffled = embed_tensors(model, [clips[i] for i in order], cpu).embeddings
    np.testing.assert_allclose(shuffled, one_by_one[order], atol=1e-5)


@pytest.mark.parametrize("hnsw", [False, True])
def test_identification_does_not_depend_on_the_order_speakers_were_enrolled_in(hnsw):
    enrolments = newcomers()
    forward, backward = trained_index(hnsw), trained_index(hnsw)
    for name in enrolments:
        forward.add(name, enrolments[name])
    for name in reversed(enrolments):
        backward.add(name, enrolments[name])
    for score_norm in SCORINGS:
        assert_same_answers(answers(forward, score_norm), answers(backward, score_norm), atol=1e-5)


def test_an_append_in_two_steps_equals_one_enrolment_of_both_sets():
    name, clips = next(iter(newcomers().items()))
    once, twice = trained_index(), trained_index()
    once.add(name, clips, digests=["a", "b", "c", "d"])
    twice.add(name, clips[:1], digests=["a"])
    twice.add(name, clips[1:], append=True, digests=["b", "c", "d"])
    assert twice.counts == once.counts and twice.clip_digests == once.clip_digests
    assert twice.mean_norms[name] == pytest.approx(once.mean_norms[name], rel=1e-5)
    np.testing.assert_allclose(twice.cohort_stats[name], once.cohort_stats[name], rtol=1e-4)
    for score_norm in SCORINGS:
        assert_same_answers(answers(twice, score_norm), answers(once, score_norm))


@pytest.mark.parametrize("per", ["speaker", "utterance"])
def test_a_removal_records_the_speakers_a_calibration_without_a_record_was_picked_against(per):
    """A calibration written before 2026-11-29 has no ``enrolled`` record: the first change records the speakers as
    they were before it, so the change is seen; an index without a calibrated threshold gets no record."""
    calibrated, plain = trained_index(per=per), trained_index(per=per)
    calibrated.calibration = {"value": 1.0, "score_norm": "none"}
    before = calibrated.enrolled_record()
    assert calibrated.calibration_outdated() is None
    for index in (calibrated, plain):
        index.remove(index.speakers[0])
    assert calibrated.calibration["enrolled"] == before and calibrated.calibration_outdated() is not None
    assert plain.calibration == {}


@pytest.mark.parametrize("per", ["speaker", "utterance"])
def test_enrol_then_remove_leaves_the_index_as_if_never_enrolled(tmp_path, per):
    """Vectors, counts, back end, cohort statistics and the calibration's enrolled record all come back."""
    never = trained_index(per=per)
    never.calibration = {"value": 1.0, "score_norm": "none", "enrolled": never.enrolled_record()}
    removed = copy.deepcopy(never)
    removed.faiss_index()  # built before the enrolment: it grows in place, then is rebuilt after the removal
    name, clips = next(iter(newcomers().items()))
    removed.add(name, clips, digests=["a", "b", "c", "d"])
    assert removed.calibration_outdated() is not None
    removed.remove(name)
    assert removed.calibration_outdated() is None
    for score_norm in SCORINGS[: 2 if per == "speaker" else 1]:
        assert answers(removed, score_norm) == answers(never, score_norm)
    sidecars = []
    for tag, index in (("never", never), ("removed", removed)):
        index.save(tmp_path / f"{tag}.faiss")
        sidecars.append(json.loads((tmp_path / f"{tag}.faiss.json").read_text()))
    assert sidecars[1] == sidecars[0]


@pytest.mark.parametrize("per", ["speaker", "utterance"])
def test_a_small_hnsw_index_answers_as_the_flat_one(per):
    flat, hnsw = trained_index(per=per), trained_index(hnsw=True, per=per)
    hnsw.faiss_index()  # newcomers grow the graph in place, as enroll does to a loaded index
    for name, clips in newcomers().items():
        flat.add(name, clips)
        hnsw.add(name, clips)
    for score_norm in SCORINGS[: 2 if per == "speaker" else 1]:
        assert_same_answers(answers(hnsw, score_norm), answers(flat, score_norm), atol=1e-6)
