"""`python -m voxaug` runs the same CLI as the `voxaug` console script (torchrun needs this form)."""

from __future__ import annotations

import sys


def main() -> None:
    """The CLI, with a Ctrl-C while it is still importing (a second or so on a busy machine) ending as the one line and
    status 130 that the commands give once they run, not as a traceback through the imports."""
    refuse_closed_stdout()
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


if __name__ == "__main__":
    main()
