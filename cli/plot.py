"""`voxaug plot RUN… --out compare.png`: overlay train/validation accuracy of several runs."""

from __future__ import annotations

from pathlib import Path

import typer

from voxaug.cli.common import clean_errors
from voxaug.plot import plot_runs


@clean_errors
def plot(
    runs: list[Path] = typer.Argument(..., help="Run folders (each with metrics.jsonl)."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
) -> None:
    """Plot clean train accuracy (solid) against validation accuracy (dashed) for each run."""
    plot_runs(runs, out)
    typer.echo(f"wrote {out}")
