"""`voxaug plot RUN… --out compare.png`: overlay train/validation accuracy of several runs."""

from __future__ import annotations

from pathlib import Path

import typer

from voxaug.cli.common import clean_errors, file_name, folder_name
from voxaug.errors import VoxaugError


@clean_errors
def plot(
    runs: list[Path] = typer.Argument(..., parser=folder_name, help="Run folders (each with metrics.jsonl)."),
    out: Path = typer.Option(..., "--out", parser=file_name, metavar="<file>",
                             help="Figure to write: .png, .pdf or .svg."),
    labels: str = typer.Option(None, "--labels", help="Comma list of legend names, one per run (default: folder names)."),
) -> None:
    """Overlay runs: clean train accuracy (solid) against validation accuracy (dashed), and the gap between them."""
    from voxaug.plot import plot_runs

    for run, rows in zip(runs, plot_runs(runs, out, legend_names(labels))):
        last = rows[-1] if rows else {}
        if last.get("val_acc") is not None:
            typer.echo(f"{run}: step {last['step']} train {last['train_acc']:.3f} val {last['val_acc']:.3f} "
                       f"gap {last['train_acc'] - last['val_acc']:+.3f}")
    typer.echo(f"wrote {out}")


def legend_names(labels: str | None) -> list[str] | None:
    """--labels as one legend name per run; an empty one (``a,``) would draw a curve that the legend does not name."""
    if labels is None:
        return None
    names = [label.strip() for label in labels.split(",")]
    if "" in names:
        raise VoxaugError(f"--labels {labels!r}: name {names.index('') + 1} is empty; give one name per run")
    return names  # plot_runs refuses a count other than the runs
