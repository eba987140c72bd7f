"""The speaker index: FAISS inner product over unit vectors (= cosine), stored as FILE plus a JSON
sidecar FILE.json that ties it to the checkpoint and front end that made its embeddings.

By default each speaker is one vector, the renormalised mean of its enrolment embeddings. The
sidecar keeps each speaker's count and the norm of that mean, so enrolling more clips updates the
centroid exactly: the running sum is ``count * norm * centroid``. ``per="utterance"`` keeps every
embedding and answers by voting among the nearest neighbours.

Vectors live in the space of the index's scoring back end (``voxaug.embeddings.backend``): ``add``
and ``search`` take the network's embeddings and apply the stored back end themselves, so every
enrolment and every query is scored the same way. FAISS finds the nearest speakers by cosine; a
``plda`` back end re-scores them by PLDA log-likelihood ratio, from each speaker's mean and count.
With an AS-norm cohort, each enrolled speaker's cohort statistics are computed once, when it is
enrolled, and a query costs one cohort product.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from voxaug.embeddings.backend import SCORE_NORMS, Cohort, ScoringBackend, as_norm, check_choice
from voxaug.embeddings.plda import SpeakerModels
from voxaug.errors import VoxaugError, file_error, not_a_file
from voxaug.safeio import (
    TMP_SUFFIX, atomic_write_bytes, atomic_write_text, clean_stale_temps, ensure_folder, exclusive_lock,
    finite_number, fsync_dir, probe_writable, read_json, real_path, same_name, sha256_file, write_error,
)

if TYPE_CHECKING:
    import faiss

INDEX_FORMAT = "voxaug-speaker-index"
INDEX_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 adds the scoring back end, the AS-norm cohort and its statistics, and the calibration;
a version-1 sidecar (none of these) still loads and scores plain cosines as before."""
RESCORED_CANDIDATES = 200
"""With AS-norm or a PLDA back end, the nearest speakers by cosine that are re-scored (all of them in smaller indexes)."""
DEFAULT_THRESHOLDS = {"cosine": 0.5, "plda": 0.0, "asnorm": 2.0}
"""Decision thresholds used until ``evaluate --calibrate`` writes one, by score: a cosine, a PLDA log-likelihood
ratio (0: same speaker and a stranger equally likely), or an AS-norm score."""
MODES = ("speaker", "utterance")
MIN_MEAN_NORM = 1e-6
"""Shortest mean of a speaker's unit embeddings that is enrolled: far above float32 rounding, far below the mean of
any real speaker's clips (even a million random directions average to about 1e-3)."""
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 128
"""Candidates HNSW keeps while searching (FAISS defaults to 16); benchmarks/embed_bench.py measures recall against it."""
HNSW_LEVEL_SEED = 12345
"""FAISS's own seed for HNSW levels; a graph grown in place draws from it plus its row count (``_grow``)."""
FAISS_KINDS = (b"IxFI", b"IHNf")  # the FAISS headers of IndexFlatIP and IndexHNSWFlat, the only kinds written
FAISS_FLAT_KINDS = (b"IxFI", b"IxF2", b"IxFl")  # IndexFlat by metric: the storage of an IndexHNSWFlat's vectors
FAISS_HEADER = struct.Struct("<4siqqq?i")
"""What FAISS writes first for every index: its kind, dimension, vector count, two unused counts, whether it is
trained, and its metric (then a float argument for metrics past L2)."""
HNSW_GRAPH_ITEMS = (8, 4, 4, 8, 4)
"""Item sizes of the arrays an HNSW graph is written as (level probabilities, neighbours per level, levels, offsets,
neighbours), each after its count; five int32 settings and the flat index of its vectors follow."""
HNSW_SETTINGS_BYTES = 5 * 4
PENDING_SUFFIX = ".pending"
LOAD_ATTEMPTS = 5  # reads of the sidecar and index pair while writers keep committing


def sidecar_path(path: str | Path) -> Path:
    """FILE.json beside the index file itself: through a symbolic link, beside the file it points to."""
    return Path(f"{real_path(path)}.json")


def located_model_record(checkpoint: dict, index_path: Path) -> dict:
    """The sidecar's record of the model with the model's path from the index's folder as well, so that an index moved
    or unpacked elsewhere together with its model (a renamed folder, a tarball) still finds it. Where the recorded path
    is gone (both were moved since), or where the one read with the record still leads to a file (a copied project
    whose original, perhaps trained on since, is still there), that one is kept."""
    named, kept = checkpoint.get("path"), checkpoint.get("relative_path")
    if (kept and (index_path.parent / kept).is_file()) or not named or not Path(named).is_file():
        return checkpoint
    try:
        relative = os.path.relpath(named, index_path.parent)
    except ValueError:  # on another Windows drive: no relative path leads there
        return {key: value for key, value in checkpoint.items() if key != "relative_path"}
    return {**checkpoint, "relative_path": Path(relative).as_posix()}


def model_places(checkpoint: dict, index_path: str | Path) -> list[Path]:
    """Where the model an index's sidecar records may be, each place once: its recorded path, its place relative to
    the index (the two moved together), and a file of its name beside the index (copied beside a deployed model)."""
    named = checkpoint.get("path") or ""
    folder = real_path(index_path).parent
    candidates = [Path(named)] if named else []
    if checkpoint.get("relative_path"):
        candidates.append(Path(os.path.normpath(folder / checkpoint["relative_path"])))  # from the real folder: no link
    if named:
        candidates.append(folder / recorded_file_name(named))
    places: dict[str, Path] = {}
    for place in candidates:
        places.setdefault(os.path.realpath(place), place)
    return list(places.values())


def recorded_file_name(named: str) -> str:
    """The file name of a recorded model path, also of one recorded on Windows (``C:\\runs\\best.pt``, read here on
    POSIX, where a backslash is no separator): an index built there and copied beside its model still finds it."""
    windows = PureWindowsPath(named)
    return windows.name if windows.drive else Path(named).name


def not_index_file(path: str | Path) -> Path | None:
    """The file at ``path``, or at its sidecar's place, that exists and is plainly no part of a speaker index (an index
    starts with a FAISS header, a sidecar is JSON of the index format), or None. A damaged sidecar beside an index is
    not named: it may be this index's, which --replace rebuilds; alone, it is some other file (a sidecar is written
    whole, before the index, so no write of one cut short leaves it damaged)."""
    path, side = Path(path), sidecar_path(path)
    for place in (path, side):  # a pipe or a device such as /dev/null: the index's rename would put a file there
        if place.exists() and not place.is_file() and not place.is_dir():
            return place
    if path.is_file() and file_header(path) not in FAISS_KINDS:
        return path
    if side.is_file():
        try:
            meta = read_json(side, "index sidecar")
        except VoxaugError:
            return None if path.is_file() else side
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            return side
    return None


def file_header(path: Path) -> bytes:
    """The first 4 bytes of ``path``: the FAISS header of an index file (:data:`FAISS_KINDS`)."""
    with open(path, "rb") as handle:
        return handle.read(4)


def check_asnorm_mode(mode: str) -> None:
    """AS-norm statistics are stored per speaker, so an index of every utterance cannot use them."""
    if mode != "speaker":
        raise VoxaugError("--score-norm asnorm works on speaker indexes (--per speaker), not --per utterance")


def unit_rows(vectors: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """float32 rows scaled to unit length; zero or non-finite rows are refused."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise VoxaugError(f"{what}: expected a 2-D array (N, dim), got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.isfinite(vectors).all() or (norms == 0).any():
        raise VoxaugError(f"{what}: rows must be finite and non-zero")
    return vectors / norms


UTTERANCE_VOTERS = 10
"""In utterance mode, ``identify`` ranks speakers by votes among at least this many nearest utterances."""


def check_search_top_k(top_k: object) -> int:
    """How many speakers a search lists, as a Python int (FAISS takes no numpy integer); checked by the callers
    before any clip is embedded, and by ``search`` itself."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
        raise VoxaugError(f"--top-k must be a positive whole number, got {top_k!r}")
    return int(top_k)


def voters(top_k: int) -> int:
    """How many nearest utterances vote when ``top_k`` speakers are asked for."""
    return max(top_k, UTTERANCE_VOTERS)


def vote(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Speakers ranked by how many of ``hits`` (speaker, score) are theirs, ties broken by their best score,
    each with that best score."""
    votes = Counter(label for label, _ in hits)
    best: dict[str, float] = {}
    for label, score in hits:
        best[label] = max(best.get(label, -math.inf), score)
    return [(label, best[label]) for label in sorted(votes, key=lambda label: (-votes[label], -best[label]))]


@dataclass
class SpeakerIndex:
    """Vectors (unit rows) with one speaker label each, plus what the sidecar records."""

    dim: int
    mode: str = "speaker"
    hnsw: bool = False
    labels: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    counts: dict[str, int] = field(default_factory=dict)
    mean_norms: dict[str, float] = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)
    frontend: dict = field(default_factory=dict)
    backend: ScoringBackend = field(default_factory=ScoringBackend)
    cohort: Cohort | None = None
    cohort_stats: dict[str, list[float]] = field(default_factory=dict)
    """Each enrolled speaker's (mean, std) of its top-K cohort scores, computed when it was enrolled."""
    score_norm: str = "none"
    """What ``identify`` scores with unless told otherwise: plain cosine (``none``) or ``asnorm``."""
    calibration: dict = field(default_factory=dict)
    """The threshold ``evaluate --calibrate`` chose: value, score_norm, target_far, source, date."""
    clip_digests: dict[str, list[str]] = field(default_factory=dict)
    """Content digests of the clips ``enroll`` added, by speaker (``clip_digest``), so that ``--append`` refuses a
    clip already counted; ``embed --index``'s training speakers and clips enrolled before 2026-11-29 have none."""
    built: faiss.Index | None = field(default=None, repr=False, compare=False)
    """The FAISS index over ``vectors`` as loaded or last built; kept so an HNSW graph is not rebuilt on every load."""
    plda_models: SpeakerModels | None = field(default=None, repr=False, compare=False)
    """Every row's PLDA predictive distribution, computed on the first PLDA search after the rows last changed."""
    cohort_models: SpeakerModels | None = field(default=None, repr=False, compare=False)
    """Each cohort utterance as a PLDA speaker enrolled from it alone, computed on the first AS-norm query."""
    _spare: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    """The buffer ``vectors`` is the start of, with room for more rows (see :meth:`_append_vectors`)."""

    def __post_init__(self) -> None:
        check_choice("--per", self.mode, MODES)
        check_choice("--score-norm", self.score_norm, SCORE_NORMS)
        if self.score_norm == "asnorm":
            self.check_asnorm()
        if self.vectors.size == 0:
            self.vectors = np.zeros((0, self.space_dim), dtype=np.float32)

    @property
    def space_dim(self) -> int:
        """Dimension of the stored vectors: the back end's output (``dim`` is the network's embedding size)."""
        return self.backend.output_dim(self.dim)

    def check_asnorm(self) -> None:
        """AS-norm needs a cohort and one vector per speaker (its statistics are stored per speaker)."""
        check_asnorm_mode(self.mode)
        if self.cohort is None:
            raise VoxaugError("--score-norm asnorm: the index has no AS-norm cohort; rebuild it with "
                              "`voxaug embed ... --index FILE --score-norm asnorm`")

    def score_name(self, score_norm: str) -> str:
        """What a search with ``score_norm`` returns: ``cosine``, ``plda`` (the back end's) or ``asnorm``."""
        return "asnorm" if score_norm == "asnorm" else self.backend.score_name

    def threshold(self, score_norm: str, option: float | None = None,
                  cohort_top_k: int | None = None) -> tuple[float, str]:
        """The decision threshold and where it came from: ``option``, ``calibrated`` or ``default``. A
        calibration holds for the score it was made with: AS-norm with another top-K is another score."""
        if option is not None:
            return float(option), "option"
        calibrated = self.calibration.get("score_norm") == score_norm and "value" in self.calibration
        if calibrated and score_norm == "asnorm" and self.cohort is not None:
            calibrated = (cohort_top_k or self.cohort.top_k) == self.calibration.get("cohort_top_k", self.cohort.top_k)
        if calibrated:
            return float(self.calibration["value"]), "calibrated"
        return DEFAULT_THRESHOLDS[self.score_name(score_norm)], "default"

    def calibration_measured(self) -> bool | None:
        """Whether ``evaluate --calibrate`` had enough held-out clips to measure the false-alarm rate its threshold is
        for (``voxaug.embeddings.calibration.far_measurable``); None for a calibration written before it was recorded,
        or none."""
        return self.calibration.get("far_measured") if "value" in self.calibration else None

    def enrolled_record(self) -> dict:
        """Who is enrolled, with how many clips: the population a calibration's threshold was picked against."""
        listing = json.dumps(sorted(self.counts.items()), separators=(",", ":"))
        return {"speakers": len(self.counts), "clips": sum(self.counts.values()),
                "sha256": hashlib.sha256(listing.encode()).hexdigest()}

    def calibration_outdated(self) -> str | None:
        """How the enrolled speakers changed since the calibration was picked, or None if they did not (or the
        calibration predates the record and the index has not changed since: see :meth:`_stamp_calibration`). The
        best wrong-speaker score, and so the false-alarm rate at the threshold, depends on who else is enrolled."""
        then = self.calibration.get("enrolled")
        if "value" not in self.calibration or then is None:
            return None
        now = self.enrolled_record()
        if now["sha256"] == then["sha256"]:
            return None
        return (f"the enrolled speakers changed since evaluate --calibrate picked its threshold ({then['speakers']} "
                f"speakers, {then['clips']} clips then; {now['speakers']} speakers, {now['clips']} clips now): "
                "its predicted rates may not hold; run evaluate --calibrate again")

    def _stamp_calibration(self) -> None:
        """Before the enrolled speakers change: a calibration written before 2026-11-29 has no ``enrolled`` record,
        so no change would ever call it outdated; it gets the record of the speakers as they are now, the ones its
        threshold was picked against as far as anyone can tell, and is compared with it from then on."""
        if "value" in self.calibration and "enrolled" not in self.calibration:
            self.calibration["enrolled"] = self.enrolled_record()

    # ---- building --------------------------------------------------------------------------
    @property
    def speakers(self) -> list[str]:
        return sorted(self.counts)

    def spellings(self, names: Iterable[str]) -> dict[str, str]:
        """Each of ``names`` as the index spells that speaker: names that differ only in Unicode normalisation (é as
        one code point, or e and a combining accent, as macOS writes folder names) look alike and are one speaker;
        a name not enrolled comes back as given, so that identify answers a speaker by the spelling its folder (the
        one evaluate's --test and --impostors folders are compared with) has on disk."""
        enrolled = {same_name(label): label for label in self.counts}
        return {name: name if name in self.counts else enrolled.get(same_name(name), name) for name in names}

    def spelled(self, names: Iterable[str]) -> list[str]:
        """``names`` in order, each as the index spells that speaker (:meth:`spellings`): labels of clips from speaker
        folders (evaluate's --test, --impostors, a dataset's validation split) compared with the index's labels."""
        names = list(names)
        spelling = self.spellings(set(names))
        return [spelling[name] for name in names]

    def to_space(self, embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
        """The network's embeddings (N, dim) as unit rows in the back end's space (N, space_dim)."""
        embeddings = unit_rows(embeddings, what)
        if embeddings.shape[1] != self.dim:
            raise VoxaugError(f"{what}: dimension {embeddings.shape[1]} does not match the index's {self.dim}"
                              + (f" (the network's; the index applies its {self.backend.kind} back end itself)"
                                 if self.backend.kind != "none" else ""))
        return unit_rows(self.backend.apply(embeddings), what) if self.backend.kind != "none" else embeddings

    def new_clips(self, speaker: str, digests: list[str]) -> list[int]:
        """Positions in ``digests`` of clips ``speaker`` was not already enrolled from (as far as the index recorded)."""
        recorded = set(self.clip_digests.get(speaker, ()))
        return [i for i, digest in enumerate(digests) if digest not in recorded]

    def clip_owners(self) -> dict[str, str]:
        """Each recorded clip digest -> the speaker enrolled from it."""
        return {digest: speaker for speaker, recorded in self.clip_digests.items() for digest in recorded}

    def add(self, speaker: str, embeddings: np.ndarray, append: bool = False, digests: list[str] | None = None) -> None:
        """Enrol ``speaker`` from the network's embeddings (N, dim); with ``append``, add to an existing one.
        ``digests`` (one per row, ``clip_digest``) are recorded; a clip already recorded for the speaker is refused."""
        if speaker in self.counts and not append:
            raise VoxaugError(f"speaker {speaker!r} is already enrolled; pass --append to add clips to it")
        if digests is not None:
            if len(digests) != len(embeddings):
                raise VoxaugError(f"{speaker}: {len(digests)} clip digests for {len(embeddings)} embeddings")
            if len(self.new_clips(speaker, digests)) < len(digests):
                raise VoxaugError(f"{speaker}: some of the clips were already enrolled for this speaker and would "
                                  "count twice (nothing was written)")
        embeddings = self.to_space(embeddings)
        if self.mode == "speaker":
            mean, count = self._running_mean(speaker, embeddings)  # refused before anything changes
        self._stamp_calibration()
        if digests is not None:
            self.clip_digests[speaker] = self.clip_digests.get(speaker, []) + list(digests)
        if self.mode == "utterance":
            if self.built is not None:
                self._grow(embeddings)  # HNSW and flat both grow in place: no rebuild for new utterances
            self._append_vectors(embeddings)
            self.labels += [speaker] * len(embeddings)
            self.counts[speaker] = self.counts.get(speaker, 0) + len(embeddings)
            return
        norm = float(np.linalg.norm(mean))
        self.plda_models = None
        centroid = (mean / norm).astype(np.float32)[None]
        if speaker in self.counts:  # its row is replaced where it is: dropping and re-adding it copied every row
            self.vectors[self.labels.index(speaker)] = centroid[0]
            self.built = None  # FAISS cannot replace a vector: the index is rebuilt on the next search or save
        else:
            if self.built is not None:  # a new speaker grows the index in place
                self._grow(centroid)
            self._append_vectors(centroid)
            self.labels.append(speaker)
        self.counts[speaker], self.mean_norms[speaker] = count, norm
        if self.cohort is not None:
            scores = self.backend.plda.speaker_scores(mean[None], np.array([count]), self.cohort.vectors).T \
                if self.backend.plda is not None else None  # (1, M)
            cohort_mean, cohort_std = self.cohort.stats(centroid, exclude=[speaker], scores=scores)
            self.cohort_stats[speaker] = [float(cohort_mean[0]), float(cohort_std[0])]

    def _grow(self, rows: np.ndarray) -> None:
        """Add ``rows`` to the loaded or built FAISS index in place. A loaded HNSW graph draws its nodes' levels
        from a generator FAISS seeds the same on every load: one speaker per enroll would always take the first
        draw, level 0, and the graph lose its upper layers; seeded by the row count, each draw is new and repeatable."""
        if self.hnsw:
            import faiss

            self.built.hnsw.rng = faiss.RandomGenerator(HNSW_LEVEL_SEED + self.built.ntotal)
        self.built.add(rows)

    def _append_vectors(self, rows: np.ndarray) -> None:
        """``rows`` after ``vectors``, written into a buffer whose room doubles when full: enrolling N speakers one
        by one then copies O(N) rows, where a concatenation per speaker copied O(N²) (50,000 took minutes). Vectors
        not yet in the buffer (a loaded index) get an eighth more room, not double: one enrolment into a large index
        would otherwise hold twice its vectors' memory."""
        used, needed = len(self.vectors), len(self.vectors) + len(rows)
        spare = self._spare
        owned = spare is not None and self.vectors.base is spare and self.vectors.ctypes.data == spare.ctypes.data
        if not owned or len(spare) < needed:
            room = 2 * used if owned else used + used // 8
            spare = np.empty((max(needed, room, 16), self.space_dim), dtype=np.float32)
            spare[:used] = self.vectors
            self._spare = spare
        spare[used:needed] = rows
        self.vectors = spare[:needed]

    def _running_mean(self, speaker: str, embeddings: np.ndarray) -> tuple[np.ndarray, int]:
        """The mean of ``speaker``'s unit rows, enrolled ones included, and their count. A mean of (near) zero
        length, clips that cancel out, has no direction: its centroid would be NaN, so it is refused."""
        total = embeddings.astype(np.float64).sum(axis=0)
        count = len(embeddings)
        if speaker in self.counts:
            row = self.labels.index(speaker)
            total += self.vectors[row].astype(np.float64) * self.mean_norms[speaker] * self.counts[speaker]
            count += self.counts[speaker]
        mean = total / count
        if not np.linalg.norm(mean) > MIN_MEAN_NORM:
            raise VoxaugError(f"speaker {speaker!r}: the clips' embeddings cancel out (their mean has length "
                              f"{np.linalg.norm(mean):.1e}), so they give no direction to enrol; enrol from other clips")
        return mean, count

    def remove(self, speaker: str) -> None:
        if speaker not in self.counts:
            shown = ", ".join(self.speakers[:10]) + (f", … ({len(self.speakers)} in all)" if len(self.speakers) > 10 else "")
            raise VoxaugError(f"speaker {speaker!r} is not enrolled; enrolled: {shown or 'none'}")
        self._stamp_calibration()
        self._drop_rows([i for i, label in enumerate(self.labels) if label == speaker])
        del self.counts[speaker]
        self.mean_norms.pop(speaker, None)
        self.cohort_stats.pop(speaker, None)
        self.clip_digests.pop(speaker, None)

    def _drop_rows(self, rows: list[int]) -> None:
        self.built = self.plda_models = None
        keep = np.setdiff1d(np.arange(len(self.labels)), rows)
        self.vectors = self.vectors[keep]
        self.labels = [self.labels[i] for i in keep]

    # ---- searching -------------------------------------------------------------------------
    def faiss_index(self) -> faiss.Index:
        """The FAISS index over ``vectors``: the loaded or last built one, else built now (HNSW builds are slow)."""
        import faiss  # loaded on first search, so that `voxaug --help` and the index's constants stay light

        if self.built is None:
            index = faiss.IndexHNSWFlat(self.space_dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT) if self.hnsw \
                else faiss.IndexFlatIP(self.space_dim)
            if self.hnsw:
                index.hnsw.efSearch = HNSW_EF_SEARCH
            if len(self.vectors):
                index.add(self.vectors)
            self.built = index
        return self.built

    def search(self, queries: np.ndarray, top_k: int, index: faiss.Index | None = None,
               score_norm: str | None = None, cohort_top_k: int | None = None,
               query_speakers: list[str] | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (speaker, score) per query of network embeddings, the score a cosine in the back end's
        space (a PLDA log-likelihood ratio with a ``plda`` back end) or, with ``score_norm="asnorm"``, its
        AS-norm. In utterance mode speakers are ranked by votes among the ``max(top_k, 10)`` nearest
        utterances (``voters``), ties broken by their best score. ``query_speakers`` (calibration) names each query's
        speaker, whose cohort entries (the query itself, when the cohort is its split) AS-norm leaves out."""
        top_k = check_search_top_k(top_k)
        if not self.labels:
            raise VoxaugError("the index has no enrolled speakers")
        score_norm = check_choice("--score-norm", score_norm or self.score_norm, SCORE_NORMS)
        queries = self.to_space(queries, "queries")
        index = index or self.faiss_index()
        if score_norm == "asnorm" or (self.backend.plda is not None and self.mode == "speaker"):
            return self._search_rescored(queries, top_k, index, score_norm, cohort_top_k, query_speakers)
        if self.mode == "utterance":
            return [vote(hits)[:top_k] for hits in self._utterance_hits(queries, voters(top_k), index)]
        scores, rows = index.search(queries, min(len(self.labels), top_k))
        return [[(self.labels[i], float(s)) for i, s in zip(id_row, score_row) if i >= 0]
                for score_row, id_row in zip(scores, rows)]

    def nearest_utterances(self, queries: np.ndarray, count: int) -> list[list[tuple[str, float]]]:
        """Utterance mode: the ``count`` nearest enrolled utterances (speaker, score) per query of network
        embeddings, nearest first, each scored as a speaker enrolled from that clip alone (PLDA, or the cosine)."""
        if self.mode != "utterance":
            raise VoxaugError("nearest utterances are kept only by an index built --per utterance")
        return self._utterance_hits(self.to_space(queries, "queries"), count, self.faiss_index())

    def _utterance_hits(self, queries: np.ndarray, count: int, index: faiss.Index) -> list[list[tuple[str, float]]]:
        scores, rows = index.search(queries, min(len(self.labels), count))
        if self.backend.plda is not None:
            found = np.maximum(rows, 0)
            scores = self.backend.pair_scores(np.repeat(queries, rows.shape[1], axis=0),
                                              self.vectors[found.ravel()]).reshape(rows.shape)
        return [[(self.labels[i], float(s)) for i, s in zip(id_row, score_row) if i >= 0]
                for score_row, id_row in zip(scores, rows)]

    def _search_rescored(self, queries: np.ndarray, top_k: int, index: faiss.Index, score_norm: str,
                         cohort_top_k: int | None, query_speakers: list[str] | None) -> list[list[tuple[str, float]]]:
        """Re-score the nearest ``RESCORED_CANDIDATES`` speakers by cosine with the back end's own score
        (PLDA) and, with ``asnorm``, normalise it; rank them by the result."""
        if score_norm == "asnorm":
            self.check_asnorm()
        candidates = min(len(self.labels), max(top_k, RESCORED_CANDIDATES))
        cosines, rows = index.search(queries, candidates)
        if score_norm == "asnorm":
            query_stats = self.cohort.stats(queries, exclude=query_speakers, top_k=cohort_top_k,
                                            scores=self.cohort_scores(queries))
            model_stats = self._model_cohort_stats(np.unique(rows[rows >= 0]), cohort_top_k)  # (2, every row)
        results = []
        for row, (cosine_row, id_row) in enumerate(zip(cosines, rows)):
            kept = id_row[id_row >= 0]
            names = [self.labels[i] for i in kept]
            scores = self.speaker_scores(queries[row : row + 1], kept)[0] if self.backend.plda is not None \
                else cosine_row[id_row >= 0].astype(np.float64)
            if score_norm == "asnorm":
                scores = as_norm(scores[None], (query_stats[0][row : row + 1], query_stats[1][row : row + 1]),
                                 (model_stats[0][kept], model_stats[1][kept]))[0]
            order = np.argsort(-scores, kind="stable")[:top_k]
            results.append([(names[i], float(scores[i])) for i in order])
        return results

    def _model_cohort_stats(self, rows: np.ndarray, cohort_top_k: int | None) -> np.ndarray:
        """AS-norm statistics (2, len(labels)) of the speakers at ``rows`` (the others left NaN): those stored at
        enrolment or, for another ``cohort_top_k``, computed here once for every query of the search."""
        stats = np.full((2, len(self.labels)), np.nan)
        names = [self.labels[i] for i in rows]
        if cohort_top_k is None or cohort_top_k == self.cohort.top_k:
            stats[:, rows] = np.array([self.cohort_stats[name] for name in names], dtype=np.float64).T
        else:
            scores = self.speaker_scores(self.cohort.vectors, rows).T if self.backend.plda is not None else None
            stats[:, rows] = np.stack(self.cohort.stats(self.vectors[rows], exclude=names, top_k=cohort_top_k,
                                                        scores=scores))
        return stats

    def speaker_scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """PLDA scores (N, len(rows)) of queries (in the back end's space) against the speakers at ``rows``, each
        enrolled from its count of clips with mean ``norm * centroid``."""
        if self.plda_models is None:
            means = self.vectors * np.array([self.mean_norms[name] for name in self.labels], dtype=np.float32)[:, None]
            self.plda_models = self.backend.plda.speaker_models(means, np.array([self.counts[name] for name in self.labels]))
        return self.backend.plda.score(self.plda_models.rows(rows), queries)

    def cohort_scores(self, vectors: np.ndarray) -> np.ndarray | None:
        """Scores (N, M) of vectors in the back end's space against each cohort utterance, for AS-norm's
        statistics; ``None`` for cosines, which the cohort computes itself."""
        if self.backend.plda is None or self.cohort is None:
            return None
        if self.cohort_models is None:  # the cohort is fixed once the index is built or loaded
            self.cohort_models = self.backend.plda.speaker_models(self.cohort.vectors, np.ones(len(self.cohort.labels)))
        return self.backend.plda.score(self.cohort_models, vectors)

    # ---- storage ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write FILE and FILE.json so that a crash at any moment leaves a loadable pair.

        The FAISS bytes go first to ``.FILE.<sha256>.pending`` (atomically); the sidecar, which
        records that hash, is the commit point; then the pending file is renamed over FILE. A reader
        that finds FILE older than the sidecar uses the pending file the sidecar names. Call under
        :func:`index_lock`: the last step removes pending files of other (interrupted) writes.
        """
        import faiss

        path = real_path(path)
        data = faiss.serialize_index(self.faiss_index()).tobytes()
        digest = hashlib.sha256(data).hexdigest()
        sidecar = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "metric": "cosine (inner product of unit vectors)" + (", re-scored by PLDA" if self.backend.plda is not None else ""),
            "faiss": "IndexHNSWFlat" if self.hnsw else "IndexFlatIP",
            "per": self.mode,
            "dimension": self.dim,
            "labels": self.labels,
            "counts": self.counts,
            "mean_norms": self.mean_norms,
            "checkpoint": located_model_record(self.checkpoint, path),
            "frontend": self.frontend,
            "backend": self.backend.to_json(),
            "space_dimension": self.space_dim,
            "score_norm": self.score_norm,
            "cohort": None if self.cohort is None else self.cohort.to_json(),
            "cohort_stats": self.cohort_stats,
            "calibration": self.calibration,
            "clip_digests": self.clip_digests,
            "index_sha256": digest,
        }
        if sidecar_path(path).is_dir():
            raise file_error(sidecar_path(path), "is a folder; the index's sidecar goes there")
        if path.is_dir():  # found now, before the sidecar is replaced, not by the last rename
            raise file_error(path, "is a folder; expected a file name for the speaker index")
        pending = pending_path(path, digest)
        staged_before = pending.exists()  # then the sidecar on disk may name it: it stays, as it was
        text = json.dumps(sidecar, indent=1) + "\n"
        try:
            _stage(pending, data, path)
            atomic_write_text(sidecar_path(path), text)
        except BaseException:  # a full disk, Ctrl-C, SIGTERM: unless committed, the staged bytes would only hold space
            committed = _read_if_there(sidecar_path(path)) == text.encode("utf-8")  # or an earlier save's same text
            if (not staged_before and not committed) or _read_if_there(path) == data:  # FILE holds them: not needed
                pending.unlink(missing_ok=True)
            raise
        try:
            os.replace(pending, path)
        except OSError as exc:  # the OSError names the staged file; the user asked for FILE
            raise file_error(path, f"cannot write: {exc.strerror or exc} (the new index is committed: it loads from "
                                   f"the staged copy {pending.name} beside it)") from exc
        _remove_interrupted_writes(path)
        fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerIndex":
        path = real_path(path)
        side = sidecar_path(path)
        if path.exists() and not path.is_file():  # a folder, or a device such as /dev/null: there, yet no index
            raise file_error(path, not_a_file(path, "speaker index"))
        if not path.is_file() and not side.is_file():
            raise file_error(path, "speaker index not found")
        if not side.is_file():
            raise file_error(*_without_sidecar(path, side))
        for attempt in range(LOAD_ATTEMPTS):
            meta = _read_sidecar(side)
            try:
                data = _committed_bytes(path, meta["index_sha256"])
                break
            except VoxaugError:  # unless a writer committed between the two reads: then read the new pair
                if attempt == LOAD_ATTEMPTS - 1 or _read_sidecar(side)["index_sha256"] == meta["index_sha256"]:
                    raise
        scoring = _scoring_fields(meta, side)
        if data[:4] not in FAISS_KINDS:
            raise file_error(path, f"not a FAISS flat or HNSW index (starts with {data[:4]!r})")
        kind = "IndexHNSWFlat" if data[:4] == b"IHNf" else "IndexFlatIP"
        if meta.get("faiss", kind) != kind:  # the hash covers the FAISS bytes, not this field: the bytes decide
            raise file_error(side, f"sidecar field 'faiss' is {meta['faiss']!r}, and the index is an {kind}")
        check_array_sizes(data, path)
        import faiss

        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, MemoryError) as exc:
            raise file_error(path, "not a readable FAISS index") from exc
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:  # an HNSW header does not say its metric; L2 ranks otherwise
            metric = {faiss.METRIC_L2: "L2 distances"}.get(index.metric_type, f"FAISS metric {index.metric_type}")
            raise file_error(path, f"{kind} of {metric}, not of inner products (the cosines a speaker index scores by)")
        if kind == "IndexHNSWFlat":  # the file keeps the efSearch it was written with: FAISS's 16 before 2026-11-25
            index.hnsw.efSearch = HNSW_EF_SEARCH
        dim, labels = meta["dimension"], meta["labels"]
        space_dim = scoring["backend"].output_dim(dim)  # _scoring_fields refused a back end of another dimension
        if index.d != space_dim or index.ntotal != len(labels):
            raise file_error(side, f"sidecar says {len(labels)} vectors of dimension {space_dim}, "
                                   f"the index {path} holds {index.ntotal} of dimension {index.d}")
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, space_dim), dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise file_error(path, "index vectors hold NaN or Inf values")
        try:
            return cls(dim=dim, mode=meta["per"], hnsw=kind == "IndexHNSWFlat", labels=list(labels),
                       vectors=np.ascontiguousarray(vectors, dtype=np.float32), counts=dict(meta["counts"]),
                       mean_norms=dict(meta.get("mean_norms") or {}), checkpoint=dict(meta["checkpoint"]),
                       frontend=dict(meta["frontend"]), built=index, **scoring)
        except VoxaugError as exc:
            raise file_error(side, str(exc)) from exc


def check_array_sizes(data: bytes, path: Path) -> None:
    """Refuse FAISS flat or HNSW bytes with an array longer than the bytes after its count, before FAISS reads them:
    FAISS allocates (and zeroes) each array at the length the file declares before reading it, so a 125-byte index
    declaring 2^28 vector values took 1.1 GB (and 2^32 asks for 16 GB). The hash in the sidecar does not help:
    whoever wrote the file wrote it too. Bytes cut short are left to FAISS, which says so."""
    try:
        at = _after_header(data, 0)
        if data[:4] == b"IHNf":
            storage = _after_arrays(data, at, HNSW_GRAPH_ITEMS, path) + HNSW_SETTINGS_BYTES
            at = _after_header(data, storage)
            if data[storage:storage + 4] not in FAISS_FLAT_KINDS:  # its arrays are not walked: FAISS would allocate
                raise file_error(path, "not a FAISS flat or HNSW index (its HNSW graph's vectors are held by a "
                                       f"{data[storage:storage + 4]!r} index, not a flat one)")
        _after_arrays(data, at, (4,), path)  # the float32 vector values
    except struct.error:
        pass


def _after_header(data: bytes, at: int) -> int:
    """Where the FAISS index header written at ``at`` ends."""
    metric = FAISS_HEADER.unpack_from(data, at)[-1]
    return at + FAISS_HEADER.size + (4 if metric > 1 else 0)


def _after_arrays(data: bytes, at: int, item_sizes: tuple[int, ...], path: Path) -> int:
    """Where the FAISS arrays written from ``at`` end, one per item size; one longer than the bytes left is refused."""
    for item_size in item_sizes:
        (count,) = struct.unpack_from("<Q", data, at)
        at += 8
        if count * item_size > len(data) - at:
            raise file_error(path, f"not a readable FAISS index (an array declares {count} items, more than the "
                                   f"{len(data) - at} bytes after it hold: corrupt, or built to exhaust memory)")
        at += count * item_size
    return at


def _without_sidecar(path: Path, side: Path) -> tuple[Path, str]:
    """The file to name, and what is wrong, when ``path`` has no sidecar: a FAISS index has lost it, but a file of
    another kind (a checkpoint, or the sidecar itself) was given where the index goes, and is named as that."""
    if owner := index_of_sidecar(path):
        return path, f"this is the sidecar of the speaker index {owner}; give that file instead"
    head = file_header(path)
    if head not in FAISS_KINDS:
        return path, (f"not a speaker index (starts with {head!r}, not a FAISS header); give the file embed --index "
                      "or enroll wrote")
    if side.exists():  # a folder, say: there, yet no sidecar to read
        return side, not_a_file(side, "index sidecar")
    renamed = sidecar_recording(path)
    return side, ("the index's sidecar is missing (it records labels, checkpoint and front end)" + (
        f"; {renamed} records this index: rename it to {side.name} {MOVE_TOGETHER}" if renamed else ""))


MOVE_TOGETHER = "(an index and its sidecar move together)"


def sha256_or_none(path: Path) -> str | None:
    """``path``'s SHA-256, or None where it cannot be read."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def _recorded_index_hash(side: Path) -> str | None:
    """The hash of the index bytes the sidecar ``side`` commits to; None for a file that is no readable sidecar."""
    try:
        meta = json.loads(side.read_bytes())
    except (OSError, ValueError):
        return None
    recorded = meta.get("index_sha256") if isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT else None
    return recorded if isinstance(recorded, str) else None


def sidecar_recording(path: Path) -> Path | None:
    """A sidecar of another name beside the index ``path`` that records its very bytes: the index was renamed or
    copied without it. Looked for only when its own sidecar is missing."""
    digest = sha256_or_none(path)
    if digest is None:
        return None
    others = sorted(side for side in path.parent.glob("*.json") if side != sidecar_path(path))
    return next((side for side in others if _recorded_index_hash(side) == digest), None)


def index_recorded_by(side: Path, path: Path) -> Path | None:
    """A FAISS file of another name beside the sidecar ``side`` that holds the bytes it records: its index was renamed
    or copied without it. Looked for only when the index ``path`` is missing."""
    digest = _recorded_index_hash(side)
    if digest is None:
        return None
    try:
        others = sorted(other for other in side.parent.iterdir()
                        if other != path and not other.name.startswith(".") and other.is_file())
    except OSError:
        return None
    return next((other for other in others if _faiss_header(other) and sha256_or_none(other) == digest), None)


def _faiss_header(path: Path) -> bool:
    """Whether ``path`` starts as an index file does (read before a file is hashed whole)."""
    try:
        return file_header(path) in FAISS_KINDS
    except OSError:
        return False


def index_of_sidecar(path: Path) -> Path | None:
    """The speaker index whose sidecar ``path`` is, by its name (FILE for FILE.json, where FILE is there), or None."""
    return path.with_suffix("") if path.suffix == ".json" and path.with_suffix("").is_file() else None


def pending_path(path: str | Path, digest: str) -> Path:
    """Where :meth:`SpeakerIndex.save` stages the FAISS bytes with SHA-256 ``digest``."""
    path = Path(path)
    return path.parent / f".{path.name}.{digest}{PENDING_SUFFIX}"


def _remove_interrupted_writes(path: Path) -> None:
    """After a commit, under the index lock: this index's pending files of writes cut short, and the temps of
    killed writers that were staging one. Names are matched whole, so ``spk.faiss.old``'s files, which
    another lock guards, are never this index's."""
    pending = rf"\.{re.escape(path.name)}\.[0-9a-f]{{64}}{re.escape(PENDING_SUFFIX)}"
    staging = re.compile(rf"\.({pending})\.\d+\.[^.]+{re.escape(TMP_SUFFIX)}")
    try:
        names = [entry.name for entry in path.parent.iterdir()]
    except OSError:
        return
    for name in names:
        if re.fullmatch(pending, name):
            (path.parent / name).unlink(missing_ok=True)
        elif match := staging.fullmatch(name):
            clean_stale_temps(path.parent / match.group(1))  # a live writer's temp is left alone


def _read_sidecar(side: Path) -> dict:
    """A sidecar's fields, checked for what loading needs."""
    meta = read_json(side, "index sidecar")
    required = ("format", "version", "per", "dimension", "labels", "counts", "checkpoint", "frontend", "index_sha256")
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise file_error(side, "not a voxaug index sidecar")
    missing = [key for key in required if key not in meta]
    if missing:
        raise file_error(side, f"sidecar lacks {', '.join(missing)}")
    if meta["version"] not in READABLE_VERSIONS or isinstance(meta["version"], bool):
        raise file_error(side, f"sidecar version {meta['version']} is not supported (expected one of "
                               f"{', '.join(map(str, READABLE_VERSIONS))})")
    _check_sidecar_types(meta, side)
    return meta


def _stage(pending: Path, data: bytes, path: Path) -> None:
    """The index bytes written to their staged copy, of FILE's mode, owner and group (it is renamed over FILE); a
    refusal (a full disk) names FILE, which the user asked for and which is as it was, not the hidden staged file."""
    try:
        atomic_write_bytes(pending, data, like=path)
    except VoxaugError as exc:
        if isinstance(exc.__cause__, OSError):
            raise write_error(path, exc.__cause__) from exc.__cause__
        raise


def _read_if_there(path: Path) -> bytes | None:
    """A file's bytes, or None where it is missing (a writer may rename it away at any moment)."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None


def _committed_bytes(path: Path, digest: object) -> bytes:
    """The index bytes the sidecar's hash names: FILE, or the staged file of a write cut short. FILE is read
    again last: a writer may have renamed the staged file over it between the first two reads."""
    staged = pending_path(path, str(digest)) if isinstance(digest, str) and digest.isalnum() else None
    for candidate in (path, staged, path):
        data = _read_if_there(candidate) if candidate is not None else None
        if data is not None and hashlib.sha256(data).hexdigest() == digest:
            return data
    if not path.is_file():
        renamed = index_recorded_by(sidecar_path(path), path)
        raise file_error(path, "speaker index not found (its sidecar is there)" + (
            f"; {renamed} is the index it records: rename it to {path.name} {MOVE_TOGETHER}" if renamed else ""))
    raise file_error(path, f"index does not match its sidecar {sidecar_path(path)} (either modified, corrupt or from "
                           "another write; copy an index and its sidecar together)")


def _check_sidecar_types(meta: dict, side: Path) -> None:
    """Each sidecar field of the type the loader needs, so a hand-edited sidecar fails by name."""
    expected = {"dimension": int, "labels": list, "counts": dict, "checkpoint": dict, "frontend": dict, "per": str}
    for key, kind in expected.items():
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise file_error(side, f"sidecar field {key!r} must be of type {kind.__name__}, found {type(meta[key]).__name__}")
    if meta["per"] not in MODES:
        raise file_error(side, f"sidecar field 'per' is {meta['per']!r}; accepted: {', '.join(MODES)}")
    if not all(isinstance(label, str) for label in meta["labels"]) or set(meta["labels"]) != set(meta["counts"]):
        raise file_error(side, "sidecar 'labels' and 'counts' name different speakers")
    if meta["per"] == "speaker" and len(set(meta["labels"])) != len(meta["labels"]):
        repeated = sorted(label for label, times in Counter(meta["labels"]).items() if times > 1)
        raise file_error(side, f"sidecar 'labels' name {repeated[:3]} more than once; an index of one vector per "
                               "speaker names each once")
    if not all(_whole_number(count) and count >= 1 for count in meta["counts"].values()):
        raise file_error(side, f"sidecar field 'counts' must map each speaker to a whole number of clips, 1 to {MAX_CLIPS}")
    norms = meta.get("mean_norms")  # a speaker's running mean is norm * centroid: PLDA and --append need it
    if norms is not None and not isinstance(norms, dict):
        raise file_error(side, f"sidecar field 'mean_norms' must be of type dict, found {type(norms).__name__}")
    if meta["per"] == "speaker" and (not isinstance(norms, dict) or set(norms) != set(meta["counts"]) or not all(
            finite_number(norm) and 0 < norm <= 1 + 1e-5 for norm in norms.values())):
        raise file_error(side, "sidecar field 'mean_norms' must map each speaker to a number in (0, 1], the length "
                               "of a mean of unit vectors")
    for key in ("path", "relative_path", "sha256", "source_sha256"):
        if not isinstance(meta["checkpoint"].get(key, ""), str):
            raise file_error(side, f"sidecar field 'checkpoint.{key}' must be a string")


MAX_CLIPS = 2**53
"""Most clips a speaker's count may record: beyond it a float no longer counts one by one."""


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CLIPS


def _far_record(calibration: dict) -> bool:
    """Whether a calibration's ``far_measured`` comes with the clip count and target FAR identify's warning names."""
    far = calibration.get("target_far")
    return (isinstance(calibration["far_measured"], bool) and _whole_number(calibration.get("clips"))
            and calibration["clips"] >= 1 and finite_number(far) and 0 < far < 1)


def _scoring_fields(meta: dict, side: Path) -> dict:
    """The back end, cohort, statistics, score normalisation and calibration of a sidecar
    (a version-1 sidecar has none of them: plain cosine, as it was scored when written)."""
    where = str(side)
    try:
        backend = ScoringBackend.from_json(meta.get("backend", {"version": 1, "kind": "none"}), where)
        cohort = None if meta.get("cohort") is None else Cohort.from_json(meta["cohort"], where)
    except VoxaugError as exc:
        raise file_error(side, str(exc).removeprefix(f"{where}: ")) from exc
    dim = meta["dimension"]
    if backend.mean is not None and backend.mean.shape[0] != dim:
        raise file_error(side, f"sidecar back end is {backend.mean.shape[0]}-dimensional and the index {dim}-dimensional")
    if cohort is not None and cohort.vectors.shape[1] != backend.output_dim(dim):
        raise file_error(side, f"sidecar cohort vectors are {cohort.vectors.shape[1]}-dimensional; the back end's "
                               f"space is {backend.output_dim(dim)}-dimensional")
    stats = meta.get("cohort_stats", {})
    if not isinstance(stats, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(finite_number(x) for x in v) and v[1] > 0 for v in stats.values()):
        raise file_error(side, "sidecar field 'cohort_stats' must map speakers to [mean, std], finite, std > 0")
    if cohort is not None and meta.get("per") == "speaker" and set(stats) != set(meta["labels"]):
        raise file_error(side, "sidecar 'cohort_stats' and 'labels' name different speakers")
    calibration = meta.get("calibration", {})
    if not isinstance(calibration, dict):
        raise file_error(side, "sidecar field 'calibration' must be an object")
    if "value" in calibration and not finite_number(calibration["value"]):
        raise file_error(side, f"sidecar calibration 'value' must be a finite number, got {calibration['value']!r}")
    enrolled = calibration.get("enrolled", {"speakers": 0, "clips": 0, "sha256": "0" * 64})
    if not (isinstance(enrolled, dict) and all(_whole_number(enrolled.get(key)) for key in ("speakers", "clips"))
            and isinstance(enrolled.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", enrolled["sha256"])):
        raise file_error(side, "sidecar calibration 'enrolled' must be {speakers, clips: whole numbers >= 0, "
                               f"sha256: 64 hex digits}}, got {enrolled!r}")
    if "far_measured" in calibration and not _far_record(calibration):
        raise file_error(side, "sidecar calibration 'far_measured' must be true or false, beside 'clips' (a whole "
                               "number >= 1) and 'target_far' (a rate in (0, 1)) it was judged from")
    top_k = calibration.get("cohort_top_k", 2)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 2:
        raise file_error(side, f"sidecar calibration 'cohort_top_k' must be a whole number >= 2, got {top_k!r}")
    digests = meta.get("clip_digests", {})
    if not (isinstance(digests, dict) and set(digests) <= set(meta["counts"]) and all(
            isinstance(listed, list) and len(listed) <= meta["counts"][speaker]
            and all(isinstance(d, str) and len(d) == 16 for d in listed) and re.fullmatch("[0-9a-f]*", "".join(listed))
            for speaker, listed in digests.items())):
        raise file_error(side, "sidecar field 'clip_digests' must map enrolled speakers to lists of at most their "
                               "clip count of 16-hex-digit digests")
    score_norm = meta.get("score_norm", "none")
    if score_norm not in SCORE_NORMS:
        raise file_error(side, f"sidecar field 'score_norm' is {score_norm!r}; accepted: {', '.join(SCORE_NORMS)}")
    return {"backend": backend, "cohort": cohort, "cohort_stats": dict(stats), "score_norm": score_norm,
            "calibration": dict(calibration), "clip_digests": {speaker: list(d) for speaker, d in digests.items()}}


def check_lock_timeout(timeout_s: object) -> float:
    if isinstance(timeout_s, bool) or not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
                                           and timeout_s >= 0):
        raise VoxaugError(f"--lock-timeout must be a finite number of seconds >= 0, got {timeout_s}")
    return float(timeout_s)


def check_index_writable(path: str | Path, purpose: str) -> None:
    """Before work whose result goes into the index (``purpose`` says which): its folder must take new files (the
    lock file, the staged index, the sidecar's temp file), or the work is lost at the end, on the lock file. A folder
    not made yet is made in the first one above it that exists: that one is checked."""
    folder = next(place for place in real_path(path).parents if place.is_dir())
    try:
        probe_writable(folder, real_path(path).name)
    except OSError as exc:
        raise file_error(path, f"{purpose} cannot write the index: its folder {folder} takes no new files "
                               f"({exc.strerror or exc})") from None


@contextmanager
def index_lock(path: str | Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Exclusive lock around a read-modify-write of an index (``flock`` on FILE.lock, as
    :func:`voxaug.safeio.exclusive_lock` takes it); waits up to ``timeout_s``."""
    check_lock_timeout(timeout_s)
    lock_path = Path(f"{real_path(path)}.lock")
    ensure_folder(lock_path.parent, "index folder")
    busy = f"index is locked by another voxaug process (waited {timeout_s:g} s; lock file {lock_path.name})"
    with exclusive_lock(lock_path, timeout_s, lambda: file_error(path, busy)):
        yield
