"""Speaker models: Conformer + masked self-attentive pooling + embedding + AM-Softmax, and the
homework's TransformerEncoder + mean-pooling baseline. Both return (embeddings, logits) and own
their loss, so the trainer, mixup and the embedding exporter treat them alike."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchaudio.models import Conformer

from voxaug.errors import VoxaugError, abridged, refuse_unknown_keys

MODEL_KINDS = ("conformer", "transformer-mean")
INPUT_NORMS = ("mean", "none")


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no os.sysconf (Windows), or a name this system lacks
        return None


INPUT_NORM_BEFORE_IT_EXISTED = "none"
"""What a run saved before ``input_norm`` existed was trained with: raw features."""


@dataclass
class ModelConfig:
    """Architecture settings; a preset fills them, the command line or a TOML config overrides them."""

    kind: str = "conformer"
    n_mels: int = 40
    d_model: int = 96
    num_heads: int = 4
    ffn_dim: int = 192
    num_layers: int = 2
    kernel_size: int = 15
    dropout: float = 0.1
    embedding_dim: int = 192
    scale: float = 30.0
    margin: float = 0.2
    num_classes: int = 0
    num_speakers: int = 0
    """Original speakers among the classes (the first ones); 0: every class is one (checkpoints before ``speed``)."""
    input_norm: str = "mean"
    """``mean``: each utterance's log-mel mean is subtracted before the network (CMN); ``none``: the features as given
    (and what a checkpoint saved before this field existed gets)."""

    def validate(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise VoxaugError(f"--model {abridged(self.kind)} is not known; accepted: {', '.join(MODEL_KINDS)}")
        for name in ("n_mels", "d_model", "num_heads", "ffn_dim", "num_layers", "embedding_dim"):
            if getattr(self, name) <= 0:
                raise VoxaugError(f"model: {name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise VoxaugError(f"model: d_model {self.d_model} must be divisible by num_heads {self.num_heads}")
        if self.kernel_size % 2 == 0 or self.kernel_size <= 0:
            raise VoxaugError(f"model: kernel_size must be a positive odd number, got {self.kernel_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise VoxaugError(f"model: dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.num_speakers <= max(self.num_classes, 0):
            raise VoxaugError(f"model: num_speakers {self.num_speakers} must be in [0, num_classes {self.num_classes}]")
        if self.input_norm not in INPUT_NORMS:
            raise VoxaugError(f"--input-norm {abridged(self.input_norm)} is not known; accepted: {', '.join(INPUT_NORMS)}")
        if self.scale <= 0 or not 0.0 <= self.margin < 1.0:
            raise VoxaugError(f"model: need scale > 0 and 0 <= margin < 1, got scale {self.scale}, margin {self.margin}")

    def check_fits_memory(self) -> None:
        """Refuse a network to be trained whose float32 weights alone exceed this machine's memory (a checkpoint's
        own shapes are checked against the weights it holds when it is loaded, in ``load_model``)."""
        memory = physical_memory()
        if memory is not None and 4 * self.weight_count() > memory:
            raise VoxaugError(f"model: about {self.weight_count():.2g} weights ({4 * self.weight_count() / 1e9:.3g} GB "
                              f"as float32) do not fit in this machine's {memory / 1e9:.3g} GB of memory; lower "
                              "--d-model, --layers or --embedding-dim (or [model] ffn_dim)")

    def weight_count(self) -> int:
        """About how many weights the network has (its matrices; biases and norms aside), known before it is built:
        a size typed with a few zeros too many is refused, where building it would exhaust the memory."""
        d, f, k = self.d_model, self.ffn_dim, self.kernel_size
        per_layer = 4 * d * f + 7 * d * d + d * k if self.kind == "conformer" else 2 * d * f + 4 * d * d
        return self.num_layers * per_layer + (self.n_mels + d) * d + self.embedding_dim * (d + max(self.num_classes, 1))

    @property
    def speakers(self) -> int:
        """How many original speakers the classifier answers with."""
        return self.num_speakers or self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        refuse_unknown_keys(values, cls, "model config")
        return cls(**{"input_norm": INPUT_NORM_BEFORE_IT_EXISTED, **values})


def utterance_mean_normalise(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, n_mels), (B,) -> the same with each utterance's mean over its real frames subtracted, band by
    band (cepstral mean normalisation on log-mel); padded frames come out 0.

    A fixed channel (microphone, line, gain) multiplies every frame's power spectrum by the same |H(f)|^2,
    which in log-mel is a constant added to each band: subtracting the utterance's own mean removes it, so
    the network cannot lean on the recording chain and sees the same input from any microphone.
    """
    keep = (~padding_mask(lengths, features.shape[1])).unsqueeze(-1).to(features.dtype)  # (B, T, 1)
    mean = (features * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
    return (features - mean) * keep


def network_input(config: "ModelConfig", features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The features as the network sees them: mean-normalised per utterance when ``config.input_norm`` says so."""
    return utterance_mean_normalise(features, lengths) if config.input_norm == "mean" else features


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) boolean mask, True on padded frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class MaskedAttentivePooling(nn.Module):
    """Self-attentive pooling: a softmax over frames of a learned score, padded frames weighted 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        scores = self.score(frames).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(padding_mask(lengths, frames.shape[1]), float("-inf"))
        weights = torch.softmax(scores.float(), dim=1).to(frames.dtype)  # (B, T)
        return torch.bmm(weights.unsqueeze(1), frames).squeeze(1)  # (B, D)


class AMSoftmaxHead(nn.Module):
    """Additive-margin softmax: logits are ``scale * cos`` against L2-normalised class weights.

    The margin is subtracted from the target's cosine only in the loss, so logits stay usable
    as class scores at inference.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        # float32 even under CUDA's AMP: a float16 cosine is off by about 1e-3, which the scale multiplies
        with torch.autocast(embeddings.device.type, enabled=False):
            cosine = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
        return self.scale * cosine  # (B, C)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example loss: cross-entropy after taking ``scale * margin`` off the target logit."""
        target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return F.cross_entropy(logits - self.scale * self.margin * target, labels, reduction="none")


class SoftmaxHead(nn.Module):
    """Plain linear classifier with cross-entropy, as in the homework's sample code."""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_dim, num_classes)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):  # float32 logits under AMP, as AM-Softmax's
            return self.linear(embeddings.float())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")


def speaker_logits(logits: torch.Tensor, config: ModelConfig, training: bool) -> torch.Tensor:
    """All classes' logits in training (the loss needs the speed-perturbed classes); in evaluation only
    the original speakers' (the first ``config.speakers`` classes), so no answer is a perturbed copy."""
    return logits if training else logits[:, : config.speakers]


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, several times faster than ``F.dropout`` on the CPU (benchmarks/speed_ab.py).

    ``F.dropout`` on the CPU calls ``bernoulli_``, one Mersenne-Twister draw per element, serially;
    here one 64-bit draw gives four uniform 16-bit numbers, each compared with ``p`` (so ``p`` is
    rounded to a multiple of 1/65536). Draws come from torch's global generator, so ``manual_seed``
    and saved RNG states reproduce them. Other devices, evaluation and ``p == 0`` use ``F.dropout``.
    """
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    count = x.numel()
    bits = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # full 64-bit range
    keep = bits.view(torch.int16)[:count].view(x.shape) >= round(p * 65536) - 32768  # P(drop) = p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def _self_attention(mha: nn.MultiheadAttention, x: torch.Tensor, key_bias: torch.Tensor | None,
                    training: bool) -> torch.Tensor:
    """``mha`` applied batch-first: (B, T, D) -> (B, T, D); ``key_bias`` (B, 1, 1, T) is added to the
    attention scores: 0 on real keys, -inf on padded ones.

    The mask is additive rather than boolean because ONNX exports a boolean one as two extra passes
    over every (T, T) score matrix (a select, then a NaN check after the softmax), about a quarter of
    the exported model's time; the sum gives the same scores, and no row is fully masked because
    every utterance has a real frame.

    With attention dropout on the CPU, ``scaled_dot_product_attention`` only has its unfused math
    path (and ``bernoulli_``), so the same math is written out here with :func:`fast_dropout`.
    """
    size, frames, dim = x.shape
    heads = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(size, frames, 3, heads, dim // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D/H)
    p = mha.dropout if training else 0.0
    if p and x.device.type == "cpu":
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
        if key_bias is not None:
            scores = scores + key_bias
        y = fast_dropout(torch.softmax(scores, dim=-1), p, True) @ v
    else:
        bias = None if key_bias is None else key_bias.to(q.dtype)  # under autocast q may be half precision
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
    return mha.out_proj(y.transpose(1, 2).reshape(size, frames, dim))


def _feed_forward(module: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """torchaudio's feed-forward module: LayerNorm, Linear, SiLU, dropout, Linear, dropout."""
    norm, expand, act, drop1, project, drop2 = module.sequential
    hidden = fast_dropout(act(expand(norm(x))), drop1.p, training)
    return fast_dropout(project(hidden), drop2.p, training)


def _convolution(module: nn.Module, x: torch.Tensor, keep: torch.Tensor | None, training: bool) -> torch.Tensor:
    """torchaudio's convolution module on (B, T, D), its pointwise convolutions run as linear layers.

    ``keep`` (B, T, 1) zeroes padded frames before the depthwise convolution, so that in eval mode an
    utterance gets the same output alone or padded in a batch.
    """
    pointwise1, _, depthwise, norm, act, pointwise2, drop = module.sequential
    y = F.glu(F.linear(module.layer_norm(x), pointwise1.weight.squeeze(-1), pointwise1.bias), dim=-1)  # (B, T, D)
    if keep is not None:
        y = y * keep
    y = act(norm(depthwise(y.transpose(1, 2))))  # (B, D, T)
    y = F.linear(y.transpose(1, 2), pointwise2.weight.squeeze(-1), pointwise2.bias)  # (B, T, D)
    return fast_dropout(y, drop.p, training)


def key_padding_bias(real: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) True on real frames -> (B, 1, 1, T) additive attention bias: 0 on real keys, -inf on padded ones."""
    return torch.zeros_like(real, dtype=dtype).masked_fill(~real, float("-inf"))[:, None, None, :]


def conformer_forward(encoder: Conformer, x: torch.Tensor, lengths: torch.Tensor,
                      always_mask: bool = False) -> torch.Tensor:
    """torchaudio's ``Conformer.forward`` with the same parameters, batch-first and with padding
    zeroed before each depthwise convolution: (B, T, D), (B,) -> (B, T, D).

    Same math as torchaudio's layers (default settings: batch norm, convolution after attention);
    it skips their (T, B, D) transposes, runs pointwise convolutions as matrix products, drops
    masks when nothing is padded (unless ``always_mask``: a traced graph for export must not freeze
    that data-dependent branch) and uses :func:`fast_dropout`.
    """
    real = ~padding_mask(lengths, x.shape[1])  # (B, T)
    key_bias = keep = None
    if always_mask or not bool(real.all()):
        key_bias, keep = key_padding_bias(real, x.dtype), real.unsqueeze(-1).to(x.dtype)
    training = encoder.training
    for layer in encoder.conformer_layers:
        x = x + 0.5 * _feed_forward(layer.ffn1, x, training)
        attended = _self_attention(layer.self_attn, layer.self_attn_layer_norm(x), key_bias, training)
        x = x + fast_dropout(attended, layer.self_attn_dropout.p, training)
        x = x + _convolution(layer.conv_module, x, keep, training)
        x = x + 0.5 * _feed_forward(layer.ffn2, x, training)
        x = layer.final_layer_norm(x)
    return x


class ConformerSpeakerNet(nn.Module):
    """Linear(n_mels->d) -> Conformer(real lengths) -> masked attentive pooling -> Linear+BN embedding.

    The Conformer is torchaudio's (its parameters and checkpoint keys), run by :func:`conformer_forward`,
    which zeroes padded frames before each depthwise convolution.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.n_mels, config.d_model)
        self.encoder = Conformer(
            input_dim=config.d_model,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            num_layers=config.num_layers,
            depthwise_conv_kernel_size=config.kernel_size,
            dropout=config.dropout,
        )
        self.pooling = MaskedAttentivePooling(config.d_model)
        self.embedding = nn.Sequential(nn.Linear(config.d_model, config.embedding_dim), nn.BatchNorm1d(config.embedding_dim))
        self.head = AMSoftmaxHead(config.embedding_dim, config.num_classes, config.scale, config.margin)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels), (B,) -> un-normalised embeddings (B, embedding_dim)."""
        features = network_input(self.config, features[:, : int(lengths.max())], lengths)  # all-padding frames dropped
        x = conformer_forward(self.encoder, self.input_proj(features), lengths)  # (B, T, d)
        return self.embedding(self.pooling(x, lengths))  # (B, E)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed(features, lengths)
        return embeddings, speaker_logits(self.head(embeddings), self.config, self.training)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(logits, labels)


class _FastPathSwitch:
    """torch's process-wide MHA fast-path switch, held off while any thread is inside :func:`unfused_encoder_layers`.

    Each user saving and restoring the switch alone is not enough across threads: one that leaves while another is
    inside turns the fused kernel back on under it, and the last to leave then restores "off" for good. So the first
    user in saves it and the last one out puts it back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.before = True

    def enter(self) -> None:
        with self.lock:
            if self.users == 0:
                self.before = torch.backends.mha.get_fastpath_enabled()
                torch.backends.mha.set_fastpath_enabled(False)
            self.users += 1

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                torch.backends.mha.set_fastpath_enabled(self.before)


_FAST_PATH = _FastPathSwitch()


@contextmanager
def unfused_encoder_layers() -> Iterator[None]:
    """Turn off torch's fused ``TransformerEncoderLayer`` inference kernel (its MHA "fast path") for a while.

    That kernel holds every (B, heads, T, T) score matrix: the baseline took 5 GB for one 2-minute clip and would
    need hundreds of GB for an hour. Unfused, the layers attend through ``scaled_dot_product_attention``, whose
    memory grows with T only, to the same outputs (and 6x faster on a 1-minute clip). The switch is process-wide,
    so it is put back when the last thread using it leaves (see :class:`_FastPathSwitch`).
    """
    _FAST_PATH.enter()
    try:
        yield
    finally:
        _FAST_PATH.leave()


class TransformerMeanNet(nn.Module):
    """The homework's sample: Linear -> TransformerEncoder -> mean over (real) frames -> linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.n_mels, config.d_model)
        layer = nn.TransformerEncoderLayer(
            d_model=config.d_model, nhead=config.num_heads, dim_feedforward=config.ffn_dim,
            dropout=config.dropout, batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.num_layers, enable_nested_tensor=False)
        self.embedding = nn.Linear(config.d_model, config.embedding_dim)
        self.head = SoftmaxHead(config.embedding_dim, config.num_classes)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad = padding_mask(lengths, features.shape[1])
        with unfused_encoder_layers():
            x = self.encoder(self.input_proj(network_input(self.config, features, lengths)), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)  # (B, d)
        return self.embedding(pooled)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed(features, lengths)
        return embeddings, speaker_logits(self.head(embeddings), self.config, self.training)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(logits, labels)


def build_model(config: ModelConfig) -> nn.Module:
    config.validate()
    if config.num_classes <= 0:
        raise VoxaugError("model: the dataset has no speakers to classify")
    return ConformerSpeakerNet(config) if config.kind == "conformer" else TransformerMeanNet(config)
