"""`voxaug evaluate`: closed-set accuracy by softmax and by cosine, accuracy on enrolled speakers never
trained on, verification EER/minDCF, and a 2-D map of the embedding space."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from voxaug.clips import FEATURE_SUFFIX
from voxaug.data.audio_store import open_dataset_store
from voxaug.data.sources import (
    ClipFolderSource, file_identity, load_clip, refuse_features_for, resolve_inside,
)
from voxaug.data.split import channel_recording, recorded_split, stratified_split
from voxaug.data.store import PackedStore
from voxaug.embeddings.backend import check_choice, pair_as_norm
from voxaug.embeddings.embedders import Embedder
from voxaug.embeddings.index import SpeakerIndex
from voxaug.embeddings.scoring import all_pairs, eer_and_min_dcf, labelled_pairs
from voxaug.errors import VoxaugError, abridged, file_error, not_a_file
from voxaug.features import FrontendConfig
from voxaug.runtime.frontend import audio_suffixes
from voxaug.safeio import atomic_output, resolved_without_loop, same_name


MAP_METHODS = ("pca", "tsne")


@dataclass
class LabelledEmbeddings:
    embeddings: np.ndarray  # (N, E) unit rows
    labels: np.ndarray  # (N,) speaker names
    recordings: np.ndarray | None = None  # (N,) the recording each clip is one channel of, or None (verification pairs)


def centroids(data: LabelledEmbeddings) -> tuple[list[str], np.ndarray]:
    """Speakers and their renormalised mean embeddings."""
    names = sorted(set(data.labels.tolist()))
    means = np.stack([data.embeddings[data.labels == name].mean(axis=0) for name in names])
    return names, means / np.linalg.norm(means, axis=1, keepdims=True)


def centroid_accuracy(reference: LabelledEmbeddings, test: LabelledEmbeddings) -> float:
    names, means = centroids(reference)
    predicted = np.array(names)[(test.embeddings @ means.T).argmax(axis=1)]
    return float((predicted == test.labels).mean())


KNN_BLOCK = 1 << 22
"""Similarities ``knn_accuracy`` holds at once (16 MB of float32): the whole validation x training matrix of a
large dataset, and its argsort, are tens of gigabytes."""


def knn_accuracy(reference: LabelledEmbeddings, test: LabelledEmbeddings, k: int = 5) -> float:
    """Majority vote among the k most similar reference embeddings (ties: the most similar)."""
    rows = max(1, KNN_BLOCK // max(1, len(reference.labels)))
    nearest = np.empty((len(test.labels), min(k, len(reference.labels))), dtype=np.intp)
    for start in range(0, len(test.labels), rows):
        similarity = test.embeddings[start : start + rows] @ reference.embeddings.T
        nearest[start : start + rows] = np.argsort(-similarity, axis=1)[:, :k]
    correct = 0
    for row, neighbours in enumerate(nearest):
        votes: dict[str, int] = {}
        for label in reference.labels[neighbours]:
            votes[label] = votes.get(label, 0) + 1
        winner = max(votes, key=lambda label: (votes[label], -list(reference.labels[neighbours]).index(label)))
        correct += winner == test.labels[row]
    return float(correct / len(test.labels))


def embed_folder(embedder: Embedder, folder: Path, cache_dir: Path | None, progress: bool,
                 warn: bool = True) -> LabelledEmbeddings:
    source = ClipFolderSource(folder, embedder.frontend, warn=warn)
    refuse_features_for(embedder.frontend, source)
    store, _ = open_dataset_store(source, cache_dir, progress=progress)
    embedded = embedder.embed_store(store, np.arange(len(store)), progress)
    # in NFC: --enroll's folders made on macOS (NFD) and --test's typed elsewhere name one speaker alike
    return LabelledEmbeddings(embedded.embeddings, np.array([same_name(store.speakers[i]) for i in store.labels]))


class Trial(NamedTuple):
    """One line of a trials file: its label (same speaker), its two clips (resolved) and where it is."""

    same: bool
    first: Path
    second: Path
    line: int


def trial_fields(line: str) -> list[str]:
    """A trials line's words: split at whitespace, as VoxCeleb's lists are, or, where that gives other than three
    (a clip path holding spaces, as a speaker folder's name may), as a shell splits it: ``1 "Ann Lee/a.wav" b.wav``."""
    parts = line.split()
    if len(parts) == 3:  # every line read before quoting was read reads as it did (an apostrophe in O'Brien too)
        return parts
    try:
        return shlex.split(line)
    except ValueError:  # an unclosed quote: the line is refused as it is
        return parts


def read_trials(path: Path, root: Path) -> list[Trial]:
    """Trial lines ``LABEL CLIP1 CLIP2`` (LABEL 1 = same speaker, 0 = different; paths relative to ``root``: DATA, or
    evaluate's --trials-root)."""
    if not path.is_file():
        raise file_error(path, "trials file not found" if not path.exists() else not_a_file(path, "trials"))
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some editors write one) is not a trial
    except UnicodeDecodeError as exc:
        raise file_error(path, f"not UTF-8 text (byte {exc.start}); a trials file is lines 'LABEL CLIP1 CLIP2'") from None
    trials = []
    inside = resolved_without_loop(root, "dataset folder")
    seen: dict[frozenset[tuple[int, int] | Path], tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = trial_fields(line)
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            spaces = " (quote a clip path that holds spaces)" if len(parts) > 3 else ""
            raise file_error(path, f"line {number}: expected 'LABEL CLIP1 CLIP2' with LABEL 0 or 1, "
                                   f"got {abridged(line)}{spaces}")
        clips = [resolve_inside(root, part, path, f"line {number}: clip", inside) for part in parts[1:]]
        for part, clip in zip(parts[1:], clips):
            try:
                found = clip.is_file()
            except OSError as exc:  # a name longer than the file system allows: not a missing clip, and no traceback
                raise file_error(path, f"line {number}: clip {abridged(part)} is not a usable path "
                                       f"({exc.strerror})") from None
            if not found:
                raise file_error(path, f"line {number}: clip {abridged(part)} not found in {root}" if not clip.exists()
                                 else f"line {number}: clip {abridged(part)}: {not_a_file(clip, 'clip')}")
            if clip.suffix.lower() not in (FEATURE_SUFFIX,) + audio_suffixes():  # found now, not after the embedding
                raise file_error(path, f"line {number}: clip {abridged(part)} is not a clip; accepted: .pt, "
                                       f"{', '.join(audio_suffixes())}")
        files = [file_identity(clip) for clip in clips]  # a hard link under another name is the same clip
        names = [clip.with_suffix("") for clip in clips]  # x.pt and x.wav: one clip, as folders count it
        if files[0] == files[1] or names[0] == names[1]:  # a trivially perfect trial
            raise file_error(path, f"line {number}: pairs clip {abridged(parts[1])} with itself"
                                   + ("" if parts[1] == parts[2] else f" (as {abridged(parts[2])})")
                                   + "; a trial compares two different clips")
        # either order, by file and by name less its suffix: a pair listed twice would count twice, or with two
        # labels, both ways
        pairs = (frozenset(files), frozenset(names))
        for pair in pairs:
            if pair in seen:
                earlier, label = seen[pair]
                clash = "" if label == parts[0] else f", which labels it {label} and this line {parts[0]}"
                raise file_error(path, f"line {number}: the same pair of clips as line {earlier}{clash}; list each "
                                       "trial once")
        seen.update(dict.fromkeys(pairs, (number, parts[0])))
        trials.append(Trial(parts[0] == "1", clips[0], clips[1], number))
    if not trials:
        raise file_error(path, "holds no trials")
    if len({trial.same for trial in trials}) < 2:
        raise file_error(path, f"every trial is labelled {int(trials[0].same)}; verification needs both same-speaker "
                               "(1) and different-speaker (0) trials")
    return trials


class TrialScorer:
    """Scores trial pairs as cosines of the network's embeddings or, given an index, by its back end's
    score (a cosine in its space, or PLDA), plain or AS-normalised against its cohort (both sides'
    speakers left out of the cohort, so a trial is never normalised by its own clips)."""

    def __init__(self, index: SpeakerIndex | None = None, score_norm: str = "none", target_far: float = 0.01) -> None:
        if score_norm == "asnorm" and (index is None or index.cohort is None):
            raise VoxaugError("AS-norm trials need an index with a cohort (--index built by `voxaug embed`)")
        self.index, self.score_norm, self.target_far = index, score_norm, target_far

    def __call__(self, first: LabelledEmbeddings, second: LabelledEmbeddings, same: np.ndarray | None = None) -> dict:
        """EER and minDCF of the pairs (first[i], second[i]): same speaker where their labels agree, unless
        ``same`` says (a trials file's own labels)."""
        a, b = first.embeddings, second.embeddings
        if self.index is None:
            scores = np.einsum("ij,ij->i", a, b)
        else:
            a, b = self.index.to_space(a), self.index.to_space(b)
            scores = self.index.backend.pair_scores(a, b)
        if self.score_norm == "asnorm":  # neither side's speaker may sit in the cohort that normalises the trial
            names_a, names_b = [str(x) for x in first.labels], [str(x) for x in second.labels]
            stats_a = self.index.cohort.stats(a, exclude=names_a, also_exclude=names_b, scores=self.index.cohort_scores(a))
            stats_b = self.index.cohort.stats(b, exclude=names_b, also_exclude=names_a, scores=self.index.cohort_scores(b))
            scores = pair_as_norm(scores, stats_a, stats_b)
        return eer_and_min_dcf(scores, first.labels == second.labels if same is None else same,
                               target_far=self.target_far)


def refuse_trial_features(frontend: FrontendConfig, trials: list[Trial]) -> None:
    """Before any clip is embedded: a `.pt` trial clip for a model whose front end makes other features."""
    for clip in sorted({p for trial in trials for p in (trial.first, trial.second)}):
        if clip.suffix.lower() == ".pt":
            frontend.refuse_feature_file(clip)


def contradicted_trials(trials: list[Trial], speakers: dict[Path, str]) -> list[Trial]:
    """The trials whose label DATA's own speakers (``speakers``, by resolved path) contradict: 1 for clips of two
    speakers, 0 for two clips of one. A clip DATA does not list (``unseen/...``) has no speaker to check against."""
    return [trial for trial in trials if trial.first in speakers and trial.second in speakers
            and (speakers[trial.first] == speakers[trial.second]) != trial.same]


def score_trials(embedder: Embedder, trials: list[Trial], scorer: TrialScorer | None = None,
                 speakers: dict[Path, str] | None = None) -> dict:
    """EER and minDCF of a trials file's pairs. ``speakers`` names the speaker of each dataset clip (resolved
    path): AS-norm leaves those speakers out of the cohort, which may hold the very clips; a clip it does not
    name is a voice of its own."""
    clips = sorted({p for trial in trials for p in (trial.first, trial.second)})
    embeddings = embedder.embed_features([load_clip(c, embedder.frontend) for c in clips], [str(c) for c in clips])
    row = {clip: i for i, clip in enumerate(clips)}
    first = np.array([row[trial.first] for trial in trials])
    second = np.array([row[trial.second] for trial in trials])
    same = np.array([trial.same for trial in trials])
    names = np.array([(speakers or {}).get(clip, f"clip {i}") for i, clip in enumerate(clips)], dtype=object)
    return (scorer or TrialScorer())(LabelledEmbeddings(embeddings[first], names[first]),
                                     LabelledEmbeddings(embeddings[second], names[second]), same)


def score_pairs(data: LabelledEmbeddings, max_pairs: int, seed: int,
                reference: LabelledEmbeddings | None = None, scorer: TrialScorer | None = None) -> dict:
    """Pairs within ``data``; when they hold no same-speaker pair (one validation utterance per speaker),
    pairs of ``data`` against ``reference`` (the training split) instead. Never two channels of one recording."""
    scorer = scorer or TrialScorer()
    first, second = all_pairs(data.labels, max_pairs, seed, data.recordings)
    if reference is not None and not (data.labels[first] == data.labels[second]).any():
        first, second = labelled_pairs(data.labels, reference.labels, max_pairs, np.random.default_rng(seed),
                                       row_recordings=data.recordings, column_recordings=reference.recordings)
        result = scorer(subset(data, first), subset(reference, second))
        return {**result, "pairs": "validation x training"}
    return {**scorer(subset(data, first), subset(data, second)), "pairs": "validation x validation"}


def subset(data: LabelledEmbeddings, rows: np.ndarray) -> LabelledEmbeddings:
    return LabelledEmbeddings(data.embeddings[rows], data.labels[rows],
                              None if data.recordings is None else data.recordings[rows])


def embedding_map(groups: dict[str, LabelledEmbeddings], out: Path, method: str, seed: int) -> None:
    """Scatter of embeddings in 2-D (PCA or t-SNE), coloured by speaker, marker by group."""
    check_choice("--map", method, MAP_METHODS)
    stacked = np.concatenate([g.embeddings for g in groups.values()])
    if method == "tsne":
        points = TSNE(n_components=2, init="pca", random_state=seed,
                      perplexity=min(30.0, max(1.0, (len(stacked) - 1) / 3))).fit_transform(stacked)
    else:
        points = PCA(n_components=2, random_state=seed).fit_transform(stacked)
    figure = Figure(figsize=(7, 6))  # not pyplot: its backend and figure list belong to the caller's process
    axis = figure.subplots()
    start = 0
    for marker, (name, group) in zip("o^sD", groups.items()):
        part = points[start : start + len(group.labels)]
        start += len(group.labels)
        speakers = sorted(set(group.labels.tolist()))
        colours = np.array([speakers.index(s) for s in group.labels])
        axis.scatter(part[:, 0], part[:, 1], c=colours, cmap="tab20", s=12, marker=marker, label=name, alpha=0.8)
    axis.legend(fontsize=8)
    axis.set_title(f"speaker embeddings ({method.upper()}), coloured by speaker")
    figure.tight_layout()
    with atomic_output(out, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)


def validation_split(embedder: Embedder, store: PackedStore) -> tuple[np.ndarray, np.ndarray]:
    """The run's own (training, validation) rows of ``store``: the clips its record names (a clip added since training
    is in neither), or, for a model without that record, its split rebuilt from the labels alone."""
    if embedder.split_clips is not None:
        found = recorded_split(store.keys, embedder.split_clips)
        return found.train, found.val
    split = embedder.split
    return stratified_split(store.labels, split.val_fraction, split.seed, store.groups, split.version)


def channel_recordings(store: PackedStore, rows: np.ndarray) -> np.ndarray:
    """The recording each of ``rows`` is one channel of (None for a video's clip or one of no group): verification
    pairs leave out two channels of one recording, yet keep two clips of one video (recordings of their own)."""
    return np.array([channel_recording(store.groups[row]) for row in rows.tolist()], dtype=object)


def closed_set(embedder: Embedder, store: PackedStore, progress: bool, rows: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[dict, LabelledEmbeddings, LabelledEmbeddings]:
    """Accuracy on the run's own validation split (``rows``, else :func:`validation_split`), with the training split
    as the cosine reference."""
    train, val = rows if rows is not None else validation_split(embedder, store)
    if len(val) == 0:
        raise VoxaugError("no validation utterances: the run was trained with --val-fraction 0")
    names = np.array(store.speakers)
    embedded = embedder.embed_store(store, np.concatenate([train, val]), progress)
    reference = LabelledEmbeddings(embedded.embeddings[: len(train)], names[store.labels[train]],
                                   channel_recordings(store, train))
    held_out = LabelledEmbeddings(embedded.embeddings[len(train):], names[store.labels[val]],
                                  channel_recordings(store, val))
    softmax_pred = names[embedded.probabilities[len(train):].argmax(axis=1)]
    cosine_names, means = centroids(reference)
    cosine_pred = np.array(cosine_names)[(held_out.embeddings @ means.T).argmax(axis=1)]
    report = {
        "val_utterances": int(len(val)),
        "softmax_accuracy": float((softmax_pred == held_out.labels).mean()),
        "cosine_centroid_accuracy": float((cosine_pred == held_out.labels).mean()),
        "cosine_knn_accuracy": knn_accuracy(reference, held_out),
        "softmax_cosine_agreement": float((softmax_pred == cosine_pred).mean()),
    }
    return report, reference, held_out
