"""Parse ``--augment a,b,c`` into augmentations applied in a fixed, documented order.

The order is each class's ``order``, whatever the order of the names: speed (5), crop (10), then
the acoustic ones as sound meets them, reverb (12: the room), noise (14: other sources in it) and
channel (16: the microphone colours both), then specaug (20) and mixup (30); ``wave`` (0) is a
pass-through here, its work done on the waveform in the data workers before the front end.
Cropping early means later steps only touch frames the model will see; mixing last means both
partners are already augmented.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from voxaug.augment import channel, crop, mixup, noise, reverb, specaug, speed, wave  # noqa: F401  (importing registers them)
from voxaug.augment.base import AUGMENTATIONS, BatchAugmentation, TrainBatch
from voxaug.errors import VoxaugError, abridged


class AugmentPipeline:
    """The augmentations of a run, sorted by their ``order``; empty means ``none``."""

    def __init__(self, augmentations: list[BatchAugmentation]) -> None:
        self.augmentations = sorted(augmentations, key=lambda a: a.order)

    def __call__(self, batch: TrainBatch, generator: torch.Generator) -> TrainBatch:
        for augmentation in self.augmentations:
            batch = augmentation(batch, generator)
        return batch

    @property
    def label_copies(self) -> int:
        """Classes per training speaker: 1, or 1 + len(factors) with ``speed`` (each speed its own class)."""
        return math.prod(a.label_copies for a in self.augmentations)

    def bind(self, speakers: int) -> None:
        """Tell every augmentation the number of training speakers (``speed`` offsets labels by it)."""
        for augmentation in self.augmentations:
            augmentation.bind(speakers)

    def bind_hop(self, hop_ms: float) -> None:
        """Tell every augmentation the front end's frame hop (``reverb`` turns its RT60 into frames by it)."""
        for augmentation in self.augmentations:
            augmentation.bind_hop(hop_ms)

    def bind_mel_range(self, f_min_hz: float, f_max_hz: float) -> None:
        """Tell every augmentation the front end's mel range (``speed`` warps the band centres it spans)."""
        for augmentation in self.augmentations:
            augmentation.bind_mel_range(f_min_hz, f_max_hz)

    def check_bands(self, n_mels: int) -> None:
        """Let every augmentation refuse data of ``n_mels`` bands before it is read (noise files of other bands)."""
        for augmentation in self.augmentations:
            augmentation.check_bands(n_mels)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.augmentations]

    def __repr__(self) -> str:
        return f"AugmentPipeline({self.augmentations!r})"


def parse_names(spec: str | list[str]) -> list[str]:
    """``"specaug,mixup"`` -> ``["specaug", "mixup"]``; ``"none"`` or a TOML ``[]`` -> ``[]``; unknown names and
    empty ones (``""``, ``"a,,b"``: an unset shell variable is not a choice of no augmentation) refused."""
    if not isinstance(spec, (str, list)) or not all(isinstance(name, str) for name in spec):
        raise VoxaugError(f"[augment] names must be a list of augmentation names, got {abridged(spec)}")
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    if not all(names):
        raise VoxaugError(f"--augment (or [augment] names): {abridged(spec)} has an empty name; write names separated by "
                          "single commas, or 'none'")
    if names == ["none"]:
        return []
    accepted = sorted(AUGMENTATIONS) + ["none"]
    for name in names:
        if name == "none":
            raise VoxaugError(f"--augment: 'none' cannot be combined with other names ({abridged(','.join(names))})")
        if name not in AUGMENTATIONS:
            raise VoxaugError(f"--augment: unknown augmentation {abridged(name)}; accepted: {', '.join(accepted)}")
    if len(set(names)) != len(names):
        raise VoxaugError(f"--augment: {abridged(','.join(names))} names an augmentation twice")
    return names


def default_strengths(name: str) -> dict[str, Any]:
    """The strengths augmentation ``name`` takes and their defaults (tuples as lists, as a saved config holds them)."""
    return {key: list(p.default) if isinstance(p.default, tuple) else p.default
            for key, p in inspect.signature(AUGMENTATIONS[name].__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def check_params(params: dict[str, Any]) -> None:
    """Refuse keys of an ``augment`` table that name no augmentation, unknown strength names and bad values."""
    for key, values in params.items():
        if key == "names":
            continue
        if key not in AUGMENTATIONS:
            raise VoxaugError(f"[augment] {abridged(key)} is not an augmentation; accepted keys: names, {', '.join(sorted(AUGMENTATIONS))}")
        if not isinstance(values, dict):
            raise VoxaugError(f"[augment.{key}] must be a table of parameters, got {abridged(values)}")
        accepted = list(inspect.signature(AUGMENTATIONS[key].__init__).parameters)[1:]
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            raise VoxaugError(f"[augment.{key}] unknown parameters {unknown}; accepted: {', '.join(accepted)}")
        AUGMENTATIONS[key](**values)  # strengths are checked even for an augmentation not switched on


def build_pipeline(names: str | list[str], params: dict[str, Any] | None = None) -> AugmentPipeline:
    """Instantiate each named augmentation with its parameters (``params[name]``), validating them."""
    params = params or {}
    check_params(params)
    return AugmentPipeline([AUGMENTATIONS[name](**params.get(name, {})) for name in parse_names(names)])


def resolve_names(augment: dict[str, Any]) -> list[str]:
    """The names a run's ``augment`` table asks for; :data:`DEFAULT_AUGMENT` when it names none."""
    return parse_names(augment["names"] if "names" in augment else DEFAULT_AUGMENT)


DEFAULT_AUGMENT = "reverb,noise"
"""What ``voxaug train`` uses without ``--augment``: the room and noise augmentations, chosen on a held-out set
from another generator (benchmarks/crosscheck.py, docs/augmentation.md), where session effects differ per clip.
``channel`` is left out because the default input normalisation (``--input-norm mean``) removes exactly what it
adds; with ``--input-norm none`` it belongs back in."""
