"""`python -m voxaug` runs the same CLI as the `voxaug` console script (torchrun needs this form)."""

from voxaug.cli.main import main

if __name__ == "__main__":
    main()
