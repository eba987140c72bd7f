"""Checks that a loaded feature tensor is what the model expects, with errors naming the file."""

from __future__ import annotations

from pathlib import Path

import torch

from voxaug.errors import file_error
from voxaug.runtime.frontend import feature_values_problem
from voxaug.safeio import safe_torch_load


def check_features(features: object, path: str | Path, n_mels: int, n_mels_from: str | Path | None = None) -> torch.Tensor:
    """Return ``features`` as a float32 (frames, n_mels) tensor or raise naming ``path`` and the problem.

    ``n_mels_from``: the file that set ``n_mels`` (an HW4 listing), named when the bins differ, since it may be the
    one that is wrong."""
    if not isinstance(features, torch.Tensor):
        raise file_error(path, f"expected one float tensor of shape (frames, {n_mels}), found {type(features).__name__}")
    if features.layout != torch.strided or features.is_nested:
        raise file_error(path, f"expected a dense tensor, found {'a nested tensor' if features.is_nested else f'layout {features.layout}'}")
    if features.device.type != "cpu":  # a meta tensor holds no values; a tensor saved on a GPU is loaded to the CPU
        raise file_error(path, f"expected a tensor of values, found one on device {features.device.type!r}")
    features = features.detach()  # features are data: a tensor saved with requires_grad (or a Parameter) is fine
    if not features.is_floating_point():
        raise file_error(path, f"expected a float tensor, found dtype {features.dtype}")
    if features.dim() != 2:
        raise file_error(path, f"expected a 2-D tensor (frames, {n_mels}), found shape {tuple(features.shape)}")
    if features.shape[1] != n_mels:
        hint = "; transposed? features are (frames, n_mels)" if features.shape[0] == n_mels else ""
        hint += f"; {n_mels_from} says n_mels {n_mels}" if n_mels_from is not None else ""
        raise file_error(path, f"expected {n_mels} mel bins, found {features.shape[1]} (shape {tuple(features.shape)}{hint})")
    if features.shape[0] == 0:
        raise file_error(path, "feature tensor is empty (0 frames)")
    # float64 values are judged as saved: past float32's range they would read as Inf after the conversion
    judged = features if features.dtype == torch.float64 else features.to(torch.float32)
    problem = feature_values_problem(float(judged.abs().max()))
    if problem:
        raise file_error(path, problem)
    return features.to(torch.float32).contiguous()


def load_feature_file(path: str | Path, n_mels: int, n_mels_from: str | Path | None = None) -> torch.Tensor:
    """Load one `.pt` feature tensor safely (weights_only) and validate it (``n_mels_from``: see check_features)."""
    return check_features(safe_torch_load(path, "feature file"), path, n_mels, n_mels_from)
