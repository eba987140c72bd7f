"""``--device auto|cpu|cuda``: CUDA with mixed precision when present, else CPU."""

from __future__ import annotations

import torch

from voxaug.errors import VoxaugError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VoxaugError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise VoxaugError(f"--device {name!r} is not known; accepted: auto, cpu, cuda")
    return torch.device(name)
