"""SIGTERM handled as Ctrl-C is: SLURM, Kubernetes and ``timeout`` stop a job with it, and its default action ends
the process on the spot, running no ``finally``, so locks and temp files stayed behind."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

SIGTERM_EXIT = 128 + signal.SIGTERM  # the status a shell gives a program that SIGTERM ended

_received: int | None = None  # the interrupting signal (SIGINT, SIGTERM) that came inside the block, in this process


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where it lands as Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs: locks and
    temp files removed, finished outputs kept."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    """The exception that the signal ``signum`` raises where it lands."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_terminated(signum: int, frame: object) -> None:
    global _received
    _received = signum
    if hasattr(signal, "SIGCHLD"):
        # `timeout` and SLURM signal the whole process group, so the data workers (DataLoader) stop too: their deaths
        # are this stop, not a failure for torch's SIGCHLD handler to raise over it (a RuntimeError traceback after
        # the one-line error). Left so: the command is ending, and its workers may die after the block has ended.
        signal.signal(signal.SIGCHLD, _worker_stopped)
    raise Terminated()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C, raised as Python's own handler raises it, and noted as SIGTERM is (see :func:`interrupt_prevails`)."""
    global _received
    _received = signum
    raise KeyboardInterrupt()


def _worker_stopped(signum: int, frame: object) -> None:
    """SIGCHLD after SIGTERM: a child stopped with this process. A handler, not SIG_DFL: one already pending would
    be reported as 'Signal 17 ignored due to race condition'."""


def _default_in_child() -> None:
    """A process forked inside the block (a data worker) dies of SIGTERM as before, instead of raising this
    process's exception in the child before torch installs its own handlers there; its Ctrl-C is Python's again, and
    an interrupt that the parent received is not the child's."""
    global _received
    _received = None
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is _raise_keyboard_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_in_child)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`, and an error raised after SIGTERM or Ctrl-C came is that
    interrupt (see :func:`interrupt_prevails`). Python delivers signals to the main thread only, so elsewhere
    nothing changes."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    noted_ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not one ignored or set by others
    if noted_ctrl_c:
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        with interrupt_prevails():
            yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: not set from Python
        if noted_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _received = None


@contextlib.contextmanager
def interrupt_prevails() -> Iterator[None]:
    """An error raised after SIGTERM or Ctrl-C came is that interrupt, chained to the error: one landing while a C
    extension initialises (a lazy import of torch, faiss, onnxruntime...) comes out of the import as ``ImportError:
    initialization failed`` (or ``import numpy failed``, its cause dropped), which the CLI reported as an unexpected
    error (exit 3)."""
    try:
        yield
    except Exception as exc:
        if _received is None:
            raise
        raise _interrupt(_received) from exc


def stop_if_terminated() -> None:
    """Raise the interrupt at a safe point if SIGTERM or Ctrl-C came and its exception was lost: Python drops (and
    only prints) an exception raised in a finaliser (``__del__``, a weakref callback), where the signal may land."""
    if _received is not None:
        raise _interrupt(_received)
