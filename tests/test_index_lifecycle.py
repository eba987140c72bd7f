"""A speaker index after a long random sequence of enrol, append, remove and re-enrol operations, saved and loaded
between some of them, against a plain-Python model of who is enrolled from which embeddings: the index must then
equal one built in a single pass from the model (names and rows, counts, centroids, mean norms, AS-norm cohort
statistics, search answers), and HNSW must answer as flat does."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from conftest import another_owner_and_group
from voxaug.embeddings.backend import Cohort, ScoringBackend
from voxaug.embeddings.index import SpeakerIndex

DIM = 16
OPERATIONS = 60
CHECK_EVERY = 20
SAVE_EVERY = 6


def unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def empty_index(backend_kind: str, hnsw: bool) -> SpeakerIndex:
    """An index with a fixed back end (none, or PLDA fitted on 40 clustered speakers) and an AS-norm cohort."""
    rng = np.random.default_rng(0)
    backend = ScoringBackend()
    if backend_kind == "plda":
        speakers = np.repeat(np.arange(40), 5)
        clips = unit(rng, 40)[speakers] + 0.4 * unit(rng, len(speakers))
        backend = ScoringBackend.fit("plda", clips, speakers.astype(str), 8)
    index = SpeakerIndex(dim=DIM, hnsw=hnsw, backend=backend)
    index.cohort = Cohort(index.to_space(unit(rng, 60)), [f"cohort{i % 12}" for i in range(60)], 5, "test")
    return index


def built_at_once(model: dict[str, list[np.ndarray]], backend_kind: str, hnsw: bool) -> SpeakerIndex:
    """The index of ``model`` (speaker -> its enrolments' embeddings), each speaker enrolled once from all of them."""
    index = empty_index(backend_kind, hnsw)
    for speaker, parts in model.items():
        index.add(speaker, np.concatenate(parts))
    return index


def random_step(index: SpeakerIndex, model: dict[str, list[np.ndarray]], removed: set[str], step: int,
                rnd: random.Random, rng: np.random.Generator) -> str:
    """One enrol, append, remove or re-enrol of a removed name, made on both the index and the model; returns which."""
    clips = unit(rng, rnd.randint(1, 3))
    operation = rnd.choice(["enrol", "enrol", "append", "remove", "re-enrol"])
    if operation == "append" and model:
        speaker = rnd.choice(sorted(model))
        index.add(speaker, clips, append=True)
        model[speaker].append(clips)
        return "append"
    if operation == "remove" and model:
        speaker = rnd.choice(sorted(model))
        index.remove(speaker)
        del model[speaker]
        removed.add(speaker)
        return "remove"
    if operation == "re-enrol" and removed:
        speaker = rnd.choice(sorted(removed))
        removed.discard(speaker)
        index.add(speaker, clips)
        model[speaker] = [clips]
        return "re-enrol"
    index.add(f"speaker{step}", clips)
    model[f"speaker{step}"] = [clips]
    return "enrol"


def assert_matches_model(index: SpeakerIndex, model: dict[str, list[np.ndarray]], removed: set[str],
                         backend_kind: str) -> None:
    reference = built_at_once(model, backend_kind, index.hnsw)
    assert sorted(index.labels) == sorted(model) and len(set(index.labels)) == len(index.labels)
    assert len(index.vectors) == index.faiss_index().ntotal == len(index.labels)
    for speaker in model:
        row, expected = index.labels.index(speaker), reference.labels.index(speaker)
        assert index.counts[speaker] == reference.counts[speaker]
        assert np.allclose(index.vectors[row], reference.vectors[expected], atol=1e-5), speaker
        assert index.mean_norms[speaker] == pytest.approx(reference.mean_norms[speaker], abs=1e-5)
        assert np.allclose(index.cohort_stats[speaker], reference.cohort_stats[speaker], atol=1e-4), speaker
    queries = np.stack([np.concatenate(parts).mean(axis=0) for parts in model.values()])
    for score_norm in ("none", "asnorm"):
        answers = index.search(queries, 3, score_norm=score_norm)
        for answer, wanted in zip(answers, reference.search(queries, 3, score_norm=score_norm)):
            assert not {speaker for speaker, _ in answer} & removed, "a removed speaker was returned"
            assert answer[0][0] == wanted[0][0]
            assert np.allclose([s for _, s in answer], [s for _, s in wanted], atol=1e-3)


@pytest.mark.parametrize("backend_kind", ["none", "plda"])
@pytest.mark.parametrize("hnsw", [False, True], ids=["flat", "hnsw"])
def test_an_index_after_many_operations_equals_one_built_at_once_from_what_is_enrolled(backend_kind, hnsw, tmp_path):
    rnd, rng = random.Random(1), np.random.default_rng(1)
    index, model, removed = empty_index(backend_kind, hnsw), {}, set()
    path = tmp_path / "spk.faiss"
    done = []
    for step in range(1, OPERATIONS + 1):
        done.append(random_step(index, model, removed, step, rnd, rng))
        if step % SAVE_EVERY == 0:
            index.save(path)
            index = SpeakerIndex.load(path)
        if step % CHECK_EVERY == 0 and model:
            assert_matches_model(index, model, removed, backend_kind)
    assert {"enrol", "append", "remove", "re-enrol"} <= set(done), "the sequence made every kind of operation"


def test_hnsw_answers_as_flat_after_many_one_at_a_time_enrolments_and_removals(tmp_path):
    """Speakers enrolled one per load and save, as `enroll` does, then half removed: HNSW's top-1 stays flat's."""
    rng = np.random.default_rng(2)
    vectors = unit(rng, 120)
    path = tmp_path / "spk.faiss"
    SpeakerIndex(dim=DIM, hnsw=True).save(path)
    for i, vector in enumerate(vectors):
        grown = SpeakerIndex.load(path)
        grown.add(f"speaker{i}", vector[None])
        grown.save(path)
    for i in range(0, len(vectors), 2):
        grown.remove(f"speaker{i}")
    flat = SpeakerIndex(dim=DIM)
    for i in range(1, len(vectors), 2):
        flat.add(f"speaker{i}", vectors[i][None])
    queries = vectors + 0.3 * unit(rng, len(vectors)) / np.sqrt(DIM)
    assert [top[0][0] for top in grown.search(queries, 1)] == [top[0][0] for top in flat.search(queries, 1)]


def test_saving_an_index_keeps_the_mode_owner_and_group_of_the_one_it_replaces(tmp_path):
    """The FAISS file is written as a staged copy under another name, then renamed over it: each enrolment gave it
    the umask's mode and the writer's group, so a lab's index of group ``lab`` and mode 660 became unreadable to the
    other members (its sidecar, written in place by name, kept both)."""
    owner, group = another_owner_and_group()
    path = tmp_path / "spk.faiss"
    SpeakerIndex(dim=DIM).save(path)
    os.chown(path, owner, group)
    path.chmod(0o640)
    grown = SpeakerIndex.load(path)
    grown.add("alice", unit(np.random.default_rng(3), 2))
    grown.save(path)
    kept = path.stat()
    assert (kept.st_uid, kept.st_gid, kept.st_mode & 0o777) == (owner, group, 0o640)
    assert SpeakerIndex.load(path).labels == ["alice"]
