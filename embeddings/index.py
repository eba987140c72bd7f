"""The speaker index: FAISS inner product over unit vectors (= cosine), stored as FILE plus a JSON
sidecar FILE.json that ties it to the checkpoint and front end that made its embeddings.

By default each speaker is one vector, the renormalised mean of its enrolment embeddings. The
sidecar keeps each speaker's count and the norm of that mean, so enrolling more clips updates the
centroid exactly: the running sum is ``count * norm * centroid``. ``per="utterance"`` keeps every
embedding and answers by voting among the nearest neighbours.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from voxaug.errors import VoxaugError, file_error
from voxaug.safeio import atomic_output, read_json

INDEX_FORMAT = "voxaug-speaker-index"
INDEX_VERSION = 1
MODES = ("speaker", "utterance")
HNSW_NEIGHBOURS = 32


def sidecar_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def unit_rows(vectors: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """float32 rows scaled to unit length; zero or non-finite rows are refused."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise VoxaugError(f"{what}: expected a 2-D array (N, dim), got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.isfinite(vectors).all() or (norms == 0).any():
        raise VoxaugError(f"{what}: rows must be finite and non-zero")
    return vectors / norms


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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise VoxaugError(f"--per {self.mode!r} is not known; accepted: {', '.join(MODES)}")
        if self.vectors.size == 0:
            self.vectors = np.zeros((0, self.dim), dtype=np.float32)

    # ---- building --------------------------------------------------------------------------
    @property
    def speakers(self) -> list[str]:
        return sorted(self.counts)

    def add(self, speaker: str, embeddings: np.ndarray, append: bool = False) -> None:
        """Enrol ``speaker`` from unit embeddings (N, dim); with ``append``, add to an existing one."""
        embeddings = unit_rows(embeddings)
        if embeddings.shape[1] != self.dim:
            raise VoxaugError(f"embedding dimension {embeddings.shape[1]} does not match the index's {self.dim}")
        if speaker in self.counts and not append:
            raise VoxaugError(f"speaker {speaker!r} is already enrolled; pass --append to add clips to it")
        if self.mode == "utterance":
            self.vectors = np.concatenate([self.vectors, embeddings])
            self.labels += [speaker] * len(embeddings)
            self.counts[speaker] = self.counts.get(speaker, 0) + len(embeddings)
            return
        total = embeddings.astype(np.float64).sum(axis=0)
        count = len(embeddings)
        if speaker in self.counts:
            row = self.labels.index(speaker)
            total += self.vectors[row].astype(np.float64) * self.mean_norms[speaker] * self.counts[speaker]
            count += self.counts[speaker]
            self._drop_rows([row])
        mean = total / count
        norm = float(np.linalg.norm(mean))
        self.vectors = np.concatenate([self.vectors, (mean / norm).astype(np.float32)[None]])
        self.labels.append(speaker)
        self.counts[speaker], self.mean_norms[speaker] = count, norm

    def remove(self, speaker: str) -> None:
        if speaker not in self.counts:
            raise VoxaugError(f"speaker {speaker!r} is not enrolled; enrolled: {', '.join(self.speakers) or 'none'}")
        self._drop_rows([i for i, label in enumerate(self.labels) if label == speaker])
        del self.counts[speaker]
        self.mean_norms.pop(speaker, None)

    def _drop_rows(self, rows: list[int]) -> None:
        keep = np.setdiff1d(np.arange(len(self.labels)), rows)
        self.vectors = self.vectors[keep]
        self.labels = [self.labels[i] for i in keep]

    # ---- searching -------------------------------------------------------------------------
    def faiss_index(self) -> faiss.Index:
        index = faiss.IndexHNSWFlat(self.dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT) if self.hnsw \
            else faiss.IndexFlatIP(self.dim)
        if len(self.vectors):
            index.add(self.vectors)
        return index

    def search(self, queries: np.ndarray, top_k: int, index: faiss.Index | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (speaker, cosine) per query. In utterance mode speakers are ranked by votes among the
        ``max(top_k, 10)`` nearest utterances, ties broken by their best cosine."""
        if top_k <= 0:
            raise VoxaugError(f"--top-k must be positive, got {top_k}")
        if not self.labels:
            raise VoxaugError("the index has no enrolled speakers")
        queries = unit_rows(queries, "queries")
        if queries.shape[1] != self.dim:
            raise VoxaugError(f"query dimension {queries.shape[1]} does not match the index's {self.dim}")
        index = index or self.faiss_index()
        neighbours = min(len(self.labels), top_k if self.mode == "speaker" else max(top_k, 10))
        scores, rows = index.search(queries, neighbours)
        results = []
        for score_row, id_row in zip(scores, rows):
            hits = [(self.labels[i], float(s)) for i, s in zip(id_row, score_row) if i >= 0]
            if self.mode == "utterance":
                votes = Counter(label for label, _ in hits)
                best: dict[str, float] = {}
                for label, score in hits:
                    best[label] = max(best.get(label, -1.0), score)
                ranked = sorted(votes, key=lambda label: (-votes[label], -best[label]))
                hits = [(label, best[label]) for label in ranked]
            results.append(hits[:top_k])
        return results

    # ---- storage ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write FILE and FILE.json, each atomically; the sidecar records FILE's hash and goes last."""
        path = Path(path)
        data = faiss.serialize_index(self.faiss_index()).tobytes()
        sidecar = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "metric": "cosine (inner product of unit vectors)",
            "faiss": "IndexHNSWFlat" if self.hnsw else "IndexFlatIP",
            "per": self.mode,
            "dimension": self.dim,
            "labels": self.labels,
            "counts": self.counts,
            "mean_norms": self.mean_norms,
            "checkpoint": self.checkpoint,
            "frontend": self.frontend,
            "index_sha256": hashlib.sha256(data).hexdigest(),
        }
        with atomic_output(path, "wb") as handle:
            handle.write(data)
        with atomic_output(sidecar_path(path), "w") as handle:
            handle.write(json.dumps(sidecar, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerIndex":
        path, side = Path(path), sidecar_path(path)
        if not path.is_file():
            raise file_error(path, "speaker index not found")
        if not side.is_file():
            raise file_error(side, "the index's sidecar is missing (it records labels, checkpoint and front end)")
        meta = read_json(side, "index sidecar")
        required = ("format", "version", "per", "dimension", "labels", "counts", "checkpoint", "frontend", "index_sha256")
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise file_error(side, "not a voxaug index sidecar")
        missing = [key for key in required if key not in meta]
        if missing:
            raise file_error(side, f"sidecar lacks {', '.join(missing)}")
        if meta["version"] != INDEX_VERSION:
            raise file_error(side, f"sidecar version {meta['version']} is not supported (expected {INDEX_VERSION})")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["index_sha256"]:
            raise file_error(path, "index does not match its sidecar (modified, corrupt or from another write)")
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise file_error(path, "not a readable FAISS index") from exc
        _check_sidecar_types(meta, side)
        dim, labels = meta["dimension"], meta["labels"]
        if index.d != dim or index.ntotal != len(labels):
            raise file_error(side, f"sidecar says {len(labels)} vectors of dimension {dim}, "
                                   f"the index holds {index.ntotal} of dimension {index.d}")
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, dim), dtype=np.float32)
        return cls(dim=dim, mode=meta["per"], hnsw=meta.get("faiss") == "IndexHNSWFlat", labels=list(labels),
                   vectors=np.ascontiguousarray(vectors, dtype=np.float32), counts=dict(meta["counts"]),
                   mean_norms=dict(meta.get("mean_norms", {})), checkpoint=dict(meta["checkpoint"]),
                   frontend=dict(meta["frontend"]))


def _check_sidecar_types(meta: dict, side: Path) -> None:
    """Each sidecar field of the type the loader needs, so a hand-edited sidecar fails by name."""
    expected = {"dimension": int, "labels": list, "counts": dict, "checkpoint": dict, "frontend": dict, "per": str}
    for key, kind in expected.items():
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise file_error(side, f"sidecar field {key!r} must be a {kind.__name__}, found {type(meta[key]).__name__}")
    if meta["per"] not in MODES:
        raise file_error(side, f"sidecar field 'per' is {meta['per']!r}; accepted: {', '.join(MODES)}")
    if not all(isinstance(label, str) for label in meta["labels"]) or set(meta["labels"]) != set(meta["counts"]):
        raise file_error(side, "sidecar 'labels' and 'counts' name different speakers")


@contextmanager
def index_lock(path: str | Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Exclusive lock (FILE.lock) around a read-modify-write of an index; waits up to ``timeout_s``."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise file_error(path, f"index is locked by another voxaug process (waited {timeout_s:.0f} s)") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
