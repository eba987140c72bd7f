"""`python -m voxaug` runs the same CLI as the `voxaug` console script (torchrun needs this form)."""

from __future__ import annotations

import sys


def main() -> None:
    """The CLI, with a Ctrl-C while it is still importing (a second or so on a busy machine) ending as the one line and
    status 130 that the commands give once they run, not as a traceback through the imports."""
    try:
        from voxaug.cli.main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    run()


if __name__ == "__main__":
    main()
