"""The one exception type the CLI turns into a single clean error line."""

from __future__ import annotations

import stat
from dataclasses import fields
from pathlib import Path


class VoxaugError(Exception):
    """A user-facing problem: bad input, a missing file, an option out of range.

    The CLI prints ``error: <message>`` and exits non-zero, with no traceback unless ``--debug``.
    """


def counted(count: int, noun: str) -> str:
    """``1 clip``, ``2 clips``: a count with its noun."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def abridged(value: object, limit: int = 80) -> str:
    """``value`` as ``repr`` writes it, cut to ``limit`` characters with an ellipsis: an error echoes a file's line
    or value so that it can be found, and a line of 10,000 characters would bury the message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def file_error(path: str | Path, problem: str) -> VoxaugError:
    """An error that names the file first, so every message reads ``<file>: <problem>``."""
    return VoxaugError(f"{path}: {problem}")


def export_as_checkpoint(path: str | Path) -> VoxaugError:
    """An ONNX export given where a training checkpoint goes (``--ckpt``): the commands that take one take it
    with ``--model``, so every command refuses it alike."""
    return file_error(path, "an ONNX export, not a checkpoint: this takes a training checkpoint (RUN/last.pt or "
                            "best.pt); embed, enroll, identify and evaluate take an export with --model")


def not_a_folder(path: str | Path) -> str:
    """Why ``path``, which is not a folder, cannot be read as one: missing, or a file given where a folder goes."""
    return "is a file, not a folder" if Path(path).exists() else "folder not found"


def not_a_file(path: str | Path, what: str) -> str:
    """Why ``path``, which exists but is not a regular file, cannot be read as a ``what`` file: what it is instead
    (a folder, or a device such as /dev/null, a pipe or a socket, which are not folders either)."""
    mode = Path(path).stat().st_mode
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))
    found = next((kind for test, kind in kinds if test(mode)), "no regular file")
    noun = what if what.endswith("file") else f"{what} file"  # "noise feature file" is not said twice
    return f"expected {'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}, found {found}"


def refuse_unknown_keys(values: dict, kind: type, where: str, noun: str = "keys",
                        not_settable: tuple[str, ...] = ()) -> None:
    """Refuse keys that are not fields of the dataclass ``kind``, naming them and the accepted ones
    (fields in ``not_settable``, which the data sets, are left out of the accepted list)."""
    known = {field.name for field in fields(kind)}
    unknown = set(values) - known
    if unknown:
        accepted = sorted(known - set(not_settable))
        raise VoxaugError(f"{where}: unknown {noun} {sorted(unknown)}; accepted: {accepted}")
