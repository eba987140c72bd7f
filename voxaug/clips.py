"""Which files are clips: torch-free, so the runtime install and `--help` can list clips without torch."""

from __future__ import annotations

from pathlib import Path

FEATURE_SUFFIX = ".pt"


def one_file_per_clip(folder: Path, suffixes: tuple[str, ...], audio_first: bool = False) -> list[Path]:
    """Clip files under ``folder``; where ``x.pt`` and ``x.wav`` both exist (as `voxaug synth` writes
    them), the `.pt` features are used (the audio with ``audio_first``, for a model that takes only audio), so
    each clip counts once. Hidden files and folders (``.x``, such as the ``._x.wav`` metadata files macOS
    leaves on shared drives) are not clips."""
    chosen: dict[Path, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        stem = path.with_suffix("")
        preferred = (path.suffix.lower() == FEATURE_SUFFIX) != audio_first
        if stem not in chosen or (preferred and (chosen[stem].suffix.lower() == FEATURE_SUFFIX) == audio_first):
            chosen[stem] = path
    return [chosen[stem] for stem in sorted(chosen)]
