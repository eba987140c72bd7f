"""Clips of one recording on several microphones (VCTK 0.92's ``p225_001_mic1.flac`` and ``_mic2.flac``, no
session folder) stay on one side of the validation split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from voxaug.data.sources import ClipFolderSource
from voxaug.data.split import stratified_split
from voxaug.data.store import INDEX_FILE, PackedStore


def _two_microphone_corpus(root, speakers: int = 3, recordings: int = 10):
    """A VCTK-like folder of `.pt` clips: ``pNNN/pNNN_RRR_mic1.pt`` and ``_mic2.pt`` for each recording."""
    generator = torch.Generator().manual_seed(0)
    for speaker in range(speakers):
        folder = root / f"p{225 + speaker}"
        folder.mkdir(parents=True)
        for recording in range(1, recordings + 1):
            for mic in (1, 2):
                clip = folder / f"{folder.name}_{recording:03d}_mic{mic}.pt"
                torch.save(torch.randn(20, 40, generator=generator), clip)
    return root


def _recordings_on_both_sides(store: PackedStore, train: np.ndarray, val: np.ndarray) -> list[str]:
    """The recordings (a key without its ``_micN`` ending) with one microphone in training and the other in val."""
    def recording(row: int) -> str:
        return store.keys[row].rsplit("_mic", 1)[0]

    return sorted({recording(row) for row in train} & {recording(row) for row in val})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_microphones_of_one_recording_never_sit_on_both_sides_of_the_split(tmp_path, seed):
    """Each speaker's _mic1 and _mic2 clips were split one by one, so validation held the other microphone of
    recordings trained on, and its accuracy was inflated."""
    root = _two_microphone_corpus(tmp_path / "vctk")
    store = PackedStore.open(ClipFolderSource(root), tmp_path / "cache", progress=False)
    train, val = stratified_split(store.labels, 0.2, seed, store.groups)
    assert len(val) > 0 and _recordings_on_both_sides(store, train, val) == []


def test_a_store_packed_before_recordings_were_grouped_keeps_them_together_without_repacking(tmp_path):
    """A cache packed by an earlier version recorded no group for a clip directly in its speaker's folder: reused
    as it is (no repack), its clips are grouped by recording all the same."""
    root = _two_microphone_corpus(tmp_path / "vctk")
    folder = PackedStore.open(ClipFolderSource(root), tmp_path / "cache", progress=False).folder
    index = json.loads((folder / INDEX_FILE).read_text())
    (folder / INDEX_FILE).write_text(json.dumps({**index, "groups": [None] * len(index["keys"])}))
    store = PackedStore.open(ClipFolderSource(root), tmp_path / "cache", progress=False)
    train, val = stratified_split(store.labels, 0.2, 0, store.groups)
    assert not store.rebuilt and _recordings_on_both_sides(store, train, val) == []


def test_a_run_split_by_version_2_is_rebuilt_as_it_was_split():
    """Runs saved with split version 2 did not group clips by recording: `evaluate` and `embed` rebuild their split
    exactly, as though those clips had no group."""
    labels = np.repeat(np.arange(2), 8)
    by_name = [f"p{label}/p{label}_{row // 2:03d}" for row, label in enumerate(labels.tolist())]
    for seed in range(3):
        rebuilt = stratified_split(labels, 0.25, seed, by_name, version=2)
        original = stratified_split(labels, 0.25, seed, [None] * len(labels), version=2)
        assert all(np.array_equal(a, b) for a, b in zip(rebuilt, original))


@pytest.mark.parametrize("key, recording", [
    ("p225/p225_001_mic1.flac", "p225/p225_001"),
    ("p225/p225_001_mic2.flac", "p225/p225_001"),
    ("spk/F01_050C0101_BUS.CH5.wav", "spk/F01_050C0101_BUS"),
    ("spk/take-ch2.wav", "spk/take"),
    ("id10001/00001.wav", None),
    ("spk000/000.pt", None),
    ("spk/mic1.wav", None),
    ("spk/michael_2.wav", None),
])
def test_a_clip_directly_in_its_speaker_folder_belongs_to_the_recording_its_channel_tag_names(key, recording):
    from voxaug.data.sources import recording_group

    assert recording_group(key) == recording


def _chaptered_audiobooks(root, readers: int = 3, books: int = 2, chapters: int = 6):
    """Each reader's audiobooks as ``readerN/bookB_chCC.pt``: chapters are recordings of their own, not channels."""
    generator = torch.Generator().manual_seed(0)
    for reader in range(readers):
        folder = root / f"reader{reader}"
        folder.mkdir(parents=True)
        for book in range(books):
            for chapter in range(1, chapters + 1):
                torch.save(torch.randn(20, 40, generator=generator), folder / f"book{book}_ch{chapter:02d}.pt")
    return root


def test_chapters_numbered_like_channels_are_not_grouped_as_one_recording(tmp_path):
    """``book0_ch01`` to ``_ch06`` were read as six channels of one recording: with two books a reader had two
    6-clip groups, neither small enough to hold out, and no validation clip at all (version 2 held out two)."""
    source = ClipFolderSource(_chaptered_audiobooks(tmp_path / "books"))
    assert [u.group for u in source.utterances] == [None] * len(source.utterances)
    store = PackedStore.open(source, tmp_path / "cache", progress=False)
    train, val = stratified_split(store.labels, 0.2, 0, store.groups)
    assert set(store.labels[val].tolist()) == set(store.labels.tolist())


def test_a_speaker_of_one_two_microphone_recording_among_single_clips_keeps_it_together():
    from voxaug.data.sources import speaker_recording_groups

    keys = ["p225/p225_001_mic1.flac", "p225/p225_001_mic2.flac", "p225/extra.flac"]
    assert speaker_recording_groups(keys) == ["p225/p225_001", "p225/p225_001", None]
    assert speaker_recording_groups([f"r/book_ch{n:02d}.flac" for n in range(1, 4)] + ["r/x.flac"]) == [None] * 4


def test_verification_pairs_leave_out_two_channels_of_one_recording_and_draw_as_though_listed(tmp_path):
    """evaluate's trials over the validation clips paired a recording's _mic1 with its _mic2 as a same-speaker trial:
    the same sound twice, a trial no model fails (a VCTK-like set gave EER 0.000). They are left out, and the pairs
    kept are those that listing every other pair and sampling keeps; a video's clips stay paired."""
    from voxaug.embeddings.evaluation import LabelledEmbeddings, channel_recordings, score_pairs
    from voxaug.embeddings.scoring import all_pairs, labelled_pairs, sample_pairs

    root = _two_microphone_corpus(tmp_path / "vctk", speakers=2, recordings=3)
    (root / "p225" / "video7").mkdir()
    for take in (1, 2):
        torch.save(torch.randn(20, 40), root / "p225" / "video7" / f"{take}.pt")
    store = PackedStore.open(ClipFolderSource(root), tmp_path / "cache", progress=False)
    every = np.arange(len(store))
    recordings = channel_recordings(store, every)
    assert sorted(set(recordings.tolist()) - {None}) == [f"p{s}/p{s}_{r:03d}" for s in (225, 226) for r in (1, 2, 3)]
    names = np.array(store.speakers)[store.labels]
    held_out = LabelledEmbeddings(np.eye(len(store), dtype=np.float32), names, recordings)
    result = score_pairs(held_out, 1000, 0)
    first, second = all_pairs(names, 1000, 0, recordings)
    assert not any(recordings[a] is not None and recordings[a] == recordings[b] for a, b in zip(first, second))
    videos = [store.keys.index("p225/video7/1.pt"), store.keys.index("p225/video7/2.pt")]
    assert tuple(sorted(videos)) in set(zip(first.tolist(), second.tolist()))
    assert len(store) == 14 and (result["trials"], result["same_trials"]) == (91 - 6, 28 + 15 - 6)
    rng = np.random.default_rng(5)
    for size, max_pairs in ((40, 300), (40, 40), (60, 25)):
        labels = rng.integers(0, 4, size)
        recording = np.array([f"s{label}/r{rng.integers(0, 5)}" if rng.random() < 0.6 else None for label in labels],
                             dtype=object)
        rows, columns = np.triu_indices(size, k=1)
        kept = (recording[rows] == None) | (recording[rows] != recording[columns])  # noqa: E711 (elementwise)
        rows, columns = rows[kept], columns[kept]
        chosen = sample_pairs(labels[rows] == labels[columns], max_pairs, np.random.default_rng(7))
        drawn = all_pairs(labels, max_pairs, 7, recording)
        assert drawn[0].tolist() == rows[chosen].tolist() and drawn[1].tolist() == columns[chosen].tolist()
        other = np.array([f"s{label}/r{rng.integers(0, 5)}" for label in labels[::-1]], dtype=object)
        rows, columns = np.divmod(np.arange(size * size), size)
        kept = recording[rows] != other[columns]
        rows, columns = rows[kept], columns[kept]
        chosen = sample_pairs(labels[rows] == labels[::-1][columns], max_pairs, np.random.default_rng(7))
        drawn = labelled_pairs(labels, labels[::-1], max_pairs, np.random.default_rng(7), row_recordings=recording,
                               column_recordings=other)
        assert drawn[0].tolist() == rows[chosen].tolist() and drawn[1].tolist() == columns[chosen].tolist()


def test_evaluate_scores_no_trial_of_two_microphones_of_one_validation_recording(tmp_path):
    """closed_set's validation clips went to score_pairs without their recordings: with each recording's two
    microphones embedded alike, every same-speaker trial but the few across recordings was such a pair."""
    from types import SimpleNamespace

    from voxaug.embeddings.evaluation import closed_set, score_pairs

    root = _two_microphone_corpus(tmp_path / "vctk")
    store = PackedStore.open(ClipFolderSource(root), tmp_path / "cache", progress=False)
    rows = stratified_split(store.labels, 0.2, 0, store.groups)
    recording = [key.rsplit("_mic", 1)[0] for key in store.keys]
    sound = np.random.default_rng(0).normal(size=(len(set(recording)), 8))
    vectors = sound[[sorted(set(recording)).index(name) for name in recording]]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def embed_store(_store, order, _progress):
        return SimpleNamespace(embeddings=vectors[order], probabilities=np.eye(3)[store.labels[order]])

    _, reference, held_out = closed_set(SimpleNamespace(embed_store=embed_store), store, False, rows)
    result = score_pairs(held_out, 1000, 0, reference)
    assert len(rows[1]) == 12 and result["pairs"] == "validation x validation"
    assert (result["trials"], result["same_trials"]) == (66 - 6, 3 * (6 - 2)), result


@st.composite
def _labelled_sides(draw: st.DrawFn) -> tuple:
    """Row and column labels (some speakers of one clip), their channel groups (mostly none; a recording always of
    its own speaker, as the folder names them), pairs within one set or across two, and a max_pairs."""
    upper = draw(st.booleans())

    def side(size: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array(draw(st.lists(st.integers(0, 4), min_size=size, max_size=size)), dtype=np.int64)
        groups = [None if draw(st.integers(0, 2)) else f"s{label}/r{draw(st.integers(0, 2))}" for label in labels]
        return labels, np.array(groups, dtype=object)

    rows = side(draw(st.integers(1, 14)))
    columns = rows if upper else side(draw(st.integers(1, 14)))
    return rows, columns, upper, draw(st.integers(1, 120)), draw(st.integers(0, 9))


@settings(max_examples=200, deadline=None)
@given(_labelled_sides())
def test_pairs_drawn_are_every_allowed_pair_listed_in_row_major_order_then_sampled(case):
    """Stepping sampled ranks over the left-out pairs holds at its edges: a left-out pair at the first or last rank,
    runs of them, every same-speaker pair left out, more same-speaker pairs asked for than remain."""
    from voxaug.embeddings.scoring import labelled_pairs, sample_pairs

    (row_labels, row_groups), (column_labels, column_groups), upper, max_pairs, seed = case
    rows, columns = np.divmod(np.arange(len(row_labels) * len(column_labels)), len(column_labels))
    allowed = (columns > rows if upper else True) & np.array(
        [row_groups[i] is None or row_groups[i] != column_groups[j] for i, j in zip(rows, columns)], dtype=bool)
    rows, columns = rows[allowed], columns[allowed]
    chosen = sample_pairs(row_labels[rows] == column_labels[columns], max_pairs, np.random.default_rng(seed))
    drawn = labelled_pairs(row_labels, column_labels, max_pairs, np.random.default_rng(seed), upper=upper,
                           row_recordings=row_groups, column_recordings=column_groups)
    assert drawn[0].tolist() == rows[chosen].tolist() and drawn[1].tolist() == columns[chosen].tolist()
