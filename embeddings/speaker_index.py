"""Build the speaker index of a training set: fit its scoring back end and AS-norm cohort, enrol every speaker.

The back end is fitted on the run's own training split, and each training speaker is enrolled from
its training-split utterances only: the entry is the network's own picture of that speaker, where
its held-out clips land too, while held-out clips mixed in would drag the entry towards the voices
the network never learnt and so towards newly enrolled speakers' clips (measured in
docs/identification.md). The validation split stays out of the index, so calibrating on it is a
held-out test. The cohort comes from that split, utterances the network was *not* fitted to,
because a cohort must score like a test clip: embeddings of memorised training utterances sit much
closer to their own class than any new clip, so their statistics would describe nothing a query
meets. A run without a validation split falls back to its training utterances, and the sidecar says
which was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from voxaug.data.split import SPLIT_VERSION, speaker_codes, stratified_split
from voxaug.embeddings.backend import (
    BACKENDS, DEFAULT_COHORT_TOP_K, DEFAULT_LDA_DIM, SCORE_NORMS, Cohort, ScoringBackend, check_choice,
    check_fit_labels, check_lda_dim, check_top_k,
)
from voxaug.embeddings.identify import check_speaker_name
from voxaug.embeddings.index import SpeakerIndex
from voxaug.errors import VoxaugError

DEFAULT_BACKEND = "plda"
DEFAULT_SCORE_NORM = "none"
DEFAULT_COHORT_SIZE = 2000
WHOLE_DATASET = "whole dataset"
"""The cohort's source when the model records no training split (an old export, indexed with ``--backend none``):
no split is known, so the cohort is drawn from every utterance."""


@dataclass
class ScoringOptions:
    """What ``embed --index`` fits and stores: back end, its LDA size, AS-norm default, cohort size and K."""

    backend: str = DEFAULT_BACKEND
    lda_dim: int = DEFAULT_LDA_DIM
    score_norm: str = DEFAULT_SCORE_NORM
    cohort_size: int = DEFAULT_COHORT_SIZE
    cohort_top_k: int = DEFAULT_COHORT_TOP_K

    def validate(self) -> "ScoringOptions":
        check_choice("--backend", self.backend, BACKENDS)
        check_choice("--score-norm", self.score_norm, SCORE_NORMS)
        check_top_k(self.cohort_top_k)
        check_lda_dim(self.lda_dim)
        if isinstance(self.cohort_size, bool) or not isinstance(self.cohort_size, int) or self.cohort_size < self.cohort_top_k:
            raise VoxaugError(f"--cohort-size must be a whole number >= --cohort-top-k ({self.cohort_top_k}), "
                              f"got {self.cohort_size!r}")
        return self


def check_index_speakers(speakers: Iterable[str], where: str) -> None:
    """Every training speaker becomes an entry, and its name must be one `enroll` would take: not ``unknown``
    (identify's answer below the threshold), not blank."""
    for speaker in sorted(set(speakers)):
        try:
            check_speaker_name(speaker)
        except VoxaugError as exc:
            raise VoxaugError(f"{where}: {exc} (a training speaker's name; rename it in the dataset to build an "
                              "index)") from None


@dataclass
class IndexPlan:
    """Which utterances enrol each training speaker (the training split) and which the AS-norm cohort holds:
    known from the labels alone, so that ``embed`` can check them before it embeds anything."""

    names: np.ndarray
    train: np.ndarray
    held_out: np.ndarray
    cohort_rows: np.ndarray | None
    cohort_source: str
    """Which split the cohort comes from, or (no cohort rows) why none could be built."""


def plan_speaker_index(speakers: list[str | None], groups: list[str | None] | None, per: str, seed: int,
                       val_fraction: float, options: ScoringOptions, speaker_order: list[str] | None = None,
                       split_version: int = SPLIT_VERSION, embedding_dim: int | None = None,
                       copies: np.ndarray | None = None, split_known: bool = True,
                       rows: tuple[np.ndarray, np.ndarray] | None = None) -> IndexPlan:
    """The run's split and the cohort's utterances, refusing labels, a back end (of ``embedding_dim`` inputs, when
    given) or a cohort the index could not use. ``copies`` (an id per utterance, shared by those that embed
    identically) keeps one of each in the cohort, and its checks count them once. Without ``split_known`` (the model
    records no split; ``val_fraction`` 0 then puts every utterance in the training one) the cohort's source is named
    :data:`WHOLE_DATASET`. ``rows``: the run's (training, validation) rows as its record of their clips finds them
    (``voxaug.data.split.recorded_split``: a clip added since training is in neither); else rebuilt from the labels."""
    if any(s is None for s in speakers):
        raise VoxaugError("--index needs speaker labels; this dataset has unlabelled utterances (testdata.json?)")
    check_index_speakers(speakers, "--index")
    names = np.array(speakers)
    train, held_out = rows if rows is not None else stratified_split(
        speaker_codes(names, speaker_order), val_fraction, seed, groups, split_version)
    check_fit_labels(options.backend, names[train], embedding_dim)
    if options.score_norm != "asnorm" and per != "speaker":
        return IndexPlan(names, train, held_out, None, "")
    held_distinct, train_distinct = (rows if copies is None else distinct_rows(copies, rows)
                                     for rows in (held_out, train))
    sources = [(held_distinct, "validation split")] if len(held_distinct) >= options.cohort_top_k else []
    problem = ""
    fallback = "training split" if split_known else WHOLE_DATASET  # all of it when no split is known
    for rows, source in sources + [(train_distinct, fallback)]:  # the training split is the fallback
        subsampled = len(rows) > options.cohort_size
        if subsampled:
            rows = np.sort(np.random.default_rng(seed).choice(rows, options.cohort_size, replace=False))
        held = names[rows]
        short = sorted(speaker for speaker in set(speakers) if int((held != speaker).sum()) < 2)
        if not short:  # a speaker's cohort statistics leave its own entries out, and need two
            return IndexPlan(names, train, held_out, rows, source)
        problem = (f"the {source}'s {len(rows)} {'distinct ' if copies is not None else ''}utterances leave speaker "
                   f"{short[0]!r} fewer than 2 of other speakers"
                   + (f"; give a larger --cohort-size than {options.cohort_size}" if subsampled else ""))
    if options.score_norm == "asnorm":  # otherwise the cohort was only for a later --score-norm asnorm
        raise VoxaugError(f"--score-norm asnorm: no AS-norm cohort can be built: {problem}")
    return IndexPlan(names, train, held_out, None, problem)


def distinct_rows(copies: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` with those of one ``copies`` id kept once, in order. A clip copied under another name embeds
    identically: in a cohort its copies tie at the top of a top-K, whose standard deviation, 0, AS-norm divides by
    (floored to 1e-6: scores of about 1e5)."""
    return rows[np.sort(np.unique(copies[rows], return_index=True)[1])]


def build_speaker_index(embeddings: np.ndarray, speakers: list[str | None], groups: list[str | None] | None,
                        per: str, hnsw: bool, checkpoint: dict, frontend: dict, seed: int, val_fraction: float,
                        options: ScoringOptions, speaker_order: list[str] | None = None,
                        split_version: int = SPLIT_VERSION, split_known: bool = True,
                        rows: tuple[np.ndarray, np.ndarray] | None = None) -> SpeakerIndex:
    """The index of every labelled speaker, enrolled from the training split, with the back end and cohort
    ``options`` ask for.

    ``seed``, ``val_fraction``, ``speaker_order`` (the dataset's speakers as training numbered them; default
    sorted) and ``split_version`` are the run's, so the split is the one it trained with; ``split_known`` is false
    when the model records none, and ``rows`` the split as the run's record finds it (see :func:`plan_speaker_index`).
    """
    copies = np.unique(embeddings, axis=0, return_inverse=True)[1].reshape(-1)
    plan = plan_speaker_index(speakers, groups, per, seed, val_fraction, options, speaker_order, split_version,
                              embeddings.shape[1], copies, split_known, rows)
    names, train = plan.names, plan.train
    backend = ScoringBackend.fit(options.backend, embeddings[train], names[train], options.lda_dim)
    index = SpeakerIndex(dim=embeddings.shape[1], mode=per, hnsw=hnsw, checkpoint=checkpoint, frontend=frontend,
                         backend=backend)
    if plan.cohort_rows is not None:
        rows = plan.cohort_rows
        index.cohort = Cohort(index.to_space(embeddings[rows]), names[rows].tolist(), options.cohort_top_k,
                              f"{plan.cohort_source}: {len(rows)} utterances of {len(set(names[rows].tolist()))} "
                              "training speakers")
    index.score_norm = options.score_norm
    if options.score_norm == "asnorm":
        index.check_asnorm()
    enrolled, enrolled_names = embeddings[train], names[train]  # every speaker keeps at least one training utterance
    for speaker, rows in speaker_rows(enrolled_names):
        index.add(speaker, enrolled[rows])
    return index


def speaker_rows(names: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Each speaker in sorted order with its rows of ``names``, in their order (so each sum is the same): one stable
    sort, not a pass over every row per speaker, which took 18 s for 8,000 speakers of 20 clips."""
    order = np.argsort(names, kind="stable")
    speakers, starts = np.unique(names[order], return_index=True)
    return [(str(speaker), rows) for speaker, rows in zip(speakers, np.split(order, starts[1:]))]
