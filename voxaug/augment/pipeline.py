"""Parse ``--augment a,b,c`` into augmentations applied in a fixed, documented order."""

from __future__ import annotations

from typing import Any

import torch

from voxaug.augment.base import AUGMENTATIONS, BatchAugmentation, TrainBatch
from voxaug.errors import VoxaugError


class AugmentPipeline:
    """The augmentations of a run, sorted by their ``order``; empty means ``none``."""

    def __init__(self, augmentations: list[BatchAugmentation]) -> None:
        self.augmentations = sorted(augmentations, key=lambda a: a.order)

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        for augmentation in self.augmentations:
            batch = augmentation(batch, generator)
        return batch

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.augmentations]

    def __repr__(self) -> str:
        return f"AugmentPipeline({self.augmentations!r})"


def parse_names(spec: str | list[str]) -> list[str]:
    """``"specaug,mixup"`` -> ``["specaug", "mixup"]``; ``"none"`` or empty -> ``[]``; unknown names refused."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if names == ["none"]:
        return []
    accepted = sorted(AUGMENTATIONS) + ["none"]
    for name in names:
        if name not in AUGMENTATIONS:
            raise VoxaugError(f"--augment: unknown augmentation {name!r}; accepted: {', '.join(accepted)}")
    if len(set(names)) != len(names):
        raise VoxaugError(f"--augment: {','.join(names)} names an augmentation twice")
    return names


def build_pipeline(names: list[str], params: dict[str, Any] | None = None) -> AugmentPipeline:
    """Instantiate each named augmentation with its parameters (``params[name]``), validating them."""
    params = params or {}
    return AugmentPipeline([AUGMENTATIONS[name](**params.get(name, {})) for name in parse_names(names)])


DEFAULT_AUGMENT = "none"
