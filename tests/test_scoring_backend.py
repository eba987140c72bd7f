"""The scoring back end, AS-norm, calibrated open-set thresholds, and the sidecar that carries them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import signal
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from voxaug.cli.main import app
from voxaug.data.split import speaker_codes, stratified_split
from voxaug.embeddings.backend import Cohort, ScoringBackend, as_norm
from voxaug.embeddings.calibration import calibrate, open_set_scores, threshold_at_far, unresolved_far
from voxaug.embeddings.index import SpeakerIndex, index_lock, sidecar_path
from voxaug.embeddings.evaluation import LabelledEmbeddings, score_pairs
from voxaug.embeddings.scoring import eer_and_min_dcf, sample_pairs
from voxaug.embeddings.speaker_index import ScoringOptions, build_speaker_index
from voxaug.errors import VoxaugError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def clustered(speakers: int = 8, per: int = 12, dim: int = 16, spread: float = 0.4, seed: int = 0):
    """Unit vectors around ``speakers`` random centres, with their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((speakers, dim))
    vectors = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((speakers * per, dim))
    labels = [f"s{i}" for i in range(speakers) for _ in range(per)]
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


# ---- AS-norm ---------------------------------------------------------------------------------------------


def test_as_norm_gives_the_textbook_value_on_a_hand_built_cohort():
    cohort = Cohort(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"], top_k=2)
    enrol = np.array([[0.8, 0.6, 0.0, 0.0]], dtype=np.float32)  # cohort scores 0.8, 0.6, 0, 0
    query = np.array([[0.0, 0.0, 0.6, 0.8]], dtype=np.float32)  # cohort scores 0, 0, 0.6, 0.8
    enrol_stats, query_stats = cohort.stats(enrol), cohort.stats(query)
    assert enrol_stats[0][0] == pytest.approx(0.7) and enrol_stats[1][0] == pytest.approx(0.1)
    assert query_stats[0][0] == pytest.approx(0.7) and query_stats[1][0] == pytest.approx(0.1)
    raw = float(enrol[0] @ query[0])  # 0.0
    normed = as_norm(np.array([[raw]]), query_stats, enrol_stats)[0, 0]
    assert normed == pytest.approx(0.5 * ((0.0 - 0.7) / 0.1 + (0.0 - 0.7) / 0.1))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 40), st.booleans())
def test_cohort_statistics_are_each_rows_own_top_k_mean_and_population_std(seed, top_k, tied):
    """Oracle: per row, drop the excluded speakers' entries, sort, keep the K highest (all of them when K is larger
    than what is left), and take their mean and standard deviation (ddof 0), duplicates and ties counted as entries."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(6, 30))
    vectors = rng.normal(size=(size, 4)).astype(np.float32)
    vectors[1:3] = vectors[0]  # duplicate cohort clips
    cohort = Cohort(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [f"s{i % 4}" for i in range(size)], top_k)
    scores = rng.integers(0, 3, (5, size)).astype(float) if tied else rng.normal(size=(5, size))
    exclude, also = [f"s{i}" for i in rng.integers(0, 5, 5)], [f"s{i}" for i in rng.integers(0, 5, 5)]
    mean, std = cohort.stats(np.zeros((5, 4)), exclude=exclude, also_exclude=also, scores=scores)
    for row in range(5):
        kept = [j for j, name in enumerate(cohort.labels) if name not in (exclude[row], also[row])]
        top = np.sort(scores[row, kept])[::-1][:top_k]
        assert mean[row] == pytest.approx(top.mean()) and std[row] == pytest.approx(max(top.std(), 1e-6))


def test_cohort_leaves_out_the_enrolled_speakers_own_entries():
    cohort = Cohort(np.eye(3, dtype=np.float32), ["a", "b", "c"], top_k=2)
    vector = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    assert cohort.stats(vector)[0][0] == pytest.approx(0.5)  # top-2 of (1, 0, 0)
    assert cohort.stats(vector, exclude=["a"])[0][0] == pytest.approx(0.0)  # top-2 of (0, 0)


def test_each_rows_cohort_statistics_are_its_own_whatever_else_is_in_the_batch():
    """A row's top-K is K of the entries left to it: a row that excludes a speaker owning most of the cohort
    takes fewer, and must not shrink the K of the rows scored beside it."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((11, 8)).astype(np.float32)
    cohort = Cohort(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), ["a"] * 8 + ["b", "c", "d"], top_k=5)
    queries = rng.standard_normal((2, 8)).astype(np.float32)
    together = cohort.stats(queries, exclude=["a", "b"])
    for row, name in enumerate(["a", "b"]):
        alone = cohort.stats(queries[row : row + 1], exclude=[name])
        assert together[0][row] == pytest.approx(alone[0][0]) and together[1][row] == pytest.approx(alone[1][0])
    scores = queries[1] @ cohort.vectors.T
    top = np.sort(scores[np.array(cohort.labels) != "b"])[::-1][:5]
    assert together[0][1] == pytest.approx(top.mean()) and together[1][1] == pytest.approx(top.std())
    left = queries[0] @ cohort.vectors[8:].T
    assert together[0][0] == pytest.approx(left.mean())  # "a" excluded: the 3 entries left, not 5


def test_asnorm_ranks_candidates_by_the_normalised_score():
    """A speaker every impostor scores high against loses its lead once AS-norm accounts for that."""
    cohort = Cohort(np.array([[1.0, 0.0, 0.0], [0.98, 0.2, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32) /
                    np.linalg.norm([[1.0, 0.0, 0.0], [0.98, 0.2, 0.0], [0.0, 0.0, 1.0]], axis=1, keepdims=True),
                    ["x", "y", "z"], top_k=2)
    index = SpeakerIndex(dim=3, cohort=cohort, score_norm="asnorm")
    index.add("hub", np.array([[1.0, 0.0, 0.0]]))  # close to most of the cohort
    index.add("loner", np.array([[0.0, 1.0, 0.0]]))
    query = np.array([[0.75, 0.66, 0.0]])
    assert index.search(query, 2, score_norm="none")[0][0][0] == "hub"
    assert index.search(query, 2)[0][0][0] == "loner"


@pytest.mark.parametrize("per", ["speaker", "utterance"])
@pytest.mark.parametrize("kind", ["none", "plda"])
def test_a_numpy_integer_top_k_searches_as_its_python_int_does(per, kind):
    """search() accepts numpy integers as --top-k (the Python API gets them from arrays); FAISS's search refused
    them with a TypeError traceback instead of answering."""
    vectors, labels = clustered(speakers=14, per=3)
    index = SpeakerIndex(dim=16, mode=per, backend=ScoringBackend.fit(kind, vectors, np.array(labels), lda_dim=8))
    for name in sorted(set(labels)):
        index.add(name, vectors[[i for i, label in enumerate(labels) if label == name]])
    for k in (3, 12):
        assert index.search(vectors[:2], np.int64(k)) == index.search(vectors[:2], k)
        assert index.search(vectors[:2], np.int32(k)) == index.search(vectors[:2], k)


# ---- back ends and the sidecar ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["none", "center", "lda", "plda"])
def test_backend_round_trips_through_the_sidecar(tmp_path, kind):
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "speaker", False, {"path": "m.pt", "sha256": "ab"}, {"n_mels": 40},
                                seed=0, val_fraction=0.25, options=ScoringOptions(kind, lda_dim=5, cohort_top_k=4))
    path = tmp_path / "spk.faiss"
    index.save(path)
    loaded = SpeakerIndex.load(path)
    assert loaded.backend.kind == kind and loaded.space_dim == (5 if kind in ("lda", "plda") else 16)
    assert loaded.score_norm == "none" and loaded.cohort is not None and set(loaded.cohort_stats) == set(labels)
    query = vectors[::7]
    for norm in ("none", "asnorm"):
        assert loaded.search(query, 3, score_norm=norm) == index.search(query, 3, score_norm=norm)
    assert np.allclose(loaded.to_space(query), index.to_space(query), atol=1e-6)


def test_training_speakers_are_enrolled_from_their_training_split_only():
    vectors, labels = clustered(speakers=4, per=8, dim=16)
    names = np.array(labels)
    train, held_out = stratified_split(np.unique(names, return_inverse=True)[1], 0.25, 0)
    vectors[held_out] = -vectors[held_out]  # held-out clips that would pull an entry the other way
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25,
                                ScoringOptions("none", cohort_top_k=4))
    for speaker in sorted(set(labels)):
        own = train[names[train] == speaker]
        assert index.counts[speaker] == len(own) < int((names == speaker).sum())
        mean = index.to_space(vectors[own]).mean(0)
        assert np.allclose(index.vectors[index.labels.index(speaker)], mean / np.linalg.norm(mean), atol=1e-5)
    assert index.cohort.source.startswith("validation split")


def test_the_index_splits_as_training_did_when_the_datasets_speaker_numbering_is_not_alphabetical():
    vectors, labels = clustered(speakers=6, per=10, dim=16)
    names = np.array(labels)
    order = sorted(set(labels), reverse=True)  # mapping.json numbers speakers in its own order, as the homework's does
    train, _ = stratified_split(speaker_codes(names, order), 0.2, 0)  # what the trainer, numbering by order, used
    alphabetical, _ = stratified_split(speaker_codes(names), 0.2, 0)
    assert set(train.tolist()) != set(alphabetical.tolist()), "the two numberings must split differently here"
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.2, ScoringOptions("none"), order)
    for speaker in order:
        own = train[names[train] == speaker]
        mean = vectors[own].mean(0)
        assert np.allclose(index.vectors[index.labels.index(speaker)], mean / np.linalg.norm(mean), atol=1e-5)


def test_lda_whitens_within_speaker_variation_and_helps_identification():
    vectors, labels = clustered(speakers=10, per=20, dim=24, spread=0.9, seed=1)
    names = np.array(labels)
    backend = ScoringBackend.fit("lda", vectors[::2], names[::2], lda_dim=9)
    assert backend.projection.shape == (24, 9)

    def accuracy(transform):
        train, test = transform(vectors[::2]), transform(vectors[1::2])
        centres = np.stack([train[names[::2] == s].mean(0) for s in sorted(set(labels))])
        return (np.array(sorted(set(labels)))[(test @ centres.T).argmax(1)] == names[1::2]).mean()

    assert accuracy(backend.apply) >= accuracy(lambda x: x)


@pytest.mark.parametrize("kind", ["lda", "plda"])
def test_training_embeddings_with_no_within_speaker_spread_are_refused_in_words(kind):
    """Each speaker's clips embedding identically (duplicate clips) leave LDA nothing to whiten by: scikit-learn's
    LinAlgError became one line that says what to pass instead."""
    vectors, labels = clustered(speakers=5, per=1, dim=16, spread=0.0, seed=0)
    with pytest.raises(VoxaugError, match=rf"--backend {kind}: .* vary too little within speakers .*--backend center"):
        ScoringBackend.fit(kind, np.repeat(vectors, 3, axis=0), np.repeat(np.array(labels), 3))


def test_a_query_that_skips_the_back_end_is_refused():
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25,
                                ScoringOptions("lda", lda_dim=5, cohort_top_k=4))
    already_projected = index.to_space(vectors[:2])  # what a caller that applied the back end itself would pass
    with pytest.raises(VoxaugError, match="applies its lda back end itself"):
        index.search(already_projected, 1)


def test_asnorm_on_an_utterance_index_says_why_rather_than_advising_a_rebuild_that_fails():
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "utterance", False, {}, {}, 0, 0.25, ScoringOptions("lda", lda_dim=5))
    with pytest.raises(VoxaugError, match=r"works on speaker indexes \(--per speaker\), not --per utterance"):
        index.check_asnorm()


@pytest.mark.parametrize("name", ["unknown", " s0", ""])
def test_a_training_speaker_that_enroll_would_refuse_is_refused_by_embed_index(name):
    vectors, labels = clustered()
    labels = [name if label == "s1" else label for label in labels]
    with pytest.raises(VoxaugError, match=f"--index: speaker name {re.escape(repr(name))}.*rename it in the dataset"):
        build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25, ScoringOptions("lda", lda_dim=5))


def narrower(rows: list[list[float]]) -> list[list[float]]:
    """Unit vectors one dimension short of ``rows``."""
    cut = np.array(rows)[:, :-1]
    return (cut / np.linalg.norm(cut, axis=1, keepdims=True)).tolist()


@pytest.mark.parametrize("edit, needle", [
    (lambda meta: meta["backend"].update(projection=[[1.0, 2.0]]), "projection"),
    (lambda meta: meta["backend"].update(kind="ivector"), "backend"),
    (lambda meta: meta["backend"].update(kind="plda"), "'plda' back end has the wrong arrays"),
    (lambda meta: meta.update(score_norm="znorm"), "score_norm"),
    (lambda meta: meta["cohort_stats"].pop("s0"), "cohort_stats"),
    (lambda meta: meta["cohort"].update(vectors="many"), "cohort"),
    (lambda meta: meta["cohort_stats"]["s0"].__setitem__(1, 0.0), "std > 0"),
    (lambda meta: meta["cohort_stats"]["s0"].__setitem__(0, float("nan")), "cohort_stats"),
    (lambda meta: meta["counts"].update(s0=0), "counts"),
    (lambda meta: meta["counts"].update(s0="4"), "counts"),
    (lambda meta: meta["mean_norms"].pop("s0"), "mean_norms"),
    (lambda meta: meta.pop("mean_norms"), "mean_norms"),
    (lambda meta: meta["checkpoint"].update(sha256=5), "checkpoint.sha256"),
    (lambda meta: meta["checkpoint"].update(source_sha256=["abc"]), "checkpoint.source_sha256"),
    (lambda meta: meta["cohort"].update(vectors=narrower(meta["cohort"]["vectors"])), "cohort vectors are 4-dimensional"),
    (lambda meta: meta["mean_norms"].update(s0=1e300), "mean_norms"),
    (lambda meta: meta["counts"].update(s0=10**400), "counts"),
    (lambda meta: meta["calibration"].update(value=float("nan")), "calibration 'value'"),
    (lambda meta: meta["calibration"].update(value=True), "calibration 'value'"),
    (lambda meta: meta["calibration"].update(cohort_top_k=1), "calibration 'cohort_top_k'"),
    (lambda meta: meta["calibration"].update(enrolled=[]), "calibration 'enrolled'"),
    (lambda meta: meta["calibration"].update(enrolled={"speakers": -1, "clips": 3, "sha256": "0" * 64}), "'enrolled'"),
    (lambda meta: meta["calibration"].update(enrolled={"speakers": 2, "clips": 3, "sha256": "xyz"}), "'enrolled'"),
    (lambda meta: meta["calibration"].update(enrolled={"speakers": 2, "sha256": "0" * 64}), "'enrolled'"),
    (lambda meta: meta.update(clip_digests={"nobody": ["0" * 16]}), "clip_digests"),
    (lambda meta: meta.update(clip_digests={"s0": ["0" * 16] * 13}), "clip_digests"),
    (lambda meta: meta.update(clip_digests={"s0": ["0" * 15]}), "clip_digests"),
    (lambda meta: meta.update(clip_digests=["0" * 16]), "clip_digests"),
])
def test_a_tampered_scoring_sidecar_is_refused_by_name(tmp_path, edit, needle):
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25,
                                ScoringOptions("lda", lda_dim=5, cohort_top_k=4))
    path = tmp_path / "spk.faiss"
    index.save(path)
    meta = json.loads(sidecar_path(path).read_text())
    edit(meta)
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(VoxaugError, match=needle) as error:
        SpeakerIndex.load(path)
    assert "spk.faiss.json" in str(error.value)


def test_a_version_1_index_still_loads_and_scores_plain_cosines(tmp_path):
    vectors, labels = clustered()
    index = SpeakerIndex(dim=16)
    for speaker in sorted(set(labels)):
        index.add(speaker, vectors[np.array(labels) == speaker])
    path = tmp_path / "old.faiss"
    index.save(path)
    meta = json.loads(sidecar_path(path).read_text())
    old = {key: meta[key] for key in ("format", "metric", "faiss", "per", "dimension", "labels", "counts",
                                      "mean_norms", "checkpoint", "frontend", "index_sha256")}
    sidecar_path(path).write_text(json.dumps({**old, "version": 1}))
    loaded = SpeakerIndex.load(path)
    assert loaded.backend.kind == "none" and loaded.score_norm == "none" and loaded.cohort is None
    top = loaded.search(vectors[:3], 2)
    expected = [sorted((vectors[i] @ loaded.vectors.T).tolist(), reverse=True)[:2] for i in range(3)]
    assert np.allclose([[score for _, score in row] for row in top], expected, atol=1e-5)
    with pytest.raises(VoxaugError, match="no AS-norm cohort"):
        loaded.search(vectors[:1], 1, score_norm="asnorm")


# ---- verification figures --------------------------------------------------------------------------------


def every_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: FAR and miss rate at every distinct score as a threshold (accept: score >= t), and accepting none."""
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
    far = np.array([(scores[~same] >= t).mean() for t in thresholds])
    miss = np.array([(scores[same] < t).mean() for t in thresholds])
    return thresholds, far, miss


def test_eer_is_read_where_false_alarms_and_misses_cross():
    scores = np.array([0.9, 0.35, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1])
    same = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    result = eer_and_min_dcf(scores, same)
    assert result["eer"] == pytest.approx(0.5) and result["eer_threshold"] == pytest.approx(0.6)  # FAR = FRR = 0.5


def test_when_only_accepting_nothing_keeps_the_far_the_threshold_is_finite():
    scores = np.array([0.2, 0.1, 0.9, 0.3, 0.25])
    same = np.array([1, 1, 0, 0, 0], dtype=bool)
    result = eer_and_min_dcf(scores, same, target_far=0.01)
    assert result["far_threshold"] > scores.max() and np.isfinite(result["far_threshold"])
    assert result["miss_at_far"] == 1.0 and "Infinity" not in json.dumps(result)


def test_the_far_threshold_is_the_lowest_within_the_target_when_scores_tie():
    scores = np.array([3, 2, 1, 0, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    same = np.arange(14) < 4
    result = eer_and_min_dcf(scores, same, target_far=0.25)
    assert result["far_threshold"] == 2.0 and result["miss_at_far"] == pytest.approx(0.5)  # FAR 0.2 there


@pytest.mark.parametrize("seed", range(4))
def test_eer_min_dcf_and_far_threshold_match_a_sweep_over_every_threshold(seed):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(2.0, 1.0, 40), rng.normal(0.0, 1.0, 400)]
    if seed % 2:
        scores = np.round(scores, 1)  # ties between same- and different-speaker trials
    same = np.r_[np.ones(40, bool), np.zeros(400, bool)]
    result = eer_and_min_dcf(scores, same, target_far=0.05)
    thresholds, far, miss = every_threshold(scores, same)
    gap = np.abs(far - miss)
    assert any(result["eer"] == pytest.approx(eer) for eer in ((far + miss) / 2)[gap == gap.min()])
    assert result["min_dcf"] == pytest.approx((0.01 * miss + 0.99 * far).min() / 0.01)
    within = far <= 0.05
    assert result["far_threshold"] == pytest.approx(thresholds[within][-1])  # the lowest threshold within the FAR
    assert result["miss_at_far"] == pytest.approx(miss[within].min())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.01, 0.1, 1 / 3, 0.58, 0.9]), st.integers(-8, 8))
def test_metrics_and_the_calibrated_threshold_match_a_sweep_on_ties_one_target_and_any_scale(seed, target_far, power):
    """Oracle on adversarial trials: a handful of them, one same-speaker trial or one different-speaker one, scores
    tied or all equal, at any scale. minDCF is the textbook minimum over every threshold, the FAR threshold the lowest
    within the target, and ``threshold_at_far`` (what calibration writes) accepts exactly the same trials."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 30))
    same = np.zeros(size, bool)
    same[rng.choice(size, int(rng.integers(1, size)), replace=False)] = True
    scores = rng.integers(0, int(rng.integers(1, 5)), size).astype(float) * 10.0**power
    if seed % 2:
        scores = rng.normal(size=size) * 10.0**power + same
    result = eer_and_min_dcf(scores, same, target_far=target_far)
    thresholds, far, miss = every_threshold(scores, same)
    assert result["min_dcf"] == pytest.approx((0.01 * miss + 0.99 * far).min() / 0.01)
    within = far <= target_far
    lowest = thresholds[within][-1]
    assert (scores >= result["far_threshold"]).sum() == (scores >= lowest).sum()
    assert result["miss_at_far"] == pytest.approx(miss[within][-1])
    calibrated = threshold_at_far(scores[~same], target_far, scores[same])
    assert (scores >= calibrated).sum() == (scores >= lowest).sum()
    at_eer = result["eer_threshold"]
    eer_far, eer_miss = (scores[~same] >= at_eer).mean(), (scores[same] < at_eer).mean()
    assert abs(eer_far - eer_miss) == pytest.approx(np.abs(far - miss).min())
    assert result["eer"] == pytest.approx((eer_far + eer_miss) / 2)


def test_sampled_pairs_hold_both_kinds_whatever_their_shares():
    same = np.array([True] * 90 + [False] * 10)  # one speaker's pairs dominate: the different ones are all kept
    rows = sample_pairs(same, 50, np.random.default_rng(0))
    assert len(rows) == len(set(rows)) == 50 and (~same[rows]).sum() == 10
    same = np.array([True] * 3 + [False] * 97)
    rows = sample_pairs(same, 5, np.random.default_rng(0))
    assert len(rows) == 5 and same[rows].sum() == 2
    assert list(sample_pairs(same, 100, np.random.default_rng(0))) == list(range(100))


def test_validation_against_training_pairs_keep_same_speaker_pairs_at_a_small_budget():
    """One validation clip per speaker: the pairs are validation x training, where 1 in 20 is same-speaker."""
    rng = np.random.default_rng(1)
    held_out = LabelledEmbeddings(rng.normal(size=(20, 8)).astype(np.float32), np.array([f"s{i}" for i in range(20)]))
    reference = LabelledEmbeddings(rng.normal(size=(40, 8)).astype(np.float32),
                                   np.array([f"s{i % 20}" for i in range(40)]))
    for max_pairs in (2, 5, 10):
        result = score_pairs(held_out, max_pairs, 0, reference)
        assert result["pairs"] == "validation x training" and result["trials"] == max_pairs


# ---- calibration -----------------------------------------------------------------------------------------


def test_threshold_at_far_accepts_at_most_that_share_of_impostors():
    impostor = np.linspace(0.0, 1.0, 1001)
    threshold = threshold_at_far(impostor, 0.01)
    assert (impostor >= threshold).mean() <= 0.01 and (impostor >= threshold - 0.002).mean() > 0.01


def test_the_threshold_clears_the_rejected_impostor_by_more_than_float_noise_and_counts_exactly():
    impostor, genuine = np.array([15.0, 14.0, 3.0, 2.0]), np.array([15.01, 16.0, 1.0, 0.5])
    threshold = threshold_at_far(impostor, 0.01, genuine)
    assert threshold == pytest.approx(15.0015)  # not one float step above 15, which a batch-vs-alone wobble crosses
    assert threshold_at_far(impostor, 0.01, np.array([15.001])) == pytest.approx(15.0005)  # half the gap
    tight = threshold_at_far(impostor, 0.01, np.array([15.0 + 1e-9]))  # a genuine score just above stays accepted
    assert 15.0 < tight <= 15.0 + 1e-9
    assert threshold_at_far(np.linspace(0.0, 1.0, 50), 0.58) < threshold_at_far(np.linspace(0.0, 1.0, 50), 0.57)
    assert (np.linspace(0.0, 1.0, 50) >= threshold_at_far(np.linspace(0.0, 1.0, 50), 0.58)).sum() == 29
    assert (np.linspace(0.0, 1.0, 50) >= threshold_at_far(np.linspace(0.0, 1.0, 50), 0.58 - 1e-11)).sum() == 28
    assert np.isfinite(threshold_at_far(np.array([3.0, -np.inf]), 0.5))
    for count in (10, 100, 1000):  # a target one float step below k / n allows k - 1, not k
        scores = np.arange(count, dtype=np.float64)
        for k in range(1, count + 1):
            target = float(np.nextafter(k / count, 0.0))
            assert (scores >= threshold_at_far(scores, target)).mean() <= target


@pytest.mark.parametrize("clips, target_far, unresolved", [(5, 0.01, True), (60, 0.01, True), (99, 0.01, True),
                                                            (100, 0.01, False), (19, 0.05, True), (20, 0.05, False),
                                                            (2, 0.5, False)])
def test_a_target_far_too_small_for_the_impostor_scores_is_said_with_their_count(clips, target_far, unresolved):
    """Below 1 / FAR impostor scores the target allows no false alarm: the threshold just clears the highest of them
    (as the demo's 60 clips at FAR 0.01 do), and that is said in one line rather than reported as a rate."""
    impostor = np.linspace(-1.0, 1.0, clips)
    genuine = impostor + 1.5
    record = calibrate({"genuine": genuine, "impostor": impostor, "top": genuine, "correct": np.ones(clips, bool)},
                       target_far, "none", "test")
    message = unresolved_far(record)
    assert (message is not None) == unresolved and record["clips"] == clips
    if unresolved:
        assert record["far"] == 0 and record["value"] > impostor.max() and "\n" not in message
        assert f"FAR {target_far:g} is picked from {clips} impostor scores" in message
        assert f"fewer than the {round(1 / target_far)} that FAR needs to allow one false alarm" in message
    with pytest.raises(VoxaugError, match="at least one impostor score"):
        threshold_at_far(np.zeros(0), target_far)


@pytest.mark.parametrize("target_far", [0.01, 0.05, 0.3, 1 / 3, 1e-9, 1e-25, 5e-324])
def test_the_count_of_impostor_scores_a_far_needs_is_the_fewest_that_allow_one_false_alarm(target_far):
    """Counting up from 1 / FAR took 283 million steps at FAR 1e-25 (where 1 / FAR is rounded), and 1 / FAR
    overflowed at 5e-324, a rate --target-far accepts: the warning's count is the fewest n with 1 / n <= FAR."""
    def hung(signum, frame):
        raise AssertionError(f"the count for FAR {target_far!r} still not found after 5 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        message = unresolved_far({"clips": 2, "target_far": target_far})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    needed = int(re.search(r"fewer than the (\d+) that FAR needs", message).group(1))
    assert 1 / needed <= target_far < 1 / (needed - 1)


def test_open_set_scores_and_calibration_record():
    vectors, labels = clustered(speakers=6, per=10, spread=0.3)
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.3,
                                ScoringOptions("center", cohort_top_k=4))
    scores = open_set_scores(index, vectors, labels, "asnorm")
    assert scores["correct"].mean() > 0.9 and (scores["genuine"] > scores["impostor"]).mean() > 0.9
    record = calibrate(scores, 0.05, "asnorm", "test")
    assert record["far"] <= 0.05 and 0 <= record["dir"] <= record["acceptance"] <= 1
    assert record["score_norm"] == "asnorm" and record["value"] == threshold_at_far(scores["impostor"], 0.05, scores["genuine"], scores["top"])
    with pytest.raises(VoxaugError, match="not enrolled"):
        open_set_scores(index, vectors[:1], ["stranger"], "none")


@pytest.mark.parametrize("kind", ["none", "plda"])
def test_utterance_index_calibration_predicts_what_identify_answers(kind):
    """By utterance, `identify` (default --top-k 5) answers the speaker most voted for among the 10 nearest
    utterances, with its best score: the calibration's top answer must be that one, however many speakers the
    index holds, and a clip's impostor score must be what `identify` answers once its speaker is removed."""
    vectors, labels = clustered(speakers=30, per=12, spread=0.9, seed=1)
    labels = np.array(labels)
    train = np.arange(len(labels)) % 12 < 8
    backend = ScoringBackend.fit(kind, vectors[train], labels[train], 8)

    def index_of(speakers: list[str]) -> SpeakerIndex:
        index = SpeakerIndex(dim=16, mode="utterance", backend=backend)
        for speaker in speakers:
            index.add(speaker, vectors[train & (labels == speaker)])
        return index

    index = index_of(sorted(set(labels)))
    queries, names = vectors[~train], labels[~train].tolist()
    scores = open_set_scores(index, queries, names, "none")
    answered = index.search(queries, 5)
    assert [ranked[0][0] == name for ranked, name in zip(answered, names)] == scores["correct"].tolist()
    assert np.array([ranked[0][1] for ranked in answered]) == pytest.approx(scores["top"])
    assert not scores["correct"].all()  # some clips are answered wrongly, so the ranking matters
    right = scores["correct"]
    assert np.array_equal(scores["genuine"][right], scores["top"][right])  # a right answer's score is the genuine one
    for row in range(0, len(names), 13):
        without = index_of(sorted(set(labels) - {names[row]}))
        assert scores["impostor"][row] == pytest.approx(without.search(queries[row : row + 1], 5)[0][0][1])
    for target_far in (0.1, 0.2, 0.3):
        record = calibrate(scores, target_far, "none", "test")
        assert record["acceptance"] == pytest.approx((scores["top"] >= record["value"]).mean())
        assert record["top1"] == pytest.approx(scores["correct"].mean())


def test_open_set_scores_take_a_speaker_name_in_either_unicode_spelling():
    """A clip's label from a folder made on macOS spells é as e and a combining accent (NFD); the index enrolled the
    speaker as typed (NFC). They are one speaker: its clips are scored, not refused as of a speaker never enrolled."""
    vectors, labels = clustered(speakers=4, per=8)
    typed = [f"José {label}" for label in labels]
    index = SpeakerIndex(dim=16)
    for speaker in sorted(set(typed)):
        index.add(speaker, vectors[[i for i, name in enumerate(typed) if name == speaker][:4]])
    from_folders = [unicodedata.normalize("NFD", name) for name in typed]
    assert from_folders != typed
    expected = open_set_scores(index, vectors, typed, "none")
    scores = open_set_scores(index, vectors, from_folders, "none")
    assert expected["correct"].mean() > 0.9
    for key in ("genuine", "impostor", "top", "correct"):
        assert np.array_equal(scores[key], expected[key]), key


def test_calibration_refuses_an_index_of_one_speaker():
    """With nobody else enrolled there is no impostor score, so no threshold can be picked."""
    vectors, labels = clustered(speakers=1, per=6)
    index = SpeakerIndex(dim=16)
    index.add("s0", vectors[:3])
    with pytest.raises(VoxaugError, match="at least two enrolled speakers"):
        open_set_scores(index, vectors[3:], labels[3:], "none")


@pytest.mark.parametrize("kind", ["lda", "plda"])
def test_calibrating_on_the_cohorts_own_clips_leaves_each_clips_speaker_out_of_its_cohort(kind):
    """Calibrated on the validation split that is also the AS-norm cohort, a clip must not be normalised by
    its own entry (a perfect match): it stands in for a voice `identify` has never heard."""
    vectors, labels = clustered(speakers=8, per=12, spread=0.6, seed=2)
    labels = np.array(labels)
    held = np.arange(len(labels)) % 12 >= 9
    index = SpeakerIndex(dim=16, backend=ScoringBackend.fit(kind, vectors[~held], labels[~held], 6))
    index.cohort = Cohort(index.to_space(vectors[held]), labels[held].tolist(), 5, "validation split")
    for speaker in sorted(set(labels)):
        index.add(speaker, vectors[~held & (labels == speaker)])
    queries, names = vectors[held], labels[held].tolist()
    scores = open_set_scores(index, queries, names, "asnorm")
    in_space = index.to_space(queries)
    query_stats = index.cohort.stats(in_space, exclude=names, scores=index.cohort_scores(in_space))
    plain = index.search(queries, len(index.speakers), score_norm="none")
    for row, (name, ranked) in enumerate(zip(names, plain)):
        speakers = [speaker for speaker, _ in ranked]
        model_stats = np.array([index.cohort_stats[speaker] for speaker in speakers]).T
        normalised = dict(zip(speakers, as_norm(np.array([[score for _, score in ranked]]),
                                                (query_stats[0][row:row + 1], query_stats[1][row:row + 1]),
                                                (model_stats[0], model_stats[1]))[0]))
        assert scores["genuine"][row] == pytest.approx(normalised[name], rel=1e-4)
        assert scores["impostor"][row] == pytest.approx(max(v for s, v in normalised.items() if s != name), rel=1e-4)
    with_itself = index.search(queries, len(index.speakers), score_norm="asnorm")
    assert not np.allclose([dict(ranked)[name] for name, ranked in zip(names, with_itself)], scores["genuine"])


# ---- through the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(trained_run, tiny_synth, tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibrated")
    index = folder / "spk.faiss"
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", folder / "emb", "--index", index,
                    "--backend", "lda", "--score-norm", "asnorm", "--cohort-top-k", "5", "-q")
    assert result.exit_code == 0, result.output
    for speaker_dir in sorted((tiny_synth / "unseen" / "enroll").iterdir()):
        assert invoke("enroll", "--index", index, "--speaker", speaker_dir.name, speaker_dir).exit_code == 0
    before = json.loads(sidecar_path(index).read_text())
    assert before["calibration"] == {}
    unseen = tiny_synth / "unseen"
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", folder / "report", "--index", index,
                    "--calibrate", "--target-far", "0.05", "--enroll", unseen / "enroll", "--test", unseen / "test",
                    "--impostors", unseen / "impostors", "-q")
    assert result.exit_code == 0, result.output
    return folder, index, result.output


@pytest.fixture
def nothing_embedded(monkeypatch):
    """Makes evaluate fail the test if it embeds anything: its refusals must come before that work."""
    import voxaug.embeddings.evaluation as evaluation

    def embedded(*args, **kwargs):
        raise AssertionError("evaluate embedded clips before refusing its speaker folders")

    monkeypatch.setattr(evaluation, "closed_set", embedded)
    monkeypatch.setattr(evaluation, "embed_folder", embedded)


def test_impostors_that_are_enrolled_are_refused_naming_the_folder_and_the_index(calibrated, trained_run, tiny_synth,
                                                                                 nothing_embedded):
    folder, index, _ = calibrated
    unseen = tiny_synth / "unseen"
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", folder / "report2", "--index",
                    index, "--impostors", unseen / "enroll", "-q")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {unseen / 'enroll'}: --impostors: speakers ['new000', 'new001'] are "
                                     f"enrolled in {index}, so they are not impostors")
    assert not (folder / "report2").exists()


def test_test_speakers_without_enrolment_or_not_in_the_index_are_refused_before_embedding(
        calibrated, trained_run, tiny_synth, tmp_path, nothing_embedded):
    folder, index, _ = calibrated
    unseen = tiny_synth / "unseen"
    stranger = tmp_path / "strangers" / "stranger"
    shutil.copytree(unseen / "test" / "new000", stranger)
    evaluate = ("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index", index,
                "-q")
    result = invoke(*evaluate, "--enroll", unseen / "enroll", "--test", stranger.parent)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {stranger.parent}: speakers ['stranger'] have test clips but no "
                                     f"enrolment clips in {unseen / 'enroll'}")
    result = invoke(*evaluate, "--enroll", stranger.parent, "--test", stranger.parent)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {index}: speakers ['stranger'] have test clips in {stranger.parent} but "
                                     f"are not enrolled in this index; enrol them first (voxaug enroll --index {index} "
                                     "--speakers-dir DIR --append)")


def test_evaluate_takes_one_speaker_in_nfd_and_nfc_folders_and_index_as_one(calibrated, trained_run, tiny_synth,
                                                                             tmp_path):
    """--enroll's folders made on macOS (NFD), --test's typed on Linux (NFC), the index's names typed at enroll (NFC):
    one José in each. evaluate refused the test speakers as never enrolled, and the advice it gave (enroll
    --speakers-dir --append) enrols into the index's own spelling, so it could never pass; renamed so, the unseen
    speakers score exactly as under their plain names."""
    folder, original, _ = calibrated
    unseen = tiny_synth / "unseen"
    index = tmp_path / "spk.faiss"
    shutil.copy(original, index)
    shutil.copy(sidecar_path(original), sidecar_path(index))
    for old, name in (("new000", "José"), ("new001", "Zoë")):
        assert invoke("enroll", "--index", index, "--remove", old).exit_code == 0
        assert invoke("enroll", "--index", index, "--speaker", name, unseen / "enroll" / old).exit_code == 0
        shutil.copytree(unseen / "enroll" / old, tmp_path / "enroll" / unicodedata.normalize("NFD", name))
        shutil.copytree(unseen / "test" / old, tmp_path / "test" / name)
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index",
                    index, "--enroll", tmp_path / "enroll", "--test", tmp_path / "test", "--impostors",
                    unseen / "impostors", "-q")
    assert result.exit_code == 0, result.output
    renamed = json.loads((tmp_path / "report" / "report.json").read_text())
    plain = json.loads((folder / "report" / "report.json").read_text())
    assert renamed["unseen"] == plain["unseen"]
    assert renamed["open_set"]["top1"] == plain["open_set"]["top1"]


def test_a_cohort_too_small_for_every_speaker_is_refused_before_anything_is_embedded(trained_run, tiny_synth, tmp_path,
                                                                                     monkeypatch):
    """Each speaker's AS-norm statistics leave its own cohort entries out and need two of other speakers."""
    from voxaug.embeddings.speaker_index import plan_speaker_index

    vectors, labels = clustered()
    small = ScoringOptions("lda", lda_dim=5, cohort_size=2, cohort_top_k=2)
    with pytest.raises(VoxaugError, match=r"--score-norm asnorm: no AS-norm cohort can be built: the training split's 2 "
                                          r"utterances leave speaker 's\d' fewer than 2 of other speakers; give a "
                                          "larger --cohort-size than 2"):
        plan_speaker_index(labels, None, "speaker", 0, 0.25, dataclasses.replace(small, score_norm="asnorm"))
    without = plan_speaker_index(labels, None, "speaker", 0, 0.25, small)  # the cohort was only for later
    assert without.cohort_rows is None and "give a larger --cohort-size than 2" in without.cohort_source
    plan = plan_speaker_index(labels, None, "speaker", 0, 0.25, ScoringOptions("lda", lda_dim=5, cohort_size=16,
                                                                                cohort_top_k=2))
    held = np.array(labels)[plan.cohort_rows]
    assert len(held) == 16 and all((held != speaker).sum() >= 2 for speaker in set(labels))
    six = ["a", "a", "a", "b", "b", "b"]  # the validation split holds one of each: the training split serves
    plan = plan_speaker_index(six, None, "speaker", 0, 0.34, ScoringOptions("none", cohort_top_k=2))
    assert plan.cohort_source == "training split" and len(plan.cohort_rows) == 4
    held = np.array(six)[plan_speaker_index(six, None, "speaker", 0, 0.34, ScoringOptions("none", cohort_size=4,
                                                                                          cohort_top_k=2)).cohort_rows]
    assert len(held) == 4  # a --cohort-size of exactly what there is is enough
    assert len(plan_speaker_index(six, None, "speaker", 0, 0.34, ScoringOptions("none")).cohort_rows) == 4  # K 20
    four = ["a", "a", "b", "b"]  # one training utterance each: no cohort leaves either two of the other's
    assert plan_speaker_index(four, None, "speaker", 0, 0.5, ScoringOptions("none", cohort_top_k=2)).cohort_rows is None
    with pytest.raises(VoxaugError, match=r"--score-norm asnorm: no AS-norm cohort can be built: the training split's "
                                          r"2 utterances leave speaker 'a' fewer than 2"):
        plan_speaker_index(four, None, "speaker", 0, 0.5, ScoringOptions("none", score_norm="asnorm", cohort_top_k=2))
    lopsided = ["big"] * 500 + ["small"] * 4  # a subsampled cohort of the big speaker alone: built without one
    assert plan_speaker_index(lopsided, None, "speaker", 0, 0.1, ScoringOptions("none", cohort_size=20)).cohort_rows is None
    import voxaug.embeddings.extract as extract

    def embedded(*args, **kwargs):
        raise AssertionError("embedded before the cohort was checked")

    monkeypatch.setattr(extract, "embed_store", embedded)
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb", "--index",
                    tmp_path / "spk.faiss", "--cohort-size", "2", "--cohort-top-k", "2", "--score-norm", "asnorm", "-q")
    assert result.exit_code == 2 and "give a larger --cohort-size" in result.output, result.output
    assert not (tmp_path / "emb").exists() and not (tmp_path / "spk.faiss").exists()


def test_an_index_built_without_a_cohort_says_why(trained_run, tiny_synth, tmp_path):
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb", "--index",
                    tmp_path / "spk.faiss", "--cohort-size", "2", "--cohort-top-k", "2", "-q")
    assert result.exit_code == 0, result.output
    assert "warning: the index gets no AS-norm cohort (the training split's 2 utterances leave speaker" in result.output
    assert "scores none, no AS-norm cohort)" in result.output and SpeakerIndex.load(tmp_path / "spk.faiss").cohort is None


def test_evaluate_scores_an_utterance_index_with_its_back_end_though_it_has_no_cohort(trained_run, tiny_synth,
                                                                                        tmp_path):
    index = tmp_path / "utt.faiss"
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb", "--index", index,
                    "--per", "utterance", "--backend", "lda", "-q")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index",
                    index, "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {"eer", "min_dcf"} <= set(report["verification_backend"]) and "verification_asnorm" not in report
    assert "verification (lda back end)" in result.output
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report2", "--index",
                    index, "--score-norm", "asnorm", "-q")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {index}: --score-norm asnorm works on speaker indexes (--per speaker), "
                                     "not --per utterance")


def test_evaluate_calibrates_the_index_atomically_and_reports_open_set_figures(calibrated):
    folder, index, output = calibrated
    meta = json.loads(sidecar_path(index).read_text())
    calibration = meta["calibration"]
    assert calibration["score_norm"] == "asnorm" and calibration["target_far"] == 0.05
    assert hashlib.sha256(index.read_bytes()).hexdigest() == meta["index_sha256"]
    assert not list(folder.glob(".spk.faiss.*")), "no staged file left behind"
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["open_set"]["value"] == calibration["value"]
    assert 0 <= report["open_set"]["impostors"]["unknown"] <= 1 and report["open_set"]["impostors"]["clips"] > 0
    assert 0 <= report["unseen"]["among_enrolled"] <= 1 and report["unseen"]["enrolled"] == 7
    for key in ("verification", "verification_backend", "verification_asnorm"):
        assert {"eer", "min_dcf", "far_threshold", "eer_threshold"} <= set(report[key])
    written = f"threshold {calibration['value']:.3f} at FAR {report['open_set']['target_far']:g} (written to the index)"
    assert written in " ".join(output.split()) and "impostors (never enrolled)" in output, output


def test_a_threshold_from_too_few_clips_for_its_far_is_warned_of_and_identify_accepts_as_predicted(calibrated,
                                                                                                   tiny_synth):
    """The fixture calibrates at FAR 0.05 on 6 held-out clips, which allow no false alarm (that needs 20): evaluate
    says so in one line naming the index, after the figures (it was printed above them, qualifying nothing yet), and
    identify accepts exactly the share of those clips it predicted."""
    _, index, output = calibrated
    record = json.loads(sidecar_path(index).read_text())["calibration"]
    assert record["clips"] == 6 and record["far"] == 0
    warned = [line for line in output.splitlines() if "impostor scores" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {index}: the threshold at FAR 0.05 is picked from 6 "
                                                     "impostor scores"), output
    figures = output.splitlines().index(next(line for line in output.splitlines() if line.startswith("open set (")))
    assert output.splitlines().index(warned[0]) > figures, output  # after the figures it qualifies, not above them
    clips = sorted((tiny_synth / "unseen" / "test").rglob("*.pt"))
    result = invoke("identify", "--index", index, "--json", *clips)
    assert result.exit_code == 0, result.output
    decisions = [json.loads(line)["decision"] for line in result.stdout.splitlines()]
    assert len(decisions) == 6 and sum(d != "unknown" for d in decisions) / 6 == pytest.approx(record["acceptance"])


def test_calibrate_waits_lock_timeout_for_an_enrol_then_says_the_index_was_not_calibrated(calibrated, trained_run,
                                                                                           tiny_synth, tmp_path):
    _, calibrated_index, _ = calibrated
    index = tmp_path / "copy.faiss"
    shutil.copy(calibrated_index, index)
    shutil.copy(sidecar_path(calibrated_index), sidecar_path(index))
    before = sidecar_path(index).read_bytes()
    args = ("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index", index,
            "--calibrate", "--target-far", "0.2", "-q")
    bad = invoke(*args, "--lock-timeout", "-1")
    assert bad.exit_code == 2 and "lock" in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output
    with index_lock(index):  # an enrol holds the index
        busy = invoke(*args, "--lock-timeout", "0.2")
    assert busy.exit_code == 2 and "index is locked by another voxaug process (waited 0.2 s" in busy.output
    assert f"the index was not calibrated (the report's figures are in {tmp_path / 'report' / 'report.json'})" \
        in busy.output and sidecar_path(index).read_bytes() == before


def test_identify_uses_the_calibrated_threshold_and_says_so(calibrated, tiny_synth):
    _, index, _ = calibrated
    value = json.loads(sidecar_path(index).read_text())["calibration"]["value"]
    clips = sorted((tiny_synth / "unseen" / "impostors").rglob("*.pt"))[:2]
    result = invoke("identify", "--index", index, "--json", *clips)
    assert result.exit_code == 0, result.output
    for line in result.output.splitlines():
        answer = json.loads(line)
        assert answer["threshold"] == {"value": round(value, 6), "source": "calibrated", "measured": False}  # 6 clips
        assert (answer["decision"] == "unknown") == (answer["top"][0]["score"] < value)
    plain = json.loads(invoke("identify", "--index", index, "--json", "--score-norm", "none", clips[0]).output)
    assert plain["threshold"]["source"] == "default" and plain["score"] == "cosine"
    assert json.loads(sidecar_path(index).read_text())["calibration"]["cohort_top_k"] == 5  # the index's K
    same_k = json.loads(invoke("identify", "--index", index, "--json", "--cohort-top-k", "5", clips[0]).output)
    other_k = json.loads(invoke("identify", "--index", index, "--json", "--cohort-top-k", "3", clips[0]).output)
    assert same_k["threshold"]["source"] == "calibrated" and other_k["threshold"]["source"] == "default"


def test_identify_flags_a_calibration_made_before_the_enrolled_speakers_changed(calibrated, tiny_synth, tmp_path):
    """The best wrong-speaker score, and so the false-alarm rate at the threshold, depends on who is enrolled:
    after an enrol or a removal the calibrated threshold is still used, and called outdated until recalibrated."""
    _, calibrated_index, _ = calibrated
    index = tmp_path / "copy.faiss"
    shutil.copy(calibrated_index, index)
    shutil.copy(sidecar_path(calibrated_index), sidecar_path(index))
    clip = next((tiny_synth / "unseen" / "test").rglob("*.pt"))
    calibration = json.loads(sidecar_path(index).read_text())["calibration"]
    assert calibration["enrolled"]["speakers"] == len(SpeakerIndex.load(index).speakers)

    def answer() -> tuple[dict, str]:
        result = invoke("identify", "--index", index, "--json", clip)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout), result.stderr

    current, warning = answer()
    assert current["threshold"] == {"value": round(calibration["value"], 6), "source": "calibrated",
                                    "measured": False} and warning == ""
    newcomer = sorted((tiny_synth / "unseen" / "enroll").iterdir())[0]
    removed = invoke("enroll", "--index", index, "--remove", newcomer.name)
    assert removed.exit_code == 0 and "its predicted rates may not hold" in removed.stderr, removed.output
    outdated, warning = answer()
    assert outdated["threshold"] == current["threshold"] | {"outdated": True}
    assert warning.count("\n") == 1 and f"{index}: the enrolled speakers changed" in warning
    assert "calibrated, outdated" in invoke("identify", "--index", index, clip).stdout
    assert invoke("enroll", "--index", index, "--speaker", newcomer.name, newcomer).exit_code == 0
    assert answer() == (current, ""), "the same speakers from the same clips: the calibration holds again"
    assert invoke("enroll", "--index", index, "--speaker", newcomer.name, "--append", clip).exit_code == 0
    assert answer()[0]["threshold"].get("outdated") is True, "one more clip moves the speaker's mean"


def test_a_calibration_older_than_its_enrolled_record_is_flagged_after_the_next_enrol(calibrated, tiny_synth,
                                                                                      tmp_path):
    """A calibration written before 2026-11-29 has no ``enrolled`` record: unchanged, the index scores with it as
    before and nothing is called outdated; the first enrolment records the speakers it was picked against, so
    that enrolment, and any later change, is called outdated."""
    _, calibrated_index, _ = calibrated
    index = tmp_path / "old.faiss"
    shutil.copy(calibrated_index, index)
    meta = json.loads(sidecar_path(calibrated_index).read_text())
    picked_against = meta["calibration"].pop("enrolled")  # as evaluate --calibrate wrote it before 2026-11-29
    sidecar_path(index).write_text(json.dumps(meta, indent=1) + "\n")
    clip = next((tiny_synth / "unseen" / "test").rglob("*.pt"))
    old = invoke("identify", "--index", index, "--json", clip)
    assert old.exit_code == 0 and old.stderr == "", old.output
    assert json.loads(old.stdout)["threshold"] == {"value": round(meta["calibration"]["value"], 6),
                                                   "source": "calibrated", "measured": False}
    assert json.loads(sidecar_path(index).read_text()) == meta, "an unchanged index gets no invented record"
    enrolled = invoke("enroll", "--index", index, "--speaker", "newcomer", clip)
    assert enrolled.exit_code == 0 and "its predicted rates may not hold" in enrolled.stderr, enrolled.output
    assert json.loads(sidecar_path(index).read_text())["calibration"]["enrolled"] == picked_against
    result = invoke("identify", "--index", index, "--json", clip)
    assert result.exit_code == 0 and f"{index}: the enrolled speakers changed" in result.stderr, result.output
    assert json.loads(result.stdout)["threshold"].get("outdated") is True


@pytest.mark.parametrize("command, needle", [
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--backend", "ivector"], "--backend 'ivector'"),
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--score-norm", "znorm"], "--score-norm 'znorm'"),
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--lda-dim", "0"], "--lda-dim"),
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--lda-dim", "1"], "--lda-dim must be a whole number >= 2"),
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--cohort-top-k", "1"], "--cohort-top-k"),
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--cohort-size", "3"], "--cohort-size"),
    (["identify", "--index", "INDEX", "--score-norm", "tnorm", "CLIP"], "--score-norm 'tnorm'"),
    (["identify", "--index", "INDEX", "--cohort-top-k", "0", "CLIP"], "--cohort-top-k"),
    (["identify", "--index", "INDEX", "--threshold", "nan", "CLIP"], "--threshold"),
    (["evaluate", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--index", "INDEX", "--target-far", "1.5"], "--target-far"),
    (["evaluate", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--calibrate"], "pass --index"),
    (["evaluate", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--index", "INDEX", "--score-norm", "x"], "--score-norm 'x'"),
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--lda-dim", "many"], "'--lda-dim'"),
    (["embed", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--cohort-size", "1e3x"], "'--cohort-size'"),
    (["identify", "--index", "INDEX", "--threshold", "high", "CLIP"], "'--threshold'"),
    (["identify", "--index", "INDEX", "--cohort-top-k", "twenty", "CLIP"], "'--cohort-top-k'"),
    (["evaluate", "DATA", "--ckpt", "CKPT", "--out", "OUT", "--index", "INDEX", "--target-far", "1%"], "'--target-far'"),
])
def test_bad_scoring_options_are_refused_in_one_line(calibrated, trained_run, tiny_synth, tmp_path, command, needle):
    _, index, _ = calibrated
    values = {"DATA": tiny_synth, "CKPT": trained_run / "best.pt", "OUT": tmp_path / "out", "INDEX": index,
              "CLIP": next((tiny_synth / "unseen" / "test").rglob("*.pt"))}
    before = sidecar_path(index).read_bytes()
    result = invoke(*[values.get(part, part) for part in command])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and needle in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    assert sidecar_path(index).read_bytes() == before


def test_calibration_falls_back_to_the_validation_split_without_unseen_speakers(calibrated, trained_run, tiny_synth,
                                                                                tmp_path):
    _, index, _ = calibrated
    copy = tmp_path / "copy.faiss"
    copy.write_bytes(index.read_bytes())
    sidecar_path(copy).write_bytes(sidecar_path(index).read_bytes())
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--index", copy, "--calibrate", "-q")
    assert result.exit_code == 0, result.output
    calibration = json.loads(sidecar_path(copy).read_text())["calibration"]
    assert "validation split" in calibration["source"] and calibration["target_far"] == 0.01
    assert "unseen speakers" in json.loads(sidecar_path(index).read_text())["calibration"]["source"]


def copy_index(index, to):
    to.write_bytes(index.read_bytes())
    sidecar_path(to).write_bytes(sidecar_path(index).read_bytes())
    return to


def test_a_report_that_cannot_be_written_leaves_the_calibration_as_it_was(calibrated, trained_run, tiny_synth,
                                                                          tmp_path, monkeypatch):
    import voxaug.embeddings.evaluation as evaluation

    def broken_map(*args, **kwargs):
        raise VoxaugError("the map cannot be drawn")

    monkeypatch.setattr(evaluation, "embedding_map", broken_map)
    copy = copy_index(calibrated[1], tmp_path / "copy.faiss")
    before = sidecar_path(copy).read_bytes()
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--index", copy, "--calibrate", "--target-far", "0.2", "-q")
    assert result.exit_code == 2 and "the map cannot be drawn" in result.output, result.output
    assert sidecar_path(copy).read_bytes() == before


def test_calibrating_another_score_than_the_index_s_own_says_identify_will_not_use_it(calibrated, trained_run,
                                                                                      tiny_synth, tmp_path):
    copy = copy_index(calibrated[1], tmp_path / "copy.faiss")  # its index scores asnorm
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--index", copy, "--calibrate", "--score-norm", "none", "-q")
    assert result.exit_code == 0, result.output
    assert f"warning: {copy}: the threshold is calibrated for" in result.output
    assert "identify scores asnorm by default (the index's): give it --score-norm none" in result.output
    quiet = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                   "--index", copy, "--calibrate", "--target-far", "0.05", "-q")  # 20 validation clips resolve 0.05
    assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output


def test_a_trials_file_of_the_validation_pairs_scores_what_evaluate_scores_without_one(calibrated, trained_run,
                                                                                       tiny_synth):
    """The AS-norm cohort is the validation split, so a trials file listing those very clips must leave their
    speakers out of it, as the default pairs do; otherwise each clip is normalised against itself."""
    from voxaug.checkpoint import load_checkpoint
    from voxaug.config import TrainConfig
    from voxaug.data.sources import open_source
    from voxaug.data.split import stratified_split

    folder, index, _ = calibrated
    split = TrainConfig.from_saved(load_checkpoint(trained_run / "best.pt")["config"]).training_split
    source = open_source(tiny_synth)
    labels = np.array([source.speakers.index(u.speaker) for u in source.utterances])
    _, val = stratified_split(labels, split.val_fraction, split.seed, None, split.version)
    keys = [source.utterances[i].key for i in val]
    first, second = np.triu_indices(len(val), k=1)
    trials = folder / "trials.txt"
    trials.write_text("".join(f"{int(labels[val[i]] == labels[val[j]])} {keys[i]} {keys[j]}\n" for i, j in zip(first, second)))
    reports = {}
    for name, extra in (("pairs", ()), ("trials", ("--trials", trials))):
        result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", folder / name,
                        "--index", index, *extra, "-q")
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((folder / name / "report.json").read_text())
    for key in ("verification", "verification_backend", "verification_asnorm"):
        assert reports["trials"][key]["trials"] == reports["pairs"][key]["trials"] == len(first)
        for figure in ("eer", "min_dcf", "eer_threshold"):
            assert reports["trials"][key][figure] == pytest.approx(reports["pairs"][key][figure], abs=1e-4), (key, figure)


def test_verification_pairs_are_sampled_without_listing_every_pair():
    """3,000 validation clips make 4.5 million pairs, and 300 clips against 6,000 training clips 1.8 million: the
    2,000 kept are drawn in memory that grows with the clips and the pairs kept (listing every pair took tens of
    gigabytes past 20,000 clips), and they are the very pairs that listing them all and sampling keeps."""
    import tracemalloc

    from voxaug.embeddings.scoring import all_pairs

    labels = np.array([f"s{i % 300}" for i in range(3000)])
    held_out = LabelledEmbeddings(np.ones((300, 2), np.float32) / np.sqrt(2), labels[:300])
    reference = LabelledEmbeddings(np.ones((6000, 2), np.float32) / np.sqrt(2), labels[np.arange(6000) % 3000])
    tracemalloc.start()
    try:
        first, second = all_pairs(labels, 2000, 0)
        _, within = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        across = score_pairs(held_out, 2000, 0, reference)
        _, against = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert within < 4 * 2**20 and against < 4 * 2**20, (within, against)
    assert len(first) == 2000 and (labels[first] == labels[second]).sum() == 1000 and (first < second).all()
    assert across["pairs"] == "validation x training" and (across["trials"], across["same_trials"]) == (2000, 1000)
    rng = np.random.default_rng(3)
    for size, speakers, max_pairs in ((40, 5, 300), (40, 5, 50), (30, 29, 20), (25, 2, 100)):
        small = np.array([f"s{x}" for x in rng.integers(0, speakers, size)])
        rows, columns = np.triu_indices(size, k=1)
        kept = sample_pairs(small[rows] == small[columns], max_pairs, np.random.default_rng(7))
        drawn = all_pairs(small, max_pairs, 7)
        assert drawn[0].tolist() == rows[kept].tolist() and drawn[1].tolist() == columns[kept].tolist()


def test_knn_accuracy_holds_a_block_of_similarities_at_a_time(monkeypatch):
    """k-NN over the validation x training similarities, a block of rows at a time (the whole matrix and its argsort
    were tens of gigabytes on a large dataset), with the votes of the whole matrix."""
    import tracemalloc

    from voxaug.embeddings import evaluation

    vectors, labels = clustered(speakers=20, per=225, dim=8, spread=1.0)
    held_out, labels = np.arange(len(labels)) % 9 == 0, np.array(labels)
    reference, test = (LabelledEmbeddings(vectors[rows], labels[rows]) for rows in (~held_out, held_out))
    nearest = np.argsort(-(test.embeddings @ reference.embeddings.T), axis=1)[:, :5]
    votes = [list(row) for row in reference.labels[nearest]]  # the most voted for, then the most similar
    expected = np.mean([max(row, key=lambda name: (row.count(name), -row.index(name))) == truth
                        for row, truth in zip(votes, test.labels)])
    monkeypatch.setattr(evaluation, "KNN_BLOCK", 1 << 16, raising=False)
    tracemalloc.start()
    try:
        accuracy = evaluation.knn_accuracy(reference, test)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak
    assert accuracy == pytest.approx(expected) and 0.2 < accuracy < 1.0


def test_a_back_end_projection_of_zeros_is_refused_naming_the_sidecar_not_the_queries(tmp_path):
    """Every embedding projects to zero: identify and enroll said `queries: rows must be finite and non-zero`."""
    vectors, labels = clustered()
    path = tmp_path / "spk.faiss"
    build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25,
                        ScoringOptions("lda", lda_dim=5, cohort_top_k=4)).save(path)
    meta = json.loads(sidecar_path(path).read_text())
    meta["backend"]["projection"] = [[0.0] * len(row) for row in meta["backend"]["projection"]]
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(VoxaugError, match=f"^{re.escape(str(sidecar_path(path)))}: back end projection is all zeros"):
        SpeakerIndex.load(path)


def test_test_clips_that_are_enrolment_clips_are_warned_of(calibrated, trained_run, tiny_synth, tmp_path):
    """A --test clip that --enroll holds, or that the index was enrolled from (by content, under another name), was
    scored as held out: unseen accuracy 1.0 and a calibrated threshold far below the held-out one, without a word."""
    folder, index, output = calibrated
    assert "enrolment clips too" not in output
    unseen = tiny_synth / "unseen"
    tests, enrolment = tmp_path / "test", tmp_path / "enroll"
    shutil.copytree(unseen / "test", tests)
    shutil.copytree(unseen / "enroll", enrolment)
    leaked = sorted((enrolment / "new000").glob("*.pt"))[0]
    shutil.copy(leaked, tests / "new000" / "extra.pt")
    copy = copy_index(index, tmp_path / "copy.faiss")
    args = ("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index", copy,
            "--test", tests, "--target-far", "0.2", "-q")  # 7 clips resolve FAR 0.2, so no warning of that
    for given in (enrolment, None):  # the clip in --enroll, then only among the index's enrolled clips
        repacked = ""
        if given is None:
            leaked.unlink()
            given = enrolment
            repacked = f"{enrolment}: feature cache packed again: 1 clip changed since it was packed\n"  # now its .wav
        result = invoke(*args, "--enroll", given)
        assert result.exit_code == 0, result.output
        assert result.stderr == (f"warning: {tests}: 1 of 7 test clips (e.g. {tests / 'new000' / 'extra.pt'}) are "
                                 f"enrolment clips too (in {enrolment} or {copy}): their scores are not held out, so "
                                 "the unseen-speaker accuracy and the open-set figures read too well\n" + repacked)


@pytest.mark.parametrize("kind", ["lda", "plda"])
def test_speakers_of_two_training_clips_each_are_refused_naming_the_clips_short_not_as_duplicates(kind):
    """Ledoit-Wolf leaves the covariance of a speaker's two clips unshrunk (one direction), so LDA over speakers of
    two clips each fails in more dimensions than speakers: that is too few clips, not duplicate ones."""
    vectors, labels = clustered(speakers=3, per=2, dim=16)
    short = rf"--backend {kind}: no speaker has more than 2 utterances in the training split.* at least 3, or .*; pass"
    with pytest.raises(VoxaugError, match=short) as refused:
        ScoringBackend.fit(kind, vectors, np.array(labels))
    assert "duplicates" not in str(refused.value)
    more, more_labels = clustered(speakers=3, per=3, dim=16)
    grown = ScoringBackend.fit(kind, np.concatenate([vectors, more[:1]]), np.array(labels + more_labels[:1]))
    assert np.isfinite(grown.apply(vectors)).all()


def test_a_cohort_too_small_for_two_speakers_skips_the_asnorm_verification_not_the_whole_report(trained_run, tiny_synth,
                                                                                                tmp_path):
    """embed keeps a cohort that leaves each speaker two entries of others, enough for identify; a verification
    trial leaves out both its speakers, fewer than two, and evaluate lost its whole report to that one figure."""
    index = tmp_path / "spk.faiss"
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb", "--index", index,
                    "--backend", "center", "-q")
    assert result.exit_code == 0, result.output
    built = SpeakerIndex.load(index)
    keep = [built.cohort.labels.index(name) for name in sorted(set(built.cohort.labels))[:3]]  # one clip of three
    built.cohort = Cohort(built.cohort.vectors[keep], [built.cohort.labels[i] for i in keep], 2, built.cohort.source)
    for row, name in enumerate(built.labels):
        mean, std = built.cohort.stats(built.vectors[row : row + 1], exclude=[name])
        built.cohort_stats[name] = [float(mean[0]), float(std[0])]
    built.save(index)
    embeddings = np.load(tmp_path / "emb" / "embeddings.npy")
    assert SpeakerIndex.load(index).search(embeddings[:1], 1, score_norm="asnorm")  # enough for identify
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index",
                    index, "-q")
    assert result.exit_code == 0, result.output
    assert (f"warning: {index}: no AS-norm verification figures: the AS-norm cohort has too few entries from other "
            "speakers (need at least 2) once a trial's two speakers are left out") in result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "verification_asnorm" not in report and {"eer", "min_dcf"} <= set(report["verification_backend"])


def test_asnorm_on_an_utterance_index_is_refused_by_embed_before_anything_is_read(tiny_synth, tmp_path, monkeypatch):
    """embed read and embedded the whole dataset, then refused the --per utterance index it was asked to build."""
    import voxaug.checkpoint as checkpoint

    def loaded(*args, **kwargs):
        raise AssertionError("embed loaded the model before refusing --score-norm asnorm --per utterance")

    monkeypatch.setattr(checkpoint, "load_model", loaded)
    result = invoke("embed", tiny_synth, "--ckpt", tiny_synth / "mapping.json", "--out", tmp_path / "emb", "--index",
                    tmp_path / "utt.faiss", "--per", "utterance", "--score-norm", "asnorm", "-q")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --score-norm asnorm works on speaker indexes (--per speaker), not --per utterance"
    assert not (tmp_path / "emb").exists() and not (tmp_path / "utt.faiss").exists()


@pytest.mark.parametrize("kind", ["lda", "plda"])
def test_a_speaker_of_one_training_clip_fits_without_scikit_learns_warnings(kind):
    """scikit-learn warned 'Only one sample available. You may want to reshape your data array' on stderr for each
    speaker of one clip in the training split: advice about an array the user never made."""
    import warnings

    vectors, labels = clustered(speakers=5, per=4)
    lone, _ = clustered(speakers=1, per=1, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = ScoringBackend.fit(kind, np.concatenate([vectors, lone]), np.array(labels + ["lone"]))
    assert np.isfinite(backend.apply(lone)).all()


@pytest.mark.parametrize("options, named", [
    (["--backend", "lda", "--score-norm", "asnorm", "--hnsw"], "--hnsw, --backend, --score-norm"),
    (["--per", "utterance"], "--per"), (["--lda-dim", "16"], "--lda-dim"), (["--cohort-size", "500"], "--cohort-size"),
    (["--cohort-top-k", "5"], "--cohort-top-k"), (["--replace"], "--replace"), (["--score-norm", "none"], "--score-norm"),
])
def test_embed_refuses_index_options_without_an_index(trained_run, tiny_synth, tmp_path, options, named):
    """They shape the index --index writes: without one, embed wrote its embeddings and silently ignored them."""
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb",
                    "--cache-dir", tmp_path / "cache", "--device", "cpu", "-q", *options)
    assert result.exit_code == 2 and result.output == (f"error: {named}: options of the speaker index, and no --index "
                                                       "was given; pass --index FILE, or leave them out\n")
    assert not (tmp_path / "emb").exists() and not (tmp_path / "cache").exists()


def test_embed_without_an_index_takes_the_index_options_at_their_defaults(trained_run, tiny_synth, tmp_path):
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb", "--per",
                    "speaker", "--backend", "plda", "--device", "cpu", "-q")
    assert result.exit_code == 0 and (tmp_path / "emb" / "embeddings.npy").is_file(), result.output


@pytest.fixture(scope="module")
def few_clip_runs(tmp_path_factory):
    """Runs trained (2 steps) on datasets whose training split an lda/plda back end cannot be fitted on."""
    from conftest import tiny_config
    from hw4_factory import make_hw4
    from voxaug.train import Trainer

    root = tmp_path_factory.mktemp("few_clips")
    runs = {}
    for name, speakers, per_speaker in (("two_speakers", 2, 4), ("one_clip_each", 3, 2), ("two_clips_each", 3, 3)):
        data = make_hw4(root / name, speakers=speakers, per_speaker=per_speaker)
        Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1}), data, root / f"run_{name}",
                progress=False).fit()
        runs[name] = (data, root / f"run_{name}" / "last.pt")
    return runs


@pytest.mark.parametrize("name, needle", [
    ("two_speakers", "error: --backend plda needs at least 3 training speakers, the data has 2"),
    ("one_clip_each", "error: --backend plda needs more training utterances than speakers (some speaker with two), "
                      "got 3 of 3; pass --backend center or none"),
    ("two_clips_each", "error: --backend plda: no speaker has more than 2 utterances in the training split and 3 "
                       "speakers have 2, too few to estimate within-speaker variation in 32 dimensions; it needs some "
                       "speaker with at least 3, or at least 32 speakers with 2; pass --backend center or none"),
])
def test_a_back_end_the_training_labels_cannot_fit_is_refused_before_anything_is_embedded(few_clip_runs, tmp_path,
                                                                                         monkeypatch, name, needle):
    """embed --index embedded the whole dataset, then ScoringBackend.fit refused what the split's labels decide."""
    import voxaug.embeddings.extract as extract

    def embedded(*args, **kwargs):
        raise AssertionError("embedded before the back end's labels were checked")

    monkeypatch.setattr(extract, "embed_store", embedded)
    data, ckpt = few_clip_runs[name]
    result = invoke("embed", data, "--ckpt", ckpt, "--out", tmp_path / "emb", "--index", tmp_path / "spk.faiss", "-q")
    assert result.exit_code == 2 and result.output.strip() == needle, result.output
    assert not (tmp_path / "emb").exists() and not (tmp_path / "spk.faiss").exists()


def test_speakers_of_two_clips_fit_when_they_span_the_embedding_space():
    """Each speaker of two clips adds one within-speaker direction: as many of them as dimensions are enough."""
    from voxaug.embeddings.backend import check_fit_labels

    labels = np.repeat([f"s{i}" for i in range(16)], 2)
    assert check_fit_labels("lda", labels, 16) == 16
    with pytest.raises(VoxaugError, match="no speaker has more than 2 utterances .* in 17 dimensions"):
        check_fit_labels("plda", labels, 17)
    assert check_fit_labels("center", labels[:4], 17) == 2  # only lda and plda fit on speakers
    vectors, _ = clustered(speakers=16, per=2, dim=16)
    assert np.isfinite(ScoringBackend.fit("lda", vectors, labels, 8).apply(vectors)).all()


def test_an_index_without_a_validation_speaker_is_refused_before_anything_is_embedded(calibrated, trained_run,
                                                                                      tiny_synth, tmp_path,
                                                                                      nothing_embedded):
    """Without --test the open-set figures score the validation split against the index, and an index that lacks one
    of its speakers (removed, or an index `enroll` built of other speakers) was refused once everything was embedded."""
    folder, index, _ = calibrated
    copy = copy_index(index, tmp_path / "spk.faiss")
    removed = sorted(name for name in SpeakerIndex.load(copy).speakers if not name.startswith("new"))[0]
    assert invoke("enroll", "--index", copy, "--remove", removed).exit_code == 0
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index",
                    copy, "-q")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {copy}: speakers [{removed!r}] have clips but are not enrolled in the "
                                    f"index; the open-set figures score {tiny_synth} (the run's validation split, "), \
        result.output


def test_feature_clips_an_audio_model_cannot_read_in_a_speaker_folder_are_refused_before_anything_is_embedded(
        tiny_synth, tmp_path, nothing_embedded):
    """evaluate embedded the whole validation split, then refused --enroll's `.pt` clips (made with the default front
    end) for a model trained from audio at other settings: the folder's listing decides it."""
    from conftest import tiny_config
    from voxaug.train import Trainer

    data = tmp_path / "data"  # audio with `.pt` twins: an 8 kHz model reads the audio
    shutil.copytree(tiny_synth / "unseen" / "enroll", data)
    config = tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1})
    config.frontend = {**config.frontend, "sample_rate": 8000, "f_max": 3800.0}
    Trainer(config, data, tmp_path / "run", progress=False).fit()
    features = tmp_path / "features"
    shutil.copytree(tiny_synth / "unseen" / "test", features, ignore=shutil.ignore_patterns("*.wav"))
    result = invoke("evaluate", data, "--ckpt", tmp_path / "run" / "last.pt", "--out", tmp_path / "report", "--enroll",
                    features, "--test", tiny_synth / "unseen" / "test", "-q")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {features / 'new000' / '003.pt'} (and 5 more .pt clips): log-mel features "
                                    "(.pt) are made with the default front end"), result.output
    assert not (tmp_path / "report").exists()


def test_too_few_clips_names_both_ways_to_fit_speakers_of_two_clips_or_one_of_three():
    """The refusal said a speaker of three clips was needed, though as many speakers of two as dimensions fit too."""
    from voxaug.embeddings.backend import check_fit_labels

    with pytest.raises(VoxaugError) as refused:
        check_fit_labels("lda", np.repeat([f"s{i}" for i in range(5)], 2), 16)
    assert str(refused.value) == ("--backend lda: no speaker has more than 2 utterances in the training split and 5 "
                                  "speakers have 2, too few to estimate within-speaker variation in 16 dimensions; it "
                                  "needs some speaker with at least 3, or at least 16 speakers with 2; pass --backend "
                                  "center or none")
    assert check_fit_labels("lda", np.repeat([f"s{i}" for i in range(16)], 2), 16) == 16


def test_the_index_options_refused_without_an_index_are_judged_against_their_declared_defaults(monkeypatch):
    """refuse_index_options wrote --per's default out again as "speaker": a new default declared on the option would
    have been refused whenever embed ran without --index."""
    import inspect

    from voxaug.cli import embed as embed_cli
    from voxaug.embeddings.speaker_index import ScoringOptions

    monkeypatch.setattr(inspect.signature(embed_cli.embed).parameters["per"].default, "default", "utterance")
    embed_cli.refuse_index_options("utterance", False, False, None, ScoringOptions())
    with pytest.raises(VoxaugError, match=r"^--per: options of the speaker index, and no --index was given"):
        embed_cli.refuse_index_options("speaker", False, False, None, ScoringOptions())


def test_a_clip_copied_into_the_cohort_is_kept_once_so_its_copies_do_not_tie_into_a_zero_std():
    """Two copies of one clip embed identically; with --cohort-top-k 2 a query near them had them as its whole top-K,
    a standard deviation of 0 (floored to 1e-6), and every AS-norm score came out near -1e5."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((12, 8)).astype(np.float32)
    embeddings[3] = embeddings[2]  # one of b's clips copied under another name
    names = ["a"] * 2 + ["b"] * 4 + ["c"] * 3 + ["d"] * 3
    index = build_speaker_index(embeddings, names, None, "speaker", False, {}, {}, 0, 0.0,
                                ScoringOptions("none", score_norm="asnorm", cohort_size=100, cohort_top_k=2))
    assert len(index.cohort.labels) == 11 and index.cohort.labels.count("b") == 3
    assert index.cohort.source.startswith("training split: 11 utterances")
    query = embeddings[2:3] + 0.3 * rng.standard_normal((1, 8)).astype(np.float32)
    scores = [score for _, score in index.search(query, 4)[0]]
    assert all(abs(score) < 100 for score in scores), scores


@pytest.mark.parametrize("kind", ["center", "lda"])
def test_an_offset_every_embedding_shares_cancels_in_the_back_end(kind):
    """The back end subtracts the training mean: embeddings that all carry one speaker-independent offset (a
    network's bias) map to the same vectors as without it, so the offset weighs in no score."""
    vectors, labels = clustered(speakers=6, per=8, dim=8, seed=2)
    offset = np.full(8, 3.0, dtype=np.float32)
    plain = ScoringBackend.fit(kind, vectors, np.array(labels), lda_dim=4)
    shifted = ScoringBackend.fit(kind, vectors + offset, np.array(labels), lda_dim=4)
    assert np.allclose(shifted.apply(vectors + offset), plain.apply(vectors), atol=1e-4)


def test_the_detection_and_identification_rate_counts_only_clips_answered_right():
    """DIR is the share of clips whose top answer is their own speaker *and* clears the threshold: the third clip's
    genuine score clears it, but identify answers another speaker (the impostor scores higher), so it is no hit."""
    scores = {"genuine": np.array([0.9, 0.8, 0.7, 0.6]), "impostor": np.array([0.1, 0.2, 0.95, 0.3]),
              "top": np.array([0.9, 0.8, 0.95, 0.6]), "correct": np.array([True, True, False, True])}
    record = calibrate(scores, 0.25, "none", "test")
    assert 0.3 < record["value"] < 0.6 and record["far"] == 0.25
    assert record["dir"] == 0.75 and record["top1"] == 0.75 and record["acceptance"] == 1.0


def test_a_speaker_whose_cohort_clips_are_copies_of_one_neither_fails_the_index_nor_normalises_by_a_zero_std():
    """The cohort's copies were merged after its plan checked that every speaker has two entries of others: a
    speaker whose clips were one clip copied left the other speaker one, and the index failed ("too few entries")
    after every clip was embedded, even with --score-norm none, where the cohort is only kept for later."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((6, 8)).astype(np.float32)
    embeddings[4] = embeddings[5] = embeddings[3]  # b's three clips are one
    names = ["a"] * 3 + ["b"] * 3
    plain = build_speaker_index(embeddings, names, None, "speaker", False, {}, {}, 0, 0.0,
                                ScoringOptions("none", cohort_size=100, cohort_top_k=2))
    assert plain.cohort is None and plain.labels == ["a", "b"]
    with pytest.raises(VoxaugError, match=r"^--score-norm asnorm: no AS-norm cohort can be built: the training "
                                          r"split's 4 distinct utterances leave speaker 'a' fewer than 2 of other"):
        build_speaker_index(embeddings, names, None, "speaker", False, {}, {}, 0, 0.0,
                            ScoringOptions("none", score_norm="asnorm", cohort_size=100, cohort_top_k=2))


class _CountedNames(np.ndarray):
    """Speaker names that count their comparisons with one name: the per-speaker mask ``names == speaker``."""

    compared = 0

    def __eq__(self, other):
        if isinstance(other, str):
            _CountedNames.compared += 1
        return super().__eq__(other)


@pytest.mark.parametrize("per", ["speaker", "utterance"])
def test_the_index_groups_its_speakers_rows_in_one_sort_to_the_same_index(per, monkeypatch):
    """Each speaker's rows were picked by a mask over every row (O(rows x speakers): 18 s for 8,000 speakers of 20
    clips); grouped by one stable sort instead, the rows keep their order, so the index is the same to the bit."""
    import voxaug.embeddings.speaker_index as speaker_index

    rng = np.random.default_rng(0)
    order = rng.permutation(12 * 6)  # each speaker's rows spread through the list, not one block
    labels = [f"s{i % 12:02d}" for i in order]
    vectors = rng.standard_normal((len(labels), 8)).astype(np.float32)
    plan = speaker_index.plan_speaker_index

    def counted_plan(*args, **kwargs):
        planned = plan(*args, **kwargs)
        return dataclasses.replace(planned, names=planned.names.view(_CountedNames))

    monkeypatch.setattr(speaker_index, "plan_speaker_index", counted_plan)

    def build():
        return build_speaker_index(vectors, labels, None, per, False, {}, {}, 0, 0.25, ScoringOptions("none"))

    _CountedNames.compared = 0
    grouped = build()
    assert _CountedNames.compared == 0, "a mask over every row per speaker"
    monkeypatch.setattr(speaker_index, "speaker_rows", lambda names: [
        (speaker, np.flatnonzero(names == speaker)) for speaker in sorted(set(labels))])  # the old way
    masked = build()
    assert _CountedNames.compared == 12
    assert grouped.labels == masked.labels and grouped.counts == masked.counts
    assert grouped.mean_norms == masked.mean_norms
    assert grouped.vectors.tobytes() == masked.vectors.tobytes()
    assert all(type(name) is str for name in grouped.labels)


def test_a_sidecar_whose_back_end_is_of_another_dimension_is_refused_by_name(tmp_path):
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25, ScoringOptions("center"))
    path = tmp_path / "spk.faiss"
    index.save(path)
    meta = json.loads(sidecar_path(path).read_text())
    meta["backend"]["mean"] = meta["backend"]["mean"][:-1]
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(VoxaugError, match="back end is 15-dimensional and the index 16-dimensional") as error:
        SpeakerIndex.load(path)
    assert str(error.value).startswith(str(sidecar_path(path)))


def read_only_index_folder(monkeypatch, folder, names=lambda path: True):
    """Files created in ``folder`` (those whose path ``names`` picks) fail as on a read-only file system: as root,
    chmod does not stop writes."""
    import errno
    import os

    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and os.path.dirname(os.path.realpath(path)) == str(folder) and names(str(path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def copied_index(index, folder):
    copy = folder / "copy.faiss"
    shutil.copy(index, copy)
    shutil.copy(sidecar_path(index), sidecar_path(copy))
    return copy


def test_calibrate_refuses_a_read_only_index_folder_before_anything_is_embedded(calibrated, trained_run, tiny_synth,
                                                                                tmp_path, monkeypatch,
                                                                                nothing_embedded):
    """--calibrate in a folder that takes no new files failed only at the very end, on the lock file, as a bare
    ``spk.faiss.lock: Read-only file system``, after all the embedding."""
    folder = (tmp_path / "index").resolve()
    folder.mkdir()
    index = copied_index(calibrated[1], folder)
    before = sidecar_path(index).read_bytes()
    read_only_index_folder(monkeypatch, folder)
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index",
                    index, "--calibrate", "-q")
    assert result.exit_code == 2
    assert result.output == (f"error: {index}: --calibrate cannot write the index: its folder {folder} takes no new "
                             "files (Read-only file system)\n")
    assert sidecar_path(index).read_bytes() == before and not (tmp_path / "report").exists()


def test_calibrate_whose_lock_file_is_refused_says_the_index_was_not_calibrated(calibrated, trained_run, tiny_synth,
                                                                               tmp_path, monkeypatch):
    """The folder turned read-only while it scored (the check up front passed): the lock file's OSError was the
    whole message, without saying that the index was left as it was and where the figures are."""
    folder = (tmp_path / "index").resolve()
    folder.mkdir()
    index = copied_index(calibrated[1], folder)
    before = sidecar_path(index).read_bytes()
    read_only_index_folder(monkeypatch, folder, lambda path: path.endswith(".lock"))
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index",
                    index, "--calibrate", "-q")
    assert result.exit_code == 2
    assert result.output == (f"error: {index}.lock: Read-only file system; the index was not calibrated (the report's "
                             f"figures are in {tmp_path / 'report' / 'report.json'})\n")
    assert sidecar_path(index).read_bytes() == before and (tmp_path / "report" / "report.json").is_file()


def test_calibrate_whose_lock_fails_with_no_file_name_names_the_index(calibrated, trained_run, tiny_synth, tmp_path,
                                                                      monkeypatch):
    """``flock``'s OSError carries no file name (ENOLCK: an NFS mount without locks): the message was a bare
    ``[Errno 37] No locks available`` that named no file."""
    import errno
    import fcntl
    import os

    folder = (tmp_path / "index").resolve()
    folder.mkdir()
    index = copied_index(calibrated[1], folder)
    before = sidecar_path(index).read_bytes()
    real_flock = fcntl.flock

    def refusing_flock(fd, operation):
        lock = f"{index}.lock"
        if os.path.exists(lock) and os.path.samestat(os.fstat(fd), os.stat(lock)):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", refusing_flock)
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--index",
                    index, "--calibrate", "-q")
    assert result.exit_code == 2
    assert result.output == (f"error: {index}: {os.strerror(errno.ENOLCK)}; the index was not calibrated (the report's "
                             f"figures are in {tmp_path / 'report' / 'report.json'})\n")
    assert sidecar_path(index).read_bytes() == before


def test_embed_index_refuses_a_read_only_index_folder_before_anything_is_embedded(trained_run, tiny_synth, tmp_path,
                                                                                 monkeypatch):
    """embed --index into a folder that takes no new files embedded the whole dataset, then failed on the lock file
    with a bare ``spk.faiss.lock: Read-only file system`` (embeddings.npy lost with it)."""
    import voxaug.embeddings.extract as extract

    def embedded(*args, **kwargs):
        raise AssertionError("embed embedded the dataset before refusing its index folder")

    monkeypatch.setattr(extract, "embed_store", embedded)
    folder = (tmp_path / "index").resolve()
    folder.mkdir()
    read_only_index_folder(monkeypatch, folder)
    index = folder / "spk.faiss"
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb", "--index", index,
                    "-q")
    assert result.exit_code == 2
    assert result.output == (f"error: {index}: embed --index cannot write the index: its folder {folder} takes no new "
                             "files (Read-only file system)\n")
    assert not any(folder.iterdir()) and not (tmp_path / "emb").exists()


def test_enroll_refuses_a_read_only_index_folder_before_anything_is_embedded(calibrated, tiny_synth, tmp_path,
                                                                            monkeypatch):
    """enroll into an index whose folder takes no new files embedded every clip, then failed on the lock file with a
    bare ``spk.faiss.lock: Read-only file system``."""
    from voxaug.api.model import SpeakerModel

    def embedded(*args, **kwargs):
        raise AssertionError("enroll embedded clips before refusing the index folder")

    monkeypatch.setattr(SpeakerModel, "embed_many", embedded)
    folder = (tmp_path / "index").resolve()
    folder.mkdir()
    index = copied_index(calibrated[1], folder)
    before = index.read_bytes(), sidecar_path(index).read_bytes()
    read_only_index_folder(monkeypatch, folder)
    result = invoke("enroll", "--index", index, "--speaker", "newcomer", tiny_synth / "unseen" / "impostors" / "imp000")
    assert result.exit_code == 2
    assert result.output == (f"error: {index}: enroll cannot write the index: its folder {folder} takes no new "
                             "files (Read-only file system)\n")
    assert (index.read_bytes(), sidecar_path(index).read_bytes()) == before


def test_a_threshold_calibrated_on_too_few_clips_is_called_unmeasured_by_the_sidecar_and_identify(calibrated,
                                                                                                 tiny_synth, tmp_path):
    """evaluate --calibrate on fewer held-out clips than 1 / FAR warned that the rate was unmeasured, but the sidecar
    and identify's threshold ("source": "calibrated") did not say so: a program reading --json took it as measured.
    The sidecar records it, --json's threshold carries it, and the table's output says it in one line."""
    _, index, _ = calibrated
    calibration = json.loads(sidecar_path(index).read_text())["calibration"]
    assert calibration["clips"] * calibration["target_far"] < 1 and calibration["far_measured"] is False
    clips = sorted((tiny_synth / "unseen" / "test").rglob("*.pt"))[:2]
    as_json = invoke("identify", "--index", index, "--json", *clips)
    assert as_json.exit_code == 0 and as_json.stderr == "", as_json.output
    assert [json.loads(line)["threshold"] for line in as_json.stdout.splitlines()] == [
        {"value": round(calibration["value"], 6), "source": "calibrated", "measured": False}] * 2
    table = invoke("identify", "--index", index, *clips)
    assert table.exit_code == 0, table.output
    assert table.stderr == f"warning: {index}: {unresolved_far(calibration)}\n", table.stderr
    assert "so its false-alarm rate is unmeasured" in table.stderr
    plain = invoke("identify", "--index", index, "--score-norm", "none", clips[0])
    assert plain.exit_code == 0 and plain.stderr == "", plain.output  # the default threshold: nothing to say


def test_a_measured_calibration_says_so_and_one_from_before_the_record_is_scored_as_before(calibrated, tiny_synth,
                                                                                          tmp_path):
    """A calibration on enough clips says "measured": true; one written before the sidecar recorded it has no field
    and identify answers as it always did. A record that is not true or false is a damaged sidecar."""
    _, calibrated_index, _ = calibrated
    index = tmp_path / "copy.faiss"
    shutil.copy(calibrated_index, index)
    meta = json.loads(sidecar_path(calibrated_index).read_text())
    clip = next((tiny_synth / "unseen" / "test").rglob("*.pt"))

    def answer_with(calibration: dict):
        sidecar_path(index).write_text(json.dumps(meta | {"calibration": calibration}))
        return invoke("identify", "--index", index, "--json", clip), invoke("identify", "--index", index, clip)

    measured = meta["calibration"] | {"far_measured": True, "clips": 100}
    as_json, table = answer_with(measured)
    assert json.loads(as_json.stdout)["threshold"]["measured"] is True and table.stderr == "", table.output
    old = {key: value for key, value in meta["calibration"].items() if key != "far_measured"}
    as_json, table = answer_with(old)
    assert json.loads(as_json.stdout)["threshold"] == {"value": round(old["value"], 6), "source": "calibrated"}
    assert table.exit_code == 0 and table.stderr == "", table.output
    as_json, _ = answer_with(meta["calibration"] | {"far_measured": "no"})
    assert as_json.exit_code == 2 and "sidecar calibration 'far_measured' must be true or false" in as_json.output
    assert len(as_json.output.strip().splitlines()) == 1, as_json.output


def test_calibrate_records_whether_its_false_alarm_rate_was_measured():
    rng = np.random.default_rng(0)

    def record(clips: int) -> dict:
        scores = {"genuine": rng.normal(1, 0.1, clips), "impostor": rng.normal(0, 0.1, clips),
                  "top": rng.normal(1, 0.1, clips), "correct": np.ones(clips, bool)}
        return calibrate(scores, 0.05, "none", "test")

    assert record(19)["far_measured"] is False and unresolved_far(record(19)) is not None
    assert record(20)["far_measured"] is True and unresolved_far(record(20)) is None
