"""`voxaug export` and the torch-free ONNX runtime: round trip, metadata, parity with torch, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from voxaug.audio import read_audio
from voxaug.checkpoint import load_checkpoint, load_model, save_checkpoint
from voxaug.cli.main import app
from voxaug.embeddings.extract import MIN_FRAMES
from voxaug.errors import VoxaugError
from voxaug.export import export_onnx
from voxaug.features import log_mel
from voxaug.model import ModelConfig, build_model
from voxaug.runtime.onnx_model import CONTENT_DIGEST_KEY, OnnxSpeakerModel, content_digest
from voxaug.safeio import sha256_file

runner = CliRunner()
MIN_COSINE = 0.9999
LENGTHS = (MIN_FRAMES, MIN_FRAMES + 1, 64, 257, 1000, 3000)


def export(ckpt: Path, out: Path, *extra: str) -> Path:
    result = runner.invoke(app, ["export", "--ckpt", str(ckpt), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    return out


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    ckpt = trained_run / "best.pt"
    return {"ckpt": ckpt, "features": export(ckpt, folder / "model.onnx"),
            "audio": export(ckpt, folder / "audio.onnx", "--with-frontend")}


@pytest.fixture(scope="module")
def utterance(tiny_synth: Path) -> torch.Tensor:
    """Real log-mel frames, 3000 of them: the synthetic set's utterances one after another."""
    tensors = [torch.load(path, weights_only=True) for path in sorted(tiny_synth.glob("uttr-*.pt"))[:40]]
    return torch.cat(tensors)[: max(LENGTHS)]


def torch_outputs(ckpt: Path, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's own model on one utterance (T, n_mels): unit embedding (E,), logits (S,)."""
    model = load_model(ckpt).model
    with torch.no_grad():
        embeddings, logits = model(features[None], torch.tensor([features.shape[0]]))
    return F.normalize(embeddings, dim=1)[0].numpy(), logits[0].numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_export_round_trip_carries_the_metadata(exported):
    state = load_checkpoint(exported["ckpt"])
    for kind, takes_audio in (("features", False), ("audio", True)):
        model = OnnxSpeakerModel.load(exported[kind])
        assert model.takes_audio is takes_audio
        assert model.speakers == state["speakers"]
        assert model.embedding_dim == state["config"]["model"]["embedding_dim"]
        assert model.n_mels == state["config"]["model"]["n_mels"] == model.frontend.n_mels
        assert model.frontend.to_dict() == state["frontend"]
        assert model.min_frames == MIN_FRAMES
        assert model.source_checkpoint_sha256 == sha256_file(exported["ckpt"])
        assert model.sha256 == sha256_file(exported[kind])
        config = state["config"]
        assert model.training_split == (config["seed"], config["val_fraction"], config["split_version"])
        metadata = {entry.key: entry.value for entry in onnx.load(str(exported[kind])).metadata_props}
        assert json.loads(metadata["speakers"]) == state["speakers"]
        assert metadata["voxaug_format"] == "voxaug-onnx-speaker-model" and metadata["voxaug_format_version"] == "1"


def test_onnx_matches_torch_alone_and_in_padded_batches(exported, utterance):
    model = OnnxSpeakerModel.load(exported["features"], threads=1)
    expected = {length: torch_outputs(exported["ckpt"], utterance[:length]) for length in LENGTHS}
    for length in LENGTHS:  # alone
        embedding, logits = model.embed_features(utterance[:length].numpy())
        assert cosine(embedding, expected[length][0]) >= MIN_COSINE, length
        assert logits.argmax() == expected[length][1].argmax(), length
    batch = np.zeros((len(LENGTHS), max(LENGTHS), model.n_mels), np.float32)  # one padded batch, shortest first
    for row, length in enumerate(LENGTHS):
        batch[row, :length] = utterance[:length].numpy()
    embeddings, logits = model.run_features(batch, np.array(LENGTHS))
    assert embeddings.shape == (len(LENGTHS), model.embedding_dim) and logits.shape == (len(LENGTHS), len(model.speakers))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    for row, length in enumerate(LENGTHS):
        assert cosine(embeddings[row], expected[length][0]) >= MIN_COSINE, length
        assert logits[row].argmax() == expected[length][1].argmax(), length


def test_with_frontend_model_matches_torch_front_end_and_model_on_wav_files(exported, tiny_synth):
    model = OnnxSpeakerModel.load(exported["audio"], threads=1)
    waveforms = [read_audio(path, 16000) for path in sorted(tiny_synth.rglob("*.wav"))[:6]]
    batch = np.zeros((len(waveforms), max(len(w) for w in waveforms)), np.float32)
    for row, waveform in enumerate(waveforms):
        batch[row, : len(waveform)] = waveform.numpy()
    embeddings, logits = model.run_audio(batch, np.array([len(w) for w in waveforms]))
    for row, waveform in enumerate(waveforms):
        expected_embedding, expected_logits = torch_outputs(exported["ckpt"], log_mel(waveform))
        alone_embedding, alone_logits = model.embed_waveform(waveform.numpy())
        for embedding, scores in ((embeddings[row], logits[row]), (alone_embedding, alone_logits)):
            assert cosine(embedding, expected_embedding) >= MIN_COSINE, row
            assert scores.argmax() == expected_logits.argmax(), row


def test_features_model_embeds_waveforms_through_the_numpy_front_end(exported, tiny_synth):
    model = OnnxSpeakerModel.load(exported["features"], threads=1)
    waveform = read_audio(sorted(tiny_synth.rglob("*.wav"))[0], 16000)
    expected_embedding, _ = torch_outputs(exported["ckpt"], log_mel(waveform))
    embedding, _ = model.embed_waveform(waveform.numpy())
    assert cosine(embedding, expected_embedding) >= MIN_COSINE


def test_logits_cover_only_the_original_speakers_of_a_speed_perturbed_checkpoint(exported, utterance, tmp_path):
    state = load_checkpoint(exported["ckpt"])
    speakers = len(state["speakers"])
    state["config"]["model"].update(num_classes=3 * speakers, num_speakers=speakers)
    state["class_speakers"] = [c % speakers for c in range(3 * speakers)]
    state["model"]["head.weight"] = torch.randn(3 * speakers, state["model"]["head.weight"].shape[1],
                                                generator=torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path / "speed.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    model = OnnxSpeakerModel.load(export(tmp_path / "speed.pt", tmp_path / "speed.onnx"))
    _, logits = model.embed_features(utterance[:200].numpy())
    _, expected = torch_outputs(tmp_path / "speed.pt", utterance[:200])
    assert logits.shape == expected.shape == (speakers,)
    np.testing.assert_allclose(logits, expected, atol=1e-3)


def test_the_transformer_mean_baseline_exports_with_the_same_parity(exported, utterance, tmp_path):
    state = load_checkpoint(exported["ckpt"])
    state["config"]["model"]["kind"] = "transformer-mean"
    torch.manual_seed(0)
    state["model"] = build_model(ModelConfig.from_dict(state["config"]["model"])).state_dict()
    save_checkpoint(tmp_path / "baseline.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    model = OnnxSpeakerModel.load(export(tmp_path / "baseline.pt", tmp_path / "baseline.onnx"))
    lengths = (MIN_FRAMES, 120, 400)
    batch = np.zeros((len(lengths), max(lengths), model.n_mels), np.float32)
    for row, length in enumerate(lengths):
        batch[row, :length] = utterance[:length].numpy()
    embeddings, logits = model.run_features(batch, np.array(lengths))
    for row, length in enumerate(lengths):
        expected_embedding, expected_logits = torch_outputs(tmp_path / "baseline.pt", utterance[:length])
        assert cosine(embeddings[row], expected_embedding) >= MIN_COSINE, length
        assert logits[row].argmax() == expected_logits.argmax(), length


def test_a_mean_normalised_model_exports_its_normalisation(exported, utterance, tmp_path):
    state = load_checkpoint(exported["ckpt"])
    for input_norm in ("mean", "none"):
        state["config"]["model"]["input_norm"] = input_norm
        save_checkpoint(tmp_path / f"{input_norm}.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    model = OnnxSpeakerModel.load(export(tmp_path / "mean.pt", tmp_path / "mean.onnx"))
    lengths = (MIN_FRAMES, 120, 400)
    batch = np.zeros((len(lengths), max(lengths), model.n_mels), np.float32)
    for row, length in enumerate(lengths):
        batch[row, :length] = utterance[:length].numpy() + 5.0  # a gain the normalisation removes
    embeddings, _ = model.run_features(batch, np.array(lengths))
    for row, length in enumerate(lengths):
        expected, _ = torch_outputs(tmp_path / "mean.pt", utterance[:length])
        assert cosine(embeddings[row], expected) >= MIN_COSINE, length
    raw, _ = torch_outputs(tmp_path / "none.pt", utterance[:400])
    assert cosine(embeddings[-1], raw) < MIN_COSINE  # the normalisation is really in the graph


def one_line_refusal(action, *needles: str) -> str:
    with pytest.raises(VoxaugError) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    return message


def test_broken_or_foreign_model_files_are_refused_in_one_line_naming_them(exported, tmp_path):
    data = exported["features"].read_bytes()
    speakers_at = data.find(b"spk000")
    assert speakers_at > 0
    files = {
        "truncated.onnx": (data[: len(data) // 2], "truncated or corrupt"),
        "flipped.onnx": (data[: len(data) // 3] + bytes([data[len(data) // 3] ^ 0x55]) + data[len(data) // 3 + 1 :],
                         "tampered"),
        "relabelled.onnx": (data[:speakers_at] + b"spk999" + data[speakers_at + 6 :], "tampered"),
        "empty.onnx": (b"", "empty"),
        "text.onnx": (b"hello, not a model", "not a readable ONNX model"),
    }
    for name, (content, problem) in files.items():
        (tmp_path / name).write_bytes(content)
        one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / name), f"{tmp_path / name}:", problem)
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        ir_version=8, opset_imports=[onnx.helper.make_opsetid("", 14)])  # what every supported onnxruntime reads
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / "foreign.onnx"), "foreign.onnx:", "not a voxaug speaker model")
    for entry in onnx.load(str(exported["features"])).metadata_props:  # voxaug's metadata on a graph of the wrong shape
        foreign.metadata_props.add(key=entry.key, value=entry.value if entry.key != CONTENT_DIGEST_KEY else "0" * 64)
    data = foreign.SerializeToString()
    marker = CONTENT_DIGEST_KEY.encode() + b"\x12\x40"
    (tmp_path / "impostor.onnx").write_bytes(data.replace(marker + b"0" * 64, marker + content_digest(data).encode()))
    one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / "impostor.onnx"), "impostor.onnx:", "inputs ['x']")
    foreign.ir_version = 99
    onnx.save(foreign, str(tmp_path / "future.onnx"))
    one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / "future.onnx"), "future.onnx:", "newer onnxruntime",
                     "IR version: 99")
    foreign.ir_version = 8
    foreign.opset_import[0].version = 99
    onnx.save(foreign, str(tmp_path / "future_opset.onnx"))
    one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / "future_opset.onnx"), "future_opset.onnx:",
                     "newer onnxruntime", "Opset 99")
    one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / "missing.onnx"), "missing.onnx:", "not found")
    one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path), "expected an ONNX model file")


def test_wrong_inputs_are_refused_in_one_line(exported):
    features_model = OnnxSpeakerModel.load(exported["features"])
    audio_model = OnnxSpeakerModel.load(exported["audio"])
    n_mels = features_model.n_mels
    one_line_refusal(lambda: features_model.embed_features(np.zeros((50, n_mels + 24), np.float32)), f"{n_mels})")
    one_line_refusal(lambda: features_model.run_features(np.zeros((1, 50, 20), np.float32), np.array([50])),
                     "model.onnx:", "log-mel")
    one_line_refusal(lambda: features_model.embed_features(np.zeros((MIN_FRAMES - 1, n_mels), np.float32)),
                     f"at least {MIN_FRAMES}")
    one_line_refusal(lambda: features_model.embed_features(np.full((50, n_mels), np.nan, np.float32)), "NaN")
    one_line_refusal(lambda: features_model.embed_features(np.full((50, n_mels), 1e20, np.float32)), "as large as 1e+20")
    one_line_refusal(lambda: features_model.run_audio(np.zeros((1, 16000), np.float32), np.array([16000])),
                     "takes log-mel features")
    for action in (lambda: audio_model.embed_features(np.zeros((50, n_mels), np.float32)),
                   lambda: audio_model.run_features(np.zeros((1, 50, n_mels), np.float32), np.array([50]))):
        one_line_refusal(action, "audio.onnx:", "takes raw 16 kHz audio")


def test_export_with_the_front_end_states_the_checkpoints_sample_rate(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    state["frontend"].update(sample_rate=8000, f_max=4000.0)  # as `voxaug train --sample-rate 8000` saves it
    save_checkpoint(tmp_path / "8k.pt", state)
    result = runner.invoke(app, ["export", "--ckpt", str(tmp_path / "8k.pt"), "--out", str(tmp_path / "8k.onnx"),
                                 "--with-frontend"])
    assert result.exit_code == 0, result.output
    assert "takes 8 kHz waveforms" in result.output


def test_export_refuses_bad_options_in_one_line(exported, tmp_path):
    cases = [
        (["--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")], "missing.pt: checkpoint not found"),
        (["--ckpt", str(exported["ckpt"]), "--out", str(tmp_path / "m.onnx"), "--opset", "12"], "--opset must be between"),
        (["--ckpt", str(exported["ckpt"]), "--out", str(tmp_path)], "--out is an existing folder"),
        (["--ckpt", str(exported["features"]), "--out", str(tmp_path / "m.onnx")], "model.onnx:"),
        (["--ckpt", str(exported["ckpt"]), "--out", str(tmp_path / "m.bin")], "m.bin: --out must name an .onnx file"),
        (["--ckpt", str(exported["ckpt"]), "--out", str(exported["ckpt"])], "--out must name an .onnx file"),
    ]
    for args, problem in cases:
        result = runner.invoke(app, ["export", *args])
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert len(errors) == 1 and problem in errors[0], result.output
    assert not (tmp_path / "m.onnx").exists()


def test_runtime_modules_import_without_torch():
    code = ("import sys; import voxaug.runtime.onnx_model, voxaug.runtime.frontend; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_an_export_given_a_cuda_device_is_refused_not_run_on_the_cpu_in_silence(exported, tiny_synth, tmp_path):
    """ONNX Runtime runs an export on the CPU: `--device cuda` with it is refused in one line naming the file,
    before anything is written; `--device cpu` and `auto` run it."""
    model = exported["features"]
    clip = str(next(tiny_synth.glob("uttr-*.pt")))
    commands = {
        "embed": ["embed", "--model", model, tiny_synth, "--out", tmp_path / "emb", "-q"],
        "evaluate": ["evaluate", "--model", model, tiny_synth, "--out", tmp_path / "report", "-q"],
        "enroll": ["enroll", "--model", model, "--index", tmp_path / "new.faiss", "--speaker", "x", clip],
    }
    for name, args in commands.items():
        result = runner.invoke(app, [str(a) for a in (*args, "--device", "cuda")])
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert result.exit_code == 2 and len(errors) == 1, (name, result.output)
        assert f"{model}: an ONNX export runs on ONNX Runtime's CPU" in errors[0], (name, errors[0])
        assert not any(tmp_path.iterdir()), name
    result = runner.invoke(app, [str(a) for a in (*commands["enroll"], "--device", "cpu")])
    assert result.exit_code == 0 and (tmp_path / "new.faiss").exists(), result.output
    bogus = runner.invoke(app, [str(a) for a in (*commands["embed"], "--device", "tpu")])
    assert bogus.exit_code == 2 and "--device 'tpu' is not known" in bogus.output, bogus.output


def test_metadata_edited_to_repeat_a_key_or_unlist_the_speakers_is_refused(exported, tmp_path):
    """A re-signed export whose metadata JSON names a key twice, or gives the speakers as a string, is
    refused rather than read with the last value (or one speaker per character)."""
    edits = {"repeated.onnx": ("frontend", lambda value: value[:-1] + ', "f_min": 30.0}', "appears twice"),
             "string.onnx": ("speakers", lambda value: json.dumps("spk000"), "inconsistent")}
    for name, (key, edit, problem) in edits.items():
        model = onnx.load(str(exported["features"]))
        for entry in model.metadata_props:
            if entry.key == key:
                entry.value = edit(entry.value)
            if entry.key == CONTENT_DIGEST_KEY:
                entry.value = "0" * 64
        data = model.SerializeToString()
        marker = CONTENT_DIGEST_KEY.encode() + b"\x12\x40"
        (tmp_path / name).write_bytes(data.replace(marker + b"0" * 64, marker + content_digest(data).encode()))
        one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / name), f"{name}:", problem)


def test_embed_with_the_export_takes_the_short_utterances_the_checkpoint_takes(exported, tiny_synth, tmp_path):
    """A dataset utterance shorter than the 10 frames a clip to identify needs is embedded by `embed --ckpt` (and
    trained on), so `embed --model` must embed it too, to the same vector, not refuse the whole dataset."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    metadata = json.loads((data / "metadata.json").read_text())
    entry = next(iter(metadata["speakers"].values()))[0]
    short = data / entry["feature_path"]
    torch.save(torch.load(short, weights_only=True)[: MIN_FRAMES // 2].clone(), short)
    entry["mel_len"] = MIN_FRAMES // 2
    (data / "metadata.json").write_text(json.dumps(metadata))
    outputs = {}
    for option, model in (("--ckpt", exported["ckpt"]), ("--model", exported["features"])):
        out = tmp_path / option.strip("-")
        result = runner.invoke(app, ["embed", option, str(model), str(data), "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        outputs[option] = np.load(out / "embeddings.npy")
    np.testing.assert_allclose(outputs["--model"], outputs["--ckpt"], atol=1e-4)


def test_metadata_edited_to_nest_the_speakers_deep_is_refused_in_one_line(exported, tmp_path):
    """A re-signed export whose speakers JSON nests arrays 100000 deep ended in `unexpected RecursionError` (status 3)."""
    model = onnx.load(str(exported["features"]))
    for entry in model.metadata_props:
        if entry.key == "speakers":
            entry.value = "[" * 100_000 + "]" * 100_000
        if entry.key == CONTENT_DIGEST_KEY:
            entry.value = "0" * 64
    data = model.SerializeToString()
    marker = CONTENT_DIGEST_KEY.encode() + b"\x12\x40"
    (tmp_path / "deep.onnx").write_bytes(data.replace(marker + b"0" * 64, marker + content_digest(data).encode()))
    one_line_refusal(lambda: OnnxSpeakerModel.load(tmp_path / "deep.onnx"), "deep.onnx:", "metadata is unusable")


def test_evaluate_with_the_export_scores_the_short_trial_clips_the_checkpoint_scores(exported, tiny_synth, tmp_path):
    """A trials file may pair a clip shorter than the 10 frames a clip to identify needs: `evaluate --ckpt` scores
    it, so `evaluate --model` must score it too, not stop at it (naming it `clip 0`, not its file)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    test = data / "unseen" / "test"
    torch.save(torch.load(test / "new000" / "003.pt", weights_only=True)[: MIN_FRAMES // 2].clone(),
               test / "new000" / "short.pt")
    pairs = [("1", "new000/short", "new000/004"), ("0", "new000/short", "new001/003"),
             ("1", "new001/003", "new001/004"), ("0", "new000/004", "new001/004")]
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{same} unseen/test/{a}.pt unseen/test/{b}.pt\n" for same, a, b in pairs))
    reports = {}
    for option, model in (("--ckpt", exported["ckpt"]), ("--model", exported["features"])):
        out = tmp_path / option.strip("-")
        result = runner.invoke(app, ["evaluate", option, str(model), str(data), "--out", str(out), "--trials",
                                     str(trials), "-q"])
        assert result.exit_code == 0, result.output
        reports[option] = json.loads((out / "report.json").read_text())["verification"]
    assert reports["--model"]["trials"] == reports["--ckpt"]["trials"] == len(pairs)
    assert reports["--model"]["eer"] == pytest.approx(reports["--ckpt"]["eer"])


def test_an_export_embeds_clips_of_up_to_two_minutes_as_documented(exported, monkeypatch):
    """120 s at 16 kHz is 1 + 1,920,000 // 160 = 12,001 centred frames: taken (the graph is not run here, its
    attention would take gigabytes); one hop more is refused, naming the limit in seconds and frames."""
    for kind in ("features", "audio"):
        model = OnnxSpeakerModel.load(exported[kind])
        monkeypatch.setattr(model, "_run", lambda inputs: "ran")
        samples, hop = 120 * model.frontend.sample_rate, model.frontend.hop_length
        for extra, frames in ((0, samples // hop + 1), (hop, samples // hop + 2)):
            if kind == "audio":
                length = samples + extra
                action = lambda: model.run_audio(np.zeros((1, length), np.float32), np.array([length]))
            else:
                action = lambda: model.run_features(np.zeros((1, frames, model.n_mels), np.float32), np.array([frames]))
            if extra:
                one_line_refusal(action, f"({frames} frames)", "an ONNX export embeds at most 120 s (12001 frames)")
            else:
                assert action() == "ran", kind


def test_a_features_export_refuses_a_waveform_too_long_before_making_its_log_mel(exported, monkeypatch):
    """The log-mel of a clip past the limit is refused anyway, and its float64 spectrum takes memory first (470 MB
    for 10 minutes, gigabytes for an hour): the length is checked before, as the audio export checks it."""
    import voxaug.runtime.onnx_model as onnx_model

    model = OnnxSpeakerModel.load(exported["features"])
    monkeypatch.setattr(onnx_model, "log_mel", lambda *args: pytest.fail("log-mel made for a clip it then refused"))
    one_line_refusal(lambda: model.embed_waveform(np.zeros(121 * model.frontend.sample_rate, np.float32)),
                     "an ONNX export embeds at most")


def test_a_trial_clip_too_long_for_the_export_is_named_by_its_file(exported, tmp_path):
    """`evaluate --model` with a trial clip past the export's 2 minutes said only "clip is 121 s long ...": neither
    the clip's file nor the trials file, in a list of thousands of trials."""
    from voxaug.embeddings.embedders import ExportEmbedder
    from voxaug.embeddings.evaluation import read_trials, score_trials

    embedder = ExportEmbedder.load(exported["features"])
    data = tmp_path / "data"
    data.mkdir()
    for name, frames in (("long.pt", 12100), ("a.pt", 50), ("b.pt", 50)):
        torch.save(torch.randn(frames, embedder.frontend.n_mels), data / name)
    (tmp_path / "trials.txt").write_text("1 a.pt long.pt\n0 a.pt b.pt\n")
    one_line_refusal(lambda: score_trials(embedder, read_trials(tmp_path / "trials.txt", data)),
                     f"{data / 'long.pt'}: clip is 121 s long (12100 frames)")


def test_export_silences_only_its_expected_warnings_so_a_new_deprecation_still_shows(trained_run, tmp_path,
                                                                                      monkeypatch):
    """The tracer's and the legacy exporter's known notes stay quiet, even under -W error; a warning of another kind
    raised while exporting (a deprecated argument, say) reaches the caller instead of being swallowed."""
    real_export = torch.onnx.export

    def export_with_a_new_deprecation(*args, **kwargs):
        warnings.warn("dynamic_axes is deprecated", FutureWarning, stacklevel=2)
        return real_export(*args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(trained_run / "last.pt", tmp_path / "quiet.onnx")
    monkeypatch.setattr(torch.onnx, "export", export_with_a_new_deprecation)
    with pytest.warns(FutureWarning, match="dynamic_axes is deprecated"):
        export_onnx(trained_run / "last.pt", tmp_path / "noted.onnx")


def test_a_full_temporary_folder_is_named_not_blamed_on_the_checkpoint(trained_run, tmp_path, monkeypatch):
    """The exporter traces into a temporary folder first: when that disk was full the error read
    "last.pt: ONNX export failed at opset 17 ([Errno 28] No space left on device)", sending the user to the
    checkpoint, which was fine. The temporary file is named now, with what to do; --out is kept."""
    import errno
    import re

    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous export")

    def no_room(network, example, target, **options):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", no_room)
    result = runner.invoke(app, ["export", "--ckpt", str(trained_run / "last.pt"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert re.fullmatch(r"error: \S+/model\.onnx: cannot write: No space left on device; [0-9.]+ MiB free there "
                        r"\(the export's temporary file; set TMPDIR to a folder with room\)\n", result.output), \
        result.output
    assert out.read_bytes() == b"the previous export"
