"""`voxaug identify --index FILE CLIP…`: cosine top-k speakers beside the softmax classifier's answer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from voxaug.cli.common import DeviceOption, clean_errors, expand_clips
from voxaug.device import resolve_device
from voxaug.embeddings.identify import Identification, Identifier, check_threshold


def format_row(result: Identification) -> str:
    top = "  ".join(f"{speaker} {score:.3f}" for speaker, score in result.top)
    return (f"{result.clip}\n  decision: {result.decision}\n  cosine top-{len(result.top)}: {top}\n"
            f"  softmax: {result.softmax_speaker} (p={result.softmax_prob:.3f})")


@clean_errors
def identify(
    clips: list[Path] = typer.Argument(..., help="Clips: .pt feature tensors or wav/flac audio (or folders of them)."),
    index: Path = typer.Option(..., "--index", help="Speaker index written by embed or enroll."),
    ckpt: Path = typer.Option(None, "--ckpt", help="Checkpoint; defaults to the one the index's sidecar names."),
    top_k: int = typer.Option(5, "--top-k", help="How many speakers to list."),
    threshold: float = typer.Option(0.5, "--threshold", help="Cosine score under which the decision is 'unknown'."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
    device: str = DeviceOption,
) -> None:
    """Identify each clip by cosine nearest speaker, with the classifier's own answer beside it."""
    check_threshold(threshold)
    identifier = Identifier(index, ckpt, resolve_device(device))
    for clip in expand_clips(clips):
        result = identifier.identify(clip, top_k, threshold)
        typer.echo(json.dumps(result.to_json()) if as_json else format_row(result))
