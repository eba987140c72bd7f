"""``SpeakerModel``: one object for a checkpoint (.pt) or an ONNX export (.onnx), with ``embed`` and ``classify``."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from voxaug.api.engines import OnnxEngine, TorchEngine
from voxaug.api.inputs import ClipInput, clip_list, path_argument, refuse_unused_sample_rate, to_clip
from voxaug.errors import VoxaugError, file_error, not_a_file
from voxaug.runtime.training_split import TrainingSplit

MODEL_SUFFIXES = {".onnx": "onnx", ".pt": "checkpoint"}


@dataclass(frozen=True)
class Classification:
    """The classifier's answer over the speakers the model was trained on."""

    speaker: str
    probability: float


class SpeakerModel:
    """A trained speaker model. ``x`` is a clip path (.pt features, or audio such as .wav or .mp3), a waveform with its
    ``sample_rate``, or a (frames, n_mels) feature array or tensor."""

    def __init__(self, path: Path, kind: str, engine: OnnxEngine | TorchEngine) -> None:
        self.path = path
        self.resolved_path = path.resolve()  # now: a relative name means the working folder of the load
        self.kind = kind
        self.engine = engine

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> "SpeakerModel":
        """A checkpoint runs on ``device`` (auto, cpu or cuda; needs torch), an ONNX file on ONNX Runtime's CPU
        (``cuda`` is refused for it rather than ignored). ``threads`` caps the CPU threads of this model's own work;
        torch's process-wide count is put back after each call."""
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads <= 0):  # else a bare error from torch or ONNX Runtime on first use
            raise VoxaugError(f"threads must be a positive whole number (or None for the runtime's default), "
                              f"got {threads!r}")
        path = path_argument(path, "a checkpoint (.pt) or an ONNX export (.onnx)", "model")
        kind = MODEL_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise file_error(path, f"unsupported model type {path.suffix!r}; accepted: a checkpoint (.pt) or an "
                                   "ONNX export (.onnx)")
        if not path.is_file():
            raise file_error(path, "model not found" if not path.exists() else not_a_file(path, "model"))
        if kind == "onnx" and device == "cuda":
            raise file_error(path, "an ONNX export runs on ONNX Runtime's CPU, not --device cuda; for CUDA give "
                                   "its checkpoint (.pt)")
        if kind == "onnx" and device not in ("auto", "cpu"):
            raise VoxaugError(f"--device {device!r} is not known; accepted: auto, cpu, cuda")
        engine = OnnxEngine(path, threads) if kind == "onnx" else TorchEngine(path, device, threads)
        return cls(path, kind, engine)

    @property
    def sha256(self) -> str:
        return self.engine.sha256

    @property
    def source_sha256(self) -> str | None:
        """SHA-256 of the checkpoint an ONNX export was made from (None for a checkpoint)."""
        return self.engine.source_sha256

    @property
    def takes_audio_only(self) -> bool:
        """An export with its front end inside (`voxaug export --with-frontend`): it embeds waveforms, not features."""
        return self.kind == "onnx" and self.engine.model.takes_audio

    @property
    def prefers_audio(self) -> bool:
        """Whether a folder's audio twin is read rather than its `.pt`: for an export that takes audio,
        for a model whose front end is not the one `.pt` twins are made with, and for any export where torch,
        which reads `.pt` files, is not installed."""
        return (self.takes_audio_only or not self.engine.frontend.is_default
                or (self.kind == "onnx" and importlib.util.find_spec("torch") is None))

    @property
    def speakers(self) -> list[str]:
        return self.engine.speakers

    @property
    def embedding_dim(self) -> int:
        return self.engine.embedding_dim

    @property
    def frontend(self) -> dict:
        """Front-end settings as plain values (what an index's sidecar stores)."""
        return self.engine.frontend.to_dict()

    @property
    def training_split(self) -> TrainingSplit | None:
        """The run's seed, validation fraction and split version, which fix the utterances it trained on, so that
        a scoring back end can be fitted on the same ones; None for ONNX exports made before they were recorded."""
        return self.engine.training_split

    def record(self) -> dict:
        """What an index's sidecar remembers of the model that made its embeddings."""
        record = {"path": str(self.resolved_path), "sha256": self.sha256, "kind": self.kind}
        if self.source_sha256:
            record["source_sha256"] = self.source_sha256
        return record

    def embed_with_probabilities(self, x: ClipInput, sample_rate: int | None = None, name: str | None = None,
                                 min_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Unit embedding (D,) and softmax probabilities over ``speakers`` (S,) of one clip. Feature clips shorter
        than ``min_frames`` (default: 10, the shortest clip worth identifying) are refused."""
        refuse_unused_sample_rate([x], sample_rate)
        clip = to_clip(x, sample_rate, self.engine.frontend, name)
        return self.engine.run(clip, min_frames)

    def embed_many(self, clips: Iterable[ClipInput], sample_rate: int | None = None, name: str = "clip",
                   positions: Iterable[int] | None = None) -> np.ndarray:
        """Unit-norm float32 embeddings (N, D) of several clip files, feature arrays or waveforms (arrays are
        waveforms at ``sample_rate`` when it is given), batched where it helps; ``clips`` is any iterable (a list, a
        generator, the rows of a batch array) or one clip path. Errors label arrays ``<name> <i>``, ``i`` their
        position in ``clips`` or, given, in ``positions`` (the caller's numbering)."""
        clips = clip_list(clips, rows_are_clips=True)  # a generator has no len(), and is read once
        positions = list(range(len(clips))) if positions is None else list(positions)
        if len(positions) != len(clips):  # zip would embed only as many clips as there are positions
            raise VoxaugError(f"positions: {len(positions)} given for {len(clips)} clips; give one per clip")
        if not clips:  # else a bare error from stacking nothing (numpy's ValueError, torch's RuntimeError)
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        refuse_unused_sample_rate(clips, sample_rate)
        return self.engine.run_many([to_clip(x, sample_rate, self.engine.frontend, f"{name} {i}")
                                     for i, x in zip(positions, clips)])

    def embed(self, x: ClipInput, sample_rate: int | None = None) -> np.ndarray:
        """Unit-norm float32 embedding (D,) of one clip."""
        return self.embed_with_probabilities(x, sample_rate)[0]

    def classify(self, x: ClipInput, sample_rate: int | None = None) -> Classification:
        """The most likely training speaker for one clip, with its softmax probability."""
        probabilities = self.embed_with_probabilities(x, sample_rate)[1]
        best = int(np.argmax(probabilities))
        return Classification(self.speakers[best], float(probabilities[best]))
