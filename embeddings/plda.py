"""Two-covariance PLDA (Ioffe 2006), scored the way Kaldi's ``ivector-plda-scoring`` scores a speaker
enrolled from several utterances.

A speaker is a point y ~ N(μ, B) and each of its utterances is x = y + ε, ε ~ N(0, W). The
transform T makes W the identity and B diagonal (ψ), so every dimension is scored on its own. A
speaker enrolled from n utterances with mean m (in T's coordinates) predicts its next utterance as
N(nψ/(nψ+1)·m, 1 + ψ/(nψ+1)); the score of a query is the log-likelihood ratio of it under that
against the population, N(0, 1 + ψ). Unlike a cosine to a centroid, it knows how many clips an
entry was enrolled from: the mean of four clips is a less certain picture of a voice than the mean
of sixteen, so its distribution is wider. That is what keeps a newcomer enrolled from a few clips
from losing its own test clips to trained speakers enrolled from many.

No maintained Python package ships PLDA on its own (SpeechBrain's needs the whole framework), so it
is written here from the model's closed form; the parameters are moment estimates from labelled
vectors, the initialisation Kaldi's EM starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxaug.errors import VoxaugError

MIN_VARIANCE = 1e-6


@dataclass
class SpeakerModels:
    """Per speaker (C, D), (C, D), (C,): a query q scores ``q² · square + q · linear + constant`` minus the population's."""

    square: np.ndarray
    linear: np.ndarray
    constant: np.ndarray

    def rows(self, rows: np.ndarray) -> "SpeakerModels":
        return SpeakerModels(self.square[rows], self.linear[rows], self.constant[rows])


@dataclass
class Plda:
    """``mean`` (D,), ``transform`` (D, D) and ``psi`` (D,): the model in T's coordinates."""

    mean: np.ndarray
    transform: np.ndarray
    psi: np.ndarray

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray) -> "Plda":
        """Moment estimates from (N, D) vectors of at least two speakers, some with two or more vectors."""
        vectors, labels = np.asarray(vectors, dtype=np.float64), np.asarray(labels)
        names, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(names) < 2 or len(vectors) <= len(names):
            raise VoxaugError(f"PLDA needs at least 2 speakers and more vectors than speakers (some speaker with two), "
                              f"got {len(vectors)} of {len(names)}")
        mean = vectors.mean(axis=0)
        centred = vectors - mean
        class_means = np.zeros((len(names), vectors.shape[1]))
        np.add.at(class_means, codes, centred)
        class_means /= counts[:, None]
        offsets = centred - class_means[codes]
        within = offsets.T @ offsets / (len(vectors) - len(names))
        between = np.cov(class_means, rowvar=False) - within * np.mean(1.0 / counts)
        values, vectors_w = np.linalg.eigh(within)
        whiten = vectors_w @ np.diag(1.0 / np.sqrt(np.maximum(values, MIN_VARIANCE))) @ vectors_w.T
        whitened_between = whiten @ between @ whiten.T
        psi, rotation = np.linalg.eigh((whitened_between + whitened_between.T) / 2)
        return cls(mean.astype(np.float32), (rotation.T @ whiten).astype(np.float32),
                   np.maximum(psi, MIN_VARIANCE).astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, dtype=np.float64) - self.mean) @ self.transform.T

    def speaker_models(self, means: np.ndarray, counts: np.ndarray) -> "SpeakerModels":
        """The predictive distributions of speakers enrolled from ``counts[c]`` vectors whose mean is ``means[c]``,
        in the form :meth:`score` takes (an index computes them once, not per query)."""
        counts = np.asarray(counts, dtype=np.float64)[:, None]  # (C, 1)
        if (counts < 1).any():
            raise VoxaugError("a PLDA speaker model needs at least one enrolment vector")
        psi = self.psi.astype(np.float64)
        shrunk = counts * psi / (counts * psi + 1) * self.project(means)  # (C, D) predictive means
        variance = 1 + psi / (counts * psi + 1)  # (C, D) predictive variances
        return SpeakerModels(-0.5 / variance, shrunk / variance,
                             -0.5 * ((shrunk**2 / variance).sum(axis=1) + np.log(variance).sum(axis=1)))

    def score(self, models: "SpeakerModels", queries: np.ndarray) -> np.ndarray:
        """Log-likelihood ratios (N queries, C speakers): log N(q; predictive) - log N(q; population), expanded
        so that both terms are products with the query and its square."""
        queries = self.project(queries)  # (N, D)
        return (queries**2) @ models.square.T + queries @ models.linear.T + models.constant \
            - self._population(queries)[:, None]

    def speaker_scores(self, means: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Log-likelihood ratios (N queries, C speakers) of each query against each speaker enrolled from
        ``counts[c]`` vectors whose mean is ``means[c]``."""
        return self.score(self.speaker_models(means, counts), queries)

    def pair_scores(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Log-likelihood ratio of each row pair (N,) being one speaker, one vector each (symmetric): ``score``
        of ``second[i]`` against ``first[i]`` enrolled alone, row by row rather than every pair."""
        models = self.speaker_models(first, np.ones(len(first)))
        queries = self.project(second)
        return ((queries**2 * models.square).sum(axis=1) + (queries * models.linear).sum(axis=1) + models.constant
                - self._population(queries))

    def _population(self, projected: np.ndarray) -> np.ndarray:
        """log N(q; 0, 1 + psi) of projected queries (N,), the denominator of every ratio."""
        variance = 1 + self.psi.astype(np.float64)
        return -0.5 * ((projected**2 / variance).sum(axis=1) + np.log(variance).sum())

    def to_json(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "psi": [float(v) for v in self.psi],
                "transform": [[float(v) for v in row] for row in self.transform]}
