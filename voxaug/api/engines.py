"""The two ways a model runs: a torch checkpoint (the train extra) or an ONNX export (numpy + ONNX Runtime).

Each engine turns one :class:`~voxaug.api.inputs.Clip` into a unit embedding and speaker probabilities.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from voxaug.api.inputs import Clip
from voxaug.errors import VoxaugError, file_error
from voxaug.runtime.frontend import FrontendSettings
from voxaug.runtime.training_split import TrainingSplit
from voxaug.safeio import TRAIN_EXTRA_HINT

if TYPE_CHECKING:
    import torch


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return (shifted / shifted.sum()).astype(np.float32)


def features_for_an_audio_model(clip: str | Path, sample_rate: int) -> VoxaugError:
    """The error for log-mel features given to an export with its front end inside (`--with-frontend`), which
    embeds only waveforms: the clip is at fault, so it is named, not the model."""
    return file_error(clip, f"holds log-mel features, and this model takes raw {sample_rate / 1000:g} kHz audio "
                            "(exported with --with-frontend); give its audio (an audio file, or a waveform with its "
                            "sample_rate)")


class OnnxEngine:
    """An exported model through ONNX Runtime; errors about a clip's content are prefixed with the clip's name."""

    def __init__(self, path: Path, threads: int | None) -> None:
        from voxaug.runtime.onnx_model import OnnxSpeakerModel

        self.model = OnnxSpeakerModel.load(path, threads=threads)
        self.sha256 = self.model.sha256
        self.source_sha256: str | None = self.model.source_checkpoint_sha256
        self.speakers = list(self.model.speakers)
        self.embedding_dim = self.model.embedding_dim
        self.frontend = self.model.frontend
        self.training_split = self.model.training_split
        self.split_clips: dict[str, np.ndarray] | None = self.model.split_clips  # which clips the run held out
        self.clip_count: int | None = self.model.clip_count

    def run(self, clip: Clip, min_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if clip.features is not None and self.model.takes_audio:  # the clip is at fault: name it, not the model too
            raise features_for_an_audio_model(clip.name, self.frontend.sample_rate)
        try:
            if clip.waveform is not None:
                embedding, logits = self.model.embed_waveform(clip.waveform)
            else:
                embedding, logits = self.model.embed_features(clip.features, min_frames)
        except VoxaugError as exc:
            if str(exc).startswith(clip.name):
                raise
            raise VoxaugError(f"{clip.name}: {exc}") from None
        return embedding.astype(np.float32), softmax(logits)

    def run_many(self, clips: list[Clip]) -> np.ndarray:
        """Unit embeddings (N, D) of several clips (one graph run each: CPU inference gains little from padding)."""
        return np.stack([self.run(clip)[0] for clip in clips])


class _TorchThreads:
    """torch's thread count, shared by every thread of the process, held at a model's cap during its calls.

    Each call saving and restoring the count alone is not enough across threads: one that starts while another
    holds a cap saves the cap as "before", and, leaving last, keeps it for the whole process. So the first call
    in saves the count and every call puts that back as it leaves (a thread's own work keeps its own cap).

    In a forked child torch's OpenMP threads are gone, yet OpenMP waits for them: a call on more than one thread
    hangs for good, so there every call runs on one (as torch's DataLoader workers do)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.before = 1
        self.forked = False

    def after_fork(self) -> None:
        """In the child: one thread per call, and a fresh lock (a parent's thread may have held it at the fork)."""
        self.lock, self.users, self.forked = threading.Lock(), 0, True

    def enter(self, threads: int) -> None:
        import torch

        with self.lock:
            if self.users == 0:
                self.before = torch.get_num_threads()
            self.users += 1
            torch.set_num_threads(threads)

    def leave(self) -> None:
        import torch

        with self.lock:
            self.users -= 1
            torch.set_num_threads(self.before)


_TORCH_THREADS = _TorchThreads()
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_TORCH_THREADS.after_fork)


class TorchEngine:
    """A checkpoint through torch (needs the train extra); waveforms go through voxaug's torchaudio front end."""

    def __init__(self, path: Path, device: str, threads: int | None) -> None:
        try:
            import torch  # noqa: F401  (here only to check that the train extra is installed)
        except ImportError:
            raise file_error(path, f"a checkpoint (.pt) needs torch; use an exported .onnx model, or {TRAIN_EXTRA_HINT}") from None
        from voxaug.checkpoint import load_model
        from voxaug.device import resolve_device
        from voxaug.safeio import sha256_file

        self.device = resolve_device(device)
        # one clip is too small a job for many OpenMP threads on a busy machine
        self.threads = threads if self.device.type == "cpu" else None
        self.loaded = load_model(path, self.device)
        self.sha256 = sha256_file(path)
        self.source_sha256: str | None = None
        self.speakers = list(self.loaded.speakers)
        self.embedding_dim = self.loaded.config.model.embedding_dim
        self.frontend = FrontendSettings.from_dict(self.loaded.frontend.to_dict())
        self.training_split: TrainingSplit | None = self.loaded.config.training_split
        self.split_clips: dict[str, np.ndarray] | None = self.loaded.split_clips  # which clips the run held out
        self.clip_count: int | None = self.loaded.clip_count

    def features(self, clip: Clip, min_frames: int | None = None) -> "torch.Tensor":
        """The clip as a checked (T, n_mels) tensor: features as given, or a waveform through torchaudio's log-mel.
        Features shorter than ``min_frames`` (default ``MIN_FRAMES``) are refused."""
        import torch

        from voxaug.data.validate import check_features
        from voxaug.embeddings.extract import check_length
        from voxaug.features import log_mel

        frontend = self.loaded.frontend
        if clip.waveform is not None:
            if clip.waveform.shape[0] <= frontend.n_fft // 2:
                raise file_error(clip.name, f"audio is {clip.waveform.shape[0]} samples long; more than "
                                            f"{frontend.n_fft // 2} are needed")
            features = check_features(log_mel(torch.from_numpy(clip.waveform), frontend), clip.name, frontend.n_mels)
        else:
            features = torch.from_numpy(clip.features)
        if min_frames is None:
            check_length(features, clip.name)
        elif features.shape[0] < min_frames:
            raise file_error(clip.name, f"clip is {features.shape[0]} frames long; at least {min_frames} are needed")
        return features

    @contextmanager
    def own_threads(self) -> Iterator[None]:
        """torch's thread count is process-wide: hold ``threads`` for this model's work only, then put it back
        (see :class:`_TorchThreads`)."""
        threads = 1 if _TORCH_THREADS.forked and self.device.type == "cpu" else self.threads
        if threads is None:
            yield
            return
        _TORCH_THREADS.enter(threads)
        try:
            yield
        finally:
            _TORCH_THREADS.leave()

    def run(self, clip: Clip, min_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        from voxaug.embeddings.extract import embed_tensors

        with self.own_threads():
            embedded = embed_tensors(self.loaded.model, [self.features(clip, min_frames)], self.device)
        return embedded.embeddings[0], embedded.probabilities[0]

    def run_many(self, clips: list[Clip]) -> np.ndarray:
        """Unit embeddings (N, D) of several clips, batched by length in one call (as enrolment did before the API)."""
        from voxaug.embeddings.extract import embed_tensors

        with self.own_threads():
            embedded = embed_tensors(self.loaded.model, [self.features(c) for c in clips], self.device)
        return np.asarray(embedded.embeddings)
