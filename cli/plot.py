"""`voxaug plot RUN… --out compare.png`: overlay train/validation accuracy of several runs."""

from __future__ import annotations

from pathlib import Path

import typer

from voxaug.cli.common import clean_errors


@clean_errors
def plot(
    runs: list[Path] = typer.Argument(..., help="Run folders (each with metrics.jsonl)."),
    out: Path = typer.Option(..., "--out", help="Figure to write: .png, .pdf or .svg."),
    labels: str = typer.Option(None, "--labels", help="Comma list of legend names, one per run (default: folder names)."),
) -> None:
    """Overlay runs: clean train accuracy (solid) against validation accuracy (dashed), and the gap between them."""
    from voxaug.plot import plot_runs

    names = [label.strip() for label in labels.split(",")] if labels is not None else None
    for run, rows in zip(runs, plot_runs(runs, out, names)):
        last = rows[-1] if rows else {}
        if last.get("val_acc") is not None:
            typer.echo(f"{run}: step {last['step']} train {last['train_acc']:.3f} val {last['val_acc']:.3f} "
                       f"gap {last['train_acc'] - last['val_acc']:+.3f}")
    typer.echo(f"wrote {out}")
