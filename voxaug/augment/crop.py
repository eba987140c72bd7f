"""Random crop: one random segment length per batch, a random offset per example."""

from __future__ import annotations

import torch

from voxaug.augment.base import MAX_WHOLE, BatchAugmentation, TrainBatch, real_frames, register_augmentation, uniform
from voxaug.errors import VoxaugError


@register_augmentation
class RandomCrop(BatchAugmentation):
    """Crop the batch to a length drawn uniformly from [``min_frames``, ``max_frames``], capped by the
    frames the batch holds, starting at a random offset inside each example's real frames.

    It crops what is there: on top of the trainer's fixed ``--segment`` (128 frames in the cpu preset)
    the length is drawn from [min_frames, min(max_frames, segment)]; raise ``--segment`` to crop from
    longer segments. Examples shorter than the drawn length are kept whole. The time axis shrinks to
    the drawn length. Why: the model sees utterances of varying duration and position, as at test time.
    """

    name = "crop"
    order = 10

    def __init__(self, min_frames: int = 64, max_frames: int = 300) -> None:
        for label, value in (("--crop-min (crop min_frames)", min_frames), ("--crop-max (crop max_frames)", max_frames)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WHOLE:
                raise VoxaugError(f"{label} must be a whole number of frames in [1, {MAX_WHOLE}], got {value!r}")
        if min_frames > max_frames:
            raise VoxaugError(f"--crop-min ({min_frames}) must not exceed --crop-max ({max_frames})")
        self.min_frames, self.max_frames = min_frames, max_frames

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        features, lengths = batch.features, batch.lengths  # (B, T, F), (B,)
        size, frames, bands = features.shape
        device = features.device
        high = min(self.max_frames, frames)
        low = min(self.min_frames, high)
        draw = uniform((1,), generator, device)
        crop = min(low + int(draw * (high - low + 1)), high)  # frames, one length for the batch; min(): float32 rounding
        kept = lengths.clamp(max=crop)  # (B,)
        room = lengths - kept + 1  # (B,) possible offsets
        offset = torch.minimum((uniform((size,), generator, device) * room).long(), room - 1)  # (B,)
        index = offset.unsqueeze(1) + torch.arange(crop, device=device).unsqueeze(0)  # (B, crop)
        index = index.clamp(max=frames - 1)
        cropped = features.gather(1, index.unsqueeze(2).expand(size, crop, bands))  # (B, crop, F)
        cropped = cropped * real_frames(kept, crop).unsqueeze(2).to(features.dtype)
        return TrainBatch(cropped, kept, batch.labels, batch.weights)
