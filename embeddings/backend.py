"""The scoring back end: what turns a network embedding into the vector that is scored.

``embed`` fits it on the training speakers' embeddings and the index's sidecar stores it as plain
arrays (never pickle), so that ``enroll`` and ``identify`` apply the same transform to every
enrolment and every query and the score stays a cosine in the new space:

- ``none``: the embedding as it is;
- ``center``: minus the training mean (speaker-independent offsets cancel in the cosine);
- ``lda``: centred, then projected by linear discriminant analysis (scikit-learn, Ledoit-Wolf
  shrinkage) onto the directions that separate speakers, scaled so that the within-speaker
  covariance as scikit-learn estimates it is the identity (WCCN whitening): session and content
  variation weigh less. That estimate shrinks each speaker's covariance on its own, from its few
  clips, towards its diagonal, so correlated within-speaker variation is only partly whitened;
- ``plda``: the ``lda`` space, scored by a two-covariance PLDA fitted there (``voxaug.embeddings.plda``):
  a log-likelihood ratio that knows how many clips each speaker was enrolled from, instead of a cosine.

Adaptive score normalisation (AS-norm) uses a cohort of embeddings in the same space: a trial's
score s(e, q) becomes ½[(s − μ_e)/σ_e + (s − μ_q)/σ_q], where μ and σ are the mean and standard
deviation of each side's K highest cohort scores (cohort entries of the enrolled speaker
themselves left out). It rescales every speaker's scores by how close impostors come to them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from voxaug.embeddings.plda import Plda
from voxaug.errors import VoxaugError

BACKENDS = ("none", "center", "lda", "plda")
SCORE_NORMS = ("none", "asnorm")
BACKEND_VERSION = 1
DEFAULT_LDA_DIM = 64
DEFAULT_COHORT_TOP_K = 20


def unit(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


@dataclass
class ScoringBackend:
    """``apply`` maps (N, input_dim) embeddings to unit rows of (N, output_dim), where ``pair_scores`` scores by
    cosine or, for ``plda``, by PLDA log-likelihood ratio (``plda`` also scores speakers, see ``Plda``)."""

    kind: str = "none"
    mean: np.ndarray | None = None  # (E,)
    projection: np.ndarray | None = None  # (E, D)
    plda: Plda | None = None

    def __post_init__(self) -> None:
        check_choice("--backend", self.kind, BACKENDS)

    @property
    def score_name(self) -> str:
        """What a plain (not AS-normalised) score of this back end is: ``cosine`` or ``plda``."""
        return "plda" if self.plda is not None else "cosine"

    def pair_scores(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Score of each row pair (N,) of unit vectors in this back end's space, one clip on each side."""
        if self.plda is not None:
            return self.plda.pair_scores(first, second)
        return np.einsum("ij,ij->i", np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64))

    def output_dim(self, input_dim: int) -> int:
        return input_dim if self.projection is None else int(self.projection.shape[1])

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if self.mean is not None:
            if x.shape[1] != self.mean.shape[0]:
                raise VoxaugError(f"embedding dimension {x.shape[1]} does not match the back end's {self.mean.shape[0]}")
            x = x - self.mean
        if self.projection is not None:
            x = x @ self.projection
        return unit(x)

    @classmethod
    def fit(cls, kind: str, embeddings: np.ndarray, labels: np.ndarray, lda_dim: int = DEFAULT_LDA_DIM) -> "ScoringBackend":
        """Fit on training embeddings (N, E) with their speaker labels (N,)."""
        cls(kind)  # refuses an unknown kind
        if kind == "none":
            return cls("none")
        embeddings = np.asarray(embeddings, dtype=np.float64)
        mean = embeddings.mean(axis=0)
        if kind == "center":
            return cls("center", mean.astype(np.float32))
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        speakers = check_fit_labels(kind, labels, embeddings.shape[1])
        check_lda_dim(lda_dim)
        dim = min(lda_dim, speakers - 1, embeddings.shape[1])
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=dim)
        try:
            with warnings.catch_warnings():  # a speaker of one clip adds no within-speaker scatter, and that is all
                warnings.filterwarnings("ignore", message="Only one sample available", category=UserWarning)
                lda.fit(embeddings - mean, labels)
        except np.linalg.LinAlgError as exc:  # a singular within-speaker scatter: nothing to whiten by
            refuse_too_few_clips(kind, np.unique(np.asarray(labels), return_counts=True)[1], embeddings.shape[1])
            raise VoxaugError(f"--backend {kind}: the training embeddings vary too little within speakers to fit "
                              f"it (are the clips duplicates?); pass --backend center or none") from exc
        fitted = cls("lda", mean.astype(np.float32), np.ascontiguousarray(lda.scalings_[:, :dim], dtype=np.float32))
        if kind == "plda":
            fitted = cls("plda", fitted.mean, fitted.projection, Plda.fit(fitted.apply(embeddings), np.asarray(labels)))
        return fitted

    def to_json(self) -> dict:
        values: dict = {"version": BACKEND_VERSION, "kind": self.kind}
        if self.mean is not None:
            values["mean"] = [float(v) for v in self.mean]
        if self.projection is not None:
            values["projection"] = [[float(v) for v in row] for row in self.projection]
        if self.plda is not None:
            values["plda"] = self.plda.to_json()
        return values

    @classmethod
    def from_json(cls, values: object, where: str) -> "ScoringBackend":
        """The back end a sidecar stores; anything malformed is refused naming ``where``."""
        if not isinstance(values, dict) or values.get("version") != BACKEND_VERSION or values.get("kind") not in BACKENDS:
            raise VoxaugError(f"{where}: 'backend' must be a version-{BACKEND_VERSION} back end of kind "
                              f"{', '.join(BACKENDS)}")
        mean = _array(values.get("mean"), 1, where, "backend mean")
        projection = _array(values.get("projection"), 2, where, "backend projection")
        plda = _plda(values.get("plda"), where)
        needs = {"none": (False, False, False), "center": (True, False, False), "lda": (True, True, False),
                 "plda": (True, True, True)}[values["kind"]]
        if (mean is not None, projection is not None, plda is not None) != needs:
            raise VoxaugError(f"{where}: a {values['kind']!r} back end has the wrong arrays")
        if projection is not None and projection.shape[0] != mean.shape[0]:
            raise VoxaugError(f"{where}: back end projection has {projection.shape[0]} rows for a mean of {mean.shape[0]}")
        if projection is not None and not projection.any():  # else a query is refused as a zero row, not this file
            raise VoxaugError(f"{where}: back end projection is all zeros, which maps every embedding to zero")
        if plda is not None and plda.dim != projection.shape[1]:
            raise VoxaugError(f"{where}: the PLDA model has dimension {plda.dim}, the projection {projection.shape[1]}")
        return cls(values["kind"], mean, projection, plda)


@dataclass
class Cohort:
    """AS-norm cohort: unit vectors in the back end's space with their speakers, and the top-K size."""

    vectors: np.ndarray  # (M, D) unit rows
    labels: list[str] = field(default_factory=list)
    top_k: int = DEFAULT_COHORT_TOP_K
    source: str = ""

    def __post_init__(self) -> None:
        check_top_k(self.top_k)
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.labels):
            raise VoxaugError(f"cohort: {len(self.labels)} labels for vectors of shape {self.vectors.shape}")

    def stats(self, vectors: np.ndarray, exclude: list[str | None] | None = None, top_k: int | None = None,
              also_exclude: list[str | None] | None = None, scores: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of each row's ``top_k`` highest cohort scores, (N,) each;
        ``exclude[i]`` (and ``also_exclude[i]``) name speakers whose cohort entries row i must not be
        scored against: the enrolled speaker itself, or both sides of a trial. The scores are cosines of
        ``vectors`` unless given (N, M), as a PLDA back end gives them."""
        top_k = min(top_k or self.top_k, len(self.labels))
        if scores is None:
            scores = np.asarray(vectors, dtype=np.float32) @ self.vectors.T  # (N, M)
        counts = np.full(len(scores), top_k)  # each row's own K: its excluded entries may leave it fewer
        if exclude is not None:
            cohort_labels = np.asarray(self.labels)
            own = np.zeros(scores.shape, dtype=bool)
            for names in (exclude, also_exclude) if also_exclude is not None else (exclude,):
                own |= np.asarray([name if name is not None else "" for name in names])[:, None] == cohort_labels[None, :]
            scores = np.where(own, -np.inf, scores)
            counts = np.minimum(top_k, (~own).sum(axis=1))
        if top_k < 2 or (len(counts) and counts.min() < 2):
            raise VoxaugError("the AS-norm cohort has too few entries from other speakers (need at least 2)")
        widest = int(counts.max(initial=2))
        top = -np.partition(-scores, widest - 1, axis=1)[:, :widest]  # (N, widest): each row's highest
        kept = np.isfinite(top)  # a row of fewer than `widest` entries has exactly its own K finite ones here
        count = counts.astype(top.dtype)
        mean = np.where(kept, top, 0).sum(axis=1) / count
        spread = np.sqrt((np.where(kept, top - mean[:, None], 0) ** 2).sum(axis=1) / count)
        return mean, np.maximum(spread, 1e-6)

    def to_json(self) -> dict:
        return {"version": BACKEND_VERSION, "top_k": self.top_k, "source": self.source, "labels": list(self.labels),
                "vectors": [[float(v) for v in row] for row in self.vectors]}

    @classmethod
    def from_json(cls, values: object, where: str) -> "Cohort":
        if not isinstance(values, dict) or values.get("version") != BACKEND_VERSION:
            raise VoxaugError(f"{where}: 'cohort' must be a version-{BACKEND_VERSION} AS-norm cohort")
        vectors = _array(values.get("vectors"), 2, where, "cohort vectors")
        labels = values.get("labels")
        if vectors is None or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise VoxaugError(f"{where}: the cohort needs vectors and speaker labels")
        top_k = values.get("top_k")
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise VoxaugError(f"{where}: cohort top_k must be a whole number, got {top_k!r}")
        if not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
            raise VoxaugError(f"{where}: cohort vectors must be unit length")
        return cls(vectors, labels, top_k, str(values.get("source", "")))


def check_fit_labels(kind: str, labels: np.ndarray, dim: int | None = None) -> int:
    """The refusals of ``fit`` that the training split's speaker labels (and the embedding dimension ``dim``, when
    known) decide alone, so that ``embed --index`` makes them before anything is embedded; the number of speakers."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    speakers = len(counts)
    if kind not in ("lda", "plda"):
        return speakers
    if speakers < 3:
        raise VoxaugError(f"--backend {kind} needs at least 3 training speakers, the data has {speakers}")
    if counts.sum() <= speakers:
        raise VoxaugError(f"--backend {kind} needs more training utterances than speakers (some speaker with two), "
                          f"got {counts.sum()} of {speakers}; pass --backend center or none")
    if dim is not None:
        refuse_too_few_clips(kind, counts, dim)
    return speakers


def refuse_too_few_clips(kind: str, counts: np.ndarray, dim: int) -> None:
    """Ledoit-Wolf does not shrink the covariance of two clips: each speaker of two adds one direction only, so with
    no speaker of three, fewer such speakers than ``dim`` dimensions leave the within-speaker scatter singular."""
    most, pairs = int(counts.max()), int((counts == 2).sum())
    if most < 3 and pairs < dim:
        raise VoxaugError(f"--backend {kind}: no speaker has more than {most} utterances in the training split and "
                          f"{pairs} speakers have 2, too few to estimate within-speaker variation in {dim} dimensions; "
                          f"it needs some speaker with at least 3, or at least {dim} speakers with 2; pass --backend "
                          "center or none")


def check_lda_dim(lda_dim: object) -> int:
    """At least 2: scores are cosines of unit vectors, and in one dimension every one of them is ±1."""
    if isinstance(lda_dim, bool) or not isinstance(lda_dim, int) or lda_dim < 2:
        raise VoxaugError(f"--lda-dim must be a whole number >= 2 (in one dimension every cosine is ±1), got {lda_dim!r}")
    return lda_dim


def pair_as_norm(scores: np.ndarray, first_stats: tuple[np.ndarray, np.ndarray],
                 second_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """AS-norm of trial scores s, given each side's (mean, std) of its top-K cohort scores:
    ½[(s − μ₁)/σ₁ + (s − μ₂)/σ₂], elementwise (the statistics broadcast against ``scores``)."""
    scores = np.asarray(scores, dtype=np.float64)
    (first_mean, first_std), (second_mean, second_std) = first_stats, second_stats
    return 0.5 * ((scores - first_mean) / first_std + (scores - second_mean) / second_std)


def as_norm(scores: np.ndarray, query_stats: tuple[np.ndarray, np.ndarray],
            model_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """AS-norm of raw scores (N queries, C candidates): ½[(s − μ_q)/σ_q + (s − μ_e)/σ_e]."""
    query = tuple(np.asarray(v, dtype=np.float64)[:, None] for v in query_stats)
    model = tuple(np.asarray(v, dtype=np.float64)[None, :] for v in model_stats)
    return pair_as_norm(scores, query, model)


def check_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 2:
        raise VoxaugError(f"--cohort-top-k must be a whole number >= 2, got {top_k!r}")
    return top_k


def check_choice(option: str, value: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise VoxaugError(f"{option} {value!r} is not known; accepted: {', '.join(accepted)}")
    return value


def _plda(values: object, where: str) -> Plda | None:
    if values is None:
        return None
    if not isinstance(values, dict):
        raise VoxaugError(f"{where}: back end 'plda' must be an object of arrays")
    mean = _array(values.get("mean"), 1, where, "PLDA mean")
    transform = _array(values.get("transform"), 2, where, "PLDA transform")
    psi = _array(values.get("psi"), 1, where, "PLDA psi")
    if mean is None or transform is None or psi is None:
        raise VoxaugError(f"{where}: the PLDA model needs mean, transform and psi")
    if transform.shape != (len(mean), len(mean)) or psi.shape != mean.shape or not (psi > 0).all():
        raise VoxaugError(f"{where}: the PLDA model needs a square transform and positive psi of its mean's dimension")
    return Plda(mean, transform, psi)


def _array(values: object, ndim: int, where: str, what: str) -> np.ndarray | None:
    if values is None:
        return None
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer too large for a float
        raise VoxaugError(f"{where}: {what} is not an array of numbers") from exc
    if array.ndim != ndim or array.size == 0 or not np.isfinite(array).all():
        raise VoxaugError(f"{where}: {what} must be a finite {ndim}-D array of numbers")
    return array
