"""Train/validation split: stratified by speaker, seeded, keeping recording groups whole when possible."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import PurePosixPath
from typing import NamedTuple

import numpy as np

from voxaug.errors import VoxaugError, counted


def speaker_codes(names: np.ndarray | list[str], speaker_order: list[str] | None = None) -> np.ndarray:
    """Each utterance's speaker as its number in ``speaker_order``: the dataset's speakers in the order training
    numbered them (``mapping.json``'s ids), which the split's seeded draws follow, so that the same seed gives
    the same split from names as from the store's labels. Sorted names where no order is given."""
    names = np.asarray(names)
    order = sorted(set(names.tolist())) if speaker_order is None else list(speaker_order)
    number = {name: code for code, name in enumerate(order)}
    unknown = sorted(set(names.tolist()) - set(number))
    if unknown:
        raise VoxaugError(f"speakers {unknown[:5]} are not among the dataset's speakers")
    return np.array([number[name] for name in names.tolist()], dtype=np.int64)


SPLIT_VERSION = 3
"""How whole recording groups are chosen. 1 (runs saved before 2026-11-28) moved shuffled groups until the
target was reached, however far the last one overshot it (19 of a speaker's 20 clips, when a 19-clip video
came first), and split clips one by one when some had no group; 2 takes groups only while they fit; 3 also keeps
the channels of one recording together where no video folder does (VCTK's ``_mic1`` and ``_mic2`` clips, see
``voxaug.data.sources.recording_group``). A run records its version, so its split can be rebuilt exactly."""
SPLIT_VERSIONS = (1, 2, 3)


def channel_recording(group: str | None) -> str | None:
    """The recording a clip is one channel of, found by its name (a group holding ``/``, which a video folder's name
    cannot); None for a video folder's clip or one of no group."""
    return group if group is not None and "/" in group else None


def groups_of_version(groups: list[str | None] | None, version: int) -> list[str | None] | None:
    """``groups`` as split ``version`` knew them: before 3, a clip's recording found by its name
    (:func:`channel_recording`) was no group."""
    if groups is None or version >= 3:
        return groups
    return [None if channel_recording(group) is not None else group for group in groups]


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    groups: list[str | None] | None = None,
    version: int = SPLIT_VERSION,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): about ``val_fraction`` of each speaker's utterances go to validation.

    Where a speaker has several groups (videos), whole groups are moved so that clips sharing a
    channel never sit on both sides (a clip without a group is a group of its own). A speaker with a
    single utterance, or a single group, is split clip by clip; one with a single utterance stays in
    training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise VoxaugError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if version not in SPLIT_VERSIONS:
        raise VoxaugError(f"split version {version!r} is not known; accepted: {', '.join(map(str, SPLIT_VERSIONS))}")
    rng = np.random.default_rng(seed)
    groups = groups_of_version(groups, version)
    by_speaker: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels.tolist()):
        by_speaker[label].append(index)
    choose = _choose_val if version >= 2 else _choose_val_version1
    train, val = [], []
    for label in sorted(by_speaker):
        members = by_speaker[label]
        want = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            want = min(max(want, 1), len(members) - 1)
        chosen = choose(members, want, rng, groups)
        val.extend(chosen)
        train.extend(i for i in members if i not in chosen)
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def _choose_val(members: list[int], want: int, rng: np.random.Generator, groups: list[str | None] | None) -> set[int]:
    """Whole groups, in a seeded order, while they fit within ``want`` clips; where none fits, the smallest
    one if it is at most twice ``want``, else none (the speaker then has no validation clips)."""
    if want == 0:
        return set()
    by_group: dict[object, list[int]] = defaultdict(list)
    for index in members:
        group = groups[index] if groups else None
        by_group[("group", group) if group is not None else ("clip", index)].append(index)
    if len(by_group) == 1 or not groups or all(groups[index] is None for index in members):
        return {members[i] for i in rng.permutation(len(members))[:want].tolist()}  # as version 1 does
    keys = sorted(by_group, key=str)
    order = [keys[i] for i in rng.permutation(len(keys)).tolist()]
    chosen: set[int] = set()
    for key in order:
        if len(chosen) + len(by_group[key]) <= want:
            chosen.update(by_group[key])
    if not chosen:
        smallest = min(order, key=lambda key: len(by_group[key]))
        if len(by_group[smallest]) <= 2 * want:
            chosen.update(by_group[smallest])
    return chosen


def _choose_val_version1(members: list[int], want: int, rng: np.random.Generator,
                         groups: list[str | None] | None) -> set[int]:
    """Version 1, kept so that a run saved before version 2 is evaluated and embedded on its own split."""
    if want == 0:
        return set()
    by_group: dict[str | None, list[int]] = defaultdict(list)
    for index in members:
        by_group[groups[index] if groups else None].append(index)
    if len(by_group) > 1 and None not in by_group:
        chosen: set[int] = set()
        order = rng.permutation(sorted(by_group, key=str))
        for group in order[:-1]:
            if len(chosen) >= want:
                break
            chosen.update(by_group[group])
        return chosen
    return {members[i] for i in rng.permutation(len(members))[:want].tolist()}


def speakers_without_validation(labels: np.ndarray, val: np.ndarray) -> list[int]:
    """The speakers (labels) with utterances but none in validation ``val``: a single utterance, or no recording group
    small enough to hold out. Validation accuracy says nothing about them."""
    return sorted(set(labels.tolist()) - set(np.asarray(labels)[val].tolist()))


def unvalidated_speakers_warning(unvalidated: list[str], speakers: int) -> str:
    """The one warning line for :func:`speakers_without_validation`: counted, the first named."""
    why = "a single utterance, or no recording small enough to hold out"
    if len(unvalidated) == speakers:
        return (f"warning: none of the {speakers} speakers has a validation utterance ({why}): there is no validation "
                "accuracy, and best.pt follows the latest model, as with --val-fraction 0")
    one = len(unvalidated) == 1
    return (f"warning: {len(unvalidated)} of the {speakers} speakers {'has' if one else 'have'} no validation utterance "
            f"({'' if one else 'first '}{unvalidated[0]!r}: {why}); validation accuracy leaves "
            f"{'it' if one else 'them'} out")


def clip_digests(keys: list[str]) -> np.ndarray:
    """Each clip key as a 64-bit number, its suffix left out: a run trained from ``x.wav`` while ``x.pt`` exists is
    embedded from ``x.pt``, the same clip (a folder lists one file per stem)."""
    return np.array([int.from_bytes(hashlib.blake2b(clip_stem(key).encode("utf-8", "surrogateescape"),
                                                    digest_size=8).digest(), "little", signed=True) for key in keys],
                    dtype=np.int64)


def clip_stem(key: str) -> str:
    """A clip's key without its suffix, which names the clip whichever of its files (``x.pt``, ``x.wav``) is read."""
    return str(PurePosixPath(key).with_suffix("")) if PurePosixPath(key).suffix else key


def split_record(keys: list[str], train: np.ndarray, val: np.ndarray) -> dict[str, np.ndarray]:
    """What a run keeps of its split: the digests of its training and of its validation clips, so that embed and
    evaluate find the very clips it held out in a dataset that has changed since."""
    digests = clip_digests(keys)
    return {"train": digests[train], "val": digests[val]}


class RecordedSplit(NamedTuple):
    """A run's split found in the dataset as it is now: the rows it trained on and held out (a clip added since is
    in neither), and how many clips were added and removed since training."""

    train: np.ndarray
    val: np.ndarray
    added: int
    removed: int
    recorded_val: int


def recorded_split(keys: list[str], record: dict[str, np.ndarray]) -> RecordedSplit:
    """The rows of ``keys`` that :func:`split_record` recorded as training and as validation clips."""
    digests = clip_digests(keys)
    train = np.flatnonzero(np.isin(digests, record["train"]))
    val = np.flatnonzero(np.isin(digests, record["val"]))
    found = len(train) + len(val)
    return RecordedSplit(train, val, len(keys) - found, len(record["train"]) + len(record["val"]) - found,
                         len(record["val"]))


def changed_clips_warning(data: object, split: RecordedSplit, outcome: str) -> str:
    """The one warning line when the dataset's clips changed since training: counted, then what the command does."""
    changes = [f"{counted(count, 'clip')} {what}"
               for count, what in ((split.added, "added"), (split.removed, "removed")) if count]
    return f"warning: {data}: {' and '.join(changes)} since training; {outcome}"


def changed_count_warning(data: object, now: int, trained: int) -> str:
    """The one warning line for a run that keeps only its clip count (saved before runs recorded their split's
    clips), when the dataset now holds another number of clips."""
    return (f"warning: {data}: holds {counted(now, 'clip')}, the run trained on {trained}: its split is rebuilt from "
            "the clips there now (the run does not record which it held out), so it may not be the split the run "
            "trained with")
