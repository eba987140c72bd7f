"""Which files are clips: torch-free, so the runtime install and `--help` can list clips without torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from voxaug.errors import VoxaugError, file_error, not_a_file

FEATURE_SUFFIX = ".pt"


def files_under(folder: Path) -> Iterator[Path]:
    """Every file below ``folder``, following symlinked folders (a VoxCeleb ``<video>/`` linked in from elsewhere
    is part of the speaker) but entering each real folder once, so a link back up cannot loop. Hidden files and
    folders (``.x``, such as the ``._x.wav`` metadata files macOS leaves on shared drives) are left out. A folder
    that cannot be listed is refused: skipping it would leave its clips out without a word."""
    seen: set[str] = set()
    try:
        for top, folders, files in os.walk(folder, onerror=_unlistable, followlinks=True):
            real = os.path.realpath(top)
            if real in seen:
                folders.clear()
                continue
            seen.add(real)
            # sorted: which of a folder and a link to it is entered must not depend on the file system's listing order
            folders[:] = sorted(name for name in folders if not name.startswith("."))
            yield from (Path(top) / name for name in files if not name.startswith("."))
    except RecursionError:  # os.walk recurses once per level (before Python 3.12): about a thousand levels down
        raise VoxaugError(f"{folder}: folders nested too deep to list (past Python's recursion limit)") from None


def _unlistable(error: OSError) -> None:
    raise VoxaugError(f"{error.filename}: cannot list this folder ({error.strerror or error})") from error


def one_file_per_clip(folder: Path, suffixes: tuple[str, ...], audio_first: bool = False) -> list[Path]:
    """Clip files under ``folder``; where ``x.pt`` and ``x.wav`` both exist (as `voxaug synth` writes
    them), the `.pt` features are used (the audio with ``audio_first``: for a model that takes only audio, or
    whose front end is not the one the `.pt` was made with), so each clip counts once. Two audio files of one
    clip (``x.wav`` and ``x.flac``) are refused: which one is the clip is the user's call."""
    features: dict[Path, Path] = {}
    audio: dict[Path, Path] = {}
    for path in sorted(files_under(folder)):
        if path.suffix.lower() not in suffixes:
            continue
        if path.is_symlink() and not path.exists():
            raise VoxaugError(f"{path}: a clip's symbolic link points to nothing ({os.readlink(path)})")
        if not path.is_file():  # a named pipe or a device: left out, its clip would be missing without a word
            raise file_error(path, not_a_file(path, "clip"))
        stem = path.with_suffix("")
        kind = features if path.suffix.lower() == FEATURE_SUFFIX else audio
        if stem in kind:
            raise VoxaugError(f"{kind[stem]} and {path.name}: two files of one clip; keep one")
        kind[stem] = path
    first, second = (audio, features) if audio_first else (features, audio)
    return [first.get(stem) or second[stem] for stem in sorted(features.keys() | audio.keys())]
