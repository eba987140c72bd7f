"""Which files are clips: torch-free, so the runtime install and `--help` can list clips without torch."""

from __future__ import annotations

from pathlib import Path

FEATURE_SUFFIX = ".pt"


def one_file_per_clip(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Clip files under ``folder``; where ``x.pt`` and ``x.wav`` both exist (as `voxaug synth` writes
    them), the `.pt` features are used, so each clip counts once. Hidden files and folders (``.x``, such as
    the ``._x.wav`` metadata files macOS leaves on shared drives) are not clips."""
    chosen: dict[Path, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        stem = path.with_suffix("")
        if stem not in chosen or path.suffix.lower() == FEATURE_SUFFIX:
            chosen[stem] = path
    return [chosen[stem] for stem in sorted(chosen)]
