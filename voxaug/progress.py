"""Progress bars that cost nothing when progress is off: tqdm starts its ``tqdm_monitor`` thread when any bar is
built, even a disabled one, and that thread then lives as long as the process (a service, a notebook). On a stderr
that is no terminal (a log file, a pipe, a job's output) progress is plain lines, not tqdm's carriage returns."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

LINE_INTERVAL_S = 60.0  # a long job's log gets a progress line at most this often, and one when the bar closes


class _NoBar:
    """What the callers use of a tqdm bar, doing nothing: iteration over ``iterable``, update, set_postfix, close,
    and ``with``."""

    def __init__(self, iterable: Iterable | None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: float = 1) -> None:
        """Nothing to count."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class _LineBar(_NoBar):
    """Progress for a stderr that is no terminal: a whole line (``train: 120/500 step, loss=2.301``) when closed and
    at most every ``LINE_INTERVAL_S`` before, where tqdm would redraw one line with carriage returns, which a log
    file or a pipe keeps as one long line of every redraw."""

    def __init__(self, iterable: Iterable | None, desc: str = "", total: int | None = None, initial: int = 0,
                 unit: str = "it", **ignored: Any) -> None:
        super().__init__(iterable)
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.desc, self.total, self.count, self.unit = desc, total, initial, unit
        self.postfix = ""
        self.last_line, self.written = time.monotonic(), ""
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in super().__iter__():
            yield item
            self.update(1)
        self.close()

    def update(self, n: float = 1) -> None:
        self.count += n
        if time.monotonic() - self.last_line >= LINE_INTERVAL_S:
            self._write_line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write_line()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_line(self) -> None:
        """The bar's state as one line, unless it is the line last written (a close just after a timed line)."""
        self.last_line = time.monotonic()
        done = f"{self.count}" + (f"/{self.total}" if self.total is not None else "")
        line = f"{self.desc}: {done} {self.unit}" + (f", {self.postfix}" if self.postfix else "")
        if line != self.written:
            _write_to_stderr(line)
        self.written = line


def _write_to_stderr(line: str) -> None:
    """``line`` on stderr, dropped where there is none (closed when the command started) or it was closed since,
    as tqdm drops its bar then: progress is no reason to stop a command or a fit."""
    if sys.stderr is None:
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except ValueError:  # closed
        pass


def _stderr_is_terminal() -> bool:
    """Whether stderr, where the bars go, can redraw a bar in place: a terminal, or a Jupyter notebook's stream
    (no tty, but the notebook draws carriage returns in place, so tqdm's live bar stays there). A stream without
    ``isatty`` is no terminal."""
    if sys.stderr is None:
        return False
    if type(sys.stderr).__module__.startswith("ipykernel."):
        return True
    isatty = getattr(sys.stderr, "isatty", None)  # a writer put in its place (to a logger) may have none
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


def print_warning(line: str, bar: Any = None) -> None:
    """``line`` on stderr, above ``bar`` when that is tqdm's live bar (``tqdm.write`` clears and redraws it), and
    nowhere when the process has no stderr (started with ``2>&-``): ``print`` and ``tqdm.write`` would then put it
    on stdout, among the command's output."""
    if bar is None or isinstance(bar, _NoBar) or sys.stderr is None:
        _write_to_stderr(line)
    else:
        bar.write(line, file=sys.stderr)


def progress_bar(iterable: Iterable | None = None, *, enabled: bool, **options: Any) -> Any:
    """A tqdm bar over ``iterable`` with ``options`` when ``enabled`` and stderr is a terminal, plain lines when it is
    not, else one that does nothing and starts no thread (``disable=True`` would still start tqdm's monitor)."""
    if not enabled:
        return _NoBar(iterable)
    if not _stderr_is_terminal():
        return _LineBar(iterable, **options)
    from tqdm import tqdm

    return tqdm(iterable, **options)
