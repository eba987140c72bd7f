"""Which files are clips: torch-free, so the runtime install and `--help` can list clips without torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Iterable, Iterator

from voxaug.errors import VoxaugError, file_error, not_a_file

FEATURE_SUFFIX = ".pt"
UNREAD_AUDIO_SUFFIXES = (".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma")
"""Audio formats that are no clip (clips are .pt, .wav, .flac): listed from a folder that holds clips, so the reader
names each and it is skipped or refused, rather than left out without a word."""


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


def loose_clips(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Names of the clip files directly in a folder of ``<speaker>/`` folders: clips of no speaker. Hidden files and
    files that are no clip (a corpus's ``README.TXT``, VCTK's ``log.txt``, ``Thumbs.db``) are not among them."""
    return sorted(p.name for p in folder.iterdir()
                  if p.suffix.lower() in suffixes and not p.name.startswith(".") and not p.is_dir())


def _unlistable(error: OSError) -> None:
    raise VoxaugError(f"{error.filename}: cannot list this folder ({error.strerror or error})") from error


def one_file_per_clip(folder: Path, suffixes: tuple[str, ...], audio_first: bool = False) -> list[Path]:
    """Clip files under ``folder``; where ``x.pt`` and ``x.wav`` both exist (as `voxaug synth` writes
    them), the `.pt` features are used (the audio with ``audio_first``: for a model that takes only audio, or
    whose front end is not the one the `.pt` was made with), so each clip counts once. Two audio files of one
    clip (``x.wav`` and ``x.flac``) are refused: which one is the clip is the user's call. Audio of a format that
    is no clip (``x.ogg``) is listed too, where the folder holds clips and ``x`` has no clip file (``x.mp3`` beside
    the ``x.wav`` made from it is left out), so that its reader names it."""
    features: dict[Path, Path] = {}
    audio: dict[Path, Path] = {}
    unread: list[Path] = []
    for path in sorted(files_under(folder)):
        if path.suffix.lower() in UNREAD_AUDIO_SUFFIXES:
            unread.append(path)
            continue
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
    clips = {stem: first.get(stem) or second[stem] for stem in features.keys() | audio.keys()}
    if clips:
        clips.update((path, path) for path in unread_audio(unread, clips.keys()))
    return [clips[key] for key in sorted(clips)]


def unread_audio(paths: Iterable[Path], stems: Collection[Path]) -> list[Path]:
    """The files of ``paths`` holding audio of a format that is no clip (``x.ogg``), less those whose stem is in
    ``stems``: ``x.mp3`` beside the ``x.wav`` made from it is that file's original, not a sound of its own, as it is
    beside an ``x.mp3.wav`` (``ffmpeg -i "$f" "$f.wav"``, whose stem is the original's whole name)."""
    return sorted(p for p in paths if p.suffix.lower() in UNREAD_AUDIO_SUFFIXES
                  and p.with_suffix("") not in stems and p not in stems)
