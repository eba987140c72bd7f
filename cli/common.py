"""What every command shares: clean one-line errors, the --debug switch, common option types."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, TypeVar

import typer

from voxaug.audio import AUDIO_SUFFIXES
from voxaug.data.sources import FEATURE_SUFFIX, one_file_per_clip
from voxaug.errors import VoxaugError

F = TypeVar("F", bound=Callable)
DEBUG_ENV = "VOXAUG_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def clean_errors(function: F) -> F:
    """Turn a VoxaugError into ``error: <message>`` and exit code 2; tracebacks only with --debug."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except VoxaugError as exc:
            if debug_enabled():
                raise
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, not bad input: still one line unless --debug
            if debug_enabled():
                raise
            raise fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 3) from None

    return wrapper  # type: ignore[return-value]


CacheOption = typer.Option(None, "--cache-dir", help="Packed feature store folder (default $VOXAUG_CACHE or ~/.cache/voxaug).")
DeviceOption = typer.Option("auto", "--device", help="auto (CUDA if present, else CPU), cpu or cuda.")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise VoxaugError(f"{path}: {what} not found")
    if not path.is_file():
        raise VoxaugError(f"{path}: expected a {what} file, found a folder")
    return path


def expand_clips(paths: list[Path]) -> list[Path]:
    """Clip arguments as files: a folder stands for every clip under it (one file per clip)."""
    clips: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = one_file_per_clip(path, (FEATURE_SUFFIX,) + AUDIO_SUFFIXES)
            if not found:
                raise VoxaugError(f"{path}: folder holds no clips (.pt, .wav, .flac)")
            clips += found
        else:
            clips.append(path)
    return clips
