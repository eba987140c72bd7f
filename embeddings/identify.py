"""Identify clips: cosine top-k over the speaker index, with the softmax classifier's answer beside it.

An ``Identifier`` loads the checkpoint and the index once; each clip then costs one forward pass and
one FAISS search, which is what keeps identification in a warm process to milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from voxaug.checkpoint import LoadedModel, load_model
from voxaug.data.sources import load_clip
from voxaug.embeddings.backend import check_top_k
from voxaug.embeddings.extract import check_length, embed_tensors
from voxaug.embeddings.index import SpeakerIndex, sidecar_path
from voxaug.errors import VoxaugError, file_error
from voxaug.safeio import sha256_file

UNKNOWN = "unknown"


def checkpoint_record(path: str | Path) -> dict:
    """What an index's sidecar remembers of the checkpoint that made its embeddings."""
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def check_checkpoint(index: SpeakerIndex, index_path: Path, loaded: LoadedModel, digest: str) -> None:
    """Refuse a checkpoint other than the index's own, or of another embedding size."""
    expected = index.checkpoint.get("sha256")
    if expected and expected != digest:
        raise file_error(
            loaded.path, f"checkpoint does not match the index {index_path} (SHA-256 {digest[:12]}…, the sidecar "
            f"{sidecar_path(index_path)} expects {expected[:12]}… from {index.checkpoint.get('path')}); "
            "embeddings of different models are not comparable"
        )
    if loaded.config.model.embedding_dim != index.dim:
        raise file_error(loaded.path, f"embedding dimension {loaded.config.model.embedding_dim} does not match "
                                      f"the index's {index.dim}")


@dataclass
class Identification:
    clip: str
    top: list[tuple[str, float]]
    softmax_speaker: str
    softmax_prob: float
    decision: str
    score_norm: str = "none"
    threshold: float = 0.5
    threshold_source: str = "default"

    def to_json(self) -> dict:
        return {
            "clip": self.clip,
            "top": [{"speaker": s, "score": round(score, 6)} for s, score in self.top],
            "softmax": {"speaker": self.softmax_speaker, "prob": round(self.softmax_prob, 6)},
            "decision": self.decision,
            "score": "asnorm" if self.score_norm == "asnorm" else "cosine",
            "threshold": {"value": round(self.threshold, 6), "source": self.threshold_source},
        }


class Identifier:
    def __init__(self, index_path: str | Path, ckpt: str | Path | None = None, device: torch.device | str = "cpu",
                 cpu_threads: int | None = 1, score_norm: str | None = None, cohort_top_k: int | None = None,
                 threshold: float | None = None) -> None:
        """``cpu_threads``: one clip is too small a job to split across OpenMP threads; on a busy machine
        their spin-waits cost far more than they save. None keeps torch's setting.
        ``score_norm``, ``cohort_top_k``: override what the index's sidecar holds; ``threshold``: the
        decision threshold (default: the calibrated one, else the score's default)."""
        if cpu_threads is not None and torch.device(device).type == "cpu":
            torch.set_num_threads(cpu_threads)
        self.index_path = Path(index_path)
        self.index = SpeakerIndex.load(self.index_path)
        ckpt = Path(ckpt) if ckpt else Path(self.index.checkpoint.get("path", ""))
        if not str(ckpt) or not ckpt.is_file():
            raise file_error(ckpt, "checkpoint not found (the index's sidecar names it; pass --ckpt to point elsewhere)")
        self.device = torch.device(device)
        self.loaded = load_model(ckpt, self.device)
        check_checkpoint(self.index, self.index_path, self.loaded, sha256_file(ckpt))
        self.faiss = self.index.faiss_index()
        self.score_norm = score_norm or self.index.score_norm
        if cohort_top_k is not None:
            check_top_k(cohort_top_k)
        if self.score_norm == "asnorm":
            try:
                self.index.check_asnorm()
            except VoxaugError as exc:
                raise file_error(self.index_path, str(exc)) from None
        self.cohort_top_k = cohort_top_k
        self.threshold, self.threshold_source = self.index.threshold(self.score_norm, check_threshold(threshold, self.score_norm))

    def identify_features(self, features: torch.Tensor, name: str, top_k: int = 5) -> Identification:
        check_length(features, name)
        embedded = embed_tensors(self.loaded.model, [features], self.device)
        top = self.index.search(embedded.embeddings, top_k, self.faiss, self.score_norm, self.cohort_top_k)[0]
        probs = torch.from_numpy(embedded.probabilities[0])
        best = int(probs.argmax())
        decision = top[0][0] if top and top[0][1] >= self.threshold else UNKNOWN
        return Identification(name, top, self.loaded.speakers[best], float(probs[best]), decision, self.score_norm,
                              self.threshold, self.threshold_source)

    def identify(self, clip: str | Path, top_k: int = 5) -> Identification:
        features = load_clip(clip, self.loaded.frontend)
        return self.identify_features(features, str(clip), top_k)


def check_threshold(threshold: float | None, score_norm: str = "none") -> float | None:
    """A cosine threshold lies in [-1, 1]; an AS-norm one is any finite number."""
    if threshold is None:
        return None
    if not math.isfinite(threshold):
        raise VoxaugError(f"--threshold must be a finite number, got {threshold}")
    if score_norm == "none" and not -1.0 <= threshold <= 1.0:
        raise VoxaugError(f"--threshold is a cosine score in [-1, 1] (or pass --score-norm asnorm), got {threshold}")
    return threshold
