"""The two kinds of model `evaluate` can score: a training checkpoint through torch, or an ONNX export
through ONNX Runtime, so that an index built with `embed --model model.onnx` can be calibrated with the
very model that will answer `identify --model model.onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from voxaug.checkpoint import LoadedModel, load_model
from voxaug.data.store import PackedStore
from voxaug.embeddings.extract import (Embedded, embed_store, embed_store_with_model, embed_tensors,
                                      refuse_too_long_for_export)
from voxaug.errors import file_error
from voxaug.features import FrontendConfig
from voxaug.runtime.training_split import TrainingSplit
from voxaug.safeio import sha256_file

if TYPE_CHECKING:
    from voxaug.api.model import SpeakerModel


class CheckpointEmbedder:
    """A checkpoint (.pt) on a torch device: utterances batched by length."""

    def __init__(self, loaded: LoadedModel, device: torch.device, sha256: str | None = None) -> None:
        self.loaded, self.device = loaded, device
        self.path: Path = loaded.path
        self.sha256 = sha256 if sha256 is not None else sha256_file(self.path)  # the file's now, when not given
        self.frontend: FrontendConfig = loaded.frontend
        self.speakers: list[str] = list(loaded.speakers)
        self.split: TrainingSplit = loaded.config.training_split
        self.split_clips: dict[str, np.ndarray] | None = loaded.split_clips  # which clips the run held out
        self.clip_count: int | None = loaded.clip_count
        self.embedding_dim: int = loaded.config.model.embedding_dim
        self.source_sha256: str | None = None

    @classmethod
    def load(cls, path: Path, device: torch.device) -> "CheckpointEmbedder":
        """The checkpoint with the digest of the file as loaded: RUN/last.pt is replaced while its run trains on, and
        a digest taken after the embedding would name weights that were not scored."""
        loaded = load_model(path, device)
        return cls(loaded, device, sha256_file(path))

    def embed_store(self, store: PackedStore, indices: np.ndarray, progress: bool) -> Embedded:
        """Unit embeddings and softmax probabilities of ``indices`` of ``store``, in that order."""
        return embed_store(self.loaded.model, store, indices, self.device, progress=progress)

    def embed_features(self, clips: list[torch.Tensor], names: list[str] | None = None) -> np.ndarray:
        """Unit embeddings (N, E) of (T, n_mels) feature tensors (``names`` as the export's takes them: a checkpoint
        refuses no clip it was given, whatever its length)."""
        return embed_tensors(self.loaded.model, clips, self.device).embeddings


class ExportEmbedder:
    """A model file loaded as :class:`voxaug.SpeakerModel` (`--model`: an ONNX export from `voxaug export`), one
    utterance at a time. It must record its run's training split (seed and validation fraction), which fixes
    the validation clips `evaluate` scores."""

    def __init__(self, model: "SpeakerModel") -> None:
        refuse_audio_only(model)
        if model.training_split is None:
            raise file_error(model.path, "this export does not record its run's training split (seed and validation "
                                         "fraction), which evaluate needs to find the validation clips; export it "
                                         "again with this version of voxaug")
        self.model = model
        self.path: Path = model.path
        self.frontend = FrontendConfig.from_dict(model.frontend)
        self.speakers: list[str] = list(model.speakers)
        self.split: TrainingSplit = model.training_split
        self.split_clips: dict[str, np.ndarray] | None = model.engine.split_clips  # the run's record, or None
        self.clip_count: int | None = model.engine.clip_count
        self.embedding_dim: int = model.embedding_dim
        self.sha256: str = model.sha256
        self.source_sha256: str | None = model.source_sha256

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> "ExportEmbedder":
        from voxaug.api.model import SpeakerModel

        return cls(SpeakerModel.load(path, device))

    def embed_store(self, store: PackedStore, indices: np.ndarray, progress: bool) -> Embedded:
        refuse_too_long_for_export(self.model, store, None, indices, offers_window=False)  # not after the others
        return embed_store_with_model(self.model, store, progress=progress, indices=indices, with_probabilities=True)

    def embed_features(self, clips: list[torch.Tensor], names: list[str] | None = None) -> np.ndarray:
        """Unit embeddings (N, E) of (T, n_mels) feature tensors of any length, as the checkpoint embeds trial clips.
        ``names`` (their files) name a clip the export refuses: one past its length limit, say."""
        names = names or [f"clip {i}" for i in range(len(clips))]
        return np.stack([self.model.embed_with_probabilities(clip.numpy(), name=name, min_frames=1)[0]
                         for clip, name in zip(clips, names)])


Embedder = CheckpointEmbedder | ExportEmbedder


def refuse_audio_only(model: "SpeakerModel") -> None:
    """`embed` and `evaluate` read a dataset through its packed log-mel store, which an export that takes audio
    cannot embed."""
    if model.takes_audio_only:
        raise file_error(model.path, "this export takes audio (--with-frontend), and embed and evaluate read the "
                                     "dataset's log-mel features; export the checkpoint again without "
                                     "--with-frontend for them (enroll and identify take either)")
