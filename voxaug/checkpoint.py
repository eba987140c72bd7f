"""Checkpoints hold only tensors and plain values, are written atomically and read with weights_only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from voxaug.config import TrainConfig
from voxaug.errors import VoxaugError, export_as_checkpoint, file_error
from voxaug.features import FrontendConfig
from voxaug.model import build_model
from voxaug.safeio import atomic_torch_save, safe_torch_load

CHECKPOINT_FORMAT = "voxaug-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "config", "frontend", "speakers", "model", "step")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values only) atomically, tagged with the format and version."""
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a checkpoint; anything that is not one of ours is refused by name."""
    if Path(path).suffix.lower() == ".onnx" and Path(path).is_file():
        raise export_as_checkpoint(path)
    state = safe_torch_load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise file_error(path, "not a voxaug checkpoint")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise file_error(path, f"checkpoint lacks {', '.join(missing)}")
    if state["version"] != CHECKPOINT_VERSION or isinstance(state["version"], bool):
        raise file_error(path, f"checkpoint format version {state['version']} is not supported (expected {CHECKPOINT_VERSION})")
    return state


@dataclass
class LoadedModel:
    """A model ready for inference, with what is needed to featurise and label its inputs."""

    model: nn.Module
    config: TrainConfig
    frontend: FrontendConfig
    speakers: list[str]
    path: Path
    split_clips: dict[str, np.ndarray] | None = None
    """Digests of the run's training and validation clips (``voxaug.data.split.split_record``); None for a run
    saved before they were recorded."""
    clip_count: int | None = None
    """How many clips the run trained on; None for a run saved before it was recorded."""


def _check_model_fields(state: dict[str, Any], path: str | Path) -> None:
    """The fields inference needs, of the right types, with finite weights."""
    for key, kind in (("config", dict), ("frontend", dict), ("model", dict), ("speakers", list)):
        if not isinstance(state[key], kind):
            raise file_error(path, f"checkpoint field {key!r} must be of type {kind.__name__}, found {type(state[key]).__name__}")
    if not all(isinstance(name, str) for name in state["speakers"]):
        raise file_error(path, "checkpoint field 'speakers' must list speaker names")
    for name, tensor in state["model"].items():
        if not isinstance(tensor, torch.Tensor):
            raise file_error(path, f"checkpoint weight {name!r} is not a tensor")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise file_error(path, f"checkpoint weight {name!r} holds NaN or Inf values")


def class_speakers(num_classes: int, speakers: int) -> list[int]:
    """The original speaker of every class: class ``c`` is speaker ``c mod S`` (speed copies follow the originals)."""
    return [c % speakers for c in range(num_classes)]


def _check_class_speakers(mapping: object, num_classes: int, speakers: int, path: str | Path) -> None:
    """A checkpoint's class-to-speaker mapping, where it has one (older checkpoints: one class per speaker)."""
    if mapping is None:
        return
    if not isinstance(mapping, list) or mapping != class_speakers(num_classes, speakers):
        raise file_error(path, f"checkpoint field 'class_speakers' must map its {num_classes} classes onto its "
                               f"{speakers} speakers in order (class c is speaker c mod {speakers})")


def recorded_split_clips(state: dict[str, Any], path: str | Path) -> dict[str, np.ndarray] | None:
    """The checkpoint's digests of its run's training and validation clips, where it keeps them."""
    record = state.get("split_clips")
    if record is None:
        return None
    if not isinstance(record, dict) or sorted(record) != ["train", "val"] or not all(
            isinstance(digests, torch.Tensor) and digests.dtype == torch.int64 and digests.dim() == 1
            for digests in record.values()):
        raise file_error(path, "checkpoint field 'split_clips' must hold the 'train' and 'val' clip digests "
                               "(1-D int64 tensors)")
    return {part: digests.cpu().numpy() for part, digests in record.items()}


def recorded_clip_count(state: dict[str, Any]) -> int | None:
    """How many clips the checkpoint's run trained on (its ``clips`` identity), where it says."""
    clips = state.get("clips")
    count = clips.get("count") if isinstance(clips, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def weight_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between a model's weights and a checkpoint's, in a few words ("" when they fit)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    resized = [f"{name} {tuple(found[name].shape)} vs {tuple(tensor.shape)}"
               for name, tensor in expected.items() if name in found and found[name].shape != tensor.shape]
    parts = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
             for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", resized)) if names]
    return "; ".join(parts)


def storage_without_values(model: nn.Module) -> nn.Module:
    """``model``'s meta-device tensors given CPU storage of their shapes and dtypes, uninitialised. Not
    ``Module.to_empty``: its ``empty_like`` of a meta tensor runs torch's Python reference, whose first call imports
    sympy (0.5-1.5 s and 35 MB in every command that loads a checkpoint)."""
    return model._apply(lambda tensor: torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu"))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the checkpoint's model with its weights, in eval mode on ``device``."""
    state = load_checkpoint(path)
    _check_model_fields(state, path)
    try:
        config = TrainConfig.from_saved(state["config"])
        frontend = FrontendConfig.from_dict(state["frontend"])
        with torch.device("meta"):  # shapes only: a config naming a huge model must not take its memory first
            model = build_model(config.model)
    except (VoxaugError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise file_error(path, f"checkpoint holds an unusable configuration ({str(exc).splitlines()[0]})") from exc
    mismatch = weight_mismatch(model.state_dict(), state["model"])
    if mismatch:
        raise file_error(path, f"checkpoint weights do not match its own configuration ({mismatch})")
    # storage without initial values: a random initialisation drew from the caller's torch generator (a seeded
    # notebook's next draws changed with whether it had loaded a model); every tensor the model has is in its state
    # dict (tests/test_model.py), so none is left unset
    model = storage_without_values(model.float())
    # copied, not assigned: each weight becomes the model's own float32 tensor whatever dtype, layout or sharing the
    # file stores it with (integers, a bool counter, two weights saved as one tensor)
    model.load_state_dict(state["model"])
    if len(state["speakers"]) != config.model.speakers:
        raise file_error(path, f"checkpoint names {len(state['speakers'])} speakers for {config.model.speakers} classes")
    _check_class_speakers(state.get("class_speakers"), config.model.num_classes, config.model.speakers, path)
    model.to(device).eval()
    return LoadedModel(model, config, frontend, list(state["speakers"]), Path(path),
                       recorded_split_clips(state, path), recorded_clip_count(state))
