"""Identification records and the checks that tie an index to the model that made its embeddings.

torch-free: ``voxaug.api.index.SpeakerIndex`` does the identifying, with a checkpoint or an ONNX export.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from voxaug.embeddings.index import SpeakerIndex, sidecar_path
from voxaug.errors import VoxaugError, file_error
from voxaug.safeio import sha256_file

UNKNOWN = "unknown"
LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})
"""Unicode categories a speaker name may not hold: control characters, and the line and paragraph separators
(U+2028, U+2029) that ``str.splitlines()`` and many a log reader also end a line at."""


def breaks_lines(text: str) -> bool:
    """Whether ``text`` holds a character that could end or reshape a printed line (see ``LINE_BREAKING``)."""
    return any(unicodedata.category(character) in LINE_BREAKING for character in text)


def check_speaker_name(name: object) -> str:
    """An enrolled speaker's name: not blank, no surrounding spaces, no control characters or line separators (a
    newline would split identify's lines), and not the answer for no one."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise VoxaugError(f"speaker name {name!r} must be non-empty text without leading or trailing spaces")
    if breaks_lines(name):
        raise VoxaugError(f"speaker name {name!r} holds a control character (a newline, tab, line separator or "
                          "the like)")
    if name == UNKNOWN:
        raise VoxaugError(f"speaker name {name!r} is what identify answers below the threshold; choose another")
    return name


def checkpoint_record(path: str | Path) -> dict:
    """What an index's sidecar remembers of the checkpoint that made its embeddings."""
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def same_weights(record: dict, digest: str, source_sha256: str | None = None) -> bool:
    """Whether a model (``digest``, and for an ONNX export the checkpoint it came from) has the weights an
    index's record names: the same file, an export of the recorded checkpoint, the checkpoint of a recorded
    export, or two exports of one checkpoint. Their embeddings agree to a cosine of 0.9999999
    (benchmarks/onnx_parity.py), so an index built with one answers queries from the other as it would its own."""
    recorded = {record.get("sha256"), record.get("source_sha256")} - {None, ""}
    return bool(recorded & ({digest, source_sha256} - {None, ""}))


def check_model(index: SpeakerIndex, index_path: Path, model_path: Path, digest: str, embedding_dim: int,
                source_sha256: str | None = None) -> None:
    """Refuse a model other than the index's own (or an ONNX export of the same checkpoint), or of another
    embedding size."""
    expected = index.checkpoint.get("sha256")
    if expected and not same_weights(index.checkpoint, digest, source_sha256):
        raise file_error(
            model_path, f"model does not match the index {index_path} (SHA-256 {digest[:12]}…, the sidecar "
            f"{sidecar_path(index_path)} expects {expected[:12]}… from {index.checkpoint.get('path')}, or an "
            "export of the same checkpoint); embeddings of different models are not comparable"
        )
    if embedding_dim != index.dim:
        raise file_error(model_path, f"embedding dimension {embedding_dim} does not match the index's {index.dim}")


@dataclass
class Identification:
    clip: str
    top: list[tuple[str, float]]
    softmax_speaker: str
    softmax_prob: float
    decision: str
    score: str = "cosine"
    """What ``top``'s scores are: ``cosine``, ``plda`` (log-likelihood ratio) or ``asnorm``."""
    threshold: float = 0.5
    threshold_source: str = "default"
    threshold_outdated: bool = False
    """A calibrated threshold picked before the enrolled speakers last changed (``IndexData.calibration_outdated``)."""
    threshold_measured: bool | None = None
    """Whether a calibrated threshold's false-alarm rate was measured (``IndexData.calibration_measured``); None where
    the threshold is not calibrated, or its calibration predates the record."""

    @property
    def accepted(self) -> bool:
        """Whether the best score reached the threshold, so that ``decision`` names an enrolled speaker: one an
        older voxaug enrolled as ``unknown`` is then an answer, not the lack of one."""
        return bool(self.top) and self.top[0][1] >= self.threshold

    def to_json(self) -> dict:
        return {
            "clip": self.clip,
            "top": [{"speaker": s, "score": round(score, 6)} for s, score in self.top],
            "softmax": {"speaker": self.softmax_speaker, "prob": round(self.softmax_prob, 6)},
            "decision": self.decision,
            "score": self.score,
            "threshold": {"value": round(self.threshold, 6), "source": self.threshold_source}
                         | ({"outdated": True} if self.threshold_outdated else {})
                         | ({"measured": self.threshold_measured} if self.threshold_measured is not None else {}),
        }


def check_threshold(threshold: float | None, score: str | None = "cosine") -> float | None:
    """A cosine threshold lies in [-1, 1]; a PLDA or AS-norm one is any finite number (``score`` None: not
    known yet, only finiteness is checked)."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):  # numpy scalars are Real too
        raise VoxaugError(f"--threshold must be a number, got {threshold!r}")
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise VoxaugError(f"--threshold must be a finite number, got {threshold}")
    if score == "cosine" and not -1.0 <= threshold <= 1.0:
        raise VoxaugError(f"--threshold is a cosine score in [-1, 1] (or pass --score-norm asnorm), got {threshold}")
    return threshold
