"""``SpeakerIndex``: a FAISS speaker index file with the model that made its embeddings; enrol, remove, identify.

It wraps :class:`voxaug.embeddings.index.SpeakerIndex` (the vectors and sidecar, here ``IndexData``). Every change
is made under the index's lock on a fresh read of the file, then written atomically, as ``voxaug enroll`` does.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from voxaug.api.inputs import (ClipInput, all_clip_files, clip_digest, clip_list, enrolled_twin_digest,
                                path_argument, refuse_unused_sample_rate)
from voxaug.api.model import SpeakerModel
from voxaug.embeddings.backend import SCORE_NORMS, check_choice, check_top_k
from voxaug.embeddings.identify import (UNKNOWN, Identification, check_model, check_speaker_name, check_threshold,
                                        same_weights)
from voxaug.embeddings.index import SpeakerIndex as IndexData
from voxaug.embeddings.index import (check_index_writable, check_lock_timeout, check_search_top_k, index_lock,
                                     model_places, sha256_or_none, sidecar_path)
from voxaug.errors import VoxaugError, file_error
from voxaug.progress import progress_bar
from voxaug.safeio import resolved_without_loop, unicode_twins

ModelInput = SpeakerModel | str | Path | None


def sidecar_model(data: IndexData, index_path: Path, device: str, threads: int | None) -> SpeakerModel:
    """The model the index's sidecar names (a checkpoint or an ONNX export), found where the sidecar records it or,
    the index having been moved, where it lies relative to the index (:func:`model_places`): the first file of the
    recorded weights (an unreadable one passed over, as the load says what is wrong with it), else the first file
    there (which :func:`check_model` then refuses by its hash)."""
    places = [place for place in model_places(data.checkpoint, index_path) if place.is_file()]
    if not places:
        raise file_error(Path(data.checkpoint.get("path", "")),
                         f"model not found (the sidecar {sidecar_path(index_path)} names it, and it is neither beside "
                         "the index nor where it lay relative to it; pass --model or --ckpt to point elsewhere)")
    own = places[0] if len(places) == 1 else next(
        (place for place in places if same_weights(data.checkpoint, sha256_or_none(place) or "")), places[0])
    return SpeakerModel.load(own, device, threads)


def runs_on(model: SpeakerModel, device: str) -> bool:
    """Whether ``device`` names where ``model`` already runs (an ONNX export: ONNX Runtime's CPU), so that saying
    it again, as ``device="cpu"`` (the old default) beside a model loaded on the CPU, is no contradiction."""
    if model.kind == "onnx":
        return device in ("auto", "cpu")
    from voxaug.device import resolve_device  # torch: a checkpoint's engine has loaded it already

    try:
        return resolve_device(device) == model.engine.device
    except VoxaugError:  # an unknown device, or CUDA where there is none: not where the model runs
        return False


def loaded_model(model: SpeakerModel | str | Path, device: str | None, threads: int | None) -> SpeakerModel:
    """``model`` loaded from its path on ``device`` (default cpu); a SpeakerModel given already runs as it was
    loaded, so a ``device`` other than its own, or ``threads``, beside it are refused rather than silently ignored."""
    if not isinstance(model, SpeakerModel):
        return SpeakerModel.load(model, "cpu" if device is None else device, threads)
    if device is not None and runs_on(model, device):
        device = None
    given = ", ".join(f"{name}={value!r}" for name, value in (("device", device), ("threads", threads))
                      if value is not None)
    if given:
        raise VoxaugError(f"{given}: a SpeakerModel runs as it was loaded; pass these to SpeakerModel.load instead")
    return model


def clip_name(speaker: str, clips: list[ClipInput], position: int) -> str:
    """A clip as errors name it: its path, or ``<speaker> clip <position>`` for an array (as embedding errors do)."""
    clip = clips[position]
    return os.fsdecode(clip) if isinstance(clip, (str, os.PathLike)) else f"{speaker} clip {position}"


def refuse_repeated_clips(name: str, clips: list[ClipInput]) -> None:
    """One clip given twice (the same file, or its `.pt` and audio twins) would count twice in the speaker's mean
    and clip count, which PLDA scores by."""
    from voxaug.clips import FEATURE_SUFFIX
    from voxaug.runtime.frontend import audio_suffixes

    seen: dict[Path, Path] = {}
    for clip in clips:
        if not isinstance(clip, (str, os.PathLike)):
            continue
        path = Path(os.fsdecode(clip))  # a path object of bytes too, as to_clip reads it
        resolved = resolved_without_loop(path, "clip")
        key = resolved.with_suffix("") if path.suffix.lower() in (FEATURE_SUFFIX,) + audio_suffixes() else resolved
        if key in seen:
            raise VoxaugError(f"{name}: clip {path} is given twice (also as {seen[key]}); each clip counts once in "
                              "the speaker's mean and clip count (nothing was written)")
        seen[key] = path


def check_flag(value: object, name: str) -> bool:
    """A yes/no option as a bool: any other value (``"no"`` is truthy) would silently turn the option on."""
    if not isinstance(value, (bool, np.bool_)):
        raise VoxaugError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def remove_speaker(path: Path, name: str, lock_timeout: float = 60.0,
                   read: Callable[[], IndexData] | None = None,
                   saved: Callable[[IndexData], None] | None = None) -> IndexData:
    """Take ``name`` out of the index at ``path`` under its lock (no model needed: nothing is embedded) and
    return the index as written; ``read`` rereads it under the lock (default: load the file as it is), and
    ``saved`` is given it once written, still under the lock, so that writes are seen in the order they were made."""
    if not path.exists() and not sidecar_path(path).exists():  # before the lock makes its folder
        raise file_error(path, "speaker index not found; nothing to remove")
    with index_lock(path, lock_timeout):
        data = read() if read is not None else IndexData.load(path)
        try:
            data.remove(data.spellings([name])[name])
        except VoxaugError as exc:
            raise file_error(path, str(exc)) from None
        data.save(path)
        if saved is not None:
            saved(data)
    return data


class SpeakerIndex:
    """Enrolled speakers and the model to embed clips with. Open an index with :meth:`open`, start one with
    :meth:`create`; ``identify`` returns the same records as ``voxaug identify --json``."""

    def __init__(self, path: Path, data: IndexData, model: SpeakerModel, score_norm: str | None = None,
                 cohort_top_k: int | None = None, threshold: float | None = None) -> None:
        self.path = path
        self.data = data
        self.model = model
        self.threshold_option = self.check_options(path, data, score_norm, cohort_top_k, threshold)
        self.score_norm = score_norm
        self.cohort_top_k = cohort_top_k
        self.skipped: dict[str, int] = {}
        """How many clips of each speaker the last enrolment skipped, already enrolled (``append``)."""
        self.creating = False
        """Made by :meth:`create`: the index it finds under the lock, written meanwhile by another process, must have
        the shape (``per``, ``hnsw``) it was asked to create."""
        self._outdated: tuple[IndexData | None, bool] = (None, False)

    @staticmethod
    def check_options(path: Path, data: IndexData, score_norm: str | None, cohort_top_k: int | None,
                      threshold: float | None) -> float | None:
        """Refuse scoring options the index cannot take (here, not at the first identify); they need the index
        alone, so :meth:`from_data` checks them before loading the model, which takes seconds. Returns the threshold
        as a float."""
        if score_norm is not None:
            check_choice("--score-norm", score_norm, SCORE_NORMS)
        threshold = check_threshold(threshold, data.score_name(score_norm or data.score_norm))
        if cohort_top_k is not None:
            check_top_k(cohort_top_k)
            if (score_norm or data.score_norm) != "asnorm":  # else it would be silently ignored
                raise file_error(path, f"--cohort-top-k {cohort_top_k} sets AS-norm's cohort, and this index scores "
                                       f"{data.score_name(score_norm or data.score_norm)}; add --score-norm asnorm")
        if score_norm == "asnorm":
            SpeakerIndex._check_asnorm(path, data)
        return threshold

    @classmethod
    def open(cls, path: str | Path, model: ModelInput = None, device: str | None = None, threads: int | None = None,
             score_norm: str | None = None, cohort_top_k: int | None = None,
             threshold: float | None = None) -> "SpeakerIndex":
        """An existing index; ``model`` defaults to the one its sidecar names, and another model is refused.
        ``score_norm``, ``cohort_top_k`` and ``threshold`` override what the sidecar holds; ``device`` (default cpu)
        and ``threads`` are for a model loaded here, from the sidecar or a path."""
        path = path_argument(path, "a speaker index file", "path")
        return cls.from_data(path, IndexData.load(path), model, device, threads, score_norm, cohort_top_k, threshold)

    @classmethod
    def from_data(cls, path: Path, data: IndexData, model: ModelInput = None, device: str | None = None,
                  threads: int | None = None, score_norm: str | None = None, cohort_top_k: int | None = None,
                  threshold: float | None = None) -> "SpeakerIndex":
        """:meth:`open` for an index already read (``IndexData.load(path)``): a command checks its other arguments
        between reading the index and loading the model, which takes seconds."""
        cls.check_options(path, data, score_norm, cohort_top_k, threshold)
        if model is None:
            model = sidecar_model(data, path, "cpu" if device is None else device, threads)
        else:
            model = loaded_model(model, device, threads)
        check_model(data, path, model.path, model.sha256, model.embedding_dim, model.source_sha256)
        return cls(path, data, model, score_norm, cohort_top_k, threshold)

    @classmethod
    def create(cls, path: str | Path, model: SpeakerModel | str | Path, per: str = "speaker", hnsw: bool = False,
               device: str | None = None) -> "SpeakerIndex":
        """A new, empty index for ``model``'s embeddings; the file is written by the first :meth:`enroll`. A path that
        is a symlink loop is refused, as ``voxaug enroll`` refuses it: the first write would replace the link."""
        path, hnsw = path_argument(path, "a speaker index file", "path"), check_flag(hnsw, "hnsw")
        resolved_without_loop(path, "speaker index")
        if path.exists() or sidecar_path(path).exists():
            raise file_error(path, "index already exists; open it instead of creating it")
        model = loaded_model(model, device, None)
        data = IndexData(dim=model.embedding_dim, mode=per, hnsw=hnsw, checkpoint=model.record(), frontend=model.frontend)
        created = cls(path, data, model)
        created.creating = True
        return created

    @property
    def speakers(self) -> list[str]:
        return self.data.speakers

    def enroll(self, name: str, clips: ClipInput | Iterable[ClipInput], append: bool = False, lock_timeout: float = 60.0,
               sample_rate: int | None = None) -> int:
        """Add ``name`` from clips (paths, feature arrays, or waveforms at ``sample_rate``); ``append`` adds clips
        to an enrolled speaker. Returns how many clips the speaker now has."""
        if not isinstance(name, str):  # a list would be a bare "unhashable type" TypeError as a dict key
            check_speaker_name(name)
        return self.enroll_many({name: clip_list(clips)}, append, lock_timeout, sample_rate=sample_rate)[name]

    def enroll_many(self, speakers: dict[str, ClipInput | list[ClipInput]], append: bool = False, lock_timeout: float = 60.0,
                    progress: bool = False, sample_rate: int | None = None) -> dict[str, int]:
        """Add every speaker in ``speakers`` (name -> clips) under one lock with one atomic write: all or none.
        A speaker already enrolled is refused, before any clip is embedded, unless ``append``; with ``append``,
        clips the speaker was already enrolled from (the same content, by ``enroll``) are skipped, not counted
        twice. Arrays are waveforms at ``sample_rate`` when it is given, else log-mel features.
        Returns how many clips each speaker now has."""
        check_lock_timeout(lock_timeout)  # before minutes of embedding, not after
        check_index_writable(self.path, "enroll")
        append, progress = check_flag(append, "append"), check_flag(progress, "progress")
        if not isinstance(speakers, Mapping):
            raise VoxaugError(f"speakers: expected a mapping of speaker name to clips (a dict), got "
                              f"{type(speakers).__name__}")
        given = {name: clip_list(clips) for name, clips in speakers.items()}
        refuse_unused_sample_rate([clip for clips in given.values() for clip in clips], sample_rate)
        spelled = self.data.spellings(given)
        twins = unicode_twins(given)
        if twins:
            raise VoxaugError(f"speakers {', '.join(map(ascii, twins))} are one name in different Unicode spellings; "
                              "give each speaker once (nothing was written)")
        speakers = {spelled[name]: clips for name, clips in given.items()}
        self._refuse_enrolled(self.data, speakers, append)
        own, digests = {}, {}
        recorded = self.data.clip_owners()
        for name, clips in speakers.items():
            if name not in self.data.counts:  # a speaker enrolled before a rule was added can still take clips
                check_speaker_name(name)
            if not clips:
                raise VoxaugError(f"{name}: no enrolment clips given")
            refuse_repeated_clips(name, clips)
            own[name] = [clip_digest(clip, sample_rate, f"{name} clip {i}") for i, clip in enumerate(clips)]
            digests[name] = [enrolled_twin_digest(clip, own[name][i], recorded) for i, clip in enumerate(clips)]
        self._refuse_same_content(speakers, digests)
        self._refuse_other_speakers_clips(self.data, speakers, digests)
        new = {name: self.data.new_clips(name, digests[name]) for name in speakers}  # as this object last read it
        to_embed = progress_bar([name for name in speakers if new[name]], enabled=progress,
                                desc=f"enrol {self.path.name}", unit="speaker", leave=False)
        rows = {name: self._embed(name, speakers[name], new[name], sample_rate) for name in to_embed}
        with index_lock(self.path, lock_timeout):
            data = self._reread()
            if self.creating and (data.mode, data.hnsw) != (self.data.mode, self.data.hnsw):
                raise file_error(self.path, f"another process created this index meanwhile, per {data.mode} with "
                                            f"{'HNSW' if data.hnsw else 'exact'} search, and this enrolment was to "
                                            f"create it per {self.data.mode} with "
                                            f"{'HNSW' if self.data.hnsw else 'exact'} search (nothing was written)")
            now = data.spellings(given)  # another process may have enrolled or removed a name in another spelling
            if now != spelled:
                renamed = {spelled[name]: now[name] for name in given}
                speakers, own, digests, rows = ({renamed[name]: value for name, value in mapping.items()}
                                                for mapping in (speakers, own, digests, rows))
                spelled = now
            self._refuse_enrolled(data, speakers, append)  # another process may have enrolled one meanwhile
            owners = data.clip_owners()
            if owners != recorded:  # another process may have enrolled a clip's twin (x.pt for x.wav) meanwhile
                digests = {name: [enrolled_twin_digest(clip, own[name][i], owners) for i, clip in enumerate(clips)]
                           for name, clips in speakers.items()}
            self._refuse_other_speakers_clips(data, speakers, digests)
            fresh = {name: data.new_clips(name, digests[name]) for name in speakers}  # another process may have
            for name, clips in speakers.items():                                        # enrolled or removed some
                late = [i for i in fresh[name] if i not in rows.get(name, {})]
                if late:
                    rows.setdefault(name, {}).update(self._embed(name, clips, late, sample_rate))
            try:
                for name in speakers:
                    if fresh[name]:
                        data.add(name, np.stack([rows[name][i] for i in fresh[name]]), append=append,
                                 digests=[digests[name][i] for i in fresh[name]])
            except VoxaugError as exc:
                raise file_error(self.path, str(exc)) from None
            added = {name: len(fresh[name]) for name in speakers}
            if any(added.values()):
                data.save(self.path)
            self._written(data)
        self.skipped = {name: len(clips) - added[spelled[name]] for name, clips in given.items()}
        return {name: data.counts[spelled[name]] for name in given}

    def _embed(self, name: str, clips: list[ClipInput], positions: list[int], sample_rate: int | None
               ) -> dict[int, np.ndarray]:
        """The embeddings of ``clips[i]`` for each ``i`` in ``positions``, by position (errors name it so)."""
        chosen_clips = [clips[i] for i in positions]
        rate = None if all_clip_files(chosen_clips) else sample_rate  # enroll_many checked it against all clips
        chosen = self.model.embed_many(chosen_clips, rate, f"{name} clip", positions)
        return dict(zip(positions, chosen))

    def _refuse_same_content(self, speakers: dict[str, list[ClipInput]], digests: dict[str, list[str]]) -> None:
        """Two clips of this enrolment with the same content (a copy under another name): within one speaker it
        would count twice in the mean and clip count; across two it is a labelling mistake that makes their means
        alike, and a query from that recording would be answered as either."""
        first: dict[str, tuple[str, int]] = {}
        for name, clips in speakers.items():
            for position, digest in enumerate(digests[name]):
                if digest not in first:
                    first[digest] = (name, position)
                    continue
                other, other_position = first[digest]
                if other == name:
                    raise file_error(self.path, f"{name}: clips {clip_name(name, clips, other_position)} and "
                                                f"{clip_name(name, clips, position)} have the same content; each clip "
                                                "counts once in the speaker's mean and clip count (nothing was written)")
                raise file_error(self.path, f"clips {clip_name(other, speakers[other], other_position)} ({other}) and "
                                            f"{clip_name(name, clips, position)} ({name}) have the same content; a clip "
                                            "belongs to one speaker (nothing was written)")

    def _refuse_other_speakers_clips(self, data: IndexData, speakers: dict[str, list[ClipInput]],
                                     digests: dict[str, list[str]]) -> None:
        """A clip another speaker is already enrolled from (checked again under the lock: another process may
        have enrolled it since this object read the index)."""
        owners = data.clip_owners()
        for name, clips in speakers.items():
            for position, digest in enumerate(digests[name]):
                enrolled = owners.get(digest, name)
                if enrolled != name:
                    raise file_error(self.path, f"{name}: clip {clip_name(name, clips, position)} has the same content "
                                                f"as one {enrolled} is enrolled from; a clip belongs to one speaker "
                                                "(nothing was written)")

    def _refuse_enrolled(self, data: IndexData, speakers: dict[str, list[ClipInput]], append: bool) -> None:
        enrolled = sorted(name for name in speakers if name in data.counts)
        if enrolled and not append:
            shown = ", ".join(enrolled[:5]) + (f" and {len(enrolled) - 5} more" if len(enrolled) > 5 else "")
            raise file_error(self.path, f"already enrolled: {shown}; pass --append to add clips to "
                                        f"{'it' if len(enrolled) == 1 else 'them'} (nothing was written)")

    def remove(self, name: str, lock_timeout: float = 60.0) -> None:
        """Take ``name`` out of the index (and its file)."""
        if not isinstance(name, str):  # a list would be a bare "unhashable type" TypeError from the lookup
            check_speaker_name(name)
        remove_speaker(self.path, name, lock_timeout, self._reread, self._written)

    def _written(self, data: IndexData) -> None:
        """Take ``data``, just written under the index lock, as this object's view (there, not after the lock is
        let go: a thread of this process that writes next must not have its view replaced by this older one)."""
        self.data = data

    def _reread(self) -> IndexData:
        """The index as it is on disk now (another process may have enrolled), checked against this model."""
        if not sidecar_path(self.path).exists():  # a copy: a failed first write must not change this object
            return copy.deepcopy(self.data)
        data = IndexData.load(self.path)
        check_model(data, self.path, self.model.path, self.model.sha256, self.model.embedding_dim,
                    self.model.source_sha256)
        return data

    def identify_record(self, x: ClipInput, top_k: int = 5, sample_rate: int | None = None,
                        name: str | None = None) -> Identification:
        """Nearest enrolled speakers of one clip, the decision at the threshold, and the classifier's answer. The
        answer comes from one view of the index, read once: another thread's enrol or remove replaces the view (it is
        never changed in place), and one read between two steps of a search would name new rows by old labels."""
        data = self.data
        top_k = check_search_top_k(top_k)  # before the clip is embedded
        if not data.labels:  # before the clip is embedded
            raise file_error(self.path, "the index has no enrolled speakers; enrol some first (voxaug enroll)")
        score_norm = self.score_norm or data.score_norm
        if score_norm == "asnorm":
            self._check_asnorm(self.path, data)
        threshold, source = data.threshold(score_norm, self.threshold_option, self.cohort_top_k)
        if name is not None and not isinstance(name, (str, os.PathLike)):  # the record's "clip" is text, for JSON
            raise VoxaugError(f"name: expected text naming the clip, got {type(name).__name__} {name!r}")
        if name is not None and not os.fsdecode(name):  # else the answer would silently carry the clip's own label
            raise VoxaugError("name: empty; give text naming the clip, or leave name out (a clip file is named by "
                              "its path)")
        label = os.fsdecode(name) if name is not None else (os.fsdecode(x) if isinstance(x, (str, os.PathLike)) else "clip")
        embedding, probabilities = self.model.embed_with_probabilities(x, sample_rate, label)
        top = data.search(embedding[None], top_k, data.faiss_index(), score_norm, self.cohort_top_k)[0]
        best = int(np.argmax(probabilities))
        decision = top[0][0] if top and top[0][1] >= threshold else UNKNOWN
        return Identification(label, top, self.model.speakers[best], float(probabilities[best]), decision,
                              data.score_name(score_norm), threshold, source,
                              source == "calibrated" and self._calibration_outdated(data),
                              data.calibration_measured() if source == "calibrated" else None)

    @staticmethod
    def _check_asnorm(path: Path, data: IndexData) -> None:
        """AS-norm needs the index to hold a cohort and one vector per speaker; the error names the index."""
        try:
            data.check_asnorm()
        except VoxaugError as exc:
            raise file_error(path, str(exc)) from None

    def _calibration_outdated(self, data: IndexData) -> bool:
        """``data.calibration_outdated()``, hashed once per reading of the index rather than once per clip
        (2.8 ms at 6,000 speakers): every enrolment and removal replaces ``self.data``. The view and its answer are
        kept as one pair, so that a thread never takes one view's answer for another's."""
        seen, outdated = self._outdated
        if seen is not data:
            outdated = data.calibration_outdated() is not None
            self._outdated = (data, outdated)
        return outdated

    def identify(self, x: ClipInput, top_k: int = 5, sample_rate: int | None = None, name: str | None = None) -> dict:
        """:meth:`identify_record` as the JSON object ``voxaug identify --json`` prints."""
        return self.identify_record(x, top_k, sample_rate, name).to_json()
