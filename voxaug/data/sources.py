"""Dataset sources. Each lists its utterances and loads one utterance's features; the packed store
and every command build on that, so a new source only has to implement this interface."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import torch

from voxaug.audio import audio_suffixes, read_audio
from voxaug.clips import (DECODED_AUDIO_SUFFIXES, FEATURE_SUFFIX, deepest_speakers, loose_clips, nested_speakers_warning,
                          one_file_per_clip)
from voxaug.data.validate import check_features, load_feature_file
from voxaug.errors import VoxaugError, file_error, not_a_folder
from voxaug.features import FrontendConfig, log_mel
from voxaug.progress import print_warning
from voxaug.runtime.frontend import unsupported_format
from voxaug.safeio import SYMLINK_LOOP, read_json, resolved_without_loop, unicode_twins, utf8_name


@dataclass(frozen=True)
class Utterance:
    """One utterance: ``key`` as the dataset names it (the CSV Id), its file, speaker and group.

    ``group`` is the recording session (VoxCeleb's video) where known, so a split can keep it whole.
    """

    key: str
    path: Path
    speaker: str | None
    group: str | None = None


CHANNEL_TAG = re.compile(r"(?<=.)[._-](?:mic|ch|channel)\d+$", re.IGNORECASE)
"""A clip name's microphone or channel ending: VCTK's ``p225_001_mic1`` and ``_mic2`` are one recording."""


def recording_group(key: str) -> str | None:
    """The recording that a clip directly in its speaker's folder is one channel of, as its path without the channel
    tag (``p225/p225_001`` for VCTK's ``p225/p225_001_mic1.flac`` and ``_mic2.flac``), so that a split keeps the
    channels on one side; None for a clip of no such tag. The ``/`` sets it apart from a video folder's name."""
    stem = PurePosixPath(key).with_suffix("")
    tag = CHANNEL_TAG.search(stem.name)
    return str(stem.with_name(stem.name[:tag.start()])) if tag else None


def speaker_recording_groups(keys: list[str]) -> list[str | None]:
    """:func:`recording_group` of each clip directly in one speaker's folder, or no group for any of them where a
    recording would have more channels than the folder has recordings: numbered parts such as an audiobook's
    chapters (``book_ch01`` to ``book_ch12``) end like channels but are recordings of their own, and taken for one
    they left the speaker no group small enough to hold out."""
    groups = [recording_group(key) for key in keys]
    channels = Counter(group for group in groups if group is not None)
    recordings = len(channels) + groups.count(None)  # a clip of no channel tag is a recording of its own
    if channels and max(channels.values()) > recordings:
        return [None] * len(keys)
    return groups


class DatasetSource(Protocol):
    root: Path
    name: str
    n_mels: int
    speakers: list[str]
    utterances: list[Utterance]

    def load(self, utterance: Utterance) -> torch.Tensor:
        """Features (frames, n_mels) of one utterance, validated."""

    def fingerprint(self) -> str:
        """Changes whenever a file the source reads changes (sizes, mtimes, inodes and inode change times)."""


def _stat_fingerprint(files: list[tuple[str, Path]], extra: str = "") -> str:
    """A hash of each file's name and stat. Named as the dataset names it (relative to its root), not by the path it
    was reached through: the store folder is already keyed by the resolved root, so ``data/wav`` and
    ``/abs/data/wav`` (or the same folder from another working directory) are one dataset and keep one cache."""
    digest = hashlib.sha1(extra.encode())
    for name, path in files:
        try:
            stat = path.stat()
        except OSError:
            digest.update(f"{name}|missing\n".encode("utf-8", "surrogateescape"))
            continue
        line = f"{name}|{file_stamp(stat)}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))  # a name as a listing's UTF-8 text or a file's bytes
    return digest.hexdigest()


def file_stamp(stat: os.stat_result) -> str:
    """What tells a file's features stale: its size, mtime, inode and inode change time. The inode and its change
    time too: a file replaced or rewritten with the same size and mtime (`cp -p`, `rsync -a`, `touch -r`, a
    re-extracted archive) would otherwise keep its stale features; no tool can set ctime."""
    return f"{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{stat.st_ctime_ns}"


def resolve_inside(root: Path, relative: object, listed_in: Path, field: str = "feature_path",
                   root_resolved: Path | None = None) -> Path:
    """Resolve ``relative`` under ``root``; refuse absolute paths, ``..`` and symlinks that escape it. ``root_resolved``
    is ``root`` resolved once by a caller that resolves a whole listing under it: resolved again for every entry, the
    root cost as much as the file (seconds for the homework's 56,666 clips, in every command that reads them)."""
    if not isinstance(relative, str) or not relative:
        raise file_error(listed_in, f"{field} must be a non-empty string, got {relative!r}")
    if os.path.isabs(relative):
        raise file_error(listed_in, f"{field} {relative!r} is absolute; paths must be relative to the dataset folder")
    try:  # as the locale spells the file's name: the listing is UTF-8 text, and under LC_ALL=C Python names the
        # bytes of "é" in a file name \udcc3\udca9 (a path holding "é" itself cannot even be looked up)
        resolved = resolved_without_loop(root / os.fsdecode(relative.encode("utf-8", "surrogateescape")))
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long
        raise file_error(listed_in, f"{field} {relative!r} is not a usable path ({exc})") from None
    except VoxaugError:  # a symlink loop, in an error naming the joined path, which the listing names already
        raise file_error(listed_in, f"{field} {relative!r} is not a usable path: {SYMLINK_LOOP}") from None
    root_resolved = root_resolved or root.resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise file_error(listed_in, f"{field} {relative!r} points outside the dataset folder {root}")
    return resolved


def file_identity(path: Path) -> tuple[int, int] | Path:
    """A file by device and inode, so a hard link under another name is the same clip; the path where it cannot be
    read (loading it later says why)."""
    try:
        info = path.stat()
    except OSError:
        return path
    return info.st_dev, info.st_ino


def refuse_repeated_clips(utterances: list["Utterance"], listed_in: Path) -> None:
    """One clip listed twice, under its name or a link's, would be two training rows (possibly of two speakers, one
    of them in validation) or two rows of one prediction file."""
    first: dict[tuple[int, int] | Path, Utterance] = {}
    for utterance in utterances:
        earlier = first.setdefault(file_identity(utterance.path), utterance)
        if earlier is not utterance:
            where = f" (under {earlier.speaker!r} and {utterance.speaker!r})" if utterance.speaker else ""
            twice = "listed twice" if earlier.key == utterance.key else f"the same file as {earlier.key!r} through a link"
            raise file_error(listed_in, f"clip {utterance.key!r} is {twice}{where}; each clip may appear once")


def speakers_without_utterances(speakers: list[str], utterances: list[Utterance]) -> list[str]:
    """The ``speakers``, in class order, that no utterance belongs to: mapping.json may list a speaker that
    metadata.json gives no utterances (an empty list, or none), a class that training never shows an example of."""
    heard = {utterance.speaker for utterance in utterances}
    return [speaker for speaker in speakers if speaker not in heard]


def untrained_classes_warning(where: Path, silent: list[str], speakers: int, copies: int = 1) -> str:
    """The one warning line for ``silent`` (:func:`speakers_without_utterances`): counted, the first named.
    ``copies``: the classes each speaker is in training (1 + len(factors) with the ``speed``
    augmentation: one per speed)."""
    one = len(silent) == 1
    classes = ("its class is" if one else "their classes are") if copies == 1 else \
        f"{'its' if one else 'their'} {copies} classes{'' if one else ' each'} (one per speed) are"
    return (f"warning: {where}: {len(silent)} of the {speakers} speakers of mapping.json {'has' if one else 'have'} "
            f"no utterances ({'' if one else 'first '}{silent[0]!r}); {classes} never trained, yet the classifier can "
            f"still answer {'it' if one else 'them'}")


def empty_speaker_folders_warning(root: Path, empty: list[str], folders: int, suffixes: tuple[str, ...]) -> str:
    """The one warning line for the speaker folders of a clip-folder dataset that hold no clips (only .m4a files,
    as VoxCeleb2 ships them, or none): counted, the first named."""
    one = len(empty) == 1
    return (f"warning: {root}: {len(empty)} of the {folders} speaker folders {'holds' if one else 'hold'} no clips "
            f"({'' if one else 'first '}{empty[0]!r}), so {'it is' if one else 'they are'} left out (clips are "
            f"{', '.join(suffixes)})")


def _feature_path(entry: object, listed_in: Path, where: str) -> object:
    """An HW4 utterance entry's ``feature_path`` (checked by :func:`resolve_inside`), or an error naming the entry."""
    if not isinstance(entry, dict):
        raise file_error(listed_in, f"{where}: expected an object with a 'feature_path', got {entry!r:.60}")
    if "feature_path" not in entry:
        raise file_error(listed_in, f"{where}: no 'feature_path' (keys: {sorted(entry)})")
    return entry["feature_path"]


def _id_gap(speaker2id: dict[str, int]) -> str:
    """Why ``speaker2id``'s ids are not 0..N-1 each once: the first id no speaker has, and the speakers that took
    its place (two sharing an id, or one with an id out of the range)."""
    count = len(speaker2id)
    missing = min(set(range(count)) - set(speaker2id.values()))
    owners: dict[int, list[str]] = {}
    for speaker, index in speaker2id.items():
        owners.setdefault(index, []).append(speaker)
    shared = next((names for names in owners.values() if len(names) > 1), None)
    if shared:
        why = f"{shared[0]!r} and {shared[1]!r} share the id {speaker2id[shared[0]]}"
    else:
        stray = next(speaker for speaker, index in speaker2id.items() if not 0 <= index < count)
        why = f"{stray!r} has the id {speaker2id[stray]}"
    return (f"'speaker2id' must give its speakers the ids 0..{count - 1}, each once; no speaker has the id {missing} "
            f"({why})")


class HW4Source:
    """The homework layout: mapping.json, metadata.json (or testdata.json) and uttr-*.pt tensors."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in ("train", "test"):
            raise VoxaugError(f"HW4 split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.name = f"hw4-{split}"
        mapping_path = self.root / "mapping.json"
        mapping = read_json(mapping_path, "mapping.json")
        speaker2id = mapping.get("speaker2id") if isinstance(mapping, dict) else None
        if not isinstance(speaker2id, dict) or not speaker2id:
            raise file_error(mapping_path, "expected an object with a non-empty 'speaker2id' table")
        for speaker, index in speaker2id.items():  # a bool is an int to Python: JSON's true would be id 1
            if isinstance(index, bool) or not isinstance(index, int):
                raise file_error(mapping_path, f"'speaker2id' gives {speaker!r} the id {json.dumps(index)}; ids are "
                                               "whole numbers 0..N-1")
        ids = sorted(speaker2id.values())
        if ids != list(range(len(speaker2id))):
            raise file_error(mapping_path, _id_gap(speaker2id))
        self.speakers = [""] * len(speaker2id)
        for speaker, index in speaker2id.items():
            self.speakers[index] = speaker
        self.index_files = [mapping_path]
        if split == "train":
            self.utterances, self.n_mels = self._read_metadata(speaker2id)
        else:
            self.utterances, self.n_mels = self._read_testdata()

    def _read_n_mels(self, table: dict, path: Path) -> int:
        n_mels = table.get("n_mels")
        if not isinstance(n_mels, int) or isinstance(n_mels, bool) or n_mels <= 0:
            raise file_error(path, f"'n_mels' must be a positive integer, got {n_mels!r}")
        return n_mels

    def _read_metadata(self, speaker2id: dict) -> tuple[list[Utterance], int]:
        path = self.root / "metadata.json"
        self.index_files.append(path)
        metadata = read_json(path, "metadata.json")
        if not isinstance(metadata, dict) or not isinstance(metadata.get("speakers"), dict):
            raise file_error(path, "expected an object with 'n_mels' and a 'speakers' table")
        n_mels = self._read_n_mels(metadata, path)
        inside = resolved_without_loop(self.root, "dataset folder")
        utterances = []
        for speaker, entries in metadata["speakers"].items():
            if speaker not in speaker2id:
                raise file_error(path, f"speaker {speaker!r} is not in mapping.json")
            if not isinstance(entries, list):
                raise file_error(path, f"speaker {speaker!r}: expected a list of utterances")
            for position, entry in enumerate(entries, start=1):
                where = f"speaker {speaker!r}, utterance {position} of {len(entries)}"
                feature_path = _feature_path(entry, path, where)
                resolved = resolve_inside(self.root, feature_path, path, f"{where}: feature_path", inside)
                utterances.append(Utterance(feature_path, resolved, speaker))
        refuse_repeated_clips(utterances, path)
        if not utterances:
            raise file_error(path, "lists no utterances")
        return utterances, n_mels

    def _read_testdata(self) -> tuple[list[Utterance], int]:
        path = self.root / "testdata.json"
        self.index_files.append(path)
        testdata = read_json(path, "testdata.json")
        if not isinstance(testdata, dict) or not isinstance(testdata.get("utterances"), list):
            raise file_error(path, "expected an object with 'n_mels' and an 'utterances' list")
        n_mels = self._read_n_mels(testdata, path)
        inside = resolved_without_loop(self.root, "dataset folder")
        utterances = []
        for position, entry in enumerate(testdata["utterances"], start=1):
            where = f"utterance {position} of {len(testdata['utterances'])}"
            feature_path = _feature_path(entry, path, where)
            utterances.append(Utterance(feature_path, resolve_inside(self.root, feature_path, path,
                                                                     f"{where}: feature_path", inside), None))
        refuse_repeated_clips(utterances, path)
        if not utterances:
            raise file_error(path, "lists no utterances")
        return utterances, n_mels

    def load(self, utterance: Utterance) -> torch.Tensor:
        return load_feature_file(utterance.path, self.n_mels, n_mels_from=self.index_files[-1])

    def training_utterances(self) -> list[Utterance]:
        """metadata.json's utterances, which the test split does not read but are the dataset's all the same;
        none where metadata.json is missing or unreadable (the test split does not need it)."""
        if self.split == "train":
            return self.utterances
        try:
            return HW4Source(self.root, "train").utterances
        except VoxaugError:
            return []

    def fingerprint(self) -> str:
        return _stat_fingerprint([(path.name, path) for path in self.index_files]
                                 + [(u.key, u.path) for u in self.utterances], self.name)


class ClipFolderSource:
    """``ROOT/<speaker>/**/*.{pt,wav,flac,mp3,ogg,...}``: feature tensors or audio, featurised by ``frontend``.

    The speaker is the first folder level and the group (video) the second, as in VoxCeleb; a clip directly in the
    speaker's folder is grouped with the other channels of its recording (:func:`speaker_recording_groups`). Of a clip's
    `.pt` and audio twins the audio is read with ``prefer_audio`` (for the ``wave`` augmentation) or a front end other
    than the default one, which made the `.pt`.
    """

    def __init__(self, root: str | Path, frontend: FrontendConfig = FrontendConfig(), prefer_audio: bool = False,
                 warn: bool = True) -> None:
        """``warn``: say on stderr which speaker folders hold no clips and are left out, and which hold every clip
        three or more folders down (false where the folder was read before, or on all but one of torchrun's
        processes, so that it is said once)."""
        self.root = Path(root)
        self.frontend = frontend
        self.n_mels = frontend.n_mels
        self.name = "folder"
        if not self.root.is_dir():
            raise file_error(self.root, f"dataset {not_a_folder(self.root)}")
        suffixes = (FEATURE_SUFFIX,) + audio_suffixes()
        # left out, they would be missing without a word (enroll --speakers-dir refuses them too)
        stray = loose_clips(self.root, suffixes)
        if stray:
            raise file_error(self.root, f"holds clips of no speaker ({', '.join(stray[:3])}"
                                        f"{f' and {len(stray) - 3} more' if len(stray) > 3 else ''}); clips go in "
                                        "ROOT/<speaker>/")
        utterances = []
        first_seen: dict[tuple[int, int], Path] = {}  # a clip's file by device and inode: a link can list it twice
        speaker_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        empty = []  # an empty folder is no speaker, but not without a word (enroll --speakers-dir refuses it)
        for speaker_dir in speaker_dirs:
            speaker = utf8_name(speaker_dir.name)
            clips = one_file_per_clip(speaker_dir, suffixes, audio_first=prefer_audio or not frontend.is_default)
            if not clips:
                empty.append(speaker)
            for path in clips:
                info = path.stat()
                earlier = first_seen.setdefault((info.st_dev, info.st_ino), path)
                if earlier != path:
                    raise file_error(path, f"the same file as {earlier} (through a link); a clip belongs to one "
                                           "speaker, once")
            utterances += speaker_utterances(self.root, speaker, clips)
        if not utterances:
            raise file_error(self.root, f"no clips found: expected ROOT/<speaker>/**/*{{{','.join(suffixes)}}}")
        self.utterances = utterances
        self.speakers = sorted({u.speaker for u in utterances})
        refuse_unicode_twins(self.root, self.speakers)
        if empty and warn:
            print_warning(empty_speaker_folders_warning(self.root, empty, len(speaker_dirs), suffixes))
        nested = deepest_speakers([(u.speaker, u.key) for u in utterances])
        if nested and warn:
            print_warning(nested_speakers_warning(self.root, nested, len(self.speakers)))

    def load(self, utterance: Utterance) -> torch.Tensor:
        return load_clip(utterance.path, self.frontend)

    def fingerprint(self) -> str:
        """Of the clips, the front end and, where a clip is of a format libsndfile may lack, the audio formats read: a
        store packed while libsndfile lacked MP3 (or before .mp3 was read) skipped the .mp3 clips, and is not reused
        once they can be read; a WAV or FLAC corpus keeps the store it was packed into before then."""
        extra = f"{self.name}|{self.frontend}"
        if any(u.path.suffix.lower() in DECODED_AUDIO_SUFFIXES for u in self.utterances):
            extra += f"|{','.join(audio_suffixes())}"
        return _stat_fingerprint([(u.key, u.path) for u in self.utterances], extra)


def speaker_utterances(root: Path, speaker: str, clips: list[Path]) -> list[Utterance]:
    """One speaker's clips under ``root``, each grouped by its video folder (the second level, as in VoxCeleb) or,
    directly in the speaker's folder, by the recording it is one channel of (:func:`speaker_recording_groups`)."""
    keys = [path.relative_to(root).as_posix() for path in clips]
    direct = [key for key in keys if key.count("/") == 1]
    recording = dict(zip(direct, speaker_recording_groups(direct)))
    return [Utterance(key, path, speaker, recording[key] if key in recording else key.split("/")[1])
            for key, path in zip(keys, clips)]


def refuse_unicode_twins(root: Path, speakers: list[str]) -> None:
    """Two speaker folders whose names differ only in Unicode normalisation (é as one code point, or e and a
    combining accent, as macOS writes folder names) print alike in every output and are one name to enroll, remove
    and evaluate: refused, rather than trained and indexed as two speakers no one can tell apart."""
    twins = unicode_twins(speakers)
    if twins:
        raise file_error(root, f"speaker folders {', '.join(map(ascii, twins))} are one name in different Unicode "
                               "spellings (one of them made on macOS?); merge them into one folder")


def load_clip(path: str | Path, frontend: FrontendConfig) -> torch.Tensor:
    """A clip as features: a `.pt` tensor is validated, an audio file is read and featurised."""
    path = Path(path)
    if path.suffix.lower() in audio_suffixes():
        waveform = read_audio(path, frontend.sample_rate)
        if waveform.numel() <= frontend.n_fft // 2:
            raise file_error(path, f"audio is {waveform.numel()} samples long; more than {frontend.n_fft // 2} "
                                   f"({1000 * (frontend.n_fft // 2 + 1) / frontend.sample_rate:.0f} ms) are needed")
        return check_features(log_mel(waveform, frontend), path, frontend.n_mels)
    if path.suffix.lower() == FEATURE_SUFFIX:
        return load_feature_file(path, frontend.n_mels)
    raise file_error(path, unsupported_format(path, "clip type", (FEATURE_SUFFIX,) + audio_suffixes()))


def refuse_features_for(frontend: FrontendConfig, source: DatasetSource) -> None:
    """Refuse a dataset with `.pt` clips (that have no audio twin) for a model trained from audio with front-end
    settings other than the defaults, which made those features: it would run, and answer wrongly."""
    features = [u.path for u in source.utterances if u.path.suffix.lower() == FEATURE_SUFFIX]
    if features:
        frontend.refuse_feature_file(features[0] if len(features) == 1
                                     else f"{features[0]} (and {len(features) - 1} more .pt clips)")


def open_source_for_model(path: str | Path, frontend: FrontendConfig, split: str = "train",
                          warn: bool = True) -> DatasetSource:
    """:func:`open_source` for a trained model's inference (not its training, which refuses such data itself)."""
    source = open_source(path, frontend, split, warn=warn)
    refuse_features_for(frontend, source)
    return source


def open_source(path: str | Path, frontend: FrontendConfig | None = None, split: str = "train",
                prefer_audio: bool = False, warn: bool = True) -> DatasetSource:
    """Pick the source for ``path``: the HW4 layout when it has mapping.json, else a clip folder (``warn``: see
    :class:`ClipFolderSource`).

    ``frontend`` is the checkpoint's when there is one; an HW4 set must then have the same n_mels.
    """
    path = Path(path)
    if not path.exists():
        raise file_error(path, "dataset not found")
    if not path.is_dir():
        raise file_error(path, "expected a dataset folder (HW4 layout or <speaker>/ clip folders)")
    if (path / "mapping.json").exists():
        source = HW4Source(path, split)
        if frontend is not None and source.n_mels != frontend.n_mels:
            raise file_error(path / ("metadata.json" if split == "train" else "testdata.json"),
                             f"n_mels is {source.n_mels}, but the front end has {frontend.n_mels} (the model's, or "
                             "training's --n-mels or [frontend] n_mels)")
        return source
    for listing in ("metadata.json", "testdata.json"):
        if (path / listing).exists():
            raise file_error(path / "mapping.json", f"not found, but {listing} is there: the HW4 layout needs "
                                                    "mapping.json for its speaker ids")
    refuse_hw4_folder_inside(path)
    return ClipFolderSource(path, frontend or FrontendConfig(), prefer_audio, warn)


def refuse_hw4_folder_inside(path: Path) -> None:
    """Refuse the folder around the homework's folder (the sample code's ``Dataset/``): read as clip folders,
    ``Dataset`` would be one speaker of every train and test clip, and predict's rows would be all of them, named
    ``Dataset/uttr-….pt``, Ids the competition does not know."""
    try:
        nested = sorted(child for child in path.iterdir()
                        if not child.name.startswith(".") and (child / "mapping.json").is_file())
    except OSError:  # an unlistable folder or speaker folder: the clip-folder reader says which
        return
    if nested:
        raise file_error(path, f"no mapping.json here, but {nested[0]} has one: give that HW4 folder as DATA")
