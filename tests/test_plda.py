"""PLDA scoring: the closed form against the model's joint Gaussian, its fit, and a PLDA index end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxaug.embeddings.backend import ScoringBackend
from voxaug.embeddings.index import SpeakerIndex, sidecar_path
from voxaug.embeddings.plda import Plda
from voxaug.embeddings.speaker_index import ScoringOptions, build_speaker_index
from voxaug.errors import VoxaugError


def log_gaussian(x: np.ndarray, covariance: np.ndarray) -> float:
    _, logdet = np.linalg.slogdet(covariance)
    return float(-0.5 * (x @ np.linalg.solve(covariance, x) + logdet + len(x) * np.log(2 * np.pi)))


def joint_llr(enrolment: np.ndarray, query: float, between: float, within: float) -> float:
    """The textbook log-likelihood ratio in one dimension: the clips share a speaker (their joint Gaussian has
    covariance B everywhere plus W on the diagonal) against the query being anyone's."""
    together = np.append(enrolment, query)
    covariance = lambda n: between * np.ones((n, n)) + within * np.eye(n)  # noqa: E731
    return (log_gaussian(together, covariance(len(together))) - log_gaussian(enrolment, covariance(len(enrolment)))
            - log_gaussian(np.array([query]), covariance(1)))


@pytest.mark.parametrize("clips", [1, 4, 16])
def test_speaker_scores_equal_the_joint_gaussian_log_likelihood_ratio(clips):
    between, within = 2.5, 0.4
    rng = np.random.default_rng(clips)
    enrolment, query = rng.normal(0.7, 0.6, clips), 1.3
    # whitening W makes the transform 1/sqrt(W) and psi = B / W, in two independent copies of the dimension
    plda = Plda(np.zeros(2, np.float32), np.eye(2, dtype=np.float32) / np.sqrt(within),
                np.full(2, between / within, np.float32))
    means = np.array([[enrolment.mean(), -enrolment.mean()]])
    score = plda.speaker_scores(means, np.array([clips]), np.array([[query, -query]]))[0, 0]
    assert score == pytest.approx(2 * joint_llr(enrolment, query, between, within), rel=1e-5)


def test_pair_scores_are_the_one_clip_speaker_score_and_symmetric():
    plda = Plda(np.zeros(3, np.float32), np.eye(3, dtype=np.float32), np.array([0.5, 2.0, 8.0], np.float32))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    pairs = plda.pair_scores(a, b)
    assert np.allclose(pairs, plda.pair_scores(b, a))
    assert np.allclose(pairs, np.diag(plda.speaker_scores(a, np.ones(5), b)))


def test_a_speaker_enrolled_from_few_clips_is_not_beaten_by_one_enrolled_from_many():
    """Same mean, different counts: a query far from that mean is likelier to be the less certain speaker's clip,
    which a cosine to the two (identical) centroids cannot tell apart."""
    plda = Plda(np.zeros(1, np.float32), np.eye(1, dtype=np.float32), np.array([4.0], np.float32))
    scores = plda.speaker_scores(np.array([[1.0], [1.0]]), np.array([2, 40]), np.array([[3.5], [1.0]]))
    assert scores[0, 0] > scores[0, 1]  # far query: the two-clip speaker's wider distribution wins
    assert scores[1, 1] > scores[1, 0]  # query on the mean: the sharper forty-clip speaker wins


def test_fit_recovers_the_model_it_was_drawn_from():
    rng = np.random.default_rng(1)
    between, within = np.array([4.0, 1.0, 0.25]), np.array([1.0, 0.5, 0.5])
    speakers = rng.normal(0, np.sqrt(between), (400, 3))
    vectors = np.repeat(speakers, 20, axis=0) + rng.normal(0, np.sqrt(within), (8000, 3))
    plda = Plda.fit(vectors, np.repeat(np.arange(400), 20))
    assert np.sort(plda.psi) == pytest.approx(np.sort(between / within), rel=0.15)
    projected = plda.project(vectors)
    offsets = projected - np.repeat(projected.reshape(400, 20, 3).mean(1), 20, axis=0)
    assert np.cov(offsets, rowvar=False) * 20 / 19 == pytest.approx(np.eye(3), abs=0.05)  # W became the identity


def test_scores_and_fit_match_the_two_covariance_model_with_correlated_covariances():
    """Oracle beyond one axis-aligned dimension: data drawn from a PLDA model with full between- and within-speaker
    covariances and uneven clip counts. The fit recovers B and W (as its mean, transform and psi imply them), and its
    scores are the joint Gaussian log-likelihood ratio of (enrolment mean of n clips, query) under those matrices."""
    rng = np.random.default_rng(0)
    dim, speakers = 4, 3000
    a, c = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    between, within, centre = a @ a.T + 0.5 * np.eye(dim), 0.3 * c @ c.T + 0.2 * np.eye(dim), rng.normal(size=dim)
    counts = rng.integers(2, 12, speakers)
    labels = np.repeat(np.arange(speakers), counts)
    vectors = rng.multivariate_normal(centre, between, speakers)[labels] \
        + rng.multivariate_normal(np.zeros(dim), within, len(labels))
    plda = Plda.fit(vectors, labels)
    inverse = np.linalg.inv(plda.transform.astype(np.float64))
    fitted_between, fitted_within = inverse @ np.diag(plda.psi.astype(np.float64)) @ inverse.T, inverse @ inverse.T
    assert np.linalg.norm(fitted_between - between) < 0.1 * np.linalg.norm(between)
    assert np.linalg.norm(fitted_within - within) < 0.05 * np.linalg.norm(within)
    means, clips = rng.normal(size=(4, dim)) + centre, np.array([1, 3, 16, 100])
    queries = rng.multivariate_normal(centre, between + within, 5)
    b, w, zero = fitted_between, fitted_within, np.zeros((dim, dim))
    for speaker, (mean, n) in enumerate(zip(means, clips)):
        marginal = [[b + w / n, zero], [zero, b + w]]
        joint = [[b + w / n, b], [b, b + w]]
        for query, score in zip(queries, plda.speaker_scores(means, clips, queries)[:, speaker]):
            z = np.r_[mean, query] - np.r_[plda.mean, plda.mean]
            assert score == pytest.approx(log_gaussian(z, np.block(joint)) - log_gaussian(z, np.block(marginal)),
                                          abs=1e-6)


def test_fit_refuses_too_little_data():
    with pytest.raises(VoxaugError, match="at least 2 speakers"):
        Plda.fit(np.ones((3, 2)), np.array(["a", "a", "a"]))
    with pytest.raises(VoxaugError, match="more vectors than speakers"):  # one vector per speaker: no within-speaker spread
        Plda.fit(np.eye(3), np.array(["a", "b", "c"]))


def clustered(speakers: int = 8, per: int = 12, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = np.repeat(rng.standard_normal((speakers, dim)), per, axis=0) + 0.5 * rng.standard_normal((speakers * per, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), [f"s{i}" for i in range(speakers)
                                                                                          for _ in range(per)]


def test_a_plda_index_scores_by_plda_and_stores_the_model(tmp_path):
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25,
                                ScoringOptions("plda", lda_dim=5, cohort_top_k=4))
    index.add("newcomer", vectors[:3] * -1)  # three clips of a voice no one trained on
    query = vectors[5:9]
    hits = index.search(query, 3)
    rows = np.array([index.labels.index(name) for name, _ in hits[0]])
    expected = index.backend.plda.speaker_scores(index.vectors[rows] * np.array([index.mean_norms[index.labels[r]] for r in rows])[:, None],
                                            np.array([index.counts[index.labels[r]] for r in rows]), index.to_space(query[:1]))[0]
    assert [score for _, score in hits[0]] == pytest.approx(list(expected), rel=1e-5)
    assert index.score_name("none") == "plda" and index.threshold("none") == (0.0, "default")
    path = tmp_path / "spk.faiss"
    index.save(path)
    loaded = SpeakerIndex.load(path)
    assert loaded.backend.kind == "plda" and loaded.search(query, 3) == hits
    assert loaded.search(query, 3, score_norm="asnorm") == index.search(query, 3, score_norm="asnorm")
    meta = json.loads(sidecar_path(path).read_text())
    meta["backend"]["plda"]["psi"][0] = -1.0
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(VoxaugError, match="positive psi"):
        SpeakerIndex.load(path)


def test_asnorm_on_a_plda_index_normalises_plda_scores():
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25,
                                ScoringOptions("plda", lda_dim=5, cohort_top_k=4))
    query = index.to_space(vectors[:1])
    name, normed = index.search(vectors[:1], 1, score_norm="asnorm")[0][0]
    row = index.labels.index(name)
    raw = index.speaker_scores(query, np.array([row]))[0, 0]
    cohort_scores = index.backend.plda.speaker_scores(index.cohort.vectors, np.ones(len(index.cohort.labels)), query)[0]
    top = np.sort(cohort_scores)[::-1][:4]
    model_mean, model_std = index.cohort_stats[name]
    assert normed == pytest.approx(0.5 * ((raw - top.mean()) / top.std() + (raw - model_mean) / model_std), rel=1e-5)


@pytest.mark.parametrize("kind", ["lda", "plda"])
def test_asnorm_with_another_cohort_top_k_normalises_each_candidate_by_its_own_statistics(kind):
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "speaker", False, {}, {}, 0, 0.25,
                                ScoringOptions(kind, lda_dim=5, cohort_top_k=4))
    queries = vectors[::7]  # several queries, so the statistics serve each of them
    hits = index.search(queries, 3, score_norm="asnorm", cohort_top_k=6)
    space = index.to_space(queries)
    for query, ranked in zip(space, hits):
        for name, normed in ranked:
            row = index.labels.index(name)
            if kind == "plda":
                raw = index.speaker_scores(query[None], np.array([row]))[0, 0]
                query_scores = index.cohort_scores(query[None])
                model_scores = index.speaker_scores(index.cohort.vectors, np.array([row])).T
            else:
                raw, query_scores, model_scores = float(query @ index.vectors[row]), None, None
            query_mean, query_std = index.cohort.stats(query[None], top_k=6, scores=query_scores)
            model_mean, model_std = index.cohort.stats(index.vectors[[row]], exclude=[name], top_k=6, scores=model_scores)
            expected = 0.5 * ((raw - query_mean[0]) / query_std[0] + (raw - model_mean[0]) / model_std[0])
            assert normed == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert hits != index.search(queries, 3, score_norm="asnorm")  # K 6 is not the stored K 4


def test_an_utterance_plda_index_scores_each_utterance_as_its_own_speaker():
    vectors, labels = clustered()
    index = build_speaker_index(vectors, labels, None, "utterance", False, {}, {}, 0, 0.25,
                                ScoringOptions("plda", lda_dim=5, cohort_top_k=4))
    name, score = index.search(vectors[:1], 1)[0][0]
    space = index.to_space(vectors[:1])
    rows = [i for i, label in enumerate(index.labels) if label == name]
    best = max(index.backend.pair_scores(space, index.vectors[[r]])[0] for r in rows)
    assert name == "s0" and score == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("kind", ["lda", "plda"])
def test_a_back_end_without_two_utterances_of_any_speaker_is_refused_in_words(kind):
    vectors, labels = clustered(speakers=5, per=1)
    with pytest.raises(VoxaugError, match=f"--backend {kind} needs more training utterances than speakers"):
        ScoringBackend.fit(kind, vectors, np.array(labels))


def test_plda_backend_fits_on_the_lda_space():
    vectors, labels = clustered()
    backend = ScoringBackend.fit("plda", vectors, np.array(labels), lda_dim=5)
    assert backend.projection.shape == (16, 5) and backend.plda.dim == 5 and backend.score_name == "plda"
    lda = ScoringBackend.fit("lda", vectors, np.array(labels), lda_dim=5)
    assert np.allclose(backend.apply(vectors), lda.apply(vectors))
