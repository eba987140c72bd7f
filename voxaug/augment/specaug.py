"""SpecAugment: frequency and time masks, drawn independently for every example, never in padding."""

from __future__ import annotations

import math

import torch

from voxaug.augment.base import MAX_WHOLE, BatchAugmentation, TrainBatch, real_frames, register_augmentation, uniform
from voxaug.errors import VoxaugError

MASK_VALUES = ("mean", "zero")


def _spans(limit: torch.Tensor, max_width: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` spans per example with width in [0, max_width] and start + width <= limit: (B, count) each."""
    batch = limit.shape[0]
    width = (uniform((batch, count), generator, limit.device) * (max_width.unsqueeze(1) + 1)).long()
    width = torch.minimum(width, max_width.unsqueeze(1))
    room = (limit.unsqueeze(1) - width + 1).clamp(min=1)
    start = torch.minimum((uniform((batch, count), generator, limit.device) * room).long(), room - 1)  # float32 rounding
    return start, start + width


def _covered(start: torch.Tensor, stop: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) True where any of the (B, M) spans [start, stop) covers the position."""
    position = torch.arange(size, device=start.device).view(1, 1, size)
    return ((position >= start.unsqueeze(2)) & (position < stop.unsqueeze(2))).any(dim=1)


@register_augmentation
class SpecAugment(BatchAugmentation):
    """Mask ``freq_masks`` mel bands of width <= ``freq_width`` and ``time_masks`` frame spans of width
    <= ``time_width`` (frames, or a fraction of the real length when below 1) in every example.

    Masks lie inside each example's real frames, so padding stays as it was. The masked value is
    each utterance's mean over its real frames (``"mean"``), ``"zero"``, or a number. Why: the
    model cannot lean on any one band or moment of a session, which is what it memorises.
    """

    name = "specaug"
    order = 20

    def __init__(
        self,
        freq_masks: int = 1,
        freq_width: int = 6,
        time_masks: int = 1,
        time_width: float = 0.1,
        value: str | float = "mean",
    ) -> None:
        for label, count in (("freq_masks", freq_masks), ("time_masks", time_masks)):
            if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_WHOLE:
                raise VoxaugError(f"specaug {label} must be an integer in [0, {MAX_WHOLE}], got {count!r}")
        if not isinstance(freq_width, int) or isinstance(freq_width, bool) or not 0 <= freq_width <= MAX_WHOLE:
            raise VoxaugError(f"--specaug-freq (specaug freq_width) must be an integer in [0, {MAX_WHOLE}] mel bands, "
                              f"got {freq_width!r}")
        if not isinstance(time_width, (int, float)) or isinstance(time_width, bool) or not math.isfinite(time_width) \
                or not 0 <= time_width <= MAX_WHOLE or (time_width >= 1 and time_width != int(time_width)):
            raise VoxaugError(
                f"--specaug-time (specaug time_width) must be a fraction in [0, 1) of the length or a whole number "
                f"of frames up to {MAX_WHOLE}, got {time_width!r}"
            )
        if not (value in MASK_VALUES or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                         and math.isfinite(value))):
            raise VoxaugError(f"specaug value must be one of {', '.join(MASK_VALUES)} or a finite number, got {value!r}")
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.value = value

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        features, lengths = batch.features, batch.lengths  # (B, T, F), (B,)
        size, frames, bands = features.shape
        real = real_frames(lengths, frames)  # (B, T)
        masked = torch.zeros(size, frames, bands, dtype=torch.bool, device=features.device)
        if self.time_masks and self.time_width:
            if self.time_width < 1:
                max_width = (lengths.float() * self.time_width).long()
            else:
                max_width = lengths.clamp(max=int(self.time_width))
            start, stop = _spans(lengths, max_width, self.time_masks, generator)
            masked |= _covered(start, stop, frames).unsqueeze(2)
        if self.freq_masks and self.freq_width:
            limit = torch.full((size,), bands, device=features.device)
            start, stop = _spans(limit, limit.clamp(max=self.freq_width), self.freq_masks, generator)
            masked |= _covered(start, stop, bands).unsqueeze(1)
        masked &= real.unsqueeze(2)
        if self.value == "mean":
            wide = torch.promote_types(features.dtype, torch.float32)  # a float16 sum over a long utterance overflows
            fill = (features.to(wide) * real.unsqueeze(2)).sum(dim=(1, 2)) / (lengths.clamp(min=1) * bands)  # (B,)
            fill = fill.view(size, 1, 1).to(features.dtype)
        else:
            fill = torch.tensor(0.0 if self.value == "zero" else float(self.value), dtype=features.dtype, device=features.device)
        return TrainBatch(torch.where(masked, fill, features), lengths, batch.labels, batch.weights)
