"""Mixup: mix each example with a random partner, λ ~ Beta(α, α), and weight both labels' losses."""

from __future__ import annotations

import math

import torch

from voxaug.augment.base import BatchAugmentation, TrainBatch, real_frames, register_augmentation
from voxaug.errors import VoxaugError

CANDIDATES = 4
MIN_ALPHA = 1e-300
"""Smallest --mixup-alpha: under about 4e-306 the boost ``log(U) / alpha`` of ``log_gamma_sample`` overflows float64,
both Gamma draws are -inf and every λ is NaN (Beta(α, α) is already a coin flip between 0 and 1 long before)."""


def log_gamma_sample(shape: float, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """log of ``count`` Gamma(shape, 1) draws (float64), using only ``generator``.

    Marsaglia–Tsang (2000) squeeze-rejection on Gamma(shape + 1) when shape < 1, then the boost
    ``G(a) = G(a + 1) * U^(1/a)`` taken in log space so small shapes never underflow to 0. Each
    round tries a few candidates per draw at once; a round rejects all of them with probability < 1e-5.
    """
    boost = shape < 1
    d = (shape + 1 if boost else shape) - 1 / 3
    c = 1 / math.sqrt(9 * d)
    result = torch.empty(count, dtype=torch.float64, device=device)
    todo = torch.ones(count, dtype=torch.bool, device=device)
    while bool(todo.any()):
        x = torch.randn((count, CANDIDATES), generator=generator, device=device, dtype=torch.float64)
        u = torch.rand((count, CANDIDATES), generator=generator, device=device, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        first = ok.float().argmax(dim=1, keepdim=True)  # first accepted candidate per draw
        value = torch.log(d * v.gather(1, first).squeeze(1).clamp(min=1e-300))
        accepted = todo & ok.any(dim=1)
        result = torch.where(accepted, value, result)
        todo &= ~accepted
    if boost:
        u = torch.rand(count, generator=generator, device=device, dtype=torch.float64)
        result = result + torch.log(u.clamp(min=1e-300)) / shape
    return result


def beta_sample(alpha: float, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` draws of Beta(α, α) as X / (X + Y) with X, Y ~ Gamma(α), seeded by ``generator`` only."""
    log_x = log_gamma_sample(alpha, count, generator, device)
    log_y = log_gamma_sample(alpha, count, generator, device)
    return torch.sigmoid(log_x - log_y)  # X / (X + Y) without overflow


@register_augmentation
class Mixup(BatchAugmentation):
    """Mix every example with a partner from a random permutation of the batch, λ ~ Beta(α, α) per example.

    Features mix over the union of the pair's lengths (the new length is the longer one); a frame that
    only one of the two covers is kept as it is, rather than mixed with padding. Labels become
    (B, 2K) with weights λ·w_a and (1 − λ)·w_b, so the margin loss applies to each target in its own
    term. Why: the model must place embeddings between speakers smoothly instead of memorising.
    """

    name = "mixup"
    order = 30

    def __init__(self, alpha: float = 0.3) -> None:
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not MIN_ALPHA <= alpha <= 10:
            raise VoxaugError(f"--mixup-alpha (mixup alpha) must be a number in [{MIN_ALPHA:g}, 10], got {alpha!r}")
        self.alpha = float(alpha)

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        features, lengths = batch.features, batch.lengths  # (B, T, F), (B,)
        size, frames, _ = features.shape
        device = features.device
        partner = torch.randperm(size, generator=generator, device=device)  # (B,)
        lam = beta_sample(self.alpha, size, generator, device).to(features.dtype)  # (B,)
        mine, theirs = real_frames(lengths, frames), real_frames(lengths[partner], frames)  # (B, T)
        both = mine & theirs
        lam_own, lam_other = lam.unsqueeze(1), (1 - lam).unsqueeze(1)  # (B, 1)
        # By which frames are real, not by the weights: a λ of exactly 1 (float32 rounds about 0.3% of
        # Beta(0.3, 0.3) draws to it) must still take the partner's frames where only the partner has any.
        own = torch.where(both, lam_own / (lam_own + lam_other), (~theirs).to(features.dtype))  # (B, T)
        other = torch.where(both, lam_other / (lam_own + lam_other), theirs.to(features.dtype))  # (B, T)
        mixed = own.unsqueeze(2) * features + other.unsqueeze(2) * features[partner]  # (B, T, F)
        labels = torch.cat([batch.labels, batch.labels[partner]], dim=1)  # (B, 2K)
        weights = torch.cat([lam.unsqueeze(1) * batch.weights, (1 - lam).unsqueeze(1) * batch.weights[partner]], dim=1)
        return TrainBatch(mixed, torch.maximum(lengths, lengths[partner]), labels, weights)
