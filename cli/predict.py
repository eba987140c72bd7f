"""`voxaug predict --ckpt CKPT DATA --out submission.csv`: the homework's Kaggle file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer

from voxaug.cli.common import (
    CacheOption, DeviceOption, QuietOption, clean_errors, existing_file, file_name, folder_name, output_file,
)
from voxaug.errors import VoxaugError, file_error
from voxaug.safeio import atomic_write_bytes

if TYPE_CHECKING:
    from voxaug.data.sources import HW4Source, Utterance


@clean_errors
def predict(
    data: Path = typer.Argument(..., parser=folder_name,
                                help="HW4 folder with testdata.json (or <speaker>/ clip folders)."),
    ckpt: Path = typer.Option(..., "--ckpt", parser=file_name, metavar="<file>", help="Checkpoint (RUN/best.pt)."),
    out: Path = typer.Option(..., "--out", parser=file_name, metavar="<file>", help="CSV to write: Id,Category."),
    device: str = DeviceOption,
    cache_dir: Path = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Classify every utterance of testdata.json, in its order, on whole utterances."""
    from voxaug.checkpoint import load_model
    from voxaug.data.audio_store import open_dataset_store
    from voxaug.data.sources import (
        HW4Source, open_source_for_model, speakers_without_utterances, untrained_classes_warning,
    )
    from voxaug.device import resolve_device
    from voxaug.inference import run_model

    existing_file(ckpt, "checkpoint")
    output_file(out, "--out")
    refuse_overwriting_an_input(out, [ckpt])
    torch_device = resolve_device(device)
    loaded = load_model(ckpt, torch_device)
    source = open_source_for_model(data, loaded.frontend, split="test")
    dataset_files = [*getattr(source, "index_files", []), *(u.path for u in source.utterances)]
    trained = source.training_utterances() if isinstance(source, HW4Source) else []  # metadata.json's, read once
    if isinstance(source, HW4Source):
        dataset_files.append(data / "metadata.json")  # not read for the test split, but the dataset's all the same
    refuse_overwriting_an_input(out, dataset_files + [u.path for u in trained])  # so are its training clips
    if isinstance(source, HW4Source) and set(source.speakers) != set(loaded.speakers):  # names, in any order
        strangers = sorted(set(loaded.speakers) - set(source.speakers))
        unknown = sorted(set(source.speakers) - set(loaded.speakers))
        why = (f"(e.g. {strangers[0]!r}); predict's categories would be speakers this dataset does not have" if strangers
               else f"(this dataset's {unknown[0]!r} is not one of them); the model can never predict such a speaker")
        raise file_error(data / "mapping.json", f"lists {len(source.speakers)} speakers, not the {len(loaded.speakers)} "
                                                f"the model names {why}")
    if isinstance(source, HW4Source):
        warn_of_training_clips(source, trained)
        silent = speakers_without_utterances(source.speakers, trained) if trained else []  # unknown without metadata
        if silent:  # a model trained with speed has a class per speed for each speaker, as train's warning counts
            copies = loaded.config.model.num_classes // loaded.config.model.speakers
            typer.echo(untrained_classes_warning(data / "metadata.json", silent, len(source.speakers), copies), err=True)
    store, _ = open_dataset_store(source, cache_dir, progress=not quiet, strict=True,
                                  strict_because="predict writes a row for every clip")
    _, logits = run_model(loaded.model, store, np.arange(len(store)), torch_device, progress=not quiet)
    predicted = logits.argmax(dim=1).tolist()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Id", "Category"])
    for key, label in zip(store.keys, predicted):
        writer.writerow([key, loaded.speakers[label]])
    atomic_write_bytes(out, buffer.getvalue().encode("utf-8", errors="surrogateescape"))  # a file name's own bytes
    typer.echo(f"wrote {len(predicted)} predictions to {out}")


def warn_of_training_clips(source: HW4Source, trained: list[Utterance]) -> None:
    """A test clip that metadata.json lists too (``trained``) was trained on (a train/test leak): its prediction says
    nothing of how the model does on unseen clips. Said, not refused: predicting on training clips can be meant.
    Compared as files (device and inode), so a link to a training clip under another name is one too."""
    from voxaug.data.sources import file_identity

    trained_files = {file_identity(u.path) for u in trained}
    leaked = [u.key for u in source.utterances if file_identity(u.path) in trained_files]
    if leaked:
        typer.echo(f"warning: {source.root / 'testdata.json'}: {len(leaked)} of its {len(source.utterances)} clips "
                   f"{'is a training clip' if len(leaked) == 1 else 'are training clips'} in metadata.json too "
                   f"(e.g. {leaked[0]!r}); their predictions score the model on "
                   "clips it was trained on", err=True)


def refuse_overwriting_an_input(out: Path, inputs: list[Path]) -> None:
    """An --out that is the checkpoint or a file of the dataset (testdata.json, say) would be replaced by the CSV."""
    try:
        written = out.stat()
    except OSError:  # not there yet: nothing to lose
        return
    for path in inputs:
        try:
            read = Path(path).stat()
        except OSError:
            continue
        if (read.st_dev, read.st_ino) == (written.st_dev, written.st_ino):
            raise VoxaugError(f"{out}: --out is {path}, which predict reads; writing the CSV there would replace it "
                              "(choose another file name)")
