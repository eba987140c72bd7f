"""The packed feature store: all features of a source in one memory-mapped float32 array plus an
index of offsets, lengths and labels. Built once, reused while the source's files are unchanged,
so training slices batches from memory instead of calling `torch.load` per utterance per step."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from voxaug.data.sources import DatasetSource
from voxaug.errors import VoxaugError, file_error
from voxaug.progress import print_warning, progress_bar
from voxaug.safeio import (
    atomic_output, atomic_write_json, ensure_folder, held_in_this_process, home_expanded, lock_descriptor, open_lock_file,
    read_json,
)

STORE_VERSION = 1
FEATURES_FILE = "features.f32"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"


def default_cache_dir() -> Path:
    """``$VOXAUG_CACHE`` if set, else ``~/.cache/voxaug``; a ``~`` in the variable (quoted, or set by a service
    file, no shell expands it) is the home folder, not a folder named ``~`` in the working directory. A name of only
    whitespace is refused, as ``--cache-dir`` refuses it, and so is a user with no home folder and no VOXAUG_CACHE."""
    name = os.environ.get("VOXAUG_CACHE")
    if name and not name.strip():
        raise VoxaugError(f"VOXAUG_CACHE {name!r} is a folder name of only whitespace; give a folder, or unset it for "
                          "~/.cache/voxaug")
    if name:
        return home_expanded(name, "VOXAUG_CACHE")
    try:
        return Path.home() / ".cache" / "voxaug"
    except RuntimeError:  # HOME unset and no home folder for this user (a container's uid without a passwd entry)
        raise VoxaugError("no home folder for the default feature cache ~/.cache/voxaug (HOME is unset and this user "
                          "has none); set VOXAUG_CACHE or pass --cache-dir") from None


@dataclass
class PackedStore:
    """Features of every utterance of a source, row-concatenated in one (total_frames, n_mels) memmap."""

    folder: Path
    features: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    keys: list[str]
    speakers: list[str]
    groups: list[str | None]
    n_mels: int
    rebuilt: bool = False
    sidecar: object = None  # what ``open``'s ``read_sidecar`` read beside the index, under the same lock

    def __len__(self) -> int:
        return len(self.keys)

    def utterance(self, index: int) -> torch.Tensor:
        """Whole utterance ``index`` as a (frames, n_mels) tensor (a copy, safe to modify)."""
        start = int(self.offsets[index])
        return torch.from_numpy(np.array(self.features[start : start + int(self.lengths[index])]))

    def segment(self, index: int, start: int, length: int) -> torch.Tensor:
        begin = int(self.offsets[index]) + start
        return torch.from_numpy(np.array(self.features[begin : begin + length]))

    def clip_identity(self) -> dict:
        """The ordered clip list as a count and a sha1 of each key with its speaker: a run's split and saved
        sampler order are by store position, so a resume must find the same list."""
        clips = [[key, self.speakers[label] if label >= 0 else None]
                 for key, label in zip(self.keys, self.labels.tolist())]
        return {"count": len(clips), "sha1": hashlib.sha1(json.dumps(clips).encode()).hexdigest()}

    @classmethod
    def open(
        cls,
        source: DatasetSource,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        loader: Callable | None = None,
        builder: Callable[..., dict] | None = None,
        read_sidecar: Callable[[Path, str], object] | None = None,
    ) -> "PackedStore":
        """Open the store for ``source``, building it first when missing or stale.

        ``builder(source, folder, fingerprint, progress)`` replaces :func:`build_store` (e.g. the
        parallel audio featuriser in ``voxaug.data.audio_store``) and returns the index it wrote.
        ``read_sidecar(folder, fingerprint)`` reads a file the builder writes beside the index (the audio builder's
        skipped files) while the lock is held, so another process's build cannot replace it between the two reads;
        None (missing, damaged or of another build) rebuilds the store. Its value is the store's ``sidecar``.
        """
        folder = store_folder(source, cache_dir)
        fingerprint = source.fingerprint()
        with cache_lock(folder, source.root):  # another process may be packing it, perhaps with another front end
            store = cls._reusable(folder, fingerprint)
            if store is not None and read_sidecar is not None:
                store.sidecar = read_sidecar(folder, fingerprint)
                if store.sidecar is None:
                    store = None  # unmapped before the rebuild, which frees the old features first
            if store is not None:
                return store
            if builder is not None:
                index = builder(source, folder, fingerprint, progress)
            else:
                index = build_store(source, folder, fingerprint, progress=progress, loader=loader)
            store = cls._from_index(folder, index, rebuilt=True)
            if read_sidecar is not None:
                store.sidecar = read_sidecar(folder, fingerprint)
            return store

    @classmethod
    def _reusable(cls, folder: Path, fingerprint: str) -> "PackedStore | None":
        """The store in ``folder`` when its index is whole, of this ``fingerprint`` and version, and matches its
        features file; None when it must be built (the caller holds the lock)."""
        index_path = folder / INDEX_FILE
        if not index_path.exists():
            return None
        try:
            index = read_json(index_path, "store index")
        except VoxaugError:
            return None
        if not (isinstance(index, dict) and index.get("fingerprint") == fingerprint
                and index.get("version") == STORE_VERSION):
            return None
        try:
            return cls._from_index(folder, index, rebuilt=False)
        except (KeyError, TypeError, ValueError, OverflowError, OSError):  # OverflowError: past int64
            return None  # a damaged cache (features file truncated or replaced): rebuild it from the source

    @classmethod
    def _from_index(cls, folder: Path, index: dict, rebuilt: bool) -> "PackedStore":
        lengths = np.asarray(index["lengths"], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total, n_mels = int(lengths.sum()), int(index["n_mels"])
        expected = total * n_mels * np.dtype(np.float32).itemsize
        if (folder / FEATURES_FILE).stat().st_size != expected or len(index["labels"]) != len(lengths):
            raise ValueError(f"{folder / FEATURES_FILE}: size does not match {INDEX_FILE}")
        features = np.memmap(folder / FEATURES_FILE, dtype=np.float32, mode="r", shape=(total, n_mels))
        return cls(
            folder=folder,
            features=features,
            offsets=offsets,
            lengths=lengths,
            labels=np.asarray(index["labels"], dtype=np.int64),
            keys=list(index["keys"]),
            speakers=list(index["speakers"]),
            groups=list(index["groups"]),
            n_mels=n_mels,
            rebuilt=rebuilt,
        )


@contextmanager
def cache_lock(folder: Path, data: str | Path | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock while its store is checked, built and mapped: a store is one features file and
    one index written in turn, and two builders interleaving them would pair one's index with the other's
    features. A mapped features file stays readable after another build replaces it. ``data`` (the dataset's
    folder) is named in the line said while another process holds the lock."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        ensure_folder(folder, "feature cache folder")  # a file has the folder's name: it says so
    except OSError as exc:
        raise cache_write_error(exc, folder) from exc
    try:
        fd = open_lock_file(folder / LOCK_FILE)
    except OSError as exc:
        raise cache_write_error(exc, folder) from exc
    try:
        _wait_for_lock(fd, folder / LOCK_FILE, data)
    except OSError as exc:
        os.close(fd)
        raise cache_write_error(exc, folder / LOCK_FILE) from exc
    except BaseException:  # Ctrl-C while waiting for another process's pack: not left open in a process that goes on
        os.close(fd)
        raise
    with held_in_this_process(fd):  # packing forks data-loader workers, which must not keep the lock
        yield


def _wait_for_lock(fd: int, lock: Path, data: str | Path | None) -> None:
    """Take the cache lock, saying in one stderr line when another process holds it: packing a large dataset takes
    minutes, and a command waiting for it silently looks hung."""
    try:
        lock_descriptor(fd, wait=False)
    except BlockingIOError:
        what = f"{data}'s" if data is not None else "a dataset's"
        print_warning(f"waiting for another voxaug process packing {what} features (lock {lock})")
        lock_descriptor(fd, wait=True)


def store_folder(source: DatasetSource, cache_dir: str | Path | None) -> Path:
    """One cache folder per dataset location and kind, so different sources never collide. Named after the real
    folder, as the digest is: through a link of another name, or as ``.``, a dataset keeps its one cache and lock."""
    root = Path(source.root).resolve()
    digest = hashlib.sha1(os.fsencode(f"{root}|{source.name}")).hexdigest()[:16]  # a name's undecodable bytes are kept
    readable = os.fsencode(root.name)[:100].decode(errors="ignore")  # a folder name may be 255 bytes
    return Path(cache_dir or default_cache_dir()) / f"{readable}-{source.name}-{digest}"


def discard_store(folder: Path) -> None:
    """Remove ``folder``'s old store before a build: its index first (a store without one is never opened), then
    its features, which no one can open without it; kept while the new ones are written, they would need room for
    both, and a store as large as the free space could never be rebuilt. A process that maps them still reads them."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INDEX_FILE).unlink(missing_ok=True)
        (folder / FEATURES_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise cache_write_error(exc, folder) from exc


def cache_write_error(error: OSError, folder: Path) -> VoxaugError:
    """``folder`` of the feature cache cannot be written (a read-only file system or folder): a command that only
    reads its data writes there, so the error says what the folder is and how to use another."""
    return file_error(error.filename or folder, f"{error.strerror or error} (in the feature cache folder; pass "
                                                "--cache-dir or set VOXAUG_CACHE to use another)")


def build_store(
    source: DatasetSource,
    folder: Path,
    fingerprint: str,
    progress: bool = True,
    loader: Callable | None = None,
) -> dict:
    """Load every utterance once (validating it), append it to the features file, then write the index.

    The index is written last and atomically: its presence means the store is complete.
    """
    discard_store(folder)
    speaker_ids = {name: i for i, name in enumerate(source.speakers)}
    load = loader or source.load
    lengths, labels = [], []
    bar = progress_bar(source.utterances, enabled=progress, desc=f"packing {source.root}", unit="utt", leave=False)
    with atomic_output(folder / FEATURES_FILE, "wb") as handle:
        for utterance in bar:
            features = load(utterance).numpy().astype(np.float32, copy=False)
            handle.write(np.ascontiguousarray(features).tobytes())
            lengths.append(int(features.shape[0]))
            labels.append(speaker_ids[utterance.speaker] if utterance.speaker is not None else -1)
    index = {
        "version": STORE_VERSION,
        "fingerprint": fingerprint,
        "n_mels": source.n_mels,
        "speakers": list(source.speakers),
        "keys": [u.key for u in source.utterances],
        "groups": [u.group for u in source.utterances],
        "lengths": lengths,
        "labels": labels,
    }
    atomic_write_json(folder / INDEX_FILE, index)
    return index
