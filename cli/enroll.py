"""`voxaug enroll --index FILE --speaker NAME CLIP…`: add (or remove) a speaker without retraining."""

from __future__ import annotations

from pathlib import Path

import typer

from voxaug.checkpoint import load_model
from voxaug.cli.common import DeviceOption, clean_errors, existing_file, expand_clips
from voxaug.data.sources import load_clip
from voxaug.device import resolve_device
from voxaug.embeddings.extract import check_length, embed_tensors
from voxaug.embeddings.identify import check_checkpoint, checkpoint_record
from voxaug.embeddings.index import SpeakerIndex, index_lock
from voxaug.errors import VoxaugError
from voxaug.safeio import sha256_file


@clean_errors
def enroll(
    clips: list[Path] = typer.Argument(None, help="Enrolment clips (.pt features or wav/flac audio, or folders of them)."),
    index: Path = typer.Option(..., "--index", help="Speaker index (created when missing, then --ckpt is required)."),
    speaker: str = typer.Option(None, "--speaker", help="Name to enrol."),
    append: bool = typer.Option(False, "--append", help="Add the clips to an already enrolled speaker (updates its centroid)."),
    remove: str = typer.Option(None, "--remove", help="Take this speaker out of the index."),
    ckpt: Path = typer.Option(None, "--ckpt", help="Checkpoint; defaults to the one the index's sidecar names."),
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
    with index_lock(index, lock_timeout):
        if remove is not None:
            speaker_index = SpeakerIndex.load(index)
            speaker_index.remove(remove)
            speaker_index.save(index)
            typer.echo(f"removed {remove}; {len(speaker_index.speakers)} speakers remain in {index}")
            return
        torch_device = resolve_device(device)
        if index.exists():
            speaker_index = SpeakerIndex.load(index)
            model_path = ckpt or Path(speaker_index.checkpoint.get("path", ""))
            loaded = load_model(existing_file(model_path, "checkpoint"), torch_device)
            check_checkpoint(speaker_index, index, loaded, sha256_file(model_path))
        else:
            if ckpt is None:
                raise VoxaugError(f"{index}: index does not exist yet; pass --ckpt to create it")
            loaded = load_model(existing_file(ckpt, "checkpoint"), torch_device)
            speaker_index = SpeakerIndex(dim=loaded.config.model.embedding_dim, mode=per, hnsw=hnsw,
                                         checkpoint=checkpoint_record(ckpt), frontend=loaded.frontend.to_dict())
        if speaker in speaker_index.counts and not append:
            raise VoxaugError(f"{index}: speaker {speaker!r} is already enrolled; pass --append to add clips to it")
        features = []
        for clip in expand_clips(clips):
            tensor = load_clip(clip, loaded.frontend)
            check_length(tensor, clip)
            features.append(tensor)
        embedded = embed_tensors(loaded.model, features, torch_device)
        speaker_index.add(speaker, embedded.embeddings, append=append)
        speaker_index.save(index)
    typer.echo(f"enrolled {speaker} from {len(features)} clips ({speaker_index.counts[speaker]} in all); "
               f"{len(speaker_index.speakers)} speakers in {index}")
