"""Which files are clips: torch-free, so the runtime install and `--help` can list clips without torch."""

from __future__ import annotations

from pathlib import Path

from voxaug.errors import VoxaugError

FEATURE_SUFFIX = ".pt"


def one_file_per_clip(folder: Path, suffixes: tuple[str, ...], audio_first: bool = False) -> list[Path]:
    """Clip files under ``folder``; where ``x.pt`` and ``x.wav`` both exist (as `voxaug synth` writes
    them), the `.pt` features are used (the audio with ``audio_first``, for a model that takes only audio), so
    each clip counts once. Two audio files of one clip (``x.wav`` and ``x.flac``) are refused: which one is
    the clip is the user's call. Hidden files and folders (``.x``, such as the ``._x.wav`` metadata files macOS
    leaves on shared drives) are not clips."""
    features: dict[Path, Path] = {}
    audio: dict[Path, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        stem = path.with_suffix("")
        kind = features if path.suffix.lower() == FEATURE_SUFFIX else audio
        if stem in kind:
            raise VoxaugError(f"{kind[stem]} and {path.name}: two files of one clip; keep one")
        kind[stem] = path
    first, second = (audio, features) if audio_first else (features, audio)
    return [first.get(stem) or second[stem] for stem in sorted(features.keys() | audio.keys())]
