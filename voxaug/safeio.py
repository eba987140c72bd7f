"""Safe reading and atomic writing of files: no unpickling of code, no half-written outputs."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from voxaug.errors import file_error


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside ``path``; on success flush, fsync and rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    with atomic_output(path, "wb") as handle:
        torch.save(obj, handle)


def safe_torch_load(path: str | Path, what: str = "file") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one line naming the file."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, f"{what} not found")
    if path.is_dir():
        raise file_error(path, f"expected a {what}, found a folder")
    if path.stat().st_size == 0:
        raise file_error(path, f"{what} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        if "GLOBAL" in detail or "Unsupported global" in detail:
            raise file_error(
                path, f"refused: the {what} holds pickled objects other than tensors and plain values "
                "(loading it could run code)"
            ) from exc
        raise file_error(path, f"not a readable {what} (corrupt or not a torch file)") from exc
    except Exception as exc:  # torch.load raises many types on corrupt input (struct.error, KeyError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise file_error(path, f"not a readable {what} ({first[:200]})") from exc


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file, naming the file and the position on a syntax error."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, f"{what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(path, f"cannot read {what} ({exc})") from exc
    if not text.strip():
        raise file_error(path, f"{what} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise file_error(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
