"""`voxaug export --ckpt RUN/last.pt --out model.onnx`: a checkpoint as an ONNX model for the torch-free runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from voxaug.cli.common import clean_errors, existing_file, file_name, output_file
from voxaug.errors import file_error

DEFAULT_OPSET = 17  # voxaug.export.DEFAULT_OPSET, not imported so that torch loads only when export runs


@clean_errors
def export(
    ckpt: Path = typer.Option(..., "--ckpt", parser=file_name, metavar="<file>",
                              help="Checkpoint to export (RUN/last.pt for embeddings)."),
    out: Path = typer.Option(..., "--out", parser=file_name, metavar="<file>", help="ONNX file to write (atomically)."),
    with_frontend: bool = typer.Option(False, "--with-frontend", help="Put the log-mel front end inside the graph: "
                                                                       "the model then takes waveforms at the "
                                                                       "checkpoint's sample rate."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset version (14 to 20)."),
) -> None:
    """Export the embedding network: log-mel frames (or audio) in, unit embeddings and speaker logits out."""
    from voxaug.export import export_onnx  # torch loads here, not when the CLI starts

    ckpt, out = existing_file(ckpt, "checkpoint"), output_file(out, "--out")
    if out.suffix.lower() != ".onnx":  # what every command that takes --model reads, and never the checkpoint
        raise file_error(out, "--out must name an .onnx file (embed, enroll, identify and evaluate take --model *.onnx)")
    summary = export_onnx(ckpt, out, with_frontend, opset)
    takes = f"{summary.sample_rate / 1000:g} kHz waveforms" if summary.takes_audio else "log-mel features"
    typer.echo(f"wrote {summary.path} (opset {summary.opset}, takes {takes}; {summary.speakers} speakers, "
               f"{summary.embedding_dim}-dim embeddings; sha256 {summary.sha256})")
