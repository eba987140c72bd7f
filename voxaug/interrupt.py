"""SIGTERM handled as Ctrl-C is: SLURM, Kubernetes and ``timeout`` stop a job with it, and its default action ends
the process on the spot, running no ``finally``, so locks and temp files stayed behind."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGTERM_EXIT = 128 + signal.SIGTERM  # the status a shell gives a program that SIGTERM ended

_requested = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where it lands as Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs: locks and
    temp files removed, finished outputs kept."""


def _raise_terminated(signum: int, frame: object) -> None:
    global _requested
    _requested = True
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`. Python delivers signals to the main thread only, so
    elsewhere nothing changes."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _requested = False


def stop_if_terminated() -> None:
    """Raise :class:`Terminated` at a safe point if SIGTERM came and its exception was lost: Python drops (and only
    prints) an exception raised in a finaliser (``__del__``, a weakref callback), where the signal may land."""
    if _requested:
        raise Terminated()
