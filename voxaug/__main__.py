"""`python -m voxaug` runs the same CLI as the `voxaug` console script (torchrun needs this form)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """The CLI, with a Ctrl-C while it is still importing (a second or so on a busy machine) ending as the one line and
    status 130 that the commands give once they run, not as a traceback through the imports."""
    refuse_closed_stdout()
    keep_stderr_descriptor_out_of_files()
    try:
        from voxaug.cli.main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    run()


def refuse_closed_stdout() -> None:
    """Stop, before any work, a command started with its stdout closed (``voxaug identify … >&-``): Python then drops
    every write to it, so the answers, the summary and the help were lost while the command said success (status 0)."""
    if sys.stdout is None:
        if sys.stderr is not None:
            sys.stderr.write("error: standard output is closed, so the output would be lost; redirect it to a file "
                             "or to /dev/null\n")
        raise SystemExit(2)


def keep_stderr_descriptor_out_of_files() -> None:
    """Give a command started with its stderr closed (``2>&-``) /dev/null as descriptor 2: else the first file it
    opens takes that number, and what a C library prints to stderr (ONNX Runtime, gloo, FAISS) lands inside an
    output file or the run's log. ``sys.stderr`` (None then) writes there too: ``print(..., file=None)`` would put
    the warnings on stdout, among the answers."""
    try:
        os.fstat(2)
    except OSError:  # closed
        null = os.open(os.devnull, os.O_WRONLY)  # the lowest free descriptor: 2, or 0 when stdin is closed too
        if null != 2:
            os.dup2(null, 2)
            os.close(null)
        os.set_inheritable(2, True)  # as the shell's descriptor 2 is, for the processes the command starts
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)


if __name__ == "__main__":
    main()
