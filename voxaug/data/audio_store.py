"""Packing an audio corpus: features computed once, in DataLoader worker processes, into the
packed store. A bad file is reported and skipped (counted at the end) unless ``strict`` is set,
so one corrupt clip does not kill a long run."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from voxaug.clips import AUDIO_FILE_SUFFIXES
from voxaug.data.sources import DatasetSource, Utterance
from voxaug.data.store import FEATURES_FILE, INDEX_FILE, SKIPPED_FILE, PackedStore, discard_store, store_index
from voxaug.errors import VoxaugError
from voxaug.progress import print_warning, progress_bar
from voxaug.safeio import atomic_output, atomic_write_json, read_json


def default_workers() -> int:
    """Worker processes when none are asked for: one per CPU core beyond the main one, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def is_audio(utterance: Utterance) -> bool:
    """Whether a clip is audio rather than features: an .m4a clip too, which is skipped when it is read; an HW4
    feature file named otherwise than `.pt` (metadata.json names it) stays features."""
    return utterance.path.suffix.lower() in AUDIO_FILE_SUFFIXES


def has_audio(source: DatasetSource) -> bool:
    """True when the source reads at least one audio file (so featurising it is worth workers)."""
    return any(is_audio(u) for u in source.utterances)


def single_thread_worker(_: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker, so workers don't fight for cores."""
    torch.set_num_threads(1)


def _first(items: list) -> object:
    return items[0]


class _LoadEach(Dataset):
    """Item i: (i, features or None, error message or None); errors come back instead of raising."""

    def __init__(self, source: DatasetSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source.utterances)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.source.load(self.source.utterances[index]), None
        except VoxaugError as exc:
            return index, None, str(exc)


def build_audio_store(
    source: DatasetSource,
    folder: Path,
    fingerprint: str,
    progress: bool = True,
    workers: int | None = None,
    strict: bool = False,
    strict_because: str = "--strict",
    warn: bool = True,
) -> dict:
    """Featurise every utterance in ``workers`` processes (in order), write features and index.

    Same files as :func:`voxaug.data.store.build_store`, plus ``skipped.json`` listing bad files.
    ``strict_because`` says in the error why a bad file stops the build; ``warn`` names each skipped file.
    """
    discard_store(folder)
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise VoxaugError(f"--workers must be >= 0, got {workers}")
    speaker_ids = {name: i for i, name in enumerate(source.speakers)}
    loader = DataLoader(_LoadEach(source), batch_size=1, collate_fn=_first, num_workers=workers,
                        worker_init_fn=single_thread_worker if workers else None,
                        generator=torch.Generator())  # its own, so the global RNG (model init) is untouched
    kept: list[Utterance] = []
    lengths, labels, skipped = [], [], []
    bar = progress_bar(loader, enabled=progress, total=len(source.utterances),
                       desc=f"featurising {source.root} ({workers} workers)", unit="utt", leave=False)
    with atomic_output(folder / FEATURES_FILE, "wb") as handle:
        for index, features, problem in bar:
            utterance = source.utterances[index]
            if problem is not None:
                if strict:
                    raise VoxaugError(f"{problem} ({strict_because}: stopping at the first bad file)")
                skipped.append({"key": utterance.key, "problem": problem})
                if warn:
                    print_warning(f"warning: skipped {problem}", bar)
                continue
            array = features.numpy().astype(np.float32, copy=False)
            handle.write(np.ascontiguousarray(array).tobytes())
            kept.append(utterance)
            lengths.append(int(array.shape[0]))
            labels.append(speaker_ids[utterance.speaker] if utterance.speaker is not None else -1)
    if not kept:
        raise VoxaugError(f"{source.root}: every one of {len(source.utterances)} files is unreadable; first: "
                          f"{skipped[0]['problem']}")
    atomic_write_json(folder / SKIPPED_FILE, {"fingerprint": fingerprint, "skipped": skipped})
    index = store_index(source, kept, fingerprint, lengths, labels)
    atomic_write_json(folder / INDEX_FILE, index)
    return index


def skipped_files(folder: Path, fingerprint: str) -> list[dict] | None:
    """The files left out of the store in ``folder`` when it was built from the source with ``fingerprint`` (``[]``
    when none were); None when the list is damaged, missing or of another build (another dataset's, or the source
    changed since): every audio build writes it, and trusting none there would pass a store lacking clips as whole."""
    path = folder / SKIPPED_FILE
    if not path.exists():
        return None
    try:
        listed = read_json(path, "skipped-file list")
    except VoxaugError:
        return None
    if not isinstance(listed, dict) or listed.get("fingerprint") != fingerprint:
        return None
    skipped = listed.get("skipped", [])
    if not (isinstance(skipped, list) and all(isinstance(entry, dict) and isinstance(entry.get("problem"), str)
                                              for entry in skipped)):
        return None
    return skipped


def open_dataset_store(
    source: DatasetSource,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    strict: bool = False,
    strict_because: str = "--strict",
    warn: bool = True,
) -> tuple[PackedStore, list[dict]]:
    """The packed store of ``source`` and the files skipped; audio is featurised in parallel. Every command that
    reads DATA opens it here, so each sees the same clips whatever its cache already holds.

    A store reused from the cache repeats its skip count, and ``strict`` refuses it if it skipped any;
    ``strict_because`` is the reason the error gives (the option, or why the command needs every clip);
    ``warn`` says which files were skipped (false on all but one of torchrun's processes, so it is said once).
    """
    if not has_audio(source):
        return PackedStore.open(source, cache_dir, progress=progress, warn=warn), []
    builder = partial(build_audio_store, workers=workers, strict=strict, strict_because=strict_because, warn=warn)
    # the skipped list is read under the store's lock: read after it, another process's build (another front end)
    # could have replaced it, and this store's skips were reported as none or the store was built again for nothing
    store = PackedStore.open(source, cache_dir, progress=progress, builder=builder, read_sidecar=skipped_files,
                             warn=warn)
    skipped = store.sidecar or []
    if skipped and strict:
        raise VoxaugError(f"{skipped[0]['problem']} ({strict_because}; {len(skipped)} bad files in {source.root})")
    if skipped and warn:
        print_warning(f"warning: skipped {len(skipped)} of {len(skipped) + len(store)} files in {source.root} "
                      "(unreadable, empty or silent)")
    return store, skipped


def require_audio(source: DatasetSource) -> None:
    """Refuse ``--augment wave`` on precomputed features: it needs every clip as a waveform."""
    features = [u for u in source.utterances if not is_audio(u)]
    if features:
        raise VoxaugError(
            f"--augment wave needs an audio source (ROOT/<speaker>/**/*.wav, .flac, .mp3, ...), but {source.root} "
            f"holds precomputed features ({len(features)} of {len(source.utterances)} clips, e.g. {features[0].path}); "
            "drop 'wave' or train from the audio folder"
        )
