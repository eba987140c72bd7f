"""SIGTERM handled as Ctrl-C is: SLURM, Kubernetes and ``timeout`` stop a job with it, and its default action ends
the process on the spot, running no ``finally``, so locks and temp files stayed behind."""

from __future__ import annotations

import contextlib
import os
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
    if hasattr(signal, "SIGCHLD"):
        # `timeout` and SLURM signal the whole process group, so the data workers (DataLoader) stop too: their deaths
        # are this stop, not a failure for torch's SIGCHLD handler to raise over it (a RuntimeError traceback after
        # the one-line error). Left so: the command is ending, and its workers may die after the block has ended.
        signal.signal(signal.SIGCHLD, _worker_stopped)
    raise Terminated()


def _worker_stopped(signum: int, frame: object) -> None:
    """SIGCHLD after SIGTERM: a child stopped with this process. A handler, not SIG_DFL: one already pending would
    be reported as 'Signal 17 ignored due to race condition'."""


def _default_in_child() -> None:
    """A process forked inside the block (a data worker) dies of SIGTERM as before, instead of raising this
    process's exception in the child before torch installs its own handlers there."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_in_child)


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
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: not set from Python
        _requested = False


def stop_if_terminated() -> None:
    """Raise :class:`Terminated` at a safe point if SIGTERM came and its exception was lost: Python drops (and only
    prints) an exception raised in a finaliser (``__del__``, a weakref callback), where the signal may land."""
    if _requested:
        raise Terminated()
