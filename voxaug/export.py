"""Write a trained checkpoint as an ONNX speaker model that ``voxaug.runtime`` runs without torch.

The graph takes padded log-mel frames and their lengths (or, with the front end inside, padded
waveforms at the checkpoint's sample rate and their sample counts) and returns unit embeddings and
logits over the original speakers. Batch and time are dynamic: padding is masked everywhere the
model looks across frames, so the exported graph never depends on the lengths it was traced with.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from voxaug.checkpoint import LoadedModel, load_model
from voxaug.embeddings.extract import MIN_FRAMES
from voxaug.errors import VoxaugError, file_error
from voxaug.features import FrontendConfig, _mel_transform
from voxaug.model import (ConformerSpeakerNet, TransformerMeanNet, _self_attention, conformer_forward,
                          key_padding_bias, network_input, padding_mask, speaker_logits)
from voxaug.runtime.onnx_model import (AUDIO_INPUTS, CLIP_COUNT_KEY, CONTENT_DIGEST_KEY, DIGEST_PLACEHOLDER,
                                       FEATURE_INPUTS, ONNX_FORMAT, ONNX_FORMAT_VERSION, OUTPUTS, SPLIT_CLIPS_KEY,
                                       content_digest, digest_marker)
from voxaug.runtime.training_split import encode_split_clips
from voxaug.safeio import atomic_write_bytes, sha256_file, write_error

DEFAULT_OPSET = 17
LOWEST_OPSET = 14  # scaled_dot_product_attention's ONNX translation needs 14
HIGHEST_OPSET = 20  # the TorchScript exporter's highest


def _masked_transformer(model: TransformerMeanNet, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``TransformerMeanNet.embed`` in eval mode, written out: (B, T, n_mels), (B,) -> (B, E). PyTorch's
    encoder layers would take their fused fast path, which neither exports nor traces with dynamic time."""
    real = ~padding_mask(lengths, features.shape[1])  # (B, T)
    x = model.input_proj(network_input(model.config, features, lengths))  # (B, T, d)
    for layer in model.encoder.layers:  # post-norm layers (norm_first=False), as TransformerMeanNet builds them
        x = layer.norm1(x + _self_attention(layer.self_attn, x, key_padding_bias(real, x.dtype), False))
        x = layer.norm2(x + layer.linear2(layer.activation(layer.linear1(x))))
    keep = real.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return model.embedding((x * keep).sum(1) / keep.sum(1).clamp(min=1))


class LogMelFrontend(nn.Module):
    """``voxaug.features.log_mel`` for a padded batch, in ops every ONNX runtime has: each waveform is
    reflect-padded at its own end (not the batch's), framed by index, windowed, and transformed by a
    real DFT as float64 matrix products (exact enough that the log-mel matches torchaudio's).
    (B, N) waveforms, (B,) sample counts -> (B, T, n_mels) features, (B,) frame counts."""

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        self.config = config
        mel = _mel_transform(config)
        window = mel.spectrogram.window.double()
        left = (config.n_fft - config.win_length) // 2
        window = F.pad(window, (left, config.n_fft - config.win_length - left))  # (n_fft,)
        freqs = torch.arange(config.n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * torch.arange(config.n_fft, dtype=torch.float64)[:, None] * freqs[None, :] / config.n_fft
        self.register_buffer("cos_basis", window[:, None] * torch.cos(angle))  # (n_fft, n_freqs)
        self.register_buffer("sin_basis", window[:, None] * torch.sin(angle))
        self.register_buffer("filterbank", mel.mel_scale.fb.double())  # (n_freqs, n_mels)

    def forward(self, waveform: torch.Tensor, num_samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half, hop = self.config.n_fft // 2, self.config.hop_length
        width = waveform.shape[1]
        source = (torch.arange(width + 2 * half, device=waveform.device) - half).abs()[None, :]  # (1, N + 2h)
        last = (num_samples - 1)[:, None]  # (B, 1)
        source = torch.where(source > last, 2 * last - source, source).clamp(0, width - 1)  # reflect at each end
        padded = torch.gather(waveform, 1, source.expand(waveform.shape[0], -1)).double()  # (B, N + 2h)
        frame_count = width // hop + 1
        starts = torch.arange(frame_count, device=waveform.device)[:, None] * hop
        frames = padded[:, starts + torch.arange(self.config.n_fft, device=waveform.device)[None, :]]  # (B, T, n_fft)
        power = (frames @ self.cos_basis) ** 2 + (frames @ self.sin_basis) ** 2  # (B, T, n_freqs)
        features = torch.log(power @ self.filterbank + self.config.log_floor).float()  # (B, T, n_mels)
        return features, num_samples // hop + 1


class ExportableSpeakerNet(nn.Module):
    """A trained speaker model as exported: features (or audio) in, unit embeddings and speaker logits out."""

    def __init__(self, loaded: LoadedModel, with_frontend: bool) -> None:
        super().__init__()
        self.model = loaded.model.eval()
        self.frontend = LogMelFrontend(loaded.frontend) if with_frontend else None

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        if isinstance(model, ConformerSpeakerNet):
            features = network_input(model.config, features, lengths)
            frames = conformer_forward(model.encoder, model.input_proj(features), lengths, always_mask=True)
            embeddings = model.embedding(model.pooling(frames, lengths))  # (B, E)
        else:
            embeddings = _masked_transformer(model, features, lengths)
        logits = speaker_logits(model.head(embeddings), model.config, training=False)  # (B, S)
        return F.normalize(embeddings.float(), dim=1), logits

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frontend is not None:
            inputs, lengths = self.frontend(inputs, lengths)
        return self.embed(inputs, lengths)


@dataclass
class ExportSummary:
    """What ``export_onnx`` wrote, for the command's report."""

    path: Path
    speakers: int
    embedding_dim: int
    takes_audio: bool
    opset: int
    sha256: str
    sample_rate: int
    """The front end's rate: what a model that takes audio expects its waveforms at."""


def _example_inputs(loaded: LoadedModel, with_frontend: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two (different lengths), so nothing in the trace is specialised to one length."""
    generator = torch.Generator().manual_seed(0)
    if with_frontend:
        samples = 40 * loaded.frontend.hop_length
        return torch.randn(2, samples, generator=generator) * 0.1, torch.tensor([samples, samples * 3 // 4])
    return torch.randn(2, 40, loaded.config.model.n_mels, generator=generator), torch.tensor([40, 27])


def _metadata(loaded: LoadedModel, ckpt: Path, with_frontend: bool) -> dict[str, str]:
    config = loaded.config.model
    return _split_metadata(loaded) | {
        "voxaug_format": ONNX_FORMAT,
        "voxaug_format_version": str(ONNX_FORMAT_VERSION),
        "frontend": json.dumps(loaded.frontend.to_dict()),
        "speakers": json.dumps(loaded.speakers),
        "embedding_dim": str(config.embedding_dim),
        "n_mels": str(config.n_mels),
        "min_frames": str(MIN_FRAMES),
        "takes_audio": "true" if with_frontend else "false",
        "source_checkpoint_sha256": sha256_file(ckpt),
        "model_kind": config.kind,
        "training_seed": str(loaded.config.seed),
        "validation_fraction": repr(loaded.config.val_fraction),
        "split_version": str(loaded.config.split_version),
        CONTENT_DIGEST_KEY: DIGEST_PLACEHOLDER,
    }


def _split_metadata(loaded: LoadedModel) -> dict[str, str]:
    """The checkpoint's record of its run's clips (which it trained on and held out, and how many), where it keeps
    one: embed and evaluate with the export then find that split in a dataset changed since, as with the checkpoint."""
    recorded = {}
    if loaded.split_clips is not None:
        recorded[SPLIT_CLIPS_KEY] = encode_split_clips(loaded.split_clips)
    if loaded.clip_count is not None:
        recorded[CLIP_COUNT_KEY] = str(loaded.clip_count)
    return recorded


def _trace(network: ExportableSpeakerNet, example: tuple[torch.Tensor, torch.Tensor], with_frontend: bool,
           opset: int) -> onnx.ModelProto:
    """The legacy (TorchScript) exporter: it traces masks and dynamic time axes reliably for this model."""
    inputs = AUDIO_INPUTS if with_frontend else FEATURE_INPUTS
    dynamic = {inputs[0]: {0: "batch", 1: "time"}, inputs[1]: {0: "batch"}, OUTPUTS[0]: {0: "batch"},
               OUTPUTS[1]: {0: "batch"}}
    with tempfile.TemporaryDirectory() as folder, torch.no_grad(), warnings.catch_warnings():
        # only the expected notes are silenced, so a new deprecation of how export is called still shows: the
        # tracer's on constant-size loops (q, k, v), the legacy exporter's (dynamo's needs onnxscript, not a dependency)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning,
                                module=r"torch\.onnx\.")
        target = Path(folder) / "model.onnx"
        try:
            torch.onnx.export(network, example, str(target), dynamo=False, input_names=list(inputs),
                              output_names=list(OUTPUTS), dynamic_axes=dynamic, opset_version=opset)
        except OSError as exc:  # the temporary folder's disk is full: the checkpoint is not to blame
            raise write_error(target, exc, "the export's temporary file; set TMPDIR to a folder with room") from exc
        return onnx.load(str(target))


def export_onnx(ckpt: str | Path, out: str | Path, with_frontend: bool = False, opset: int = DEFAULT_OPSET) -> ExportSummary:
    """Export ``ckpt`` to ``out`` (written atomically) with voxaug's metadata and content checksum."""
    ckpt, out = Path(ckpt), Path(out)
    if not LOWEST_OPSET <= opset <= HIGHEST_OPSET:
        raise VoxaugError(f"--opset must be between {LOWEST_OPSET} and {HIGHEST_OPSET}, got {opset}")
    loaded = load_model(ckpt, "cpu")
    network = ExportableSpeakerNet(loaded, with_frontend).eval()
    try:
        proto = _trace(network, _example_inputs(loaded, with_frontend), with_frontend, opset)
    except VoxaugError:
        raise
    except Exception as exc:  # the exporter raises many types; one line names the checkpoint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise file_error(ckpt, f"ONNX export failed at opset {opset} ({first[:200]})") from exc
    for key, value in _metadata(loaded, ckpt, with_frontend).items():
        proto.metadata_props.add(key=key, value=value)
    data = proto.SerializeToString()
    digest = content_digest(data)
    if digest is None:
        raise VoxaugError("export: the content checksum could not be placed in the model (metadata clash)")
    data = data.replace(digest_marker() + DIGEST_PLACEHOLDER.encode(), digest_marker() + digest.encode())
    atomic_write_bytes(out, data)
    return ExportSummary(out, len(loaded.speakers), loaded.config.model.embedding_dim, with_frontend, opset,
                         hashlib.sha256(data).hexdigest(), loaded.frontend.sample_rate)
