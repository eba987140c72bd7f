"""Embeddings, the speaker index and identification, end to end through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voxaug.checkpoint import load_model
from voxaug.cli.main import app
from voxaug.embeddings.extract import embed_tensors, windows
from voxaug.embeddings.index import SpeakerIndex
from voxaug.errors import VoxaugError
from voxaug.runtime.frontend import audio_suffixes
from voxaug.safeio import sha256_file

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def built_index(trained_run, tiny_synth, tmp_path_factory):
    """An index of the trained speakers (from `voxaug embed --index`) plus the unseen speakers enrolled."""
    folder = tmp_path_factory.mktemp("index")
    index = folder / "spk.faiss"
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", folder / "emb",
                    "--index", index, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    for speaker_dir in sorted((tiny_synth / "unseen" / "enroll").iterdir()):
        result = invoke("enroll", "--index", index, "--speaker", speaker_dir.name, "--device", "cpu", speaker_dir)
        assert result.exit_code == 0, result.output
    return folder


def test_embeddings_are_unit_norm_deterministic_and_listed(built_index, tiny_synth, trained_run, tmp_path):
    embeddings = np.load(built_index / "emb" / "embeddings.npy")
    assert embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    rows = (built_index / "emb" / "items.csv").read_text().splitlines()
    assert rows[0] == "row,path,speaker" and len(rows) == len(embeddings) + 1
    again = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "again", "--device", "cpu", "-q")
    assert again.exit_code == 0
    assert np.array_equal(np.load(tmp_path / "again" / "embeddings.npy"), embeddings)


def test_windows_average_to_a_unit_vector(trained_run):
    loaded = load_model(trained_run / "best.pt")
    features = torch.randn(200, 40)
    pieces = windows(features, 80, 50)
    assert [w.shape[0] for w in pieces] == [80, 80, 80, 80]
    assert torch.equal(pieces[2], features[100:180]) and torch.equal(pieces[-1], features[120:200])
    whole = embed_tensors(loaded.model, [features], torch.device("cpu"))
    windowed = embed_tensors(loaded.model, [features], torch.device("cpu"), window=80, hop=50)
    assert np.isclose(np.linalg.norm(windowed.embeddings[0]), 1.0, atol=1e-5)
    assert not np.allclose(whole.embeddings, windowed.embeddings)


def test_centroid_update_on_append_and_remove():
    index = SpeakerIndex(dim=3)
    a = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    index.add("alice", a)
    with pytest.raises(VoxaugError, match="already enrolled"):
        index.add("alice", a)
    index.add("alice", np.array([[0, 0, 1.0]]), append=True)
    expected = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)
    assert np.allclose(index.vectors[index.labels.index("alice")], expected, atol=1e-6)
    assert index.counts["alice"] == 3
    index.add("bob", np.array([[0, 0, 1.0]]))
    index.remove("alice")
    assert index.labels == ["bob"] and index.speakers == ["bob"]
    with pytest.raises(VoxaugError, match="not enrolled"):
        index.remove("alice")


def test_sidecar_round_trip(tmp_path):
    index = SpeakerIndex(dim=4, checkpoint={"path": "x.pt", "sha256": "ab"}, frontend={"n_mels": 40})
    index.add("s1", np.eye(4)[:2])
    index.add("s2", np.eye(4)[2:])
    index.save(tmp_path / "i.faiss")
    loaded = SpeakerIndex.load(tmp_path / "i.faiss")
    assert loaded.labels == index.labels and loaded.counts == index.counts
    assert np.allclose(loaded.vectors, index.vectors) and loaded.checkpoint == index.checkpoint
    sidecar = json.loads((tmp_path / "i.faiss.json").read_text())
    assert {"version", "metric", "dimension", "labels", "counts", "checkpoint", "frontend"} <= set(sidecar)
    assert loaded.search(np.eye(4)[:1], 2)[0][0][0] == "s1"


def test_a_loaded_hnsw_index_is_searched_as_saved_not_rebuilt(tmp_path, monkeypatch):
    index = SpeakerIndex(dim=4, mode="utterance", hnsw=True)
    index.add("s1", np.eye(4)[:2])
    index.add("s2", np.eye(4)[2:])
    index.save(tmp_path / "i.faiss")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the HNSW graph was rebuilt on load")

    monkeypatch.setattr("faiss.IndexHNSWFlat", no_rebuild)  # index.py imports faiss on first use
    loaded = SpeakerIndex.load(tmp_path / "i.faiss")
    assert loaded.faiss_index().hnsw.efSearch == 128
    assert loaded.search(np.eye(4)[2:3], 1)[0][0][0] == "s2"
    loaded.add("s3", np.array([[1.0, 1.0, 0.0, 0.0]]))  # new utterances grow the loaded graph in place
    _, rows = loaded.faiss_index().search(np.array([[0.6, 0.8, 0.0, 0.0]], dtype=np.float32), 1)
    assert loaded.faiss_index().ntotal == 5 and loaded.labels[rows[0][0]] == "s3"


def test_utterance_index_votes(tmp_path):
    index = SpeakerIndex(dim=2, mode="utterance", hnsw=True)
    index.add("a", np.array([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05]]))
    index.add("b", np.array([[0.0, 1.0], [0.99, 0.01]]))
    top = index.search(np.array([[1.0, 0.0]]), 2)[0]
    assert top[0][0] == "a" and {s for s, _ in top} == {"a", "b"}


def test_identify_json_schema_and_trained_speakers(built_index, tiny_synth):
    truth = dict(line.split(",") for line in (tiny_synth / "test_labels.csv").read_text().splitlines()[1:])
    clips = [tiny_synth / name for name in sorted(truth)]
    result = invoke("identify", "--index", built_index / "spk.faiss", "--json", "--top-k", "3", "--device", "cpu", *clips)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines()]
    assert len(answers) == len(clips)
    for answer, clip in zip(answers, clips):
        assert set(answer) == {"clip", "top", "softmax", "decision", "score", "threshold"}
        assert answer["score"] == "plda" and answer["threshold"] == {"value": 0.0, "source": "default"}  # embed's default
        assert len(answer["top"]) == 3 and set(answer["top"][0]) == {"speaker", "score"}
        assert answer["top"][0]["score"] >= answer["top"][1]["score"] >= answer["top"][2]["score"]
        assert set(answer["softmax"]) == {"speaker", "prob"} and 0 <= answer["softmax"]["prob"] <= 1
        assert answer["clip"] == str(clip)
    cosine = [a["top"][0]["speaker"] == truth[c.name] for a, c in zip(answers, clips)]
    agree = [a["top"][0]["speaker"] == a["softmax"]["speaker"] for a in answers]
    assert sum(cosine) / len(clips) >= 0.4  # 7 enrolled speakers: chance is 1/7
    assert sum(agree) / len(clips) >= 0.5


def test_threshold_gives_unknown(built_index, tiny_synth):
    clip = sorted((tiny_synth / "unseen" / "test").glob("*/*.pt"))[0]
    result = invoke("identify", "--index", built_index / "spk.faiss", "--json", "--threshold", "1e6", "--score-norm",
                    "none", "--device", "cpu", clip)  # a PLDA log-likelihood ratio, so not bounded like a cosine
    answer = json.loads(result.output)
    assert answer["decision"] == "unknown" and answer["score"] == "plda"
    assert answer["threshold"] == {"value": 1e6, "source": "option"}
    result = invoke("identify", "--index", built_index / "spk.faiss", "--json", "--threshold", "100", "--score-norm",
                    "asnorm", "--device", "cpu", clip)
    answer = json.loads(result.output)
    assert answer["decision"] == "unknown" and answer["score"] == "asnorm"


def test_audio_and_pt_of_the_same_clip_agree(built_index, tiny_synth):
    clip = sorted((tiny_synth / "unseen" / "test").glob("*/*.pt"))[0]
    answers = []
    for path in (clip, clip.with_suffix(".wav")):
        result = invoke("identify", "--index", built_index / "spk.faiss", "--json", "--device", "cpu", path)
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.output))
    assert answers[0]["decision"] == answers[1]["decision"]
    assert [t["speaker"] for t in answers[0]["top"]] == [t["speaker"] for t in answers[1]["top"]]
    assert answers[0]["top"][0]["score"] == pytest.approx(answers[1]["top"][0]["score"], abs=1e-3)


def test_remove_through_the_cli(built_index, tmp_path):
    index = tmp_path / "copy.faiss"
    shutil.copy(built_index / "spk.faiss", index)
    shutil.copy(built_index / "spk.faiss.json", f"{index}.json")
    result = invoke("enroll", "--index", index, "--remove", "new000")
    assert result.exit_code == 0, result.output
    assert "new000" not in SpeakerIndex.load(index).speakers


def test_evaluate_writes_a_report(trained_run, tiny_synth, tmp_path):
    unseen = tiny_synth / "unseen"
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--enroll", unseen / "enroll",
                    "--test", unseen / "test", "--out", tmp_path / "report", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    for key in ("softmax_accuracy", "cosine_centroid_accuracy", "cosine_knn_accuracy", "softmax_cosine_agreement"):
        assert 0.0 <= report[key] <= 1.0
    assert report["softmax_accuracy"] > 0.4
    assert 0.0 <= report["verification"]["eer"] <= 0.5
    assert report["unseen"]["speakers"] == 2
    assert (tmp_path / "report" / "embeddings_map.png").stat().st_size > 0


def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(trained_run, tiny_synth, tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for out, problem in ((tmp_path / "a_file" / "report", "a_file is a file, not a folder"),
                         (tmp_path / "gone" / "report", "gone is a symbolic link to nothing"),
                         (tmp_path / "gone", "gone is a symbolic link to nothing")):
        result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", out, "--device", "cpu",
                        "--cache-dir", tmp_path / "cache", "-q")
        assert result.exit_code == 2 and f"{out}: --out cannot be created: " in result.output, result.output
        assert problem in result.output and not (tmp_path / "cache").exists()


def test_evaluate_report_names_the_model_data_index_and_scoring_it_used(built_index, trained_run, tiny_synth, tmp_path):
    """The printed lines name the back end and score each figure is of; report.json alone said neither, nor which
    dataset and index it scored, and called an ONNX model a checkpoint."""
    index = tmp_path / "spk.faiss"
    shutil.copy(built_index / "spk.faiss", index)
    shutil.copy(built_index / "spk.faiss.json", f"{index}.json")
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--index", index, "--calibrate",
                    "--max-pairs", 50, "--out", tmp_path / "report", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report" / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"report.json holds a bare {name}"))
    backend = SpeakerIndex.load(index).backend.kind
    assert report["inputs"] == {
        "model": str(trained_run / "best.pt"), "model_kind": "checkpoint",
        "model_sha256": sha256_file(trained_run / "best.pt"), "data": str(tiny_synth), "trials": None,
        "trials_root": None, "max_pairs": 50, "index": str(index), "backend": backend, "score_norm": "none",
        "calibrate": True}
    assert f"verification ({backend} back end): EER {report['verification_backend']['eer']:.3f}" in result.output


def test_evaluate_report_digest_is_of_the_checkpoint_it_scored(trained_run, tiny_synth, tmp_path, monkeypatch):
    """A training run replaces RUN/last.pt while evaluate embeds with it: the digest was taken after the embedding,
    so report.json named the new file's content beside figures scored with the old weights."""
    from voxaug.embeddings.embedders import CheckpointEmbedder

    model = tmp_path / "last.pt"
    shutil.copy(trained_run / "best.pt", model)
    scored = sha256_file(model)
    embed_store = CheckpointEmbedder.embed_store

    def embed_while_the_run_saves(self, *args, **kwargs):
        model.write_bytes(b"the run's next checkpoint")
        return embed_store(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointEmbedder, "embed_store", embed_while_the_run_saves)
    result = invoke("evaluate", tiny_synth, "--ckpt", model, "--max-pairs", 50, "--out", tmp_path / "report",
                    "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["inputs"]["model_sha256"] == scored


def test_a_report_file_that_is_a_folder_is_refused_before_any_work(trained_run, tiny_synth, tmp_path):
    """Found only when written, after all the embedding, and with the earlier map already replaced by one that the
    report kept no longer matches."""
    out = tmp_path / "report"
    (out / "report.json").mkdir(parents=True)
    (out / "embeddings_map.png").write_bytes(b"earlier map")
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", out, "--device", "cpu",
                    "--cache-dir", tmp_path / "cache", "-q")
    assert (out / "embeddings_map.png").read_bytes() == b"earlier map" and not (tmp_path / "cache").exists()
    assert result.exit_code == 2, result.output
    expected = f"error: {out / 'report.json'}: --out's report is an existing folder; expected a file name\n"
    assert result.output == expected


@pytest.mark.parametrize("calibrate", [[], ["--calibrate"]])
def test_evaluate_refuses_an_index_of_fewer_than_two_speakers_before_embedding(trained_run, tiny_synth, tmp_path,
                                                                              calibrate):
    """The open-set figures need a second enrolled speaker; evaluate used to embed everything first and then fail
    (naming calibration even without --calibrate, or, with no speaker left, the validation speakers)."""
    index = tmp_path / "one.faiss"
    enrol = tiny_synth / "unseen" / "enroll" / "new000"
    result = invoke("enroll", "--index", index, "--speaker", "new000", "--ckpt", trained_run / "best.pt", "--device",
                    "cpu", "-q", enrol)
    assert result.exit_code == 0, result.output
    for left in (1, 0):
        if left == 0:
            assert invoke("enroll", "--index", index, "--remove", "new000").exit_code == 0
        before = (tmp_path / "one.faiss.json").read_bytes()
        result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--index", index, *calibrate,
                        "--out", tmp_path / "report", "--device", "cpu", "--cache-dir", tmp_path / "cache", "-q")
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"holds {left} enrolled speaker(s)" in result.output and "at least two" in result.output
        assert not (tmp_path / "cache").exists() and not (tmp_path / "report").exists()  # refused before any work
        assert (tmp_path / "one.faiss.json").read_bytes() == before


def test_a_map_of_two_clips_is_drawn_by_tsne(tmp_path):
    from voxaug.embeddings.evaluation import LabelledEmbeddings, embedding_map

    two = LabelledEmbeddings(np.eye(2, 8, dtype=np.float32), np.array(["a", "b"]))
    embedding_map({"validation": two}, tmp_path / "map.png", "tsne", 0)
    assert (tmp_path / "map.png").stat().st_size > 0


def test_evaluate_refuses_a_dataset_of_other_speakers_in_one_line(trained_run, tiny_synth, tmp_path):
    other = tiny_synth / "unseen" / "enroll"  # <speaker>/ folders of speakers the checkpoint never trained on
    result = invoke("evaluate", other, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report", "--device", "cpu",
                    "--cache-dir", tmp_path / "cache", "-q")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert str(other) in result.output and "the model was trained on" in result.output
    assert not (tmp_path / "report").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # refused before packing


def test_embed_refuses_an_index_whose_sidecar_path_is_a_folder_before_writing_anything(trained_run, tiny_synth,
                                                                                         tmp_path):
    (tmp_path / "spk.faiss.json").mkdir()
    result = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb",
                    "--index", tmp_path / "spk.faiss", "--device", "cpu", "-q")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "spk.faiss.json" in result.output and "existing folder" in result.output
    assert not (tmp_path / "emb").exists() and not (tmp_path / "spk.faiss").exists()


def test_embed_replaces_an_index_with_enrolled_speakers_only_when_told(built_index, trained_run, tiny_synth, tmp_path):
    """An index holds enrolments that only `enroll` made: embed --index keeps them unless --replace is given."""
    for name in ("spk.faiss", "spk.faiss.json"):
        shutil.copy(built_index / name, tmp_path / name)
    before = json.loads((tmp_path / "spk.faiss.json").read_text())["labels"]
    command = ["embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb",
               "--index", tmp_path / "spk.faiss", "--device", "cpu", "-q"]
    refused = invoke(*command)
    assert refused.exit_code == 2 and "--replace" in refused.output, refused.output
    assert json.loads((tmp_path / "spk.faiss.json").read_text())["labels"] == before
    replaced = invoke(*command, "--replace")
    assert replaced.exit_code == 0, replaced.output
    after = json.loads((tmp_path / "spk.faiss.json").read_text())["labels"]
    unseen = {folder.name for folder in (tiny_synth / "unseen" / "enroll").iterdir()}
    assert unseen <= set(before) and not unseen & set(after) and len(after) == len(before) - len(unseen)


def test_remove_counts_the_speakers_left_in_words(trained_run, tiny_synth, tmp_path):
    """The count was always plural: `removed a; 1 speakers remain`."""
    index = tmp_path / "spk.faiss"
    for speaker_dir in sorted((tiny_synth / "unseen" / "enroll").iterdir()):
        result = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", speaker_dir.name,
                        "--device", "cpu", "-q", speaker_dir)
        assert result.exit_code == 0, result.output
    for name, left in (("new000", "1 speaker remains"), ("new001", "0 speakers remain")):
        result = invoke("enroll", "--index", index, "--remove", name)
        assert result.exit_code == 0 and result.output == f"removed {name}; {left} in {index}\n", result.output


def _files_and_trials(tmp_path: Path, *names: str) -> tuple[Path, Path]:
    """A DATA folder holding ``names`` (read_trials checks only that they exist), and where its trials file goes."""
    data = tmp_path / "data"
    data.mkdir()
    for name in names:
        (data / name).write_text("x")
    return data, tmp_path / "trials.txt"


def test_a_trials_file_resolves_the_dataset_folder_once_not_for_every_clip(tmp_path, resolutions_of):
    """Each trial's two clips are resolved and checked to stay inside DATA, whose own resolution was redone for every
    clip: twice per line of a trials file tens of thousands of lines long."""
    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, *(f"c{i}.pt" for i in range(6)))
    trials.write_text("".join(f"{int(i % 2 == 0)} c{i}.pt c{i + 1}.pt\n" for i in range(5)))
    resolved_roots = resolutions_of(data)
    read = read_trials(trials, data)
    assert [(t.first.name, t.second.name) for t in read] == [(f"c{i}.pt", f"c{i + 1}.pt") for i in range(5)]
    assert len(resolved_roots) == 1


def test_a_trials_line_naming_no_clip_is_refused_with_its_line_before_anything_is_embedded(tmp_path):
    """A trial naming a file that is not a clip (mapping.json) was refused only after the closed-set embedding, by a
    message naming that file but not the trials file; a path outside DATA or absolute did not say which line."""
    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "b.pt", "mapping.json")
    accepted = ", ".join((".pt",) + audio_suffixes())
    for bad, problem in (("mapping.json", f"line 2: clip 'mapping.json' is not a clip; accepted: {accepted}"),
                         ("../trials.txt", "line 2: clip '../trials.txt' points outside the dataset folder"),
                         (str(data / "a.pt"), f"line 2: clip {str(data / 'a.pt')!r} is absolute")):
        trials.write_text(f"1 a.pt b.pt\n0 a.pt {bad}\n")
        with pytest.raises(VoxaugError) as refused:
            read_trials(trials, data)
        assert str(refused.value).startswith(f"{trials}: {problem}"), str(refused.value)


def test_a_trials_line_may_quote_clip_paths_that_hold_spaces(tmp_path):
    """A speaker folder named ``Ann Lee`` (or a clip ``take 1.wav``) could not be named in a trials file: its line split
    into four words and was refused. Quoted as a shell quotes it, it is read; unquoted lines read as before."""
    from voxaug.embeddings.evaluation import read_trials

    for folder in ("Ann Lee", "bob", "O'Brien"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    data, trials = tmp_path / "data", tmp_path / "trials.txt"
    for name in ("Ann Lee/a.pt", "Ann Lee/b.pt", "bob/c.pt", "O'Brien/d.pt"):
        (data / name).write_text("x")  # read_trials checks only that they exist
    trials.write_text("1 \"Ann Lee/a.pt\" 'Ann Lee/b.pt'\n0 \"Ann Lee/a.pt\" bob/c.pt\n0 bob/c.pt O'Brien/d.pt\n")
    read = read_trials(trials, data)
    named = [(trial.same, *(clip.relative_to(data.resolve()).as_posix() for clip in (trial.first, trial.second)))
             for trial in read]
    assert named == [(True, "Ann Lee/a.pt", "Ann Lee/b.pt"), (False, "Ann Lee/a.pt", "bob/c.pt"),
                     (False, "bob/c.pt", "O'Brien/d.pt")]
    trials.write_text("1 bob/c.pt O'Brien/d.pt\n0 Ann Lee/a.pt bob/c.pt\n")
    with pytest.raises(VoxaugError, match=r"line 2: expected 'LABEL CLIP1 CLIP2' with LABEL 0 or 1, got "
                                          r"'0 Ann Lee/a\.pt bob/c\.pt' \(quote a clip path that holds spaces\)$"):
        read_trials(trials, data)


@pytest.mark.parametrize("line, spaces", [("2 bob/c.pt bob/d.pt", False), ("1 bob/c.pt", False),
                                          ("1 bob/c.pt bob/d.pt bob/e.pt", True), ("0 Ann Lee/a.pt bob/c.pt", True)])
def test_a_trials_line_is_told_to_quote_paths_only_where_it_has_too_many_words(tmp_path, line, spaces):
    """Every refused line was told to quote a clip path that holds spaces, a label of 2 or a missing clip too: the hint
    belongs to a line that splits into more than three words."""
    from voxaug.embeddings.evaluation import read_trials

    (tmp_path / "data" / "bob").mkdir(parents=True)
    trials = tmp_path / "trials.txt"
    trials.write_text(line + "\n")
    with pytest.raises(VoxaugError) as refused:
        read_trials(trials, tmp_path / "data")
    assert str(refused.value).startswith(f"{trials}: line 1: expected 'LABEL CLIP1 CLIP2' with LABEL 0 or 1, got ")
    assert str(refused.value).endswith(" (quote a clip path that holds spaces)") == spaces, str(refused.value)


def test_a_trial_listed_twice_is_refused_naming_both_lines(tmp_path):
    """The same pair of clips on two lines (in either order) was scored twice, and labelled 1 on one line and 0 on
    the other it counted as a same-speaker and a different-speaker trial at once."""
    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "b.pt", "c.pt")
    for repeat, problem in (("0 b.pt a.pt", "line 3: the same pair of clips as line 1, which labels it 1 and this line 0"),
                            ("1 a.pt b.pt", "line 3: the same pair of clips as line 1; list each trial once")):
        trials.write_text(f"1 a.pt b.pt\n0 a.pt c.pt\n{repeat}\n")
        with pytest.raises(VoxaugError) as refused:
            read_trials(trials, data)
        assert str(refused.value).startswith(f"{trials}: {problem}"), str(refused.value)
    trials.write_text("1 a.pt b.pt\n0 a.pt c.pt\n0 b.pt c.pt\n")
    assert len(read_trials(trials, data)) == 3


def test_a_trial_pairing_a_clip_with_itself_is_refused_with_its_line(tmp_path):
    """``1 a.pt a.pt`` (or a.pt and a hard link to it) scored a trivially perfect same-speaker trial and flattered
    the EER."""
    import os

    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "b.pt")
    os.link(data / "a.pt", data / "a_link.pt")
    for line, problem in (("1 a.pt a.pt", "line 2: pairs clip 'a.pt' with itself; a trial compares two different"),
                          ("1 a.pt ./a.pt", "line 2: pairs clip 'a.pt' with itself (as './a.pt')"),
                          ("1 a_link.pt a.pt", "line 2: pairs clip 'a_link.pt' with itself (as 'a.pt')")):
        trials.write_text(f"0 a.pt b.pt\n{line}\n")
        with pytest.raises(VoxaugError) as refused:
            read_trials(trials, data)
        assert str(refused.value).startswith(f"{trials}: {problem}"), str(refused.value)


def test_evaluate_warns_of_trials_whose_labels_contradict_the_datasets_speakers(trained_run, tiny_synth, tmp_path):
    """A trial labelled 1 for clips of two speakers of DATA (or 0 for one speaker's) was scored as given, without a
    word: a wrong label moves the EER. Its count and first line are said; the trials are still scored as labelled."""
    metadata = json.loads((tiny_synth / "metadata.json").read_text())["speakers"]
    (a1, a2), (b1, b2) = ([entry["feature_path"] for entry in entries[:2]] for entries in list(metadata.values())[:2])
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {a1} {a2}\n# a comment\n1 {a1} {b1}\n0 {b1} {b2}\n0 {a2} {b2}\n")
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--trials", trials, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    speakers = list(metadata)[:2]
    assert (f"warning: {trials}: 2 of 4 trials contradict DATA's speaker labels (first: line 3, labelled 1, pairs "
            f"clips of {speakers[0]!r} and {speakers[1]!r}); they are scored as the trials file labels them") \
        in " ".join(result.output.split()), result.output
    assert json.loads((tmp_path / "report" / "report.json").read_text())["verification"]["trials"] == 4
    trials.write_text(f"1 {a1} {a2}\n0 {a1} {b1}\n")
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--trials", trials, "--device", "cpu", "-q")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_a_trial_listed_again_through_a_hard_link_is_refused_naming_both_lines(tmp_path):
    """The repeated-pair check compared paths: ``a.pt b.pt`` labelled 1 and a hard link to a.pt with b.pt labelled 0
    counted one pair as a same-speaker and a different-speaker trial at once."""
    import os

    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "b.pt", "c.pt")
    os.link(data / "a.pt", data / "a_copy.pt")
    trials.write_text("1 a.pt b.pt\n0 a.pt c.pt\n0 b.pt a_copy.pt\n")
    with pytest.raises(VoxaugError) as refused:
        read_trials(trials, data)
    assert str(refused.value).startswith(f"{trials}: line 3: the same pair of clips as line 1, which labels it 1 and "
                                         "this line 0"), str(refused.value)


def test_an_output_file_whose_folder_cannot_be_made_is_refused_before_any_work(trained_run, tiny_synth, tmp_path):
    """predict --out, export --out and embed --index under a file (or a link to nothing) were refused only when
    written, after every clip had been featurised and run through the model."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "a_file" / "nowhere")  # written through: under the file too
    cache = ("--cache-dir", tmp_path / "cache", "--device", "cpu", "-q")
    for folder, problem in (("a_file", "a_file is a file, not a folder"), ("gone", "a_file is a file, not a folder")):
        inside = tmp_path / folder / "deeper"
        for option, out, command in (
                ("--out", inside / "p.csv", ("predict", tiny_synth, "--ckpt", trained_run / "best.pt", *cache)),
                ("--out", inside / "m.onnx", ("export", "--ckpt", trained_run / "last.pt")),
                ("--index", inside / "i.faiss", ("embed", tiny_synth, "--ckpt", trained_run / "last.pt", "--out",
                                                 tmp_path / "emb", *cache))):
            result = invoke(*command, option, out)
            assert result.exit_code == 2 and result.output.startswith(f"error: {out}: {option} cannot be created: ")
            assert problem in result.output and not (tmp_path / "cache").exists() and not (tmp_path / "emb").exists()


def test_a_trial_pairing_a_clip_with_its_own_audio_twin_is_refused_with_its_line(tmp_path):
    """``1 x.pt x.wav``: `voxaug synth` writes each clip's features beside its audio, and folders count the two as one
    clip; the trial scored a cosine of 1.0 between a clip and itself and flattered the EER."""
    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "a.wav", "b.pt")
    trials.write_text("0 a.pt b.pt\n1 a.pt a.wav\n")
    with pytest.raises(VoxaugError) as refused:
        read_trials(trials, data)
    assert str(refused.value).startswith(f"{trials}: line 2: pairs clip 'a.pt' with itself (as 'a.wav')"), \
        str(refused.value)


def test_a_window_shorter_than_a_clip_can_be_is_refused_by_embed_before_anything_is_read(tiny_synth, tmp_path,
                                                                                        monkeypatch):
    """embed loaded the model and read (for audio, featurised) the whole dataset, then refused --window 5."""
    import voxaug.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    result = runner.invoke(app, ["embed", str(tiny_synth), "--ckpt", str(tiny_synth / "mapping.json"), "--out",
                            str(tmp_path / "emb"), "--window", "5", "-q"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --window must be at least 10 frames, got 5"
    assert not (tmp_path / "emb").exists()


def test_a_hop_longer_than_the_window_is_refused_before_anything_is_read(tiny_synth, tmp_path, monkeypatch):
    """`--window 40 --hop 60` embedded frames 0-40 and 60-100 of a long clip and none of 40-60, without a word."""
    import voxaug.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    result = runner.invoke(app, ["embed", str(tiny_synth), "--ckpt", str(tiny_synth / "mapping.json"), "--out",
                            str(tmp_path / "emb"), "--window", "40", "--hop", "60", "-q"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --hop must be at most --window (40 frames), got 60"), result.output
    assert not (tmp_path / "emb").exists()
    with pytest.raises(VoxaugError, match="--hop must be at most --window"):
        embed_tensors(None, [torch.zeros(200, 40)], torch.device("cpu"), window=40, hop=60)


def test_an_output_file_under_a_link_to_a_folder_not_made_yet_is_written_there(trained_run, tmp_path):
    """The writers resolve links and create the folders they write in, so `export --out results/m.onnx` with
    `results` a link to a folder not made yet wrote the file there; output_file refused it as a link to nothing."""
    from voxaug.cli.common import output_file

    (tmp_path / "results").symlink_to(tmp_path / "scratch" / "results")
    out = tmp_path / "results" / "deeper" / "m.onnx"
    assert output_file(out, "--out") == out
    result = invoke("export", "--ckpt", trained_run / "last.pt", "--out", out)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scratch" / "results" / "deeper" / "m.onnx").is_file()


def test_a_trial_listed_again_with_the_audio_twins_of_its_clips_is_refused_naming_both_lines(tmp_path):
    """``1 a.pt b.pt`` then ``0 a.wav b.wav``: the same two clips as folders (and the self-pair rule) count them, yet
    both lines were taken, so the pair was scored twice, once under each label."""
    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "a.wav", "b.pt", "b.wav")
    trials.write_text("1 a.pt b.pt\n0 a.wav b.wav\n")
    with pytest.raises(VoxaugError) as refused:
        read_trials(trials, data)
    assert str(refused.value) == (f"{trials}: line 2: the same pair of clips as line 1, which labels it 1 and this "
                                  "line 0; list each trial once")
    trials.write_text("1 a.pt b.pt\n0 a.wav b.pt\n")  # not the same pair as written, but the same clips
    with pytest.raises(VoxaugError, match="line 2: the same pair of clips as line 1"):
        read_trials(trials, data)


def test_evaluate_refuses_a_model_trained_without_a_validation_split_before_reading_the_dataset(trained_run,
                                                                                               tiny_synth, tmp_path):
    """A run trained with ``--val-fraction 0`` has no validation split, which evaluate always scores (with --test
    and --trials too): it was said only after the whole dataset was featurised and packed."""
    from voxaug.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(trained_run / "best.pt")
    state["config"]["val_fraction"] = 0.0
    save_checkpoint(tmp_path / "no-val.pt", state)
    result = invoke("evaluate", tiny_synth, "--ckpt", tmp_path / "no-val.pt", "--out", tmp_path / "report", "--device",
                    "cpu", "--cache-dir", tmp_path / "cache", "-q")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: {tmp_path / 'no-val.pt'}: no validation utterances: the run was trained "
                                    "with --val-fraction 0"), result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "report").exists()


def test_a_new_speaker_grows_a_loaded_hnsw_speaker_index_in_place_and_an_append_rebuilds_it(tmp_path, monkeypatch):
    """Enrolling a new speaker into a --per speaker HNSW index rebuilt the whole graph (about 10 s at 20,000
    speakers, minutes at a million); as docs/scaling.md says, only --remove and appends rebuild."""
    import faiss

    index = SpeakerIndex(dim=4, hnsw=True)
    index.add("s1", np.eye(4)[:2])
    index.add("s2", np.eye(4)[2:])
    index.save(tmp_path / "i.faiss")
    real_hnsw = faiss.IndexHNSWFlat

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the HNSW graph was rebuilt for a new speaker")

    monkeypatch.setattr("faiss.IndexHNSWFlat", no_rebuild)
    loaded = SpeakerIndex.load(tmp_path / "i.faiss")
    graph = loaded.faiss_index()
    loaded.add("s3", np.array([[1.0, -1.0, 0.0, 0.0], [1.0, -0.9, 0.0, 0.0]]))
    assert loaded.faiss_index() is graph and graph.ntotal == 3
    assert np.allclose(graph.reconstruct_n(0, 3), loaded.vectors)
    assert loaded.search(np.array([[0.6, -0.8, 0.0, 0.0]]), 1)[0][0][0] == "s3"
    loaded.save(tmp_path / "i.faiss")
    assert SpeakerIndex.load(tmp_path / "i.faiss").labels == ["s1", "s2", "s3"]

    monkeypatch.setattr("faiss.IndexHNSWFlat", real_hnsw)
    loaded.add("s1", np.array([[0.0, 1.0, 0.0, 0.0]]), append=True)  # its centroid moves: the graph is rebuilt
    assert loaded.faiss_index() is not graph and loaded.faiss_index().ntotal == 3
    assert np.allclose(loaded.faiss_index().reconstruct_n(0, 3), loaded.vectors)


@pytest.mark.parametrize("per", ["speaker", "utterance"])
def test_an_hnsw_index_saved_with_faiss_s_default_ef_search_is_searched_at_voxaug_s(tmp_path, per):
    """The first indexes (version-1 sidecars, until 2026-11-25) were saved with FAISS's efSearch of 16, and a loaded
    graph is searched as saved: those indexes kept searching at 16, not the documented 128, and lost recall."""
    index = SpeakerIndex(dim=4, mode=per, hnsw=True)
    index.add("s1", np.eye(4)[:2])
    index.add("s2", np.eye(4)[2:])
    index.faiss_index().hnsw.efSearch = 16  # as faiss_index() built it before efSearch was set
    index.save(tmp_path / "i.faiss")
    loaded = SpeakerIndex.load(tmp_path / "i.faiss")
    assert loaded.faiss_index().hnsw.efSearch == 128
    assert loaded.search(np.eye(4)[2:3], 1)[0][0][0] == "s2"


def test_enrolling_clips_that_cancel_out_is_refused_and_the_index_is_unchanged(tmp_path):
    """Opposite embeddings average to zero: the centroid was NaN, stored as is, and its mean norm 0 made the saved
    index unloadable (its sidecar refused), losing every speaker enrolled before."""
    index = SpeakerIndex(dim=3)
    index.add("bob", np.array([[0.0, 1.0, 0.0]], dtype=np.float32), digests=["0" * 16])
    index.add("alice", np.array([[1.0, 0.0, 0.0]], dtype=np.float32))
    with pytest.raises(VoxaugError, match="speaker 'carol': the clips' embeddings cancel out"):
        index.add("carol", np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=np.float32))
    with pytest.raises(VoxaugError, match="speaker 'alice': the clips' embeddings cancel out"):
        index.add("alice", np.array([[-1.0, 0.0, 0.0]], dtype=np.float32), append=True, digests=["1" * 16])
    assert np.isfinite(index.vectors).all() and index.labels == ["bob", "alice"]
    assert index.counts == {"bob": 1, "alice": 1} and index.clip_digests == {"bob": ["0" * 16]}
    index.save(tmp_path / "speakers.faiss")
    assert SpeakerIndex.load(tmp_path / "speakers.faiss").labels == ["bob", "alice"]


def test_appending_to_a_speaker_of_an_utterance_index_counts_every_clip(tmp_path):
    """--append in an utterance index adds rows and must add to the speaker's count, which the sidecar's clip
    digests, the calibration record and the voting depth rely on."""
    index = SpeakerIndex(dim=3, mode="utterance")
    index.add("alice", np.eye(3)[:2])
    index.add("alice", np.eye(3)[2:], append=True)
    assert index.labels == ["alice"] * 3 and index.counts == {"alice": 3}
    index.save(tmp_path / "u.faiss")
    assert SpeakerIndex.load(tmp_path / "u.faiss").counts == {"alice": 3}


def test_speakers_enrolled_one_at_a_time_into_an_hnsw_index_still_reach_its_upper_layers(tmp_path):
    """A loaded graph draws HNSW levels from a generator FAISS seeds afresh on every load, so each speaker enrolled
    by its own command took the same first draw, level 0: the graph lost its hierarchy (a flat NSW, slower to
    search than the rebuilt graph it replaced)."""
    import faiss

    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(200, 8))
    index = SpeakerIndex(dim=8, hnsw=True)
    index.add("s0", centroids[:1])
    for i in range(1, len(centroids)):  # each one as a separate enroll: the index saved, then loaded again
        index.built = faiss.deserialize_index(faiss.serialize_index(index.faiss_index()))
        index.add(f"s{i}", centroids[i:i + 1])
    levels = faiss.vector_to_array(index.faiss_index().hnsw.levels) - 1
    batch = faiss.IndexHNSWFlat(8, 32, faiss.METRIC_INNER_PRODUCT)
    batch.add(index.vectors)
    assert index.faiss_index().ntotal == 200 and (levels > 0).sum() > 0, "every speaker stayed on level 0"
    assert abs((levels > 0).sum() - (faiss.vector_to_array(batch.hnsw.levels) > 1).sum()) <= 8


@pytest.mark.parametrize("mode, rows", [("speaker", 1), ("utterance", 3)])
def test_enrolling_speakers_one_by_one_does_not_copy_every_vector_each_time(mode, rows):
    """Each enrolment concatenated the whole vector matrix, so N speakers (enroll --speakers-dir, embed --index)
    copied O(N²) rows: 8,000 speakers took 8 s, 80,000 utterances 65 s. The vectors now grow in a buffer whose room
    doubles, reallocated O(log N) times, and hold the same rows."""
    index = SpeakerIndex(dim=4, mode=mode)
    rng = np.random.default_rng(0)
    added, held, buffers = [], [], set()
    for i in range(300):
        embeddings = rng.standard_normal((rows, 4)).astype(np.float32)
        index.add(f"s{i}", embeddings)
        added.append(embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True) if mode == "utterance"
                     else embeddings.sum(0, keepdims=True) / np.linalg.norm(embeddings.sum(0)))
        held.append(index.vectors)  # kept alive, so that a freed buffer's address is not reused and counted once
        buffers.add(index.vectors.ctypes.data)
    assert len(buffers) <= 12, f"the vectors were reallocated {len(buffers)} times for 300 enrolments"
    np.testing.assert_allclose(index.vectors, np.concatenate(added), atol=1e-6)
    np.testing.assert_allclose(held[99], np.concatenate(added[:100]), atol=1e-6)  # an earlier view is unchanged
    assert len(index.labels) == 300 * rows and index.faiss_index().ntotal == 300 * rows


def test_appending_to_a_speaker_replaces_its_row_in_place():
    """--append dropped the speaker's row (copying every other row) and added it at the end: O(N) per speaker, so
    `enroll --speakers-dir --append` over 50,000 speakers took about an hour (5,000 of them 320 s). The centroid is
    now replaced where it is, and the FAISS index, which cannot replace a vector, is rebuilt."""
    rng = np.random.default_rng(0)
    index = SpeakerIndex(dim=4)
    first = {f"s{i}": rng.standard_normal((2, 4)).astype(np.float32) for i in range(6)}
    for name, embeddings in first.items():
        index.add(name, embeddings)
    index.faiss_index()  # built before the append: it must not answer with the old centroid
    vectors, more = index.vectors, rng.standard_normal((3, 4)).astype(np.float32)
    index.add("s3", more, append=True)
    units = np.concatenate([first["s3"], more])
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    mean = units.mean(axis=0)
    assert index.vectors is vectors and index.labels == [f"s{i}" for i in range(6)]
    np.testing.assert_allclose(index.vectors[3], mean / np.linalg.norm(mean), atol=1e-6)
    assert index.counts["s3"] == 5 and index.mean_norms["s3"] == pytest.approx(np.linalg.norm(mean), abs=1e-6)
    assert index.search(mean[None], 1)[0][0] == ("s3", pytest.approx(1.0, abs=1e-5))
    assert index.faiss_index().ntotal == 6


def test_one_enrolment_into_a_loaded_index_does_not_double_the_memory_of_its_vectors(tmp_path):
    """The growing buffer doubled whatever it grew from: one utterance enrolled into a loaded index of N vectors
    allocated room for 2N (for a million 192-D vectors, 1.5 GB where the index's copy is 0.77 GB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    index = SpeakerIndex(dim=64, mode="utterance")
    index.add("a", rng.standard_normal((20000, 64)).astype(np.float32))
    index.save(tmp_path / "big.faiss")
    loaded = SpeakerIndex.load(tmp_path / "big.faiss")
    more = rng.standard_normal((3, 64)).astype(np.float32)
    tracemalloc.start()
    try:
        loaded.add("b", more)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * loaded.vectors.nbytes, f"{peak / loaded.vectors.nbytes:.2f}x the vectors' memory"
    np.testing.assert_allclose(loaded.vectors[-3:], more / np.linalg.norm(more, axis=1, keepdims=True), atol=1e-6)
    assert len(loaded.labels) == 20003 and loaded.faiss_index().ntotal == 20003


def test_a_long_malformed_trials_line_is_echoed_cut_short(tmp_path):
    """A trials line that does not parse was echoed whole: a line of 10,000 characters gave an error of 10,000; the
    echo is cut to 80 characters with an ellipsis, the file and line still named."""
    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "b.pt")
    for bad, problem in ((f"0 a.pt {'x' * 10000} extra", "expected 'LABEL CLIP1 CLIP2' with LABEL 0 or 1, got '0 a.pt x"),
                         (f"0 a.pt {'y' * 200}.pt", "clip 'yyy")):
        trials.write_text(f"1 a.pt b.pt\n{bad}\n")
        with pytest.raises(VoxaugError) as refused:
            read_trials(trials, data)
        message = str(refused.value)
        assert message.startswith(f"{trials}: line 2: {problem}") and "…" in message and len(message) < 300, message


def test_a_trial_clip_name_too_long_for_the_file_system_is_refused_with_its_line(tmp_path):
    """A clip name of 10,000 characters made ``is_file`` raise ENAMETOOLONG: the error named the 10,000-character
    path but neither the trials file nor the line."""
    from voxaug.embeddings.evaluation import read_trials

    data, trials = _files_and_trials(tmp_path, "a.pt", "b.pt")
    trials.write_text(f"1 a.pt b.pt\n0 a.pt {'y' * 10000}.pt\n")
    with pytest.raises(VoxaugError) as refused:
        read_trials(trials, data)
    message = str(refused.value)
    assert message.startswith(f"{trials}: line 2: clip 'yyy") and "is not a usable path (File name too long)" in message
    assert len(message) < 300, message


def test_evaluate_says_once_per_folder_which_speaker_folders_hold_no_clips(trained_run, tiny_synth, tmp_path):
    """evaluate reads --enroll and --test several times (checks, then embedding): a speaker folder without clips
    was left out silently, and is now one warning line per folder, not one per reading."""
    enroll, test = tmp_path / "enroll", tmp_path / "test"
    shutil.copytree(tiny_synth / "unseen" / "enroll", enroll)
    shutil.copytree(tiny_synth / "unseen" / "test", test)
    for folder in (enroll, test):
        (folder / "zed").mkdir()
    result = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--enroll", enroll, "--test", test, "-q")
    assert result.exit_code == 0, result.output
    clips = ", ".join((".pt",) + audio_suffixes())
    assert [line for line in result.stderr.splitlines() if "hold" in line] == [
        f"warning: {folder}: 1 of the 3 speaker folders holds no clips ('zed'), so it is left out (clips are {clips})"
        for folder in (enroll, test)]


def test_evaluate_reads_voxceleb_trials_relative_to_the_test_sets_folder(trained_run, tiny_synth, tmp_path):
    """VoxCeleb1's veri_test2.txt names its clips under the test set's wav/ (``1 id10270/x6uYqmx31kE/00001.wav …``),
    whose speakers are not the training DATA's: relative to DATA it could not be scored at all."""
    wav = tmp_path / "vox1_test" / "wav"
    shutil.copytree(tiny_synth / "unseen" / "test", wav)
    clips = sorted(p.relative_to(wav).as_posix() for p in wav.glob("*/*.wav"))[:2] \
        + sorted(p.relative_to(wav).as_posix() for p in wav.glob("new001/*.wav"))[:2]
    trials = tmp_path / "veri_test2.txt"
    trials.write_text(f"1 {clips[0]} {clips[1]}\n0 {clips[0]} {clips[2]}\n1 {clips[2]} {clips[3]}\n"
                      f"0 {clips[1]} {clips[3]}\n")
    args = ["evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--trials", trials, "-q"]
    missing = invoke(*args, "--out", tmp_path / "r0")
    assert missing.exit_code != 0 and f"line 1: clip '{clips[0]}' not found in {tiny_synth}" in missing.output
    done = invoke(*args, "--trials-root", wav, "--out", tmp_path / "report")
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["verification"]["trials"] == 4 and report["inputs"]["trials_root"] == str(wav)
    alone = invoke("evaluate", tiny_synth, "--ckpt", trained_run / "best.pt", "--trials-root", wav,
                   "--out", tmp_path / "r1")
    assert alone.exit_code != 0 and "pass --trials" in alone.output
