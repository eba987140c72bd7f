"""`voxaug embed --ckpt CKPT DATA --out DIR [--index FILE]`: unit-norm embeddings (+ a speaker index)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import typer

from voxaug.checkpoint import load_model
from voxaug.cli.common import CacheOption, DeviceOption, QuietOption, clean_errors, existing_file
from voxaug.data.sources import open_source
from voxaug.data.store import PackedStore
from voxaug.device import resolve_device
from voxaug.embeddings.extract import embed_store
from voxaug.embeddings.identify import checkpoint_record
from voxaug.embeddings.index import SpeakerIndex
from voxaug.errors import VoxaugError
from voxaug.safeio import atomic_output, atomic_write_text


def write_embeddings(out: Path, embeddings: np.ndarray, keys: list[str], speakers: list[str | None]) -> None:
    """``out/embeddings.npy`` (N, E) float32 and ``out/items.csv`` (row, path, speaker), each atomically."""
    with atomic_output(out / "embeddings.npy", "wb") as handle:
        np.save(handle, embeddings.astype(np.float32), allow_pickle=False)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "path", "speaker"])
    for row, (key, speaker) in enumerate(zip(keys, speakers)):
        writer.writerow([row, key, speaker or ""])
    atomic_write_text(out / "items.csv", buffer.getvalue())


def build_index(embeddings: np.ndarray, speakers: list[str | None], per: str, hnsw: bool, ckpt: Path,
                frontend: dict) -> SpeakerIndex:
    if any(s is None for s in speakers):
        raise VoxaugError("--index needs speaker labels; this dataset has unlabelled utterances (testdata.json?)")
    index = SpeakerIndex(dim=embeddings.shape[1], mode=per, hnsw=hnsw, checkpoint=checkpoint_record(ckpt),
                         frontend=frontend)
    labels = np.array(speakers)
    for speaker in sorted(set(speakers)):
        index.add(speaker, embeddings[labels == speaker])
    return index


@clean_errors
def embed(
    data: Path = typer.Argument(..., help="Dataset: HW4 folder or <speaker>/ clip folders (.pt or audio)."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint (RUN/best.pt)."),
    out: Path = typer.Option(..., "--out", help="Folder for embeddings.npy and items.csv."),
    index: Path = typer.Option(None, "--index", help="Also write a FAISS speaker index here (+ FILE.json sidecar)."),
    per: str = typer.Option("speaker", "--per", help="Index one centroid per speaker, or every utterance."),
    hnsw: bool = typer.Option(False, "--hnsw", help="HNSW index instead of exact search (large utterance indexes)."),
    batch: int = typer.Option(64, "--batch", help="Most utterances per forward pass (batches are also capped in frames)."),
    window: int = typer.Option(None, "--window", help="Split utterances longer than this many frames into windows."),
    hop: int = typer.Option(None, "--hop", help="Hop between windows in frames (default: the window)."),
    device: str = DeviceOption,
    cache_dir: Path = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Export one L2-normalised float32 embedding per utterance, batched by length."""
    existing_file(ckpt, "checkpoint")
    if batch <= 0 or (hop is not None and hop <= 0):
        raise VoxaugError("--batch and --hop must be positive")
    torch_device = resolve_device(device)
    loaded = load_model(ckpt, torch_device)
    source = open_source(data, loaded.frontend)
    store = PackedStore.open(source, cache_dir, progress=not quiet)
    speakers = [store.speakers[label] if label >= 0 else None for label in store.labels]
    embedded = embed_store(loaded.model, store, np.arange(len(store)), torch_device, window, hop, max_batch=batch,
                           progress=not quiet)
    speaker_index = build_index(embedded.embeddings, speakers, per, hnsw, ckpt, loaded.frontend.to_dict()) if index else None
    write_embeddings(out, embedded.embeddings, store.keys, speakers)
    typer.echo(f"wrote {len(store)} embeddings of dimension {embedded.embeddings.shape[1]} to {out / 'embeddings.npy'}")
    if speaker_index is not None:
        speaker_index.save(index)
        typer.echo(f"wrote a {per} index of {len(speaker_index.speakers)} speakers to {index} (+ {index}.json)")
