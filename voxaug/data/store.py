"""The packed feature store: all features of a source in one memory-mapped float32 array plus an
index of offsets, lengths and labels. Built once, reused while the source's files are unchanged,
so training slices batches from memory instead of calling `torch.load` per utterance per step."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from voxaug.data.sources import DatasetSource, Utterance, file_stamp
from voxaug.data.split import clip_stem
from voxaug.errors import VoxaugError, counted, file_error
from voxaug.progress import print_warning, progress_bar
from voxaug.safeio import (
    LOCK_POLL_S, atomic_output, atomic_write_json, ensure_folder, held_in_this_process, home_expanded, lock_descriptor,
    open_lock_file, read_json,
)

STORE_VERSION = 1
FEATURES_FILE = "features.f32"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
SKIPPED_FILE = "skipped.json"
FRONTENDS_FOLDER = "frontends"
OTHER_FRONTEND_STORES = 2
"""A dataset's stores kept for front ends other than the default one (in its folder's ``frontends/``), beside the
default's: alternating two front ends reuses both, and a third discards the one least recently opened."""
LOCK_WAIT_SAID_AFTER_S = 2.0
"""How long the cache lock may stay taken before the wait is said: another command only checking its ready store
holds it for a moment, and saying so each time would cry wolf under parallel jobs."""


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
        warn: bool = True,
    ) -> "PackedStore":
        """Open the store for ``source``, building it first when missing or stale.

        ``builder(source, folder, fingerprint, progress)`` replaces :func:`build_store` (e.g. the
        parallel audio featuriser in ``voxaug.data.audio_store``) and returns the index it wrote.
        ``read_sidecar(folder, fingerprint)`` reads a file the builder writes beside the index (the audio builder's
        skipped files) while the lock is held, so another process's build cannot replace it between the two reads;
        None (missing, damaged or of another build) rebuilds the store. Its value is the store's ``sidecar``.
        ``warn``: say on stderr why a store packed before is packed again (false on all but one of torchrun's
        processes).
        """
        folder, dataset = store_folder(source, cache_dir), dataset_folder(source, cache_dir)
        fingerprint = source.fingerprint()
        # another process may be packing the same dataset, perhaps with another front end, or discarding this one's;
        # the wait names the dataset's real folder, whose cache it is (a dataset given as `.` is no folder to name)
        with cache_lock(dataset, Path(source.root).resolve()):
            store = cls._reusable(folder, fingerprint)
            if store is not None and read_sidecar is not None:
                store.sidecar = read_sidecar(folder, fingerprint)
                if store.sidecar is None:
                    store = None  # unmapped before the rebuild, which frees the old features first
            if store is not None:
                if folder != dataset:
                    mark_opened(folder)
                return store.of_source(source)
            reason = rebuild_reason(folder, source, fingerprint)
            if reason and warn:
                print_warning(f"{source.root}: feature cache packed again: {reason}")
            if builder is not None:
                index = builder(source, folder, fingerprint, progress)
            else:
                index = build_store(source, folder, fingerprint, progress=progress, loader=loader)
            store = cls._from_index(folder, index, rebuilt=True)
            if read_sidecar is not None:
                store.sidecar = read_sidecar(folder, fingerprint)
            discard_other_frontend_stores(folder, dataset)
            return store.of_source(source)

    def of_source(self, source: DatasetSource) -> "PackedStore":
        """This store with each clip's group as ``source`` finds it now: a store packed before clips of one
        recording were grouped by name (VCTK's ``_mic1`` and ``_mic2``) splits them apart no more, unpacked."""
        group_of = {utterance.key: utterance.group for utterance in source.utterances}
        self.groups = [group_of.get(key, group) for key, group in zip(self.keys, self.groups)]
        return self

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
    """Take the cache lock, saying in one stderr line when another process holds it beyond a moment: packing a large
    dataset takes minutes, and a command waiting for it silently looks hung."""
    said_after = time.monotonic() + LOCK_WAIT_SAID_AFTER_S
    while True:
        try:
            lock_descriptor(fd, wait=False)
            return
        except BlockingIOError:
            if time.monotonic() >= said_after:
                break
            time.sleep(LOCK_POLL_S)
    what = f"{data}'s" if data is not None else "a dataset's"
    print_warning(f"waiting for another voxaug process packing {what} features (lock {lock})")
    lock_descriptor(fd, wait=True)


def dataset_folder(source: DatasetSource, cache_dir: str | Path | None) -> Path:
    """One cache folder per dataset location and kind, so different sources never collide. It holds the store of
    the default front end, the lock of all the dataset's stores, and the stores of other front ends. Named after the
    real folder, as the digest is: through a link of another name, or as ``.``, a dataset keeps its one cache."""
    root = Path(source.root).resolve()
    digest = hashlib.sha1(os.fsencode(f"{root}|{source.name}")).hexdigest()[:16]  # a name's undecodable bytes are kept
    readable = os.fsencode(root.name)[:100].decode(errors="ignore")  # a folder name may be 255 bytes
    return Path(cache_dir or default_cache_dir()) / f"{readable}-{source.name}-{digest}"


def store_folder(source: DatasetSource, cache_dir: str | Path | None) -> Path:
    """The folder of ``source``'s store: the dataset's folder for the default front end (and a source of no front
    end, such as the HW4 layout), else one per front end inside it, so that alternating front ends (training at
    16 and 8 kHz in turn) reuse their stores instead of packing the dataset again at each switch."""
    folder = dataset_folder(source, cache_dir)
    frontend = getattr(source, "frontend", None)
    if frontend is None or frontend.is_default:
        return folder
    settings = json.dumps(frontend.to_dict(), sort_keys=True)
    return folder / FRONTENDS_FOLDER / hashlib.sha1(settings.encode()).hexdigest()[:16]


def mark_opened(folder: Path) -> None:
    """Record that the store in ``folder`` was used now (its index's mtime), so the least recently opened front
    end's store is the one discarded; a cache that cannot be written keeps its times."""
    try:
        os.utime(folder / INDEX_FILE)
    except OSError:
        pass


def discard_other_frontend_stores(folder: Path, dataset: Path) -> None:
    """Remove the stores of other front ends in ``dataset``'s cache folder beyond :data:`OTHER_FRONTEND_STORES`
    besides ``folder``'s, the least recently opened first, and any left without an index (a pack killed midway, or
    a removal that failed, as on Windows while a process maps the features) whatever their number (the caller holds
    the dataset's lock; on Linux a process that maps their features still reads them)."""
    stores = dataset / FRONTENDS_FOLDER
    others = [store for store in (stores.iterdir() if stores.is_dir() else ()) if store != folder and store.is_dir()]
    others.sort(key=last_opened, reverse=True)
    kept = [store for store in others if last_opened(store) >= 0][:OTHER_FRONTEND_STORES - (folder.parent == stores)]
    for store in set(others) - set(kept):
        shutil.rmtree(store, ignore_errors=True)


def last_opened(store: Path) -> int:
    """When the store in ``store`` was last opened (its index's mtime, :func:`mark_opened`); -1 without an index."""
    try:
        return (store / INDEX_FILE).stat().st_mtime_ns
    except OSError:
        return -1


def clip_stamps(utterances: list[Utterance]) -> list[int]:
    """Each clip's file as a 32-bit number of its :func:`~voxaug.data.sources.file_stamp` (as the fingerprint reads
    it), so that a rebuild can say how many clips changed; 0 for a file that cannot be read."""
    stamps = []
    for utterance in utterances:
        try:
            info = utterance.path.stat()
        except OSError:
            stamps.append(0)
            continue
        stamps.append(int.from_bytes(hashlib.blake2b(file_stamp(info).encode(), digest_size=4).digest(), "little"))
    return stamps


def source_frontend(source: DatasetSource) -> dict | None:
    """The front end ``source`` featurises audio with, as its settings; None for a source of features only."""
    frontend = getattr(source, "frontend", None)
    return None if frontend is None else frontend.to_dict()


def store_index(source: DatasetSource, kept: list[Utterance], fingerprint: str, lengths: list[int],
                labels: list[int]) -> dict:
    """The index of a store of ``kept`` clips of ``source``, with what :func:`rebuild_reason` compares later."""
    return {
        "version": STORE_VERSION,
        "fingerprint": fingerprint,
        "n_mels": source.n_mels,
        "frontend": source_frontend(source),
        "speakers": list(source.speakers),
        "keys": [u.key for u in kept],
        "stamps": clip_stamps(kept),
        "groups": [u.group for u in kept],
        "lengths": lengths,
        "labels": labels,
    }


def rebuild_reason(folder: Path, source: DatasetSource, fingerprint: str) -> str | None:
    """What changed since the store in ``folder`` was packed, said when it is packed again: its format version, the
    front end, or the clips (counted); None for a first build or a damaged store, which nothing changed."""
    try:
        index = read_json(folder / INDEX_FILE, "store index")
        earlier = dict(zip(map(clip_stem, index["keys"]), index.get("stamps") or [None] * len(index["keys"])))
    except (VoxaugError, KeyError, TypeError):
        return None
    if index.get("version") != STORE_VERSION:
        return f"its format version changed (from {index.get('version')!r} to {STORE_VERSION})"
    if index.get("fingerprint") == fingerprint:
        return None
    frontend = source_frontend(source)
    if frontend is not None and (index.get("frontend", frontend) != frontend or index.get("n_mels") != source.n_mels):
        return "the front end changed"
    earlier.update((clip_stem(key), None) for key in skipped_keys(folder))
    now = dict(zip((clip_stem(u.key) for u in source.utterances), clip_stamps(source.utterances)))
    changes = [(count, what) for count, what in (
        (len(now.keys() - earlier.keys()), "added"), (len(earlier.keys() - now.keys()), "removed"),
        (sum(1 for key in now.keys() & earlier.keys() if earlier[key] not in (None, now[key])), "changed")) if count]
    if changes:
        said = [f"{counted(changes[0][0], 'clip')} {changes[0][1]}"]
        said += [f"{count} {what}" for count, what in changes[1:]]
        return f"{', '.join(said[:-1])}{' and ' if len(said) > 1 else ''}{said[-1]} since it was packed"
    if frontend is not None and "frontend" not in index:  # packed before the front end was recorded
        return "the clips' files or the front end changed since it was packed"
    return "the dataset's files changed since it was packed"


def skipped_keys(folder: Path) -> list[str]:
    """The clips the audio build left out of the store in ``folder`` (unreadable, empty or silent): clips of the
    dataset all the same, not clips added since; none where the list is missing or damaged."""
    try:
        listed = read_json(folder / SKIPPED_FILE, "skipped-file list")
        return [entry["key"] for entry in listed["skipped"]]
    except (VoxaugError, KeyError, TypeError):
        return []


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
    index = store_index(source, source.utterances, fingerprint, lengths, labels)
    atomic_write_json(folder / INDEX_FILE, index)
    return index
