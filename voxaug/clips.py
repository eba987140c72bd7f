"""Which files are clips: torch-free, so the runtime install and `--help` can list clips without torch."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Collection, Iterable, Iterator

from voxaug.errors import VoxaugError, file_error, not_a_file

FEATURE_SUFFIX = ".pt"
CLIP_AUDIO_SUFFIXES = (".wav", ".flac")
"""Audio read as a clip by every libsndfile."""
DECODED_AUDIO_SUFFIXES = (".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff")
"""Audio read as a clip where the installed libsndfile decodes its format (``voxaug.runtime.frontend.audio_suffixes``).
Beside a ``.wav``/``.flac`` of its stem it is the original that file was converted from, not a clip of its own."""
UNREAD_AUDIO_SUFFIXES = (".m4a", ".aac", ".wma")
"""Audio libsndfile cannot read. Listed from a folder that holds clips, as a decoded format the installed libsndfile
lacks is, so the reader names each and it is skipped or refused, rather than left out without a word."""
AUDIO_FILE_SUFFIXES = CLIP_AUDIO_SUFFIXES + DECODED_AUDIO_SUFFIXES + UNREAD_AUDIO_SUFFIXES
"""Every suffix of audio, read or not: such a file is audio, never features."""


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


def deepest_speakers(clips: list[tuple[str, str]]) -> list[str]:
    """Of ``clips`` (speaker, key: the clip's path below the folder of speakers), for each speaker whose every clip lies
    three or more folders below its folder (``speaker/a/b/clip``, one level deeper than VoxCeleb's video and
    LibriSpeech's chapter), its first clip's key."""
    shallow = {speaker for speaker, key in clips if len(PurePosixPath(key).parts) < 4}
    first: dict[str, str] = {}
    for speaker, key in clips:
        if speaker not in shallow:
            first.setdefault(speaker, key)
    return list(first.values())


def nested_speakers_warning(root: Path, nested: list[str], speakers: int, given_as: str = "DATA") -> str:
    """The one warning line for speaker folders whose every clip lies three or more folders down (``nested``: each
    such clip key, the first of its speaker): the folder ``given_as`` (DATA, or enroll's --speakers-dir) is likely the
    one above the speakers' (``LibriSpeech/`` around ``train-clean-100/19/198/``), whose subsets would be speakers."""
    one = len(nested) == 1
    first = nested[0]
    return (f"warning: {root}: {len(nested)} of the {speakers} speakers {'holds' if one else 'hold'} every clip three "
            f"or more folders down ({'' if one else 'first '}{first.split('/')[0]!r}: {first}); a speaker is "
            f"{given_as}'s first folder level, so if the folders below {'it' if one else 'them'} are the speakers, "
            f"give {root / first.split('/')[0]} as {given_as}")


def _unlistable(error: OSError) -> None:
    raise VoxaugError(f"{error.filename}: cannot list this folder ({error.strerror or error})") from error


def one_file_per_clip(folder: Path, suffixes: tuple[str, ...], audio_first: bool = False) -> list[Path]:
    """Clip files under ``folder`` of the ``suffixes`` read; where ``x.pt`` and ``x.wav`` both exist (as `voxaug synth`
    writes them), the `.pt` features are used (the audio with ``audio_first``: for a model that takes only audio, or
    whose front end is not the one the `.pt` was made with), so each clip counts once. Two audio files of one
    clip (``x.wav`` and ``x.flac``, or ``x.mp3`` and ``x.ogg``) are refused: which one is the clip is the user's call,
    but ``x.mp3`` beside the ``x.wav`` made from it is that file's original (:func:`is_original`), left out. Audio of a
    format not read (``x.m4a``) is listed too, where the folder holds clips and ``x`` has no clip file, so that its
    reader names it."""
    features: dict[Path, Path] = {}
    audio: dict[Path, Path] = {}
    decoded: dict[Path, Path] = {}
    unread: list[Path] = []
    for path in sorted(files_under(folder)):
        suffix = path.suffix.lower()
        if suffix in AUDIO_FILE_SUFFIXES and suffix not in suffixes:
            unread.append(path)
            continue
        if suffix not in suffixes:
            continue
        if path.is_symlink() and not path.exists():
            raise VoxaugError(f"{path}: a clip's symbolic link points to nothing ({os.readlink(path)})")
        if not path.is_file():  # a named pipe or a device: left out, its clip would be missing without a word
            raise file_error(path, not_a_file(path, "clip"))
        stem = path.with_suffix("")
        kind = features if suffix == FEATURE_SUFFIX else audio if suffix in CLIP_AUDIO_SUFFIXES else decoded
        if stem in kind:
            raise VoxaugError(f"{kind[stem]} and {path.name}: two files of one clip; keep one")
        kind[stem] = path
    audio.update([(stem, path) for stem, path in decoded.items()  # x.mp3 beside x.mp3.ogg is the original too
                  if not is_original(path, audio.keys()) and path not in features and path not in decoded])
    first, second = (audio, features) if audio_first else (features, audio)
    clips = {stem: first.get(stem) or second[stem] for stem in features.keys() | audio.keys()}
    if clips:
        clips.update((path, path) for path in unread_audio(unread, clips.keys(), suffixes))
    return [clips[key] for key in sorted(clips)]


def is_original(path: Path, stems: Collection[Path]) -> bool:
    """Whether ``path`` is the original of a clip file converted from it, whose stem is in ``stems``: ``x.mp3``
    beside ``x.wav``, or beside ``x.mp3.wav`` (``ffmpeg -i "$f" "$f.wav"``, whose stem is the original's whole name),
    not a sound of its own."""
    return path.with_suffix("") in stems or path in stems


def without_originals(paths: list[Path]) -> list[Path]:
    """``paths`` less each audio file of a decoded format that is the original of another among them, as
    :func:`one_file_per_clip` leaves it out: of a ``.wav``/``.flac``, or of any file named after its whole name
    (``x.mp3`` beside ``x.mp3.ogg``)."""
    converted = {p.with_suffix("") for p in paths if p.suffix.lower() in CLIP_AUDIO_SUFFIXES}
    stems = {p.with_suffix("") for p in paths}
    return [p for p in paths
            if p.suffix.lower() in CLIP_AUDIO_SUFFIXES or not (is_original(p, converted) or p in stems)]


def unread_audio(paths: Iterable[Path], stems: Collection[Path], read: Collection[str]) -> list[Path]:
    """The files of ``paths`` holding audio of a format whose suffix is not in ``read`` (``x.m4a``), less the
    originals of files whose stem is in ``stems``."""
    return sorted(p for p in paths if p.suffix.lower() in AUDIO_FILE_SUFFIXES and p.suffix.lower() not in read
                  and not is_original(p, stems))
