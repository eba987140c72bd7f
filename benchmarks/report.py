"""How a benchmark reports: its ``--json`` file is checked before the run (and written after it with
``voxaug.safeio.atomic_write_json``), so a long run is not lost to a missing folder at the end; counts are
checked in one line; a ratio prints readably at any size."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def json_output(text: str) -> Path:
    """argparse type of ``--json FILE``: refuses a folder, or a file whose folder does not exist, before any work;
    so is a name of only whitespace, as :func:`folder_name` refuses it (it wrote a file named by a space)."""
    if text and not text.strip():
        raise argparse.ArgumentTypeError(f"a file name of only whitespace ({text!r}); give a file for the JSON "
                                         "results or leave the option out")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name for the JSON results")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: folder {path.absolute().parent} does not exist; create it first")
    return path


def folder_name(text: str) -> Path:
    """argparse type of a folder option (``--cache-dir``, ``--workdir``): an empty name is refused, as ``Path("")`` is
    the working directory, which would fill with cache and run folders (gpu_check's workdir has its runs/ removed);
    so is a name of only whitespace, as the voxaug commands refuse it."""
    if not text:
        raise argparse.ArgumentTypeError("an empty folder name; give a folder or leave the option out")
    if not text.strip():
        raise argparse.ArgumentTypeError(f"a folder name of only whitespace ({text!r}); give a folder or leave the "
                                         "option out")
    return Path(text)


def times(ratio: float) -> str:
    """A speed ratio as "12x", or with one decimal below 10 ("0.8x", not "1x" or "0x")."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def percent(fraction: float) -> str:
    """A rate as a percentage: 0.01 as "1%", 0.005 as "0.5%"."""
    return f"{fraction * 100:g}%"


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type of a count: an integer no smaller than ``minimum``, refused in one line before any work."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:,}, got {value:,}")
        return value

    return count


def far_rate(text: str) -> float:
    """argparse type of ``--target-far``: a rate in (0, 1) as ``check_far`` takes it, refused in one line before any
    embedding rather than in a traceback after it."""
    from voxaug.embeddings.calibration import check_far
    from voxaug.errors import VoxaugError

    try:
        return check_far(float(text))
    except (ValueError, VoxaugError) as exc:
        raise argparse.ArgumentTypeError(f"must be a rate in (0, 1), got {text!r}") from exc


def arm_list(text: str) -> list[str]:
    """argparse type of ``--arms``: the ';'-separated ``--augment`` specs, refused in one line when there are none
    (an empty table, or every arm where none given meant the default)."""
    arms = [arm.strip() for arm in text.split(";") if arm.strip()]
    if not arms:
        raise argparse.ArgumentTypeError(f"no arms in {text!r}; give ';'-separated --augment specs, such as 'none;specaug'")
    return arms
