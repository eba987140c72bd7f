"""A speaker model written by ``voxaug export``, run with ONNX Runtime: numpy in, numpy out, no torch.

The file is checked before use: it must parse, carry voxaug's metadata, have the inputs and outputs
``voxaug export`` writes, and match the content checksum stored inside it (so a flipped byte in the
weights or an edited label list is refused, not silently used).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime

from voxaug.errors import VoxaugError, file_error, not_a_file
from voxaug.runtime.frontend import FrontendSettings, feature_values_problem, frames_for, log_mel
from voxaug.runtime.training_split import TrainingSplit, decode_split_clips
from voxaug.safeio import loads_unique

ONNX_FORMAT = "voxaug-onnx-speaker-model"
ONNX_FORMAT_VERSION = 1
CONTENT_DIGEST_KEY = "voxaug_content_sha256"
DIGEST_PLACEHOLDER = "0" * 64
SPLIT_CLIPS_KEY = "split_clips"
"""The run's training and validation clip digests (``voxaug.runtime.training_split.encode_split_clips``); absent in
exports of runs that did not record them, and in exports made before exports carried them."""
CLIP_COUNT_KEY = "training_clip_count"
FEATURE_INPUTS = ("features", "lengths")
AUDIO_INPUTS = ("waveform", "num_samples")
OUTPUTS = ("embedding", "logits")
MAX_FRAMES = 12001
"""Longest clip an export embeds: 2 minutes at a 10 ms hop, whose centred frames number 1 + 120 s / 10 ms. The exported
attention holds a frames x frames matrix per head, so memory grows with the square of the length (about 5 GB at this
length with the cpu preset) where the checkpoint's fused attention stays under 1 GB; beyond it a clip is refused, not
run out of memory."""
REQUIRED_METADATA = ("voxaug_format", "voxaug_format_version", "frontend", "speakers", "embedding_dim", "n_mels",
                     "min_frames", "takes_audio", "source_checkpoint_sha256", CONTENT_DIGEST_KEY)


def digest_marker() -> bytes:
    """The bytes that precede the content digest in a serialised model: the metadata key, then the
    protobuf tag and length of a 64-character string value."""
    return CONTENT_DIGEST_KEY.encode() + b"\x12\x40"


def content_digest(data: bytes) -> str | None:
    """SHA-256 of a serialised model with its stored digest replaced by zeros; None without exactly one digest."""
    marker = digest_marker()
    start = data.find(marker)
    if start < 0 or data.find(marker, start + 1) >= 0:
        return None
    value = start + len(marker)
    return hashlib.sha256(data[:value] + DIGEST_PLACEHOLDER.encode() + data[value + 64 :]).hexdigest()


def stored_digest(data: bytes) -> str:
    value = data.find(digest_marker()) + len(digest_marker())
    return data[value : value + 64].decode("ascii", errors="replace")


def _session(path: Path, data: bytes, threads: int | None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's problem
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, InvalidGraph, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for sign in ("Unsupported model IR version", "ONNX Runtime only *guarantees* support"):
            if sign in first:  # a model from a newer exporter, or an opset this onnxruntime does not know
                raise file_error(path, f"written for a newer onnxruntime than {onnxruntime.__version__} "
                                       f"({first[first.index(sign):][:160]})") from exc
        raise file_error(path, f"not a readable ONNX model (truncated or corrupt: {first[:160]})") from exc


def _metadata(path: Path, session: onnxruntime.InferenceSession) -> dict[str, str]:
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get("voxaug_format") != ONNX_FORMAT:
        raise file_error(path, "not a voxaug speaker model (no voxaug metadata; write one with `voxaug export`)")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise file_error(path, f"voxaug model metadata lacks {', '.join(missing)}")
    if metadata["voxaug_format_version"] != str(ONNX_FORMAT_VERSION):
        raise file_error(path, f"voxaug model format version {metadata['voxaug_format_version']} is not supported "
                               f"(expected {ONNX_FORMAT_VERSION})")
    return metadata


def _check_signature(path: Path, session: onnxruntime.InferenceSession, takes_audio: bool) -> None:
    inputs = tuple(node.name for node in session.get_inputs())
    outputs = tuple(node.name for node in session.get_outputs())
    expected = AUDIO_INPUTS if takes_audio else FEATURE_INPUTS
    if inputs != expected or outputs != OUTPUTS:
        raise file_error(path, f"model has inputs {list(inputs)} and outputs {list(outputs)}; "
                               f"a voxaug model has {list(expected)} and {list(OUTPUTS)}")


def _checked_lengths(lengths: np.ndarray, batch: int, most: int, unit: str) -> np.ndarray:
    """(B,) int64 lengths, each in [1, most]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (batch,):
        raise VoxaugError(f"lengths must have shape ({batch},), got {lengths.shape}")
    if batch and (lengths.min() < 1 or lengths.max() > most):
        raise VoxaugError(f"lengths must be in [1, {most}] {unit}, got {lengths.min()}..{lengths.max()}")
    return lengths


def _training_split(path: Path, metadata: dict[str, str]) -> TrainingSplit | None:
    """The run's split; None in exports made before it was recorded (version 1 before versions were)."""
    if "training_seed" not in metadata or "validation_fraction" not in metadata:
        return None
    try:
        return TrainingSplit(int(metadata["training_seed"]), float(metadata["validation_fraction"]),
                             int(metadata.get("split_version", "1")))
    except ValueError:
        raise file_error(path, "voxaug model metadata is unusable (training_seed, validation_fraction or "
                               "split_version)") from None


def _split_clips(path: Path, metadata: dict[str, str]) -> tuple[dict[str, np.ndarray] | None, int | None]:
    """The run's record of its clips, as a checkpoint keeps it: the digests of its training and validation clips and
    how many it trained on; None for what the export does not carry."""
    try:
        record = decode_split_clips(metadata[SPLIT_CLIPS_KEY]) if SPLIT_CLIPS_KEY in metadata else None
        count = int(metadata[CLIP_COUNT_KEY]) if CLIP_COUNT_KEY in metadata else None
    except ValueError as exc:
        raise file_error(path, f"voxaug model metadata is unusable ({SPLIT_CLIPS_KEY} or {CLIP_COUNT_KEY}: "
                               f"{str(exc).splitlines()[0][:120]})") from None
    return record, count


class OnnxSpeakerModel:
    """An exported speaker model: unit embeddings and logits over the original speakers."""

    def __init__(self, path: Path, sha256: str, session: onnxruntime.InferenceSession, metadata: dict[str, str]) -> None:
        self.path, self.sha256, self.session = path, sha256, session
        self.absolute_path = path.absolute()  # now: a relative name means the working folder of the load
        try:
            self.speakers: list[str] = loads_unique(metadata["speakers"])
            self.frontend = FrontendSettings.from_dict(loads_unique(metadata["frontend"]))
            self.embedding_dim = int(metadata["embedding_dim"])
            self.n_mels = int(metadata["n_mels"])
            self.min_frames = int(metadata["min_frames"])
            self.takes_audio = {"true": True, "false": False}[metadata["takes_audio"]]
        except (ValueError, TypeError, KeyError, RecursionError, VoxaugError) as exc:  # RecursionError: JSON nested deep
            raise file_error(path, f"voxaug model metadata is unusable ({str(exc).splitlines()[0]})") from exc
        self.source_checkpoint_sha256 = metadata["source_checkpoint_sha256"]
        self.training_split = _training_split(path, metadata)
        self.split_clips, self.clip_count = _split_clips(path, metadata)
        if (not isinstance(self.speakers, list) or not all(isinstance(name, str) for name in self.speakers)
                or self.n_mels != self.frontend.n_mels):
            raise file_error(path, "voxaug model metadata is inconsistent (speaker labels or n_mels)")

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> "OnnxSpeakerModel":
        """Open and check an exported model; any problem is one ``VoxaugError`` naming the file."""
        path = Path(path)
        if not path.exists():
            raise file_error(path, "ONNX model not found")
        if not path.is_file():
            raise file_error(path, not_a_file(path, "ONNX model"))
        data = path.read_bytes()
        if not data:
            raise file_error(path, "ONNX model is empty (0 bytes)")
        session = _session(path, data, threads)
        metadata = _metadata(path, session)
        if content_digest(data) != stored_digest(data):
            raise file_error(path, "ONNX model does not match its own checksum (tampered with or corrupted)")
        model = cls(path, hashlib.sha256(data).hexdigest(), session, metadata)
        _check_signature(path, session, model.takes_audio)
        model.threads = threads
        return model

    def __getstate__(self) -> dict:
        """All but the ONNX Runtime session, which cannot be pickled: a copy sent to another process (a process
        pool, with fork or spawn) opens the file again."""
        state = {key: value for key, value in self.__dict__.items() if key != "session"}
        state["path"] = self.absolute_path  # the other process, or this one later, may run in another folder
        return state

    def __setstate__(self, state: dict) -> None:
        """The session reopened from the file, refused in one line if the file is no longer the one loaded."""
        self.__dict__.update(state)
        reopened = OnnxSpeakerModel.load(self.path, state.get("threads"))
        if reopened.sha256 != self.sha256:
            raise file_error(self.path, "ONNX model changed since it was loaded, and a copy sent to another process "
                                        "opens it again; load the model again")
        self.session = reopened.session

    def _refuse_audio_model(self) -> None:
        if self.takes_audio:
            raise file_error(self.path, f"this model takes raw {self.frontend.sample_rate / 1000:g} kHz audio (exported "
                                        "with --with-frontend); give it waveforms or audio files, not log-mel features")

    def run_features(self, features: np.ndarray, lengths: np.ndarray,
                     min_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, n_mels) float32 + (B,) frame counts -> unit embeddings (B, D), logits (B, S). Clips shorter than
        ``min_frames`` (default: the export's, the floor for a clip to identify) are refused; the graph itself runs on
        any length, as the checkpoint does on a dataset's utterances."""
        self._refuse_audio_model()
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 3 or features.shape[2] != self.n_mels:
            raise file_error(self.path, f"model takes (batch, frames, {self.n_mels}) log-mel features, "
                                        f"got shape {features.shape}")
        problem = feature_values_problem(float(np.abs(features).max())) if features.size else None
        if problem:
            raise VoxaugError(problem)
        lengths = _checked_lengths(lengths, features.shape[0], features.shape[1], "frames")
        min_frames = self.min_frames if min_frames is None else min_frames
        if len(lengths) and lengths.min() < min_frames:
            raise VoxaugError(f"clip is {lengths.min()} frames long; at least {min_frames} are needed")
        self.refuse_too_long(int(lengths.max()) if len(lengths) else 0)
        return self._run({"features": features, "lengths": lengths})

    def refuse_too_long(self, frames: int,
                        remedy: str = "cut the clip, or embed it with the checkpoint (--ckpt)") -> None:
        """Refuse a clip of more than ``MAX_FRAMES`` frames, saying what to do instead (``remedy``)."""
        if frames > MAX_FRAMES:
            seconds = self.frontend.hop_ms / 1000
            raise VoxaugError(f"clip is {(frames - 1) * seconds:.0f} s long ({frames} frames); an ONNX export "
                              f"embeds at most {(MAX_FRAMES - 1) * seconds:.0f} s ({MAX_FRAMES} frames), since its "
                              f"attention needs memory that grows with the square of the length: {remedy}")

    def _run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The graph on ``inputs``; an ONNX Runtime failure (out of memory, say) is one line naming the model."""
        try:
            embeddings, logits = self.session.run(list(OUTPUTS), inputs)
        except Exception as exc:  # onnxruntime raises its own pybind classes (Fail, RuntimeException, ...)
            raise file_error(self.path, f"ONNX Runtime failed: {str(exc).splitlines()[0][:300]}") from exc
        return embeddings, logits

    def run_audio(self, waveforms: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, N) float32 samples at the model's rate + (B,) sample counts -> embeddings (B, D), logits (B, S)."""
        if not self.takes_audio:
            raise file_error(self.path, "this model takes log-mel features (exported without --with-frontend); "
                                        "use run_features or embed_waveform")
        waveforms = np.asarray(waveforms, dtype=np.float32)
        if waveforms.ndim != 2:
            raise VoxaugError(f"waveforms must have shape (batch, samples), got {waveforms.shape}")
        if not np.isfinite(waveforms).all():
            raise VoxaugError("waveforms hold NaN or Inf samples")
        lengths = _checked_lengths(lengths, waveforms.shape[0], waveforms.shape[1], "samples")
        shortest = max(self.frontend.n_fft // 2 + 1, (self.min_frames - 1) * self.frontend.hop_length)
        if len(lengths) and lengths.min() < shortest:
            raise VoxaugError(f"clip is {lengths.min()} samples long; at least {shortest} are needed")
        self.refuse_too_long(int(lengths.max()) // self.frontend.hop_length + 1 if len(lengths) else 0)
        return self._run({"waveform": waveforms, "num_samples": lengths})

    def embed_features(self, features: np.ndarray, min_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One utterance (T, n_mels) -> embedding (D,), logits (S,); ``min_frames`` as in :meth:`run_features`."""
        features = np.asarray(features, dtype=np.float32)
        self._refuse_audio_model()
        if features.ndim != 2 or features.shape[1] != self.n_mels:
            raise file_error(self.path, f"model takes (frames, {self.n_mels}) log-mel features, got shape {features.shape}")
        embeddings, logits = self.run_features(features[None], np.array([features.shape[0]], dtype=np.int64),
                                               min_frames)
        return embeddings[0], logits[0]

    def embed_waveform(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One mono waveform at the model's sample rate -> embedding (D,), logits (S,)."""
        waveform = np.asarray(waveform, dtype=np.float32)
        if waveform.ndim != 1:
            raise VoxaugError(f"waveform must be mono, shape (samples,), got {waveform.shape}")
        if self.takes_audio:
            embeddings, logits = self.run_audio(waveform[None], np.array([waveform.shape[0]], dtype=np.int64))
            return embeddings[0], logits[0]
        self.refuse_too_long(frames_for(waveform.shape[0], self.frontend))  # before its log-mel's memory
        return self.embed_features(log_mel(waveform, self.frontend))
