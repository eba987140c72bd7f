"""Progress bars that cost nothing when progress is off: tqdm starts its ``tqdm_monitor`` thread when any bar is
built, even a disabled one, and that thread then lives as long as the process (a service, a notebook)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


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


def progress_bar(iterable: Iterable | None = None, *, enabled: bool, **options: Any) -> Any:
    """A tqdm bar over ``iterable`` with ``options`` when ``enabled``, else one that does nothing and starts no
    thread (``disable=True`` would still start tqdm's monitor)."""
    if not enabled:
        return _NoBar(iterable)
    from tqdm import tqdm

    return tqdm(iterable, **options)
