"""embed and evaluate on a dataset whose clips changed since training: the run's own split, said in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voxaug.checkpoint import load_checkpoint, save_checkpoint
from voxaug.cli.main import app
from voxaug.data.audio_store import open_dataset_store
from voxaug.data.sources import open_source_for_model
from voxaug.data.split import stratified_split
from voxaug.data.store import PackedStore
from voxaug.embeddings.embedders import CheckpointEmbedder
from voxaug.embeddings.evaluation import validation_split
from voxaug.embeddings.index import SpeakerIndex
from voxaug.features import FrontendConfig

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def store_of(data: Path, frontend: FrontendConfig) -> PackedStore:
    return open_dataset_store(open_source_for_model(data, frontend, warn=False), None, progress=False)[0]


def trained_split_keys(ckpt: Path, data: Path) -> tuple[set[str], set[str]]:
    """The (training, validation) clip keys the run drew from ``data`` as it was when it trained."""
    embedder = CheckpointEmbedder.load(ckpt, torch.device("cpu"))
    store = store_of(data, embedder.frontend)
    split = embedder.split
    train, val = stratified_split(store.labels, split.val_fraction, split.seed, store.groups, split.version)
    return {store.keys[i] for i in train}, {store.keys[i] for i in val}


def changed_copy(data: Path, out: Path, added: int, dropped: set[str]) -> Path:
    """A copy of the HW4 set ``data`` with ``added`` new clips of its first speaker and the ``dropped`` clips gone."""
    shutil.copytree(data, out)
    metadata = json.loads((out / "metadata.json").read_text())
    speakers = metadata["speakers"]
    for name, entries in speakers.items():
        speakers[name] = [entry for entry in entries if entry["feature_path"] not in dropped]
    first = next(iter(speakers.values()))
    for number in range(added):
        entry = dict(first[number])
        entry["feature_path"] = f"added-{number}.pt"
        shutil.copy(out / first[number]["feature_path"], out / entry["feature_path"])
        first.append(entry)
    (out / "metadata.json").write_text(json.dumps(metadata))
    return out


def test_evaluate_scores_the_runs_own_validation_clips_after_clips_were_added_and_removed(trained_run, tiny_synth,
                                                                                          tmp_path):
    """The validation split was rebuilt from DATA as it is now: after clips were added to a speaker and others
    removed, clips the model trained on were scored as validation, without a word. The run's record of its held-out
    clips is used instead, and one line says what changed."""
    train_keys, val_keys = trained_split_keys(trained_run / "best.pt", tiny_synth)
    dropped = {sorted(train_keys)[0], sorted(val_keys)[0]}
    changed = changed_copy(tiny_synth, tmp_path / "data", 3, dropped)
    embedder = CheckpointEmbedder.load(trained_run / "best.pt", torch.device("cpu"))
    store = store_of(changed, embedder.frontend)
    train, val = validation_split(embedder, store)
    assert {store.keys[i] for i in val} == val_keys - dropped
    assert {store.keys[i] for i in train} == train_keys - dropped
    result = invoke("evaluate", changed, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert (f"warning: {changed}: 3 clips added and 2 clips removed since training; evaluate scores the "
            f"{len(val_keys) - 1} of the run's {len(val_keys)} validation clips still there, and leaves the added ones "
            "out of its figures"
            ) in " ".join(result.output.split()), result.output
    assert json.loads((tmp_path / "report" / "report.json").read_text())["val_utterances"] == len(val_keys) - 1


def test_evaluate_refuses_a_dataset_that_holds_none_of_the_runs_validation_clips(trained_run, tiny_synth, tmp_path):
    """With every validation clip removed, evaluate said the run was trained with --val-fraction 0 (or, before the
    record, scored training clips as validation)."""
    _, val_keys = trained_split_keys(trained_run / "best.pt", tiny_synth)
    changed = changed_copy(tiny_synth, tmp_path / "data", 0, val_keys)
    result = invoke("evaluate", changed, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "report",
                    "--device", "cpu", "-q")
    assert result.exit_code == 2, result.output
    assert (f"error: {changed}: none of the run's {len(val_keys)} validation clips is there any more (removed or "
            "renamed since training); evaluate scores the run's own validation split") in " ".join(result.output.split())
    assert not (tmp_path / "report").exists()


def test_embed_index_of_a_grown_dataset_is_fitted_and_enrolled_on_the_runs_own_split(trained_run, tiny_synth,
                                                                                     tmp_path):
    """embed --index fitted the back end, drew the cohort and enrolled the speakers on a split rebuilt from DATA
    now: added clips moved clips the model trained on into the cohort and validation clips into the entries. With
    clips added and a validation clip removed, the index is the one the unchanged dataset gives."""
    _, val_keys = trained_split_keys(trained_run / "last.pt", tiny_synth)
    changed = changed_copy(tiny_synth, tmp_path / "data", 3, {sorted(val_keys)[0]})
    outputs = {}
    for name, data in (("before", tiny_synth), ("after", changed)):
        result = invoke("embed", data, "--ckpt", trained_run / "last.pt", "--out", tmp_path / name, "--index",
                        tmp_path / name / "spk.faiss", "--backend", "lda", "--lda-dim", "3", "--device", "cpu", "-q")
        assert result.exit_code == 0, result.output
        outputs[name] = " ".join(result.output.split())
    assert "warning" not in outputs["before"], outputs["before"]
    assert (f"warning: {changed}: 3 clips added and 1 clip removed since training; the index is built on the run's "
            "own split") in outputs["after"], outputs["after"]
    queries = np.load(tmp_path / "before" / "embeddings.npy")
    before, after = (SpeakerIndex.load(tmp_path / name / "spk.faiss").search(queries, 3) for name in ("before", "after"))
    assert [[name for name, _ in ranked] for ranked in before] == [[name for name, _ in ranked] for ranked in after]
    assert np.allclose([[score for _, score in ranked] for ranked in before],
                       [[score for _, score in ranked] for ranked in after], atol=1e-4)


def test_a_clip_read_from_its_twin_of_another_suffix_is_the_same_clip():
    """A run trained from ``x.wav`` (``--augment wave``) while ``x.pt`` exists is embedded from ``x.pt``."""
    from voxaug.data.split import recorded_split, split_record

    keys = ["a/x.wav", "a/y.wav", "b/z.wav", "b/w.wav"]
    record = split_record(keys, np.array([0, 2]), np.array([1, 3]))
    found = recorded_split([key.replace(".wav", ".pt") for key in keys], record)
    assert (found.train.tolist(), found.val.tolist(), found.added, found.removed) == ([0, 2], [1, 3], 0, 0)
    renamed = recorded_split(["a/x.wav", "a/renamed.wav", "b/z.wav", "b/w.wav"], record)
    assert (renamed.train.tolist(), renamed.val.tolist(), renamed.added, renamed.removed) == ([0, 2], [3], 1, 1)


def test_a_run_saved_before_it_recorded_its_split_clips_still_evaluates_and_says_the_count_changed(
        trained_run, tiny_synth, tmp_path):
    """Old runs keep working as before; where the dataset's clip count changed, one line says the split is rebuilt."""
    state = load_checkpoint(trained_run / "best.pt")
    state.pop("split_clips", None)
    save_checkpoint(tmp_path / "old.pt", state)
    changed = changed_copy(tiny_synth, tmp_path / "data", 2, set())
    result = invoke("evaluate", changed, "--ckpt", tmp_path / "old.pt", "--out", tmp_path / "report", "--device", "cpu",
                    "-q")
    assert result.exit_code == 0, result.output
    count = state["clips"]["count"]
    assert (f"warning: {changed}: holds {count + 2} clips, the run trained on {count}: its split is rebuilt from the "
            "clips there now") in " ".join(result.output.split()), result.output
    result = invoke("evaluate", tiny_synth, "--ckpt", tmp_path / "old.pt", "--out", tmp_path / "report2", "--device",
                    "cpu", "-q")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_a_checkpoint_whose_split_clips_are_damaged_is_refused_in_one_line(trained_run, tmp_path):
    """The record decides which clips evaluate scores: one of another shape is a damaged file, not a split."""
    from voxaug.checkpoint import load_model
    from voxaug.errors import VoxaugError

    state = load_checkpoint(trained_run / "best.pt")
    state["split_clips"] = {"train": [1, 2], "val": torch.zeros(2, dtype=torch.int64)}
    save_checkpoint(tmp_path / "damaged.pt", state)
    with pytest.raises(VoxaugError, match=r"damaged\.pt: checkpoint field 'split_clips' must hold the 'train' and "
                                          r"'val' clip digests \(1-D int64 tensors\)"):
        load_model(tmp_path / "damaged.pt")


def test_embed_index_through_the_python_api_model_is_fitted_on_the_runs_own_split(trained_run, tiny_synth, tmp_path):
    """``embed --model`` takes the run's checkpoint through the Python API's SpeakerModel, which rebuilt the split
    from DATA as it is now, so a grown dataset gave another index than ``--ckpt`` and said nothing."""
    _, val_keys = trained_split_keys(trained_run / "last.pt", tiny_synth)
    changed = changed_copy(tiny_synth, tmp_path / "data", 3, {sorted(val_keys)[0]})
    outputs = {}
    for name, option in (("ckpt", "--ckpt"), ("model", "--model")):
        result = invoke("embed", changed, option, trained_run / "last.pt", "--out", tmp_path / name, "--index",
                        tmp_path / name / "spk.faiss", "--backend", "lda", "--lda-dim", "3", "--device", "cpu", "-q")
        assert result.exit_code == 0, result.output
        outputs[name] = " ".join(result.output.split())
    assert (f"warning: {changed}: 3 clips added and 1 clip removed since training; the index is built on the run's "
            "own split") in outputs["model"], outputs["model"]
    queries = np.load(tmp_path / "ckpt" / "embeddings.npy")
    by_ckpt, by_model = (SpeakerIndex.load(tmp_path / name / "spk.faiss").search(queries, 3)
                         for name in ("ckpt", "model"))
    assert [[name for name, _ in ranked] for ranked in by_ckpt] == [[name for name, _ in ranked] for ranked in by_model]
    assert np.allclose([[score for _, score in ranked] for ranked in by_ckpt],
                       [[score for _, score in ranked] for ranked in by_model], atol=1e-4)


def test_evaluate_of_a_checkpoint_given_as_model_scores_the_runs_own_validation_clips(trained_run, tiny_synth,
                                                                                      tmp_path):
    """``evaluate --model`` loads the run's checkpoint as the Python API's SpeakerModel, whose split was rebuilt from
    DATA as it is now: clips the model trained on were scored as validation once clips were added, without a word."""
    _, val_keys = trained_split_keys(trained_run / "best.pt", tiny_synth)
    changed = changed_copy(tiny_synth, tmp_path / "data", 3, {sorted(val_keys)[0]})
    reports = {}
    for name, option in (("ckpt", "--ckpt"), ("model", "--model")):
        result = invoke("evaluate", changed, option, trained_run / "best.pt", "--out", tmp_path / name,
                        "--device", "cpu", "-q")
        assert result.exit_code == 0, result.output
        assert f"warning: {changed}: 3 clips added and 1 clip removed since training" in " ".join(result.output.split())
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert reports["model"]["val_utterances"] == reports["ckpt"]["val_utterances"] == len(val_keys) - 1
    assert reports["model"]["cosine_knn_accuracy"] == pytest.approx(reports["ckpt"]["cosine_knn_accuracy"])


def test_benchmarks_score_the_runs_own_split_of_a_changed_dataset(trained_run, tiny_synth, tmp_path, monkeypatch):
    """backend_ablation's index and validation pairs (and, through them, calibration_holdout's, asnorm_cohorts' and
    retrain_ceiling's) came from a split rebuilt from DATA as it is now, so on a grown dataset they scored other clips
    than evaluate does."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import asnorm_cohorts
    import backend_ablation

    _, val_keys = trained_split_keys(trained_run / "best.pt", tiny_synth)
    changed = changed_copy(tiny_synth, tmp_path / "data", 3, {sorted(val_keys)[0]})
    found = {name: backend_ablation.embed_everything(trained_run / "best.pt", data, None)
             for name, data in (("before", tiny_synth), ("after", changed))}
    queries = found["before"]["unseen_test"].embeddings
    before, after = (backend_ablation.enrolled_index(found[name], "lda", "none").search(queries, 3)
                     for name in ("before", "after"))
    assert [[name for name, _ in ranked] for ranked in before] == [[name for name, _ in ranked] for ranked in after]
    assert np.allclose([[score for _, score in ranked] for ranked in before],
                       [[score for _, score in ranked] for ranked in after], atol=1e-4)
    held_out = len(val_keys) - 1
    assert asnorm_cohorts.sweep(found["after"], "none", "validation")[0]["trials"] == held_out * (held_out - 1) // 2


def test_embed_index_refuses_a_speaker_none_of_whose_training_clips_is_left(trained_run, tiny_synth, tmp_path):
    """With every clip a speaker was trained on renamed (features extracted again under new names), embed --index
    wrote an index without that speaker, or with every clip renamed one of no speakers, and exited 0."""
    changed = changed_copy(tiny_synth, tmp_path / "data", 0, set())
    metadata = json.loads((changed / "metadata.json").read_text())
    first = next(iter(metadata["speakers"]))
    for entry in metadata["speakers"][first]:
        renamed = f"again-{entry['feature_path']}"
        (changed / entry["feature_path"]).rename(changed / renamed)
        entry["feature_path"] = renamed
    (changed / "metadata.json").write_text(json.dumps(metadata))
    result = invoke("embed", changed, "--ckpt", trained_run / "last.pt", "--out", tmp_path / "out", "--index",
                    tmp_path / "out" / "spk.faiss", "--backend", "none", "--score-norm", "none", "--device", "cpu", "-q")
    assert result.exit_code == 2, result.output
    assert (f"error: {changed}: speaker {first!r} has no clip the run trained on (each was removed, renamed or added "
            "since training); embed --index enrols each speaker from the run's own training split"
            ) in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out" / "spk.faiss").exists()


def test_an_export_carries_the_runs_split_so_evaluate_and_embed_with_it_find_the_clips_it_held_out(
        trained_run, tiny_synth, tmp_path):
    """An ONNX export recorded the run's seed and validation fraction but not which clips it held out, so evaluate and
    embed --model on a dataset changed since training rebuilt the split from the clips there now: clips the model
    trained on were scored as validation, without a word. The export carries the checkpoint's record, used as its."""
    from voxaug.embeddings.embedders import ExportEmbedder
    from voxaug.export import export_onnx

    train_keys, val_keys = trained_split_keys(trained_run / "best.pt", tiny_synth)
    dropped = {sorted(train_keys)[0], sorted(val_keys)[0]}
    changed = changed_copy(tiny_synth, tmp_path / "data", 3, dropped)
    onnx_model = export_onnx(trained_run / "best.pt", tmp_path / "model.onnx").path
    embedder = ExportEmbedder.load(onnx_model)
    store = store_of(changed, embedder.frontend)
    train, val = validation_split(embedder, store)
    assert {store.keys[i] for i in val} == val_keys - dropped
    assert {store.keys[i] for i in train} == train_keys - dropped
    result = invoke("evaluate", changed, "--model", onnx_model, "--out", tmp_path / "report", "-q")
    assert result.exit_code == 0, result.output
    assert (f"warning: {changed}: 3 clips added and 2 clips removed since training; evaluate scores the "
            f"{len(val_keys) - 1} of the run's {len(val_keys)} validation clips still there"
            ) in " ".join(result.output.split()), result.output
    assert json.loads((tmp_path / "report" / "report.json").read_text())["val_utterances"] == len(val_keys) - 1
    result = invoke("embed", changed, "--model", onnx_model, "--out", tmp_path / "embedded", "--index",
                    tmp_path / "embedded" / "spk.faiss", "--backend", "lda", "--lda-dim", "3", "-q")
    assert result.exit_code == 0, result.output
    assert (f"warning: {changed}: 3 clips added and 2 clips removed since training; the index is built on the run's "
            "own split") in " ".join(result.output.split()), result.output


def test_an_export_made_before_exports_carried_the_split_rebuilds_it_from_the_dataset_as_before(
        trained_run, tiny_synth, tmp_path, monkeypatch):
    """Old exports hold no record of their clips: the split is rebuilt from the labels, as it always was."""
    import voxaug.export
    from voxaug.embeddings.embedders import ExportEmbedder
    from voxaug.runtime.onnx_model import OnnxSpeakerModel

    full = voxaug.export._metadata
    monkeypatch.setattr(voxaug.export, "_metadata", lambda *args: {
        key: value for key, value in full(*args).items() if key not in ("split_clips", "training_clip_count")})
    old = voxaug.export.export_onnx(trained_run / "best.pt", tmp_path / "old.onnx").path
    model = OnnxSpeakerModel.load(old)
    assert model.split_clips is None and model.clip_count is None
    train_keys, val_keys = trained_split_keys(trained_run / "best.pt", tiny_synth)
    embedder = ExportEmbedder.load(old)
    store = store_of(tiny_synth, embedder.frontend)
    train, val = validation_split(embedder, store)
    assert ({store.keys[i] for i in train}, {store.keys[i] for i in val}) == (train_keys, val_keys)


def test_an_exports_record_of_its_clips_is_the_checkpoints():
    """The record travels as text in the export's metadata and comes back as the same digests; text that is not
    one is refused rather than read as some other split."""
    from voxaug.data.split import split_record
    from voxaug.runtime.training_split import decode_split_clips, encode_split_clips

    record = split_record(["a/1.pt", "a/2.pt", "b/3.pt"], np.array([0, 2]), np.array([1]))
    decoded = decode_split_clips(encode_split_clips(record))
    assert sorted(decoded) == ["train", "val"]
    assert all(decoded[part].dtype == np.int64 and decoded[part].tolist() == record[part].tolist() for part in decoded)
    for damaged in ('{"train": "AAAA"}', '{"train": "AAAA", "val": "AA"}', "[]", '{"train": "!!!!", "val": ""}'):
        with pytest.raises(ValueError):
            decode_split_clips(damaged)
