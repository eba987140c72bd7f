"""`voxaug enroll --index FILE --speaker NAME CLIP…`: add (or remove) a speaker without retraining."""

from __future__ import annotations

from pathlib import Path

import typer

from voxaug.cli.common import DeviceOption, ModelOption, chosen_model, clean_errors, expand_clips
from voxaug.errors import VoxaugError


@clean_errors
def enroll(
    clips: list[Path] = typer.Argument(None, help="Enrolment clips (.pt features or wav/flac audio, or folders of them)."),
    index: Path = typer.Option(..., "--index", help="Speaker index (created when missing, then --ckpt or --model is required)."),
    speaker: str = typer.Option(None, "--speaker", help="Name to enrol."),
    append: bool = typer.Option(False, "--append", help="Add the clips to an already enrolled speaker (updates its centroid)."),
    remove: str = typer.Option(None, "--remove", help="Take this speaker out of the index."),
    ckpt: Path = typer.Option(None, "--ckpt", help="Checkpoint; defaults to the model the index's sidecar names."),
    model: Path = ModelOption,
    per: str = typer.Option("speaker", "--per", help="For a new index: one centroid per speaker, or every utterance."),
    hnsw: bool = typer.Option(False, "--hnsw", help="For a new index: HNSW instead of exact search."),
    lock_timeout: float = typer.Option(60.0, "--lock-timeout", help="Seconds to wait for another enrol on the same index."),
    device: str = DeviceOption,
) -> None:
    """Enrol a speaker from clips into the FAISS index, or remove one."""
    if (speaker is None) == (remove is None):
        raise VoxaugError("give either --speaker NAME with clips, or --remove NAME")
    if speaker is not None and not clips:
        raise VoxaugError(f"--speaker {speaker}: no enrolment clips given")
    from voxaug.api.index import SpeakerIndex  # torch, FAISS and ONNX Runtime load only when the command runs
    from voxaug.embeddings.index import SpeakerIndex as IndexData
    from voxaug.embeddings.index import index_lock

    model_path = chosen_model(ckpt, model)
    if remove is not None:
        with index_lock(index, lock_timeout):
            speaker_index = IndexData.load(index)
            speaker_index.remove(remove)
            speaker_index.save(index)
        typer.echo(f"removed {remove}; {len(speaker_index.speakers)} speakers remain in {index}")
        return
    if index.exists():
        speaker_index = SpeakerIndex.open(index, model_path, device)
    elif model_path is None:
        raise VoxaugError(f"{index}: index does not exist yet; pass --ckpt or --model to create it")
    else:
        speaker_index = SpeakerIndex.create(index, model_path, per, hnsw, device)
    enrolment = expand_clips(clips)
    count = speaker_index.enroll(speaker, enrolment, append, lock_timeout)
    typer.echo(f"enrolled {speaker} from {len(enrolment)} clips ({count} in all); "
               f"{len(speaker_index.speakers)} speakers in {index}")
