"""The Python API (voxaug.SpeakerModel, voxaug.SpeakerIndex) and `--model` in enroll, identify and embed:
one code path, the model recorded by SHA-256, another model refused, bad input refused in one line."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from typer.testing import CliRunner

import voxaug
from voxaug.checkpoint import load_checkpoint, save_checkpoint
from voxaug.cli.main import app
from voxaug.embeddings.index import sidecar_path
from voxaug.errors import VoxaugError
from voxaug.export import export_onnx
from voxaug.runtime.frontend import FrontendSettings, audio_suffixes
from voxaug.safeio import sha256_file

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
AUDIO = ", ".join(audio_suffixes())  # .mp3, .ogg, ... too where libsndfile reads them


@pytest.fixture(scope="module")
def models(trained_run: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("api-models")
    ckpt = trained_run / "best.pt"
    export_onnx(ckpt, folder / "model.onnx")
    export_onnx(ckpt, folder / "audio.onnx", with_frontend=True)
    state = load_checkpoint(ckpt)  # other weights: what an index must refuse
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(folder / "other.pt", state)
    export_onnx(folder / "other.pt", folder / "other.onnx")
    return {"ckpt": ckpt, "onnx": folder / "model.onnx", "audio": folder / "audio.onnx", "other": folder / "other.pt",
            "other_onnx": folder / "other.onnx"}


def wavs(tiny_synth: Path, part: str, speaker: str) -> list[Path]:
    return sorted((tiny_synth / "unseen" / part / speaker).glob("*.wav"))


def invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.output


def one_line_error(code: int, output: str, *needles: str) -> None:
    lines = output.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), output
    for needle in needles:
        assert needle in lines[0], output


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_model_embeds_files_waveforms_and_features_alike(models, tiny_synth):
    clip = wavs(tiny_synth, "test", "new000")[0]
    waveform, rate = soundfile.read(clip, dtype="float32")
    features = torch.load(clip.with_suffix(".pt"), weights_only=True)
    onnx_model = voxaug.SpeakerModel.load(models["onnx"])
    torch_model = voxaug.SpeakerModel.load(models["ckpt"])
    from_file = onnx_model.embed(clip)
    assert from_file.shape == (onnx_model.embedding_dim,) and abs(np.linalg.norm(from_file) - 1) < 1e-4
    assert cosine(from_file, onnx_model.embed(waveform, sample_rate=rate)) > 0.99999
    assert cosine(onnx_model.embed(features), torch_model.embed(features.numpy())) > 0.9999
    assert cosine(from_file, torch_model.embed(clip)) > 0.9999
    onnx_answer, torch_answer = onnx_model.classify(clip), torch_model.classify(clip)
    assert onnx_answer.speaker == torch_answer.speaker and onnx_answer.probability == pytest.approx(torch_answer.probability, abs=1e-3)
    assert onnx_model.classify(features).speaker in onnx_model.speakers


def test_a_checkpoints_thread_cap_holds_for_its_own_work_and_leaves_the_process_count_alone(models, tiny_synth,
                                                                                             monkeypatch):
    import voxaug.embeddings.extract as extract

    seen = []
    real = extract.embed_tensors

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "embed_tensors", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = voxaug.SpeakerModel.load(models["ckpt"], threads=1)
        clips = wavs(tiny_synth, "test", "new000")[:2]
        model.embed(clips[0])
        model.embed_many(clips)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]


def test_cli_enrolls_and_identifies_wav_clips_with_an_onnx_model_the_sidecar_then_names(models, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    for speaker in ("new000", "new001"):
        code, output = invoke("enroll", "--index", index, "--model", models["onnx"], "--speaker", speaker,
                              *wavs(tiny_synth, "enroll", speaker))
        assert code == 0, output
    sidecar = json.loads(index.with_name("spk.faiss.json").read_text())
    assert sidecar["checkpoint"]["sha256"] == sha256_file(models["onnx"]) and sidecar["checkpoint"]["kind"] == "onnx"
    query = wavs(tiny_synth, "test", "new001")[0]
    code, output = invoke("identify", "--index", index, "--json", query)  # the model the sidecar names
    assert code == 0, output
    record = json.loads(output)
    api_record = voxaug.SpeakerIndex.open(index).identify(query)
    assert record == api_record
    assert record["top"][0]["speaker"] in ("new000", "new001") and record["threshold"]["source"] == "default"
    code, output = invoke("enroll", "--index", index, "--remove", "new000")
    assert code == 0 and voxaug.SpeakerIndex.open(index).speakers == ["new001"], output


def test_an_index_built_with_one_model_refuses_another(models, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    built = voxaug.SpeakerIndex.create(index, models["onnx"])
    built.enroll("new000", wavs(tiny_synth, "enroll", "new000"))
    query = wavs(tiny_synth, "test", "new000")[0]
    for option, other in (("--ckpt", models["other"]), ("--model", models["other_onnx"])):
        one_line_error(*invoke("identify", "--index", index, option, other, query), other.name, "does not match the index")
        one_line_error(*invoke("enroll", "--index", index, option, other, "--speaker", "x", query),
                       "does not match the index")
    with pytest.raises(VoxaugError, match="does not match the index"):
        voxaug.SpeakerIndex.open(index, models["other"])


@pytest.mark.parametrize("built_with", ["ckpt", "onnx"])
def test_an_index_answers_its_checkpoint_and_every_export_of_it_alike(models, tiny_synth, tmp_path, built_with):
    """Train and enrol with the checkpoint, deploy its export with the same index (and the other way round)."""
    index = tmp_path / "spk.faiss"
    for speaker in ("new000", "new001"):
        option = "--ckpt" if built_with == "ckpt" else "--model"
        code, output = invoke("enroll", "--index", index, option, models[built_with], "--speaker", speaker,
                              *wavs(tiny_synth, "enroll", speaker))
        assert code == 0, output
    recorded = json.loads(index.with_name("spk.faiss.json").read_text())["checkpoint"]
    assert recorded.get("source_sha256") == (sha256_file(models["ckpt"]) if built_with == "onnx" else None)
    query = wavs(tiny_synth, "test", "new001")[0]
    records = {}
    for name, option in (("ckpt", "--ckpt"), ("onnx", "--model"), ("audio", "--model")):
        code, output = invoke("identify", "--index", index, option, models[name], "--json", query)
        assert code == 0, output
        records[name] = json.loads(output)
    for record in records.values():
        assert [top["speaker"] for top in record["top"]] == [top["speaker"] for top in records[built_with]["top"]]
        for top, own in zip(record["top"], records[built_with]["top"]):
            assert top["score"] == pytest.approx(own["score"], abs=1e-3)
    code, output = invoke("enroll", "--index", index, "--model", models["audio"], "--speaker", "late",
                          *wavs(tiny_synth, "test", "new000"))
    assert code == 0, output
    assert voxaug.SpeakerIndex.open(index, models["ckpt"]).speakers == ["late", "new000", "new001"]


def test_model_and_ckpt_together_are_refused(models, tiny_synth, tmp_path):
    both = ("--ckpt", models["ckpt"], "--model", models["onnx"])
    clip = wavs(tiny_synth, "test", "new000")[0]
    one_line_error(*invoke("identify", "--index", tmp_path / "i.faiss", *both, clip), "--ckpt and --model")
    one_line_error(*invoke("enroll", "--index", tmp_path / "i.faiss", *both, "--speaker", "a", clip), "--ckpt and --model")
    one_line_error(*invoke("embed", tiny_synth, "--out", tmp_path / "e", *both), "--ckpt and --model")
    assert not (tmp_path / "i.faiss").exists()


def test_missing_tampered_truncated_models_and_wrong_inputs_are_refused_in_one_line(models, tiny_synth, tmp_path):
    data = bytearray(models["onnx"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "tampered.onnx").write_bytes(bytes(data))
    (tmp_path / "truncated.onnx").write_bytes(bytes(data[: len(data) // 3]))
    clip = wavs(tiny_synth, "enroll", "new000")[0]
    for name in ("tampered.onnx", "truncated.onnx", "missing.onnx"):
        one_line_error(*invoke("enroll", "--index", tmp_path / "i.faiss", "--model", tmp_path / name, "--speaker", "a",
                               clip), name)
    assert not (tmp_path / "i.faiss").exists()
    one_line_error(*invoke("enroll", "--index", tmp_path / "i.faiss", "--model", models["audio"], "--speaker", "a",
                           clip.with_suffix(".pt")), clip.with_suffix(".pt").name, "takes raw 16 kHz audio")
    model = voxaug.SpeakerModel.load(models["onnx"])
    with pytest.raises(VoxaugError, match=r"shape \(frames, 40\)"):
        model.embed(np.zeros((50, 80), dtype=np.float32))
    with pytest.raises(VoxaugError, match="unsupported model type"):
        voxaug.SpeakerModel.load(tmp_path / "model.bin")


def test_arrays_the_cli_would_refuse_as_files_are_refused_by_the_api_too(models, tiny_synth, tmp_path):
    features = voxaug.SpeakerModel.load(models["onnx"])
    for array, needle in ((np.zeros((50, 40), dtype=bool), "dtype bool"), (np.ones((50, 40), dtype=np.int16), "dtype int16"),
                          (np.ones((50, 40), dtype=np.complex64), "dtype complex64"), (np.array([["a"] * 40] * 50), "dtype <U1"),
                          (np.full((50, 40), 1e20, np.float32), "as large as 1e\\+20"),
                          (np.zeros((0, 40), np.float32), r"no frames \(shape \(0, 40\)\)")):
        with pytest.raises(VoxaugError, match=needle):
            features.embed(array)
    audio = voxaug.SpeakerModel.load(models["audio"])
    tone = np.sin(np.arange(16000) / 5).astype(np.float32)
    for waveform, rate, needle in ((np.zeros(16000, np.float32), 16000, "silent"), (tone, 7999.5, "sample_rate"),
                                   (tone, True, "sample_rate"), (tone, 1, "under 1000 Hz"), (np.full(16000, np.nan, np.float32), 16000, "NaN")):
        with pytest.raises(VoxaugError, match=needle):
            audio.embed(waveform, sample_rate=rate)
    index = voxaug.SpeakerIndex.create(tmp_path / "i.faiss", audio)
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    for top_k in (2.5, "3", 0):
        with pytest.raises(VoxaugError, match="--top-k"):
            index.identify(tone, top_k=top_k, sample_rate=16000)
    assert index.identify(tone, top_k=1, sample_rate=16000)["top"]


def test_any_path_like_names_a_clip_file(models, tiny_synth):
    import os
    from pathlib import PurePosixPath

    model = voxaug.SpeakerModel.load(models["onnx"])
    wav = wavs(tiny_synth, "enroll", "new000")[0]
    entry = next(e for e in os.scandir(wav.parent) if e.name == wav.name)
    expected = model.embed(wav)
    for name in (entry, PurePosixPath(wav), str(wav)):
        assert np.allclose(model.embed(name), expected)


def test_a_path_object_of_bytes_is_a_clip_or_model_path_as_a_text_one_is(models, tiny_synth, tmp_path):
    """``os.scandir`` of a bytes folder gives path objects whose path is bytes: ``embed`` took them, while
    ``SpeakerModel.load``, ``enroll`` (its repeated-clip check) and an unreadable clip's error raised pathlib's bare
    TypeError; and a clip of the same content as another was named ``<DirEntry 'x.wav'>``, not by its path."""
    def entry(path: Path, as_bytes: bool = True) -> os.DirEntry:
        folder = os.fsencode(path.parent) if as_bytes else str(path.parent)
        return next(e for e in os.scandir(folder) if os.fsdecode(e.name) == path.name)

    model = voxaug.SpeakerModel.load(entry(models["onnx"]))
    assert model.path == models["onnx"]
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    clips = wavs(tiny_synth, "enroll", "new000")[:2]
    assert index.enroll("a", [entry(clip) for clip in clips]) == 2
    gone = tmp_path / "gone.wav"
    shutil.copy(wavs(tiny_synth, "enroll", "new001")[0], gone)
    vanished = entry(gone)
    gone.unlink()
    with pytest.raises(VoxaugError, match=f"^{re.escape(str(gone))}: cannot read the clip"):
        index.enroll("b", [vanished])
    twin = shutil.copy(wavs(tiny_synth, "enroll", "new001")[1], tmp_path / "twin.wav")
    with pytest.raises(VoxaugError, match=f"clips {re.escape(str(twin))} \\(c\\) and"):
        index.enroll_many({"c": [entry(twin, as_bytes=False)], "d": [wavs(tiny_synth, "enroll", "new001")[1]]})


def test_feature_files_without_torch_are_refused_naming_the_train_extra(models, tiny_synth):
    clip = wavs(tiny_synth, "enroll", "new000")[0]
    code = (f"import sys\nsys.modules['torch'] = None\nimport voxaug\nfrom voxaug.errors import VoxaugError\n"
            f"model = voxaug.SpeakerModel.load({str(models['onnx'])!r})\nassert model.embed({str(clip)!r}).shape\n"
            f"try:\n    model.embed({str(clip.with_suffix('.pt'))!r})\nexcept VoxaugError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.startswith(str(clip.with_suffix(".pt"))) and 'pip install "voxaug[train]"' in done.stdout


@pytest.mark.parametrize("page", [DOCS, DOCS.parents[1] / "README.md"], ids=["docs", "readme"])
def test_the_documented_example_runs_as_written(page, models, tiny_synth, tmp_path, monkeypatch, capsys):
    example = re.search(r"```python\n(.*?)```", page.read_text(), re.S).group(1)
    shutil.copy(models["onnx"], tmp_path / "model.onnx")
    for speaker in ("new000", "new001"):
        (tmp_path / "clips" / speaker).mkdir(parents=True)
        for clip in wavs(tiny_synth, "enroll", speaker):
            shutil.copy(clip, tmp_path / "clips" / speaker / clip.name)
    shutil.copy(wavs(tiny_synth, "test", "new001")[0], tmp_path / "query.wav")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(DOCS), "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.splitlines()
    assert (tmp_path / "speakers.faiss").exists()
    if page == DOCS:
        assert printed[-1] == "['new000', 'new001']"
    else:
        assert printed[-1].startswith("{'clip': 'query.wav', 'top': [{'speaker': 'new00") and "'threshold'" in printed[-1]


def test_embed_with_an_onnx_model_matches_the_checkpoint_and_fits_the_same_back_end(models, tiny_synth, tmp_path):
    code, output = invoke("embed", tiny_synth, "--ckpt", models["ckpt"], "--out", tmp_path / "torch", "--quiet",
                          "--index", tmp_path / "torch.faiss")
    assert code == 0, output
    code, output = invoke("embed", tiny_synth, "--model", models["onnx"], "--out", tmp_path / "onnx", "--quiet",
                          "--index", tmp_path / "spk.faiss")
    assert code == 0, output
    from_torch, from_onnx = (np.load(tmp_path / name / "embeddings.npy") for name in ("torch", "onnx"))
    assert from_onnx.shape == from_torch.shape and np.min(np.sum(from_onnx * from_torch, axis=1)) > 0.9999
    sidecars = {name: json.loads((tmp_path / f"{name}.faiss.json").read_text()) for name in ("torch", "spk")}
    assert sidecars["spk"]["checkpoint"]["sha256"] == sha256_file(models["onnx"])
    backends = {name: sidecar["backend"] for name, sidecar in sidecars.items()}
    assert backends["spk"]["kind"] == backends["torch"]["kind"] == "plda"
    np.testing.assert_allclose(backends["spk"]["mean"], backends["torch"]["mean"], atol=1e-4)  # the same training split
    clips = sorted(tiny_synth.glob("uttr-*.pt"))[:6]
    answers = {}
    for name in ("torch", "spk"):
        code, output = invoke("identify", "--index", tmp_path / f"{name}.faiss", "--json", *clips)
        assert code == 0, output
        answers[name] = [record["top"][0] for record in map(json.loads, output.splitlines())]
    assert [top["speaker"] for top in answers["spk"]] == [top["speaker"] for top in answers["torch"]]
    np.testing.assert_allclose([top["score"] for top in answers["spk"]], [top["score"] for top in answers["torch"]],
                               rtol=1e-3, atol=1e-3)  # PLDA log-likelihood ratios: tens, not cosines


def test_an_export_from_before_split_versions_is_read_as_version_1(models, tmp_path, monkeypatch):
    import voxaug.export

    full = voxaug.export._metadata
    monkeypatch.setattr(voxaug.export, "_metadata", lambda *args: {key: value for key, value in full(*args).items()
                                                                    if key != "split_version"})
    voxaug.export.export_onnx(models["ckpt"], tmp_path / "old.onnx")
    assert voxaug.SpeakerModel.load(tmp_path / "old.onnx").training_split.version == 1
    from voxaug.data.split import SPLIT_VERSION

    assert voxaug.SpeakerModel.load(models["onnx"]).training_split.version == SPLIT_VERSION


def test_embed_refuses_a_back_end_for_an_export_that_lacks_the_training_split(models, tiny_synth, tmp_path,
                                                                              monkeypatch):
    import voxaug.export

    full = voxaug.export._metadata
    monkeypatch.setattr(voxaug.export, "_metadata", lambda *args: {key: value for key, value in full(*args).items()
                                                                    if key not in ("training_seed", "validation_fraction")})
    old = tmp_path / "old.onnx"
    voxaug.export.export_onnx(models["ckpt"], old)
    one_line_error(*invoke("embed", tiny_synth, "--model", old, "--out", tmp_path / "x", "--index",
                           tmp_path / "lda.faiss"), "export it again", "--backend none", str(old))
    code, output = invoke("embed", tiny_synth, "--model", old, "--out", tmp_path / "y", "--quiet", "--index",
                          tmp_path / "plain.faiss", "--backend", "none")
    assert code == 0, output


def test_an_index_from_an_export_without_its_split_says_its_cohort_is_the_whole_dataset(models, tiny_synth, tmp_path,
                                                                                         monkeypatch):
    """`embed --model old.onnx --backend none`, with an export that records no training split, described the cohort as
    'training split: N utterances' while it held every utterance of DATA: no split is known to draw it from."""
    import voxaug.export

    full = voxaug.export._metadata
    older = ("training_seed", "validation_fraction", "split_clips", "training_clip_count")  # all recorded later
    monkeypatch.setattr(voxaug.export, "_metadata", lambda *args: {key: value for key, value in full(*args).items()
                                                                    if key not in older})
    old = tmp_path / "old.onnx"
    voxaug.export.export_onnx(models["ckpt"], old)
    code, output = invoke("embed", tiny_synth, "--model", old, "--out", tmp_path / "out", "--quiet", "--index",
                          tmp_path / "plain.faiss", "--backend", "none")
    assert code == 0, output
    utterances = len(np.load(tmp_path / "out" / "embeddings.npy"))
    described = f"whole dataset: {utterances} utterances of "
    assert f"AS-norm cohort: {described}" in output and "training split" not in output, output
    assert json.loads((tmp_path / "plain.faiss.json").read_text())["cohort"]["source"].startswith(described)


def test_evaluate_calibrates_an_index_built_with_an_onnx_model_for_identify_with_that_model(models, tiny_synth,
                                                                                          tmp_path):
    clips = {speaker: [f"unseen/test/{speaker}/{clip.stem}.pt" for clip in wavs(tiny_synth, "test", speaker)]
             for speaker in ("new000", "new001")}
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{int(a.split('/')[2] == b.split('/')[2])} {a} {b}\n"  # each pair once
                              for a, b in itertools.combinations(clips["new000"] + clips["new001"], 2)))
    reports = {}
    for option, model, name in (("--ckpt", models["ckpt"], "torch"), ("--model", models["onnx"], "onnx")):
        index = tmp_path / f"{name}.faiss"
        code, output = invoke("embed", tiny_synth, option, model, "--out", tmp_path / f"emb-{name}", "--quiet",
                              "--index", index)
        assert code == 0, output
        for speaker in ("new000", "new001"):
            code, output = invoke("enroll", "--index", index, option, model, "--speaker", speaker,
                                  *wavs(tiny_synth, "enroll", speaker))
            assert code == 0, output
        code, output = invoke("evaluate", tiny_synth, option, model, "--out", tmp_path / f"report-{name}", "--quiet",
                              "--index", index, "--enroll", tiny_synth / "unseen" / "enroll", "--test",
                              tiny_synth / "unseen" / "test", "--calibrate", "--trials", trials)
        assert code == 0, output
        reports[name] = json.loads((tmp_path / f"report-{name}" / "report.json").read_text())
    torch_report, onnx_report = reports["torch"], reports["onnx"]
    assert onnx_report["checkpoint"] == str(models["onnx"])
    assert {key: onnx_report["inputs"][key] for key in ("model", "model_kind", "model_sha256", "trials", "max_pairs")} \
        == {"model": str(models["onnx"]), "model_kind": "onnx", "model_sha256": sha256_file(models["onnx"]),
            "trials": str(trials), "max_pairs": None}
    assert torch_report["inputs"]["model_kind"] == "checkpoint"
    one_clip = 1 / onnx_report["val_utterances"]
    for key in ("softmax_accuracy", "cosine_centroid_accuracy", "cosine_knn_accuracy"):  # one model, two runtimes
        assert abs(onnx_report[key] - torch_report[key]) <= one_clip + 1e-9, key
    one_clip = 1 / onnx_report["unseen"]["test_clips"]
    for key in ("accuracy", "among_enrolled"):
        assert abs(onnx_report["unseen"][key] - torch_report["unseen"][key]) <= one_clip + 1e-9, key
    for key in ("verification", "verification_backend", "verification_asnorm"):
        assert onnx_report[key]["trials"] == torch_report[key]["trials"] == len(trials.read_text().splitlines())
        assert onnx_report[key]["eer"] == pytest.approx(torch_report[key]["eer"], abs=0.05), key
    assert onnx_report["open_set"]["value"] == pytest.approx(torch_report["open_set"]["value"], rel=1e-3, abs=1e-3)
    code, output = invoke("identify", "--index", tmp_path / "onnx.faiss", "--model", models["onnx"], "--json",
                          wavs(tiny_synth, "test", "new000")[0])
    assert code == 0, output
    threshold = json.loads(output.splitlines()[0])["threshold"]
    assert threshold == {"value": round(onnx_report["open_set"]["value"], 6), "source": "calibrated",
                         "measured": False}  # 6 held-out clips at FAR 0.01


def test_evaluate_refuses_a_model_the_index_was_not_built_with_and_an_export_without_its_split(
        models, tiny_synth, tmp_path, monkeypatch):
    code, output = invoke("embed", tiny_synth, "--model", models["onnx"], "--out", tmp_path / "emb", "--quiet",
                          "--index", tmp_path / "spk.faiss")
    assert code == 0, output
    common = (tiny_synth, "--out", tmp_path / "report", "--index", tmp_path / "spk.faiss")
    one_line_error(*invoke("evaluate", *common, "--ckpt", models["other"]), "does not match the index")
    one_line_error(*invoke("evaluate", *common, "--ckpt", models["ckpt"], "--model", models["onnx"]), "--ckpt and --model")
    one_line_error(*invoke("evaluate", *common), "--ckpt RUN/last.pt or --model model.onnx")
    one_line_error(*invoke("evaluate", *common, "--model", tmp_path / "missing.onnx"), "missing.onnx")
    import voxaug.export

    full = voxaug.export._metadata
    monkeypatch.setattr(voxaug.export, "_metadata", lambda *args: {key: value for key, value in full(*args).items()
                                                                    if key not in ("training_seed", "validation_fraction")})
    old = tmp_path / "old.onnx"
    voxaug.export.export_onnx(models["ckpt"], old)
    one_line_error(*invoke("evaluate", tiny_synth, "--out", tmp_path / "report", "--model", old), str(old),
                   "training split", "export it again")
    assert not (tmp_path / "report").exists()


def test_a_failed_first_write_changes_neither_the_object_nor_the_cli_s_view_of_the_index(models, tiny_synth, tmp_path,
                                                                                        monkeypatch):
    import voxaug.embeddings.index as index_module

    path = tmp_path / "spk.faiss"
    created = voxaug.SpeakerIndex.create(path, models["onnx"])
    real_write = index_module.atomic_write_text

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_module, "atomic_write_text", disk_full)
    with pytest.raises(OSError):
        created.enroll("new000", wavs(tiny_synth, "enroll", "new000"))
    monkeypatch.setattr(index_module, "atomic_write_text", real_write)
    assert created.speakers == []
    created.enroll("new000", wavs(tiny_synth, "enroll", "new000"))  # a retry is not refused as already enrolled
    assert voxaug.SpeakerIndex.open(path).speakers == ["new000"]

    fresh = tmp_path / "cut.faiss"  # the CLI's first write killed after its sidecar commit
    real_replace = os.replace

    def killed_on_commit(source, target):
        if str(source).endswith(index_module.PENDING_SUFFIX):
            raise KeyboardInterrupt("killed between the sidecar and the index rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed_on_commit)
    code, _ = invoke("enroll", "--index", fresh, "--model", models["onnx"], "--speaker", "new000",
                     *wavs(tiny_synth, "enroll", "new000"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert code != 0 and not fresh.exists() and (tmp_path / "cut.faiss.json").exists()
    code, output = invoke("enroll", "--index", fresh, "--speaker", "new001", *wavs(tiny_synth, "enroll", "new001"))
    assert code == 0, output
    assert voxaug.SpeakerIndex.open(fresh).speakers == ["new000", "new001"]


def test_create_refuses_a_symlink_loop_as_enroll_does(trained_run, tmp_path):
    """``voxaug enroll --index LOOP`` is refused, but ``SpeakerIndex.create(LOOP)`` was not (``exists`` is False on a
    loop), and its first enrol replaced the link with the index."""
    loop = tmp_path / "loop.faiss"
    os.symlink(loop.name, loop)
    with pytest.raises(VoxaugError) as refused:
        voxaug.SpeakerIndex.create(loop, trained_run / "best.pt")
    assert str(refused.value) == f"{loop}: speaker index: symlink loop (symbolic links that lead back to each other)"
    assert loop.is_symlink() and os.readlink(loop) == loop.name


def test_enroll_takes_one_clip_as_one_clip(models, tiny_synth, tmp_path):
    """A single path or feature array is one clip, not an iterable of characters or of frames."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["ckpt"])
    first, second, third = wavs(tiny_synth, "enroll", "new000")[:3]
    assert index.enroll("by-path", str(first)) == 1 and index.enroll("by-pathlib", second) == 1
    features = np.random.default_rng(0).standard_normal((80, 40)).astype(np.float32)
    assert index.enroll("by-array", features) == 1
    others = wavs(tiny_synth, "enroll", "new001")
    assert index.enroll_many({"one": third, "two": others[:2]}) == {"one": 1, "two": 2}


def test_arguments_of_the_wrong_type_are_refused_in_one_line_not_by_a_traceback(models, tiny_synth, tmp_path):
    """A threshold that is not a number, and clips that are neither a clip nor a collection of them, were
    TypeErrors from math.isfinite and list(); a bool threshold was taken as 1.0."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    for clips in (None, 5, 0.5):
        with pytest.raises(VoxaugError, match="clips: expected a clip"):
            index.enroll("a", clips)
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    for threshold in ("0.5", [0.5], True):
        with pytest.raises(VoxaugError, match="--threshold must be a number"):
            voxaug.SpeakerIndex.open(tmp_path / "spk.faiss", threshold=threshold)
    chosen = voxaug.SpeakerIndex.open(tmp_path / "spk.faiss", threshold=np.float32(0.25))
    assert chosen.identify(wavs(tiny_synth, "test", "new000")[0])["threshold"] == {"value": 0.25, "source": "option"}


def test_a_clip_given_twice_is_refused_before_anything_is_written(models, tiny_synth, tmp_path):
    """The same file twice, or a clip's `.pt` and `.wav` twins, would count twice in the mean and count PLDA scores."""
    index_path = tmp_path / "spk.faiss"
    clip = wavs(tiny_synth, "enroll", "new000")[0]
    index = voxaug.SpeakerIndex.create(index_path, models["ckpt"])
    for clips, again in (([clip, clip], clip), ([clip, clip.with_suffix(".pt")], clip.with_suffix(".pt")),
                         ([clip.parent / ".." / "new000" / clip.name, clip], clip)):
        with pytest.raises(VoxaugError, match=f"new000: clip {re.escape(str(again))} is given twice"):
            index.enroll("new000", clips)
    assert not index_path.exists()
    folder = clip.parent
    code, output = invoke("enroll", "--index", index_path, "--ckpt", models["ckpt"], "--speaker", "new000", folder, clip)
    one_line_error(code, output, f"clip {clip} is given twice", "nothing was written")
    assert not index_path.exists()


def test_append_skips_clips_the_speaker_was_already_enrolled_from(models, tiny_synth, tmp_path, monkeypatch):
    """The natural mistake: new clips are added to a speaker's folder and the whole folder is appended. The old
    clips would count twice in the mean and in the clip count PLDA scores by, so --append recognises them by
    content (under any name) and adds only the new ones; a copy within one enrolment is refused."""
    index_path = tmp_path / "spk.faiss"
    first, *rest = [wav.with_suffix(".pt") for wav in wavs(tiny_synth, "enroll", "new000")]  # what a folder gives
    code, output = invoke("enroll", "--index", index_path, "--ckpt", models["ckpt"], "--speaker", "new000", first)
    assert code == 0, output
    copy = tmp_path / "renamed.pt"
    shutil.copy(first, copy)
    code, output = invoke("enroll", "--index", index_path, "--speaker", "new000", "--append", first.parent)
    assert code == 0 and f"from {len(rest)} clips ({1 + len(rest)} in all), skipping 1 clip already enrolled" in output
    recorded = json.loads(sidecar_path(index_path).read_text())["clip_digests"]["new000"]
    assert len(recorded) == 1 + len(rest) and len(set(recorded)) == len(recorded)
    before = sidecar_path(index_path).read_bytes()
    code, output = invoke("enroll", "--index", index_path, "--speaker", "new000", "--append", copy)
    assert code == 0 and f"from 0 clips ({1 + len(rest)} in all), skipping 1 clip" in output and \
        sidecar_path(index_path).read_bytes() == before, output

    index = voxaug.SpeakerIndex.open(index_path)
    waveform, rate = soundfile.read(rest[0].with_suffix(".wav"), dtype="float32")
    assert index.enroll("bob", [waveform], sample_rate=rate) == 1
    monkeypatch.setattr(voxaug.SpeakerModel, "embed_many", lambda *a, **k: pytest.fail("embedded a known clip"))
    assert index.enroll("bob", [waveform.copy()], append=True, sample_rate=rate) == 1 and index.skipped == {"bob": 1}
    with pytest.raises(VoxaugError, match=r"carol: clips carol clip 0 and carol clip 1 have the same content"):
        index.enroll("carol", [waveform, waveform.copy()], sample_rate=rate)
    code, output = invoke("enroll", "--index", index_path, "--remove", "bob")
    assert code == 0 and "bob" not in json.loads(sidecar_path(index_path).read_text())["clip_digests"]


def test_append_of_a_folder_read_through_its_audio_skips_clips_enrolled_from_their_pt_twins(models, tiny_synth, tmp_path):
    """A folder gives its `.pt` features to a checkpoint and its audio to an export that takes audio (or to any export
    where torch is not installed): appending the same folder again after changing models must skip every clip, not
    enrol each one a second time through its other file, and a twin of one speaker's clip is not another's."""
    index_path = tmp_path / "spk.faiss"
    folder = tiny_synth / "unseen" / "enroll" / "new000"
    code, output = invoke("enroll", "--index", index_path, "--ckpt", models["ckpt"], "--speaker", "new000", folder)
    assert code == 0, output
    count = len(wavs(tiny_synth, "enroll", "new000"))
    before = sidecar_path(index_path).read_bytes()
    code, output = invoke("enroll", "--index", index_path, "--model", models["audio"], "--speaker", "new000",
                          "--append", folder)
    assert code == 0 and f"from 0 clips ({count} in all), skipping {count} clips already enrolled" in output, output
    assert sidecar_path(index_path).read_bytes() == before
    code, output = invoke("enroll", "--index", index_path, "--model", models["audio"], "--speaker", "mallory",
                          wavs(tiny_synth, "enroll", "new000")[0])
    one_line_error(code, output, "as one new000 is enrolled from", "nothing was written")


def test_a_twin_is_found_whatever_the_case_of_its_suffix_and_read_only_when_something_is_recorded(tmp_path,
                                                                                                    monkeypatch):
    """one_file_per_clip pairs x.pt with x.WAV, so the twin look-up must too (else --append with the other model
    enrols the clip twice); and an index that records no clip has no twin to match, so no twin file is hashed."""
    from voxaug.api import inputs

    (tmp_path / "x.pt").write_bytes(b"features")
    (tmp_path / "x.WAV").write_bytes(b"audio")
    features, audio = (inputs.clip_digest(tmp_path / name) for name in ("x.pt", "x.WAV"))
    assert inputs.enrolled_twin_digest(tmp_path / "x.pt", features, {audio: "alice"}) == audio
    assert inputs.enrolled_twin_digest(tmp_path / "x.WAV", audio, {features: "alice"}) == features
    assert inputs.enrolled_twin_digest(tmp_path / "x.pt", features, {"0" * 16: "bob"}) == features

    def no_reading(*args, **kwargs):
        raise AssertionError("a twin was hashed with nothing recorded to match it against")

    monkeypatch.setattr(inputs, "clip_digest", no_reading)
    assert inputs.enrolled_twin_digest(tmp_path / "x.pt", features, {}) == features


def test_a_twin_whose_suffix_mixes_cases_is_found_as_one_file_per_clip_pairs_it(tmp_path):
    """one_file_per_clip pairs x.pt with x.Flac (it compares suffixes in lower case), but the twin look-up tried only
    .flac and .FLAC: a clip enrolled from its x.Flac by an export that takes audio was enrolled again, as new, from
    its x.pt by `enroll --append` with the checkpoint, and counted twice in the speaker's mean."""
    from voxaug.api import inputs
    from voxaug.clips import one_file_per_clip

    (tmp_path / "x.pt").write_bytes(b"features")
    (tmp_path / "x.Flac").write_bytes(b"audio")
    assert [p.name for p in one_file_per_clip(tmp_path, (".pt", ".wav", ".flac"), audio_first=True)] == ["x.Flac"]
    features, audio = (inputs.clip_digest(tmp_path / name) for name in ("x.pt", "x.Flac"))
    assert inputs.enrolled_twin_digest(tmp_path / "x.pt", features, {audio: "alice"}) == audio
    assert inputs.enrolled_twin_digest(tmp_path / "x.Flac", audio, {features: "alice"}) == features


def test_append_works_out_new_clips_against_the_index_as_it_is_under_the_lock(models, tiny_synth, tmp_path):
    """An object opened before another process removed and re-enrolled the speaker must not skip a clip the index
    no longer holds; and an error about an array names its place in the caller's list, skipped clips counted."""
    index_path = tmp_path / "spk.faiss"
    c0, c1, c2 = [wav.with_suffix(".pt") for wav in wavs(tiny_synth, "enroll", "new000")]
    c3 = wavs(tiny_synth, "test", "new000")[0].with_suffix(".pt")
    voxaug.SpeakerIndex.create(index_path, models["ckpt"]).enroll("alice", [c0, c1])
    stale = voxaug.SpeakerIndex.open(index_path)
    other = voxaug.SpeakerIndex.open(index_path)
    other.remove("alice")
    other.enroll("alice", [c2])
    assert stale.enroll("alice", [c0, c3], append=True) == 3 and stale.skipped == {"alice": 0}
    assert len(json.loads(sidecar_path(index_path).read_text())["clip_digests"]["alice"]) == 3

    features = [torch.load(clip, weights_only=True).numpy() for clip in (c0, c1)]
    stale.enroll("bob", features)
    with pytest.raises(VoxaugError, match=r"^bob clip 2: features must have shape \(frames, 40\)"):
        stale.enroll("bob", [*features, np.zeros((200, 80), np.float32)], append=True)


def test_two_processes_creating_one_index_in_different_shapes_do_not_mix_them(models, tiny_synth, tmp_path):
    """Two `enroll --per ...` into a missing index at once: the one that writes second finds an index of another shape
    under the lock and is refused (the shape it was created with, defaults included, is what it asked for), instead of
    enrolling into it."""
    index_path = tmp_path / "spk.faiss"
    c0, c1, c2 = [wav.with_suffix(".pt") for wav in wavs(tiny_synth, "enroll", "new000")]
    per_speaker = voxaug.SpeakerIndex.create(index_path, models["ckpt"])  # both find no index yet
    per_utterance = voxaug.SpeakerIndex.create(index_path, models["ckpt"], per="utterance", hnsw=True)
    per_utterance.enroll("alice", [c0, c1])
    with pytest.raises(VoxaugError, match=r"per utterance with HNSW search, .* per speaker with exact search"):
        per_speaker.enroll("bob", [c2])
    loaded = voxaug.SpeakerIndex.open(index_path).data
    assert (loaded.mode, loaded.hnsw, loaded.counts) == ("utterance", True, {"alice": 2})
    assert per_utterance.enroll("bob", [c2]) == 1  # the creator that won goes on enrolling into its own index


def test_append_under_the_lock_knows_a_clip_another_process_enrolled_meanwhile_through_its_twin(models, tiny_synth,
                                                                                             tmp_path):
    """Two processes that opened the index before either wrote: one enrols x.pt, the other x.wav (its twin). The
    second must skip it (or refuse it for another speaker) as it would had it opened the index afterwards, not count
    the clip twice because the twin was looked up in the index as it was before the lock."""
    index_path = tmp_path / "spk.faiss"
    c0, c1, c2 = [wav.with_suffix(".pt") for wav in wavs(tiny_synth, "enroll", "new000")]
    voxaug.SpeakerIndex.create(index_path, models["ckpt"]).enroll("alice", [c0])
    first, second, third = (voxaug.SpeakerIndex.open(index_path) for _ in range(3))
    first.enroll("alice", [c1], append=True)
    assert second.enroll("alice", [c1.with_suffix(".wav")], append=True) == 2 and second.skipped == {"alice": 1}
    assert len(json.loads(sidecar_path(index_path).read_text())["clip_digests"]["alice"]) == 2
    first.enroll("alice", [c2], append=True)
    with pytest.raises(VoxaugError, match="as one alice is enrolled from"):
        third.enroll("bob", [c2.with_suffix(".wav")])
    assert voxaug.SpeakerIndex.open(index_path).data.counts == {"alice": 3}


def test_an_export_refuses_a_clip_too_long_for_its_attention_and_names_runtime_failures(models, tiny_synth,
                                                                                          monkeypatch):
    """The exported attention holds frames x frames per head: a clip past MAX_FRAMES is refused in one line naming
    it (features and audio alike), not run out of memory; an ONNX Runtime failure names the clip and the model."""
    import voxaug.runtime.onnx_model as onnx_model

    clip = wavs(tiny_synth, "test", "new000")[0]
    frames = torch.load(clip.with_suffix(".pt"), weights_only=True).shape[0]
    monkeypatch.setattr(onnx_model, "MAX_FRAMES", frames - 10)
    for model in (models["onnx"], models["audio"]):
        with pytest.raises(VoxaugError, match=rf"^{re.escape(str(clip))}: clip is \d+ s long \(\d+ frames\); an ONNX "
                                              "export embeds at most"):
            voxaug.SpeakerModel.load(model).embed(clip)
    monkeypatch.setattr(onnx_model, "MAX_FRAMES", 12000)
    loaded = voxaug.SpeakerModel.load(models["onnx"])

    def failing(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory\nmore")

    monkeypatch.setattr(loaded.engine.model.session, "run", failing)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(clip))}: .*model\.onnx: ONNX Runtime failed: "
                                          r"\[ONNXRuntimeError\].*allocate memory$"):
        loaded.embed(clip)


def export_limited_below_the_longest(tiny_synth: Path, monkeypatch) -> tuple[int, list[int]]:
    """The longest utterance of ``tiny_synth`` in frames, with an export's ``MAX_FRAMES`` set 20 below it, and the list
    that gains an item at each run of an export's graph (none before a refusal up front)."""
    import voxaug.runtime.onnx_model as onnx_model

    metadata = json.loads((tiny_synth / "metadata.json").read_text())
    longest = max(u["mel_len"] for utterances in metadata["speakers"].values() for u in utterances)
    monkeypatch.setattr(onnx_model, "MAX_FRAMES", longest - 20)
    runs: list[int] = []
    real_run = onnx_model.OnnxSpeakerModel._run

    def counted_run(self, inputs):
        runs.append(1)
        return real_run(self, inputs)

    monkeypatch.setattr(onnx_model.OnnxSpeakerModel, "_run", counted_run)
    return longest, runs


def test_embed_with_an_export_refuses_a_too_long_utterance_up_front_and_names_window(models, tiny_synth, tmp_path,
                                                                                     monkeypatch):
    """A dataset utterance past MAX_FRAMES is refused before any is embedded (not after minutes of the others),
    naming --window, which `embed` offers for it; windows up to MAX_FRAMES embed it, a longer --window is refused."""
    longest, runs = export_limited_below_the_longest(tiny_synth, monkeypatch)
    command = ["embed", "--model", models["onnx"], tiny_synth, "--out", tmp_path / "emb", "-q"]
    one_line_error(*invoke(*command), f"clip is 1 s long ({longest} frames)", f"--window {longest - 20} or less")
    assert not runs and not (tmp_path / "emb").exists()
    one_line_error(*invoke(*command, "--window", longest - 10), f"--window {longest - 10}: an ONNX export embeds at "
                   f"most {longest - 20} frames at once", f"give --window {longest - 20} or less")
    assert not runs
    code, output = invoke(*command, "--window", longest - 20)
    assert code == 0 and runs, output


def test_evaluate_with_an_export_refuses_a_too_long_utterance_before_embedding_any(models, tiny_synth, tmp_path,
                                                                                   monkeypatch):
    """evaluate --model embeds the run's clips one at a time, as embed --model does: one past MAX_FRAMES is refused
    before any is embedded, not after the others, and names the checkpoint (evaluate has no --window to offer)."""
    longest, runs = export_limited_below_the_longest(tiny_synth, monkeypatch)
    code, output = invoke("evaluate", "--model", models["onnx"], tiny_synth, "--out", tmp_path / "report", "-q")
    one_line_error(code, output, f"({longest} frames)", "embed it with the checkpoint (--ckpt)")
    assert "--window" not in output and not runs


def test_an_export_reads_the_audio_twin_of_a_folder_clip_where_torch_is_missing(models, tiny_synth, monkeypatch):
    import voxaug.api.model as api_model
    from voxaug.cli.common import expand_clips

    folder = tiny_synth / "unseen" / "enroll" / "new000"
    model = voxaug.SpeakerModel.load(models["onnx"])
    assert not model.prefers_audio and expand_clips([folder], model.prefers_audio)[0].suffix == ".pt"
    real = api_model.importlib.util.find_spec
    monkeypatch.setattr(api_model.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    assert model.prefers_audio and {clip.suffix for clip in expand_clips([folder], model.prefers_audio)} == {".wav"}
    checkpoint = voxaug.SpeakerModel.load(models["ckpt"])
    assert not checkpoint.prefers_audio
    monkeypatch.setattr(checkpoint.engine, "frontend", FrontendSettings(sample_rate=8000, f_max=3800.0))
    assert checkpoint.prefers_audio  # a `.pt` twin holds 16 kHz features, not what this front end makes


def test_a_bad_lock_timeout_is_refused_before_any_clip_is_embedded(models, tiny_synth, tmp_path, monkeypatch):
    def embedded(*args, **kwargs):
        raise AssertionError("clips were embedded before the lock timeout was checked")

    monkeypatch.setattr(voxaug.SpeakerModel, "embed_many", embedded)
    clips = wavs(tiny_synth, "enroll", "new000")
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["ckpt"])
    for bad in (-1, float("nan"), True):
        with pytest.raises(VoxaugError, match="--lock-timeout must be a finite number of seconds >= 0"):
            index.enroll("new000", clips, lock_timeout=bad)
    code, output = invoke("enroll", "--index", tmp_path / "spk.faiss", "--ckpt", models["ckpt"], "--speaker", "new000",
                          "--lock-timeout", "-1", *clips)
    one_line_error(code, output, "--lock-timeout must be a finite number of seconds >= 0, got -1")
    assert not (tmp_path / "spk.faiss").exists()


def test_enroll_takes_waveform_arrays_with_their_sample_rate_as_identify_does(models, tiny_synth, tmp_path):
    """A speaker enrolled from waveform arrays matches one enrolled from the files they were read from; a bad
    array is refused naming the speaker and the clip."""
    clips = wavs(tiny_synth, "enroll", "new000")
    waveforms = [soundfile.read(clip, dtype="float32") for clip in clips]
    rate = waveforms[0][1]
    by_file = voxaug.SpeakerIndex.create(tmp_path / "files.faiss", models["onnx"])
    by_array = voxaug.SpeakerIndex.create(tmp_path / "arrays.faiss", models["onnx"])
    by_file.enroll("new000", clips)
    assert by_array.enroll("new000", [wave for wave, _ in waveforms], sample_rate=rate) == len(clips)
    query = wavs(tiny_synth, "test", "new000")[0]
    assert by_array.identify(query)["top"][0]["score"] == pytest.approx(by_file.identify(query)["top"][0]["score"],
                                                                        abs=1e-5)
    with pytest.raises(VoxaugError, match=r"^bob clip 1: the waveform is silent"):
        by_array.enroll_many({"bob": [soundfile.read(wavs(tiny_synth, "enroll", "new001")[0], dtype="float32")[0],
                                      np.zeros(rate, np.float32)]}, sample_rate=rate)


def test_an_index_with_no_speakers_is_named_when_asked_to_identify(models, tiny_synth, tmp_path):
    clip = wavs(tiny_synth, "enroll", "new000")[0]
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(tmp_path / 'spk.faiss'))}: the index has no enrolled"):
        index.identify(clip)
    index.enroll("a", clip)
    index.remove("a")
    code, output = invoke("identify", "--index", tmp_path / "spk.faiss", clip)
    one_line_error(code, output, f"{tmp_path / 'spk.faiss'}: the index has no enrolled speakers")


def test_embed_and_evaluate_refuse_an_export_that_takes_audio_in_one_line_up_front(models, tiny_synth, tmp_path):
    """They read the dataset's packed log-mel features, which a --with-frontend export cannot embed."""
    for command in (["embed", "--model", models["audio"], tiny_synth, "--out", tmp_path / "emb"],
                    ["evaluate", "--model", models["audio"], tiny_synth, "--out", tmp_path / "report"]):
        one_line_error(*invoke(*command, "-q"), "audio.onnx", "takes audio (--with-frontend)")
    assert not (tmp_path / "emb").exists() and not (tmp_path / "report").exists()


def test_an_export_that_takes_audio_enrols_and_identifies_folders_of_pt_and_wav_twins_by_their_audio(
        models, tiny_synth, tmp_path):
    """`voxaug synth` writes each unseen clip as x.pt and x.wav; a folder stands for its audio when the model
    takes only audio, and for its features otherwise."""
    from voxaug.clips import one_file_per_clip

    folder = tiny_synth / "unseen" / "test" / "new000"
    suffixes = (".pt", ".wav", ".flac")
    assert {p.suffix for p in one_file_per_clip(folder, suffixes)} == {".pt"}
    assert {p.suffix for p in one_file_per_clip(folder, suffixes, audio_first=True)} == {".wav"}
    index = tmp_path / "spk.faiss"
    code, output = invoke("enroll", "--index", index, "--model", models["audio"], "--speakers-dir",
                          tiny_synth / "unseen" / "enroll")
    assert code == 0, output
    code, output = invoke("identify", "--index", index, "--json", folder)
    assert code == 0, output
    answers = [json.loads(line) for line in output.splitlines()]
    assert len(answers) == len(wavs(tiny_synth, "test", "new000")) and all(a["clip"].endswith(".wav") for a in answers)


def test_a_model_trained_from_audio_at_other_settings_refuses_pt_features_it_would_misread(models, tiny_synth,
                                                                                            tmp_path):
    """`.pt` features are made with the default front end: an 8 kHz model ran on them with exit 0 and answered
    wrongly. Its audio is read; a lone `.pt` clip or an HW4 folder is refused, naming the settings."""
    state = load_checkpoint(models["ckpt"])
    state["frontend"].update(sample_rate=8000, f_max=4000.0)  # as `voxaug train --sample-rate 8000` saves it
    save_checkpoint(tmp_path / "8k.pt", state)
    assert FrontendSettings(n_mels=64).audio_settings() == [], "n_mels comes with the features: not an audio setting"
    code, output = invoke("predict", tiny_synth, "--ckpt", tmp_path / "8k.pt", "--out", tmp_path / "p.csv")
    one_line_error(code, output, "made with the default front end", "(f_max, sample_rate)", ".pt clips)")
    code, output = invoke("embed", tiny_synth, "--ckpt", tmp_path / "8k.pt", "--out", tmp_path / "emb")
    one_line_error(code, output, "give the clip's audio")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "emb").exists()
    model = voxaug.SpeakerModel.load(tmp_path / "8k.pt")
    feature_clip = sorted((tiny_synth / "unseen" / "test").rglob("*.pt"))[0]
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(feature_clip))}: log-mel features \(\.pt\)"):
        model.embed(feature_clip)
    assert model.embed(feature_clip.with_suffix(".wav")).shape == (model.embedding_dim,)
    first, second, third = sorted(tiny_synth.glob("uttr-*.pt"))[:3]
    (tmp_path / "trials.txt").write_text(f"1 {first.name} {second.name}\n0 {first.name} {third.name}\n")
    code, output = invoke("evaluate", tiny_synth, "--ckpt", tmp_path / "8k.pt", "--out", tmp_path / "report",
                          "--trials", tmp_path / "trials.txt", "-q")
    one_line_error(code, output, f"{first}: log-mel features (.pt) are made with the default front end")


def test_identify_names_a_clip_by_text_and_refuses_a_name_of_another_type(models, tiny_synth, tmp_path):
    """``name=5`` was recorded as ``"clip": 5``, and a path object as one that ``json.dumps`` cannot write."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    clip = wavs(tiny_synth, "test", "new000")[0]
    assert index.identify(clip, name=Path("query.wav"))["clip"] == "query.wav"
    assert json.dumps(index.identify(clip, name="query"))
    for name in (5, b"query", ["query"]):
        with pytest.raises(VoxaugError, match=f"name: expected text naming the clip, got {type(name).__name__}"):
            index.identify(clip, name=name)


def test_enroll_many_refuses_speakers_that_are_not_a_mapping_in_one_line(models, tiny_synth, tmp_path):
    """A list of (name, clips) pairs, or of clips, was an AttributeError from ``.items()``."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    clips = wavs(tiny_synth, "enroll", "new000")
    for speakers in ([("a", clips)], clips, "a", None):
        with pytest.raises(VoxaugError, match="speakers: expected a mapping of speaker name to clips"):
            index.enroll_many(speakers)
    assert not (tmp_path / "spk.faiss").exists()


def test_every_command_refuses_an_export_given_as_ckpt_alike(models, tiny_synth, tmp_path):
    """embed and evaluate refused `--ckpt model.onnx` pointing to --model; enroll and identify took it."""
    index, clip = tmp_path / "spk.faiss", wavs(tiny_synth, "test", "new000")[0]
    code, output = invoke("enroll", "--index", index, "--model", models["onnx"], "--speaker", "a",
                          *wavs(tiny_synth, "enroll", "new000"))
    assert code == 0, output
    before = index.read_bytes(), sidecar_path(index).read_bytes()
    for command in (["identify", "--index", index, clip],
                    ["enroll", "--index", index, "--speaker", "b", *wavs(tiny_synth, "enroll", "new001")],
                    ["enroll", "--index", tmp_path / "new.faiss", "--speaker", "b", clip],
                    ["embed", tiny_synth, "--out", tmp_path / "emb"],
                    ["evaluate", tiny_synth, "--out", tmp_path / "report"]):
        one_line_error(*invoke(*command, "--ckpt", models["onnx"]), f"{models['onnx']}: an ONNX export, not a "
                       "checkpoint", "take an export with --model")
    assert (index.read_bytes(), sidecar_path(index).read_bytes()) == before
    assert not any((tmp_path / name).exists() for name in ("new.faiss", "emb", "report"))


def test_a_feature_clip_given_to_an_export_that_takes_audio_is_refused_naming_the_clip_alone(models, tiny_synth, tmp_path):
    """The refusal read `error: CLIP.pt: audio.onnx: this model takes raw 16 kHz audio ...`: two files, one message."""
    clip = wavs(tiny_synth, "enroll", "new000")[0].with_suffix(".pt")
    code, output = invoke("enroll", "--index", tmp_path / "i.faiss", "--model", models["audio"], "--speaker", "a", clip)
    one_line_error(code, output, f"error: {clip}: holds log-mel features, and this model takes raw 16 kHz audio")
    assert str(models["audio"]) not in output and "audio.onnx" not in output
    model = voxaug.SpeakerModel.load(models["audio"])
    with pytest.raises(VoxaugError, match=r"^clip: holds log-mel features, and this model takes raw 16 kHz audio"):
        model.embed(np.zeros((50, 40), dtype=np.float32))


def test_identify_refuses_a_feature_clip_for_an_audio_export_before_answering_the_clips_before_it(models, tiny_synth,
                                                                                                   tmp_path):
    """`identify --model audio.onnx a.wav b.pt` printed a.wav's answer, then stopped at b.pt: a program reading the
    answers got some of them and an error, as a missing clip no longer does."""
    index = tmp_path / "spk.faiss"
    code, output = invoke("enroll", "--index", index, "--model", models["audio"], "--speaker", "a",
                          *wavs(tiny_synth, "enroll", "new000"))
    assert code == 0, output
    answered, features = wavs(tiny_synth, "test", "new000")[0], wavs(tiny_synth, "test", "new001")[0].with_suffix(".pt")
    for extra in ([], ["--json"]):
        code, output = invoke("identify", "--index", index, "--model", models["audio"], *extra, answered, features)
        one_line_error(code, output,
                       f"error: {features}: holds log-mel features, and this model takes raw 16 kHz audio")


def test_identify_refuses_a_feature_clip_for_a_model_trained_at_other_audio_settings_before_answering_any(
        models, tiny_synth, tmp_path):
    """The refusal before answering covered only an export that takes audio: an 8 kHz checkpoint, which refuses `.pt`
    features too, still printed a.wav's answer and then stopped at b.pt."""
    state = load_checkpoint(models["ckpt"])
    state["frontend"].update(sample_rate=8000, f_max=4000.0)  # as `voxaug train --sample-rate 8000` saves it
    save_checkpoint(tmp_path / "8k.pt", state)
    index = tmp_path / "spk.faiss"
    code, output = invoke("enroll", "--index", index, "--ckpt", tmp_path / "8k.pt", "--speaker", "a",
                          *wavs(tiny_synth, "enroll", "new000"))
    assert code == 0, output
    answered, features = wavs(tiny_synth, "test", "new000")[0], wavs(tiny_synth, "test", "new001")[0].with_suffix(".pt")
    for extra in ([], ["--json"]):
        code, output = invoke("identify", "--index", index, "--ckpt", tmp_path / "8k.pt", *extra, answered, features)
        one_line_error(code, output, f"error: {features}: log-mel features (.pt) are made with the default front end")


def test_identify_without_torch_refuses_a_feature_clip_before_answering_the_clips_before_it(models, tiny_synth,
                                                                                             tmp_path):
    """A runtime-only install (no torch) reads no `.pt` clip: identify printed a.wav's answer, then stopped at b.pt."""
    index = tmp_path / "spk.faiss"
    code, output = invoke("enroll", "--index", index, "--model", models["onnx"], "--speaker", "a",
                          *wavs(tiny_synth, "enroll", "new000"))
    assert code == 0, output
    answered, features = wavs(tiny_synth, "test", "new000")[0], wavs(tiny_synth, "test", "new001")[0].with_suffix(".pt")
    code = ("import sys\nsys.modules['torch'] = None\nsys.argv = ['voxaug', *sys.argv[1:]]\n"
            "from voxaug.cli.main import main\nmain()\n")
    args = ["identify", "--index", index, "--model", models["onnx"], answered, features]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    one_line_error(done.returncode, done.stdout + done.stderr, f"error: {features}: reading a feature file (.pt")


def test_bfloat16_tensors_are_embedded_like_their_float32_values(models, tiny_synth, tmp_path):
    """numpy has no bfloat16, so a bfloat16 tensor (from CUDA AMP, say) was a bare TypeError from ``.numpy()``."""
    clip = wavs(tiny_synth, "test", "new000")[0]
    waveform = torch.from_numpy(soundfile.read(clip, dtype="float32")[0]).bfloat16()
    features = torch.load(clip.with_suffix(".pt"), weights_only=True).bfloat16()
    for kind in ("onnx", "ckpt"):
        model = voxaug.SpeakerModel.load(models[kind])
        assert np.array_equal(model.embed(waveform, sample_rate=16000), model.embed(waveform.float(), sample_rate=16000))
        assert np.array_equal(model.embed(features), model.embed(features.float().numpy()))
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    assert index.enroll("a", [waveform], sample_rate=16000) == 1
    assert index.identify(waveform, sample_rate=16000)["decision"] == "a"
    with pytest.raises(VoxaugError, match="dtype int16"):
        model.embed(torch.zeros(50, 40, dtype=torch.int16))


def test_a_thread_count_that_is_not_a_positive_whole_number_is_refused_when_the_model_loads(models, tiny_synth,
                                                                                             tmp_path):
    """``threads=0`` loaded a checkpoint, then every embed was a RuntimeError from torch.set_num_threads; a text
    count was a multi-line TypeError from ONNX Runtime's session options."""
    clip = wavs(tiny_synth, "test", "new000")[0]
    for kind in ("ckpt", "onnx"):
        for threads in (0, -1, 2.5, "2", True):
            with pytest.raises(VoxaugError, match=f"^threads must be a positive whole number .*got {threads!r}$"):
                voxaug.SpeakerModel.load(models[kind], threads=threads).embed(clip)
        assert voxaug.SpeakerModel.load(models[kind], threads=np.int64(1)).embed(clip).shape == (32,)
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    with pytest.raises(VoxaugError, match="^threads must be a positive whole number"):
        voxaug.SpeakerIndex.open(tmp_path / "spk.faiss", threads=0)


def test_a_speaker_name_that_is_not_text_is_refused_by_enroll_and_remove_in_one_line(models, tiny_synth, tmp_path):
    """``enroll(["a"], clips)`` and ``remove(["a"])`` were bare ``unhashable type: 'list'`` TypeErrors."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    before = index.path.read_bytes(), sidecar_path(index.path).read_bytes()
    for name in (["a"], {"a": 1}, 5, None):
        with pytest.raises(VoxaugError, match=re.escape(f"speaker name {name!r} must be non-empty text")):
            index.enroll(name, wavs(tiny_synth, "enroll", "new001"))
        with pytest.raises(VoxaugError, match=re.escape(f"speaker name {name!r} must be non-empty text")):
            index.remove(name)
    assert (index.path.read_bytes(), sidecar_path(index.path).read_bytes()) == before and index.speakers == ["a"]


def test_yes_no_options_that_are_not_bools_are_refused_rather_than_read_as_true(models, tiny_synth, tmp_path):
    """``create(..., hnsw="no")`` built an HNSW index and ``enroll(..., append="no")`` appended to an enrolled
    speaker: any non-empty text is truthy."""
    with pytest.raises(VoxaugError, match="^hnsw: expected True or False, got str 'no'$"):
        voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"], hnsw="no")
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"], hnsw=np.bool_(False))
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    before = index.path.read_bytes(), sidecar_path(index.path).read_bytes()
    for append in ("no", 0, None):
        with pytest.raises(VoxaugError, match=f"^append: expected True or False, got {type(append).__name__}"):
            index.enroll("a", wavs(tiny_synth, "enroll", "new001"), append=append)
    assert (index.path.read_bytes(), sidecar_path(index.path).read_bytes()) == before
    assert json.loads(sidecar_path(index.path).read_text())["faiss"] == "IndexFlatIP"


def test_a_bad_top_k_is_refused_before_the_index_is_opened_or_any_clip_embedded(models, tiny_synth, tmp_path,
                                                                                 monkeypatch):
    """``identify --top-k 0`` loaded the model and embedded the first clip before FAISS's search refused it."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))

    def embedded(*args, **kwargs):
        raise AssertionError("a clip was embedded before --top-k was checked")

    monkeypatch.setattr(voxaug.SpeakerModel, "embed_with_probabilities", embedded)
    monkeypatch.setattr(voxaug.SpeakerIndex, "open", embedded)
    clip = wavs(tiny_synth, "test", "new000")[0]
    for top_k in ("0", "-3"):
        one_line_error(*invoke("identify", "--index", index.path, "--top-k", top_k, clip),
                       f"--top-k must be a positive whole number, got {top_k}")
    for top_k in (0, -3, 2.0, True):
        with pytest.raises(VoxaugError, match=re.escape(f"--top-k must be a positive whole number, got {top_k!r}")):
            index.identify(clip, top_k=top_k)


def test_a_score_norm_is_refused_where_it_is_given_not_at_the_first_identify(models, tiny_synth, tmp_path):
    """``SpeakerIndex.open(path, score_norm="bogus")``, or ``"asnorm"`` for an index without a cohort, opened, and
    only the first ``identify`` refused it."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    for score_norm in ("bogus", "", "ASNORM"):
        with pytest.raises(VoxaugError, match=re.escape(f"--score-norm {score_norm!r} is not known; accepted: none, "
                                                        "asnorm")):
            voxaug.SpeakerIndex.open(index.path, score_norm=score_norm)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(index.path))}: --score-norm asnorm: the index has no "
                                          "AS-norm cohort"):
        voxaug.SpeakerIndex.open(index.path, score_norm="asnorm")
    opened = voxaug.SpeakerIndex.open(index.path, score_norm="none")
    assert opened.identify(wavs(tiny_synth, "test", "new000")[0])["score"] == "cosine"


def test_a_sample_rate_given_with_clip_files_alone_is_refused_not_ignored(models, tiny_synth, tmp_path):
    """``model.embed("x.wav", sample_rate=8000)`` read the 16 kHz file at 16 kHz and said nothing: ``sample_rate``
    is for waveform arrays, and files are read at their own rate."""
    clip = wavs(tiny_synth, "test", "new000")[0]
    model = voxaug.SpeakerModel.load(models["onnx"])
    for call in (lambda: model.embed(clip, sample_rate=8000), lambda: model.classify(str(clip), sample_rate=16000),
                 lambda: model.embed(clip.with_suffix(".pt"), sample_rate=16000)):
        with pytest.raises(VoxaugError, match=r"^sample_rate=\d+ is for waveform arrays, and .* is a clip file"):
            call()
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    with pytest.raises(VoxaugError, match=rf"^sample_rate=8000 is for waveform arrays, and {re.escape(str(clip))} is"):
        index.enroll("a", [clip], sample_rate=8000)
    assert not index.path.exists()
    waveform, rate = soundfile.read(wavs(tiny_synth, "enroll", "new000")[0], dtype="float32")
    assert index.enroll("a", [wavs(tiny_synth, "enroll", "new000")[1], waveform], sample_rate=rate) == 2
    with pytest.raises(VoxaugError, match="^sample_rate=8000 is for waveform arrays"):
        index.identify(clip, sample_rate=8000)
    assert index.identify(waveform, sample_rate=rate)["decision"] == "a"


def test_embed_many_refuses_a_sample_rate_given_with_clip_files_alone(models, tiny_synth, tmp_path):
    """``embed_many(files, sample_rate=8000)`` read the files at their own rate and said nothing, where ``embed`` and
    ``enroll`` refuse it; ``enroll_many`` still passes its rate on when only some speakers' clips are arrays."""
    clips = wavs(tiny_synth, "enroll", "new000")
    model = voxaug.SpeakerModel.load(models["onnx"])
    with pytest.raises(VoxaugError, match=rf"^sample_rate=8000 is for waveform arrays, and {re.escape(str(clips[0]))}"):
        model.embed_many(clips, sample_rate=8000)
    waveform, rate = soundfile.read(wavs(tiny_synth, "enroll", "new001")[0], dtype="float32")
    assert np.array_equal(model.embed_many([waveform], sample_rate=rate)[0], model.embed(waveform, sample_rate=rate))
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    assert index.enroll_many({"a": clips[:2], "b": [waveform]}, sample_rate=rate) == {"a": 2, "b": 1}
    assert index.enroll("b", [waveform, clips[2]], append=True, sample_rate=rate) == 2


def test_a_bytes_clip_is_refused_as_bytes_not_read_as_numbers(models, tiny_synth, tmp_path):
    """A bytes path was an array of one string (``dtype |S57``), and ``enroll(name, b"...")`` took each byte as a
    clip and refused the first as integer PCM."""
    clip = wavs(tiny_synth, "test", "new000")[0]
    model = voxaug.SpeakerModel.load(models["onnx"])
    for value in (os.fsencode(clip), bytearray(clip.read_bytes())):
        with pytest.raises(VoxaugError, match=f"^clip: got {type(value).__name__}; give a clip file's path as text"):
            model.embed(value)
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    for clips in (os.fsencode(clip), [os.fsencode(clip)]):
        with pytest.raises(VoxaugError, match="^a clip 0: got bytes; give a clip file's path as text"):
            index.enroll("a", clips)
    assert not index.path.exists()
    assert index.enroll("a", os.fsdecode(os.fsencode(clip))) == 1


def test_a_model_or_index_path_that_is_not_a_path_is_refused_in_one_line(models, tmp_path):
    """``SpeakerModel.load(None)`` (and ``SpeakerIndex.create(path, None)``, ``SpeakerIndex.open(None)``) was
    pathlib's bare ``expected str, bytes or os.PathLike object, not NoneType``."""
    for value in (None, 5, os.fsencode(models["onnx"])):
        shown = re.escape(f"got {type(value).__name__} {value!r}")
        with pytest.raises(VoxaugError, match=rf"^model: expected the path of a checkpoint \(\.pt\) or an ONNX export "
                                              rf"\(\.onnx\) as text or a path object, {shown}$"):
            voxaug.SpeakerModel.load(value)
        with pytest.raises(VoxaugError, match=rf"^model: expected the path of .*{shown}$"):
            voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", value)
        for call in (lambda: voxaug.SpeakerIndex.open(value), lambda: voxaug.SpeakerIndex.create(value, models["onnx"])):
            with pytest.raises(VoxaugError, match=rf"^path: expected the path of a speaker index file .*{shown}$"):
                call()
    assert voxaug.SpeakerModel.load(str(models["onnx"])).kind == "onnx"


def test_a_cohort_top_k_for_scores_that_are_not_as_norm_is_refused_not_ignored(models, tiny_synth, tmp_path):
    """``identify --cohort-top-k 5`` on an index that scores cosines answered cosines, as if it had not been given."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    expected = f"{index.path}: --cohort-top-k 5 sets AS-norm's cohort, and this index scores cosine; add --score-norm asnorm"
    with pytest.raises(VoxaugError, match=f"^{re.escape(expected)}$"):
        voxaug.SpeakerIndex.open(index.path, cohort_top_k=5)
    with pytest.raises(VoxaugError, match=re.escape(expected)):
        voxaug.SpeakerIndex.open(index.path, cohort_top_k=5, score_norm="none")
    one_line_error(*invoke("identify", "--index", index.path, "--cohort-top-k", "5", wavs(tiny_synth, "test", "new000")[0]),
                   expected)


def test_a_device_or_thread_count_beside_a_loaded_model_is_refused_not_ignored(models, tiny_synth, tmp_path):
    """``SpeakerIndex.open(path, model=loaded, device="cuda", threads=2)`` ran on the CPU with the model's own
    threads and said nothing: a loaded SpeakerModel keeps the device and threads it was loaded with."""
    model = voxaug.SpeakerModel.load(models["ckpt"])
    with pytest.raises(VoxaugError, match=r"^device='cuda': a SpeakerModel runs as it was loaded; pass these to "
                                          r"SpeakerModel\.load instead$"):
        voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model, device="cuda")
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    for extra, shown in (({"device": "cuda"}, "device='cuda'"), ({"threads": 2}, "threads=2"),
                         ({"device": "cuda", "threads": 1}, "device='cuda', threads=1")):
        with pytest.raises(VoxaugError, match=f"^{re.escape(shown)}: a SpeakerModel runs as it was loaded"):
            voxaug.SpeakerIndex.open(index.path, model=model, **extra)
    assert voxaug.SpeakerIndex.open(index.path, model=model).model is model
    assert voxaug.SpeakerIndex.open(index.path, threads=1).model.engine.threads == 1
    assert voxaug.SpeakerIndex.open(index.path, model=models["ckpt"], device="cpu").model.engine.device.type == "cpu"


def test_identify_refuses_a_missing_or_unsupported_clip_argument_before_answering_any(models, tiny_synth, tmp_path):
    """``identify good.wav nope.wav`` printed good.wav's answer, then stopped at nope.wav with exit status 2."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    good = wavs(tiny_synth, "test", "new000")[0]
    (tmp_path / "notes.txt").write_text("hi")
    for bad, problem in ((tmp_path / "nope.wav", "clip not found"),
                         (tmp_path / "notes.txt", f"unsupported clip type '.txt'; accepted: .pt, {AUDIO}")):
        for args in ([good, bad], [good, "--json", bad]):
            one_line_error(*invoke("identify", "--index", index.path, *args), f"error: {bad}: {problem}")
    code, output = invoke("identify", "--index", index.path, "--json", good, good.parent)
    assert code == 0 and len(output.splitlines()) == 1 + len(list(good.parent.glob("*.pt"))), output


def test_mismatched_positions_a_progress_that_is_not_a_bool_and_an_empty_clip_name_are_refused(models, tiny_synth,
                                                                                               tmp_path):
    """``embed_many(3 clips, positions=[0, 1])`` returned 2 embeddings (zip cut the list short), ``progress="no"``
    drew a progress bar (the string is truthy), and ``identify(x, name="")`` answered under the clip's own path."""
    clips = wavs(tiny_synth, "enroll", "new000")[:3]
    model = voxaug.SpeakerModel.load(models["ckpt"])
    with pytest.raises(VoxaugError, match=r"^positions: 2 given for 3 clips; give one per clip$"):
        model.embed_many(clips, positions=[0, 1])
    assert model.embed_many(clips, positions=(4, 5, 6)).shape == (3, model.embedding_dim)
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    with pytest.raises(VoxaugError, match=r"^progress: expected True or False, got str 'no'$"):
        index.enroll_many({"a": clips}, progress="no")
    assert not index.path.exists()
    index.enroll_many({"a": clips})
    with pytest.raises(VoxaugError, match=r"^name: empty; give text naming the clip"):
        index.identify(clips[0], name="")
    assert index.identify(clips[0], name="mine")["clip"] == "mine"


def test_a_loaded_model_is_taken_beside_the_device_it_already_runs_on(models, tiny_synth, tmp_path):
    """``SpeakerIndex.open(path, model=loaded, device="cpu")`` (``"cpu"`` was the default of ``device``, so code may
    spell it out) was refused for a model loaded on the CPU, where nothing is contradicted or ignored."""
    for kind in ("ckpt", "onnx"):
        model = voxaug.SpeakerModel.load(models[kind])
        index = voxaug.SpeakerIndex.create(tmp_path / f"{kind}.faiss", model, device="cpu")
        assert index.model is model
        index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
        assert voxaug.SpeakerIndex.open(index.path, model=model, device="cpu").model is model


def test_identify_refuses_a_missing_clip_before_the_model_loads_and_after_the_index_is_read(trained_run, tiny_synth,
                                                                                            tmp_path, monkeypatch):
    """``identify --index spk.faiss nope.wav`` loaded the index's model (seconds, a CUDA context with
    ``--device cuda``) before it said the clip is not there. The index's own errors still come first."""
    from voxaug.api.model import SpeakerModel

    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", trained_run / "best.pt")
    index.enroll("a", sorted((tiny_synth / "unseen" / "enroll" / "new000").glob("*.pt")))
    monkeypatch.setattr(SpeakerModel, "load", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    good, missing = sorted((tiny_synth / "unseen" / "test" / "new000").glob("*.pt"))[0], tmp_path / "nope.wav"
    for model in ([], ["--ckpt", trained_run / "best.pt"]):
        one_line_error(*invoke("identify", "--index", index.path, *model, good, missing),
                       f"error: {missing}: clip not found")
    (tmp_path / "folder.faiss").mkdir()
    one_line_error(*invoke("identify", "--index", tmp_path / "folder.faiss", missing),
                   f"error: {tmp_path / 'folder.faiss'}: expected a speaker index file, found a folder")


def test_a_name_another_process_enrolled_meanwhile_in_another_unicode_spelling_is_that_speaker(trained_run, tiny_synth,
                                                                                                tmp_path):
    """An object that read the index before another process enrolled 'José' (é as one code point) matched 'José'
    (e and a combining accent) against the index as it had read it, not as it is under the lock: it enrolled a second
    José beside the first, and --append started that second one instead of adding to the first."""
    index_path = tmp_path / "spk.faiss"
    clips = sorted((tiny_synth / "unseen" / "enroll" / "new000").glob("*.pt"))
    others = sorted((tiny_synth / "unseen" / "enroll" / "new001").glob("*.pt"))
    nfc, nfd = "Jos\u00e9", "Jose\u0301"
    voxaug.SpeakerIndex.create(index_path, trained_run / "best.pt").enroll("a", clips[:1])
    stale, other = voxaug.SpeakerIndex.open(index_path), voxaug.SpeakerIndex.open(index_path)
    other.enroll(nfc, clips[1:])
    with pytest.raises(VoxaugError, match=f"already enrolled: {nfc};"):
        stale.enroll(nfd, others)
    both = len(clips) - 1 + len(others)
    assert stale.enroll(nfd, others, append=True) == both and stale.skipped == {nfd: 0}
    assert voxaug.SpeakerIndex.open(index_path).data.counts == {"a": 1, nfc: both}


@pytest.mark.parametrize("values, sample_rate", [
    (np.full((50, 40), 1e300), None),
    (np.full(16000, 1e300), 16000),
    (torch.full((16000,), 1e300, dtype=torch.float64), 16000),
])
def test_float64_values_beyond_float32_are_said_to_overflow_it_not_to_be_nan(values, sample_rate):
    """A float64 array of 1e300 became Inf in the float32 copy (with numpy's overflow warning) and was refused as
    holding "NaN or Inf", values it does not hold."""
    from voxaug.api.inputs import to_clip

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(VoxaugError) as refused:
            to_clip(values, sample_rate, FrontendSettings(), "clip")
    assert str(refused.value) == "clip: values as large as 1e+300 overflow float32, the model's precision (largest 3.4e+38)"


def test_features_given_as_mel_bins_by_frames_get_a_transposed_hint():
    """A (40, T) array where (T, 40) goes was told to pass a sample_rate, as if it were a waveform."""
    from voxaug.api.inputs import to_clip

    with pytest.raises(VoxaugError) as refused:
        to_clip(np.zeros((40, 50), dtype=np.float32), None, FrontendSettings(), "clip")
    assert str(refused.value) == ("clip: features must have shape (frames, 40), got (40, 50) "
                                  "(transposed? features are (frames, n_mels))")


@pytest.mark.parametrize("options, expected", [
    (["--threshold", "5"], "error: --threshold is a cosine score in [-1, 1] (or pass --score-norm asnorm), got 5.0"),
    (["--cohort-top-k", "5"], "error: {index}: --cohort-top-k 5 sets AS-norm's cohort, and this index scores cosine; "
                              "add --score-norm asnorm"),
    (["--score-norm", "asnorm"], "error: {index}: --score-norm asnorm: the index has no AS-norm cohort; rebuild it "
                                 "with `voxaug embed ... --index FILE --score-norm asnorm`"),
])
def test_identify_refuses_scoring_options_the_index_cannot_take_before_loading_the_model(models, tiny_synth, tmp_path,
                                                                                          monkeypatch, options, expected):
    """A --threshold out of a cosine index's range, or a --cohort-top-k or --score-norm asnorm it cannot use, was
    refused only once the model had loaded (seconds), and a missing --ckpt was reported instead of them."""
    import voxaug.api.index as api_index

    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(api_index, "loaded_model", loaded)
    monkeypatch.setattr(api_index, "sidecar_model", loaded)
    code, output = invoke("identify", "--index", index.path, *options, wavs(tiny_synth, "test", "new000")[0])
    assert (code, output.strip()) == (2, expected.format(index=index.path))


def test_overlapping_calls_of_a_thread_capped_checkpoint_put_the_process_count_back(models, tiny_synth, monkeypatch):
    """Two threads embedding with a ``threads=1`` model at once: the second one in saved the first's cap as the count
    to restore and, leaving last, left torch at one thread for the whole process."""
    import threading

    import voxaug.embeddings.extract as extract

    real, seen = extract.embed_tensors, {}
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def overlapping(*args, **kwargs):  # "first" holds its cap until "second" is in; "second" leaves after "first"
        name = threading.current_thread().name
        if name == "first":
            first_in.set()
            second_in.wait(60)
        else:
            second_in.set()
            first_out.wait(60)
        seen[name] = torch.get_num_threads()
        return real(*args, **kwargs)

    def embed(model, clip):
        model.embed(clip)
        if threading.current_thread().name == "first":
            first_out.set()

    monkeypatch.setattr(extract, "embed_tensors", overlapping)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = voxaug.SpeakerModel.load(models["ckpt"], threads=1)
        clip = wavs(tiny_synth, "test", "new000")[0]
        first = threading.Thread(target=embed, args=(model, clip), name="first")
        first.start()
        assert first_in.wait(60)
        second = threading.Thread(target=embed, args=(model, clip), name="second")
        second.start()
        first.join(60), second.join(60)
        later = []
        fresh = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        fresh.start(), fresh.join(60)
        assert seen == {"first": 1, "second": 1} and torch.get_num_threads() == 2 and later == [2]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("second", ["enroll", "remove"])
def test_an_index_object_shared_by_threads_keeps_the_last_write_not_the_last_to_return(models, tiny_synth, tmp_path,
                                                                                        monkeypatch, second):
    """A thread that let go of the index lock before setting the object's view could set it after another thread
    of the process had written again: the object then identified from the older index, without ``c`` (or with
    ``a`` removed), though both writes were made through it and the file held them."""
    import contextlib
    import threading

    import voxaug.api.index as api_index

    real, first_written, second_done = api_index.index_lock, threading.Event(), threading.Event()

    @contextlib.contextmanager
    def lock_then_pause_the_first(*args, **kwargs):
        with real(*args, **kwargs):
            yield
        if threading.current_thread().name == "first":
            first_written.set()
            second_done.wait(60)

    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000")[:1])
    monkeypatch.setattr(api_index, "index_lock", lock_then_pause_the_first)

    def then():
        if second == "enroll":
            index.enroll("c", wavs(tiny_synth, "enroll", "new001"))
        else:
            index.remove("a")
        second_done.set()

    first = threading.Thread(target=index.enroll, args=("b", wavs(tiny_synth, "enroll", "new000")[1:]), name="first")
    first.start()
    assert first_written.wait(60)
    later = threading.Thread(target=then)
    later.start()
    first.join(60), later.join(60)
    expected = ["a", "b", "c"] if second == "enroll" else ["b"]
    assert voxaug.SpeakerIndex.open(index.path).speakers == expected and index.speakers == expected


def test_an_empty_device_is_refused_by_identify_and_enroll_as_by_the_other_commands(models, tiny_synth, tmp_path):
    """``identify --device ""`` and ``enroll --device ""`` (an unset ``$DEVICE``) ran on the CPU, where train,
    predict, embed and evaluate refuse the empty name: ``device or "cpu"`` took it for no device given."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    clip = wavs(tiny_synth, "test", "new000")[0]
    expected = "error: --device '' is not known; accepted: auto, cpu, cuda"
    one_line_error(*invoke("identify", "--index", index.path, "--device", "", clip), expected)
    one_line_error(*invoke("enroll", "--index", index.path, "--speaker", "b", "--device", "", clip), expected)
    with pytest.raises(VoxaugError, match=r"^--device '' is not known"):
        voxaug.SpeakerIndex.open(index.path, device="")


def test_a_model_and_index_from_an_export_go_to_a_process_pool_and_a_changed_file_is_refused(models, tiny_synth,
                                                                                            tmp_path):
    """Pickling (how a process pool, fork or spawn, sends arguments) failed with ONNX Runtime's bare "cannot pickle
    'InferenceSession'" TypeError: a copy now reopens the export, and refuses one changed since it was loaded."""
    import pickle

    export = tmp_path / "model.onnx"
    shutil.copy(models["onnx"], export)
    model = voxaug.SpeakerModel.load(export, threads=1)
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    clip = wavs(tiny_synth, "test", "new000")[0]
    copy = pickle.loads(pickle.dumps(model))
    assert np.array_equal(copy.embed(clip), model.embed(clip))
    assert pickle.loads(pickle.dumps(index)).identify(clip) == index.identify(clip)
    sent = pickle.dumps(model)
    shutil.copy(models["other_onnx"], export)
    with pytest.raises(VoxaugError, match=r"model\.onnx: ONNX model changed since it was loaded"):
        pickle.loads(sent)


def _embed_in_child(model, clip, answers) -> None:
    answers.put(model.embed(clip))


def test_a_checkpoint_embeds_in_a_forked_child_after_the_parent_ran_it_on_several_threads(models, tiny_synth):
    """A process pool forks (Linux's default): torch's OpenMP threads, started by the parent's call, are gone in
    the child, and its first call on more than one thread waited for them forever."""
    import multiprocessing

    model = voxaug.SpeakerModel.load(models["ckpt"], threads=2)
    clip = wavs(tiny_synth, "test", "new000")[0]
    expected = model.embed(clip)
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_embed_in_child, args=(model, clip, answers))
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung and child.exitcode == 0, "the forked child hung embedding the clip"
    assert np.allclose(answers.get(timeout=10), expected, atol=1e-5)


def test_sparse_feature_tensors_are_embedded_and_a_meta_tensor_is_refused_in_one_line(models, tiny_synth):
    """A sparse tensor was a bare TypeError ("can't convert Sparse layout tensor to numpy") and a meta tensor a
    bare NotImplementedError ("Cannot copy out of meta tensor")."""
    model = voxaug.SpeakerModel.load(models["onnx"])
    features = torch.load(wavs(tiny_synth, "test", "new000")[0].with_suffix(".pt"), weights_only=True)
    expected = model.embed(features)
    assert np.array_equal(model.embed(features.to_sparse()), expected)
    with pytest.raises(VoxaugError, match=r"^clip: a tensor on the meta device holds no values$"):
        model.embed(torch.empty(features.shape, device="meta"))


@pytest.mark.parametrize("kind", ["onnx", "ckpt"])
def test_embedding_no_clips_gives_no_rows_not_a_bare_stacking_error(models, kind):
    """``embed_many([])`` (an empty batch) was numpy's "need at least one array to stack" for an export and torch's
    "stack expects a non-empty TensorList" for a checkpoint."""
    model = voxaug.SpeakerModel.load(models[kind])
    embeddings = model.embed_many([])
    assert embeddings.shape == (0, model.embedding_dim) and embeddings.dtype == np.float32


def test_embed_many_takes_any_iterable_of_clips_as_enroll_does(models, tiny_synth):
    """``embed_many`` called ``len`` on its clips: a generator was a bare "object of type 'generator' has no len()",
    while ``SpeakerIndex.enroll`` takes any iterable; ``None`` now gets the same one line as there."""
    model = voxaug.SpeakerModel.load(models["onnx"])
    clips = wavs(tiny_synth, "enroll", "new000")[:2]
    expected = model.embed_many(clips)
    assert np.array_equal(model.embed_many(clip for clip in clips), expected)
    assert np.array_equal(model.embed_many(iter(clips), positions=iter([3, 4])), expected)
    assert np.array_equal(model.embed_many(str(clips[0])), expected[:1])
    with pytest.raises(VoxaugError, match=r"^clips: expected a clip .* or a list of clips, got NoneType$"):
        model.embed_many(None)


def test_a_type_error_raised_inside_a_clip_generator_is_not_reported_as_a_wrong_type_of_clips(
        models, tiny_synth, tmp_path):
    """``clip_list`` turned every TypeError of ``list(clips)`` into "clips: expected a clip ... got generator": a
    generator is an accepted iterable, and one that failed midway (the caller's own bug) was blamed on its type."""
    model = voxaug.SpeakerModel.load(models["onnx"])
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    clip = wavs(tiny_synth, "enroll", "new000")[0]

    def failing():
        yield clip
        raise TypeError("the caller's own bug")

    for call in (model.embed_many, lambda clips: index.enroll("a", clips)):
        with pytest.raises(TypeError, match="^the caller's own bug$"):
            call(failing())


def test_an_export_loaded_by_a_relative_name_goes_to_a_process_pool_after_the_working_folder_changed(
        models, tiny_synth, tmp_path, monkeypatch):
    """A copy's file name was made absolute when pickled, against the working folder of that moment: loaded as
    ``model.onnx`` and pickled after a chdir, the copy looked for the model in the new folder ("not found")."""
    import pickle

    shutil.copy(models["onnx"], tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    model = voxaug.SpeakerModel.load("model.onnx", threads=1)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    clip = wavs(tiny_synth, "test", "new000")[0]
    assert np.array_equal(pickle.loads(pickle.dumps(model)).embed(clip), model.embed(clip))


def test_enrolling_a_clip_name_too_long_for_the_file_system_is_one_line(models, tmp_path):
    """The check for a pipe or a device named as a clip ran before the read's OSError handling: a name longer than
    the file system allows escaped ``SpeakerIndex.enroll`` as a bare OSError ("File name too long")."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", voxaug.SpeakerModel.load(models["onnx"]))
    long = tmp_path / ("a" * 300 + ".wav")
    with pytest.raises(VoxaugError, match=r"\.wav: cannot read the clip \(File name too long\)$"):
        index.enroll("a", [long])


@pytest.mark.parametrize("kind, suffix", [("onnx", ".wav"), ("ckpt", ".flac"), ("ckpt", ".pt")])
def test_embedding_a_clip_name_too_long_for_the_file_system_is_one_line(models, tmp_path, kind, suffix):
    """The readers' own checks (``exists``) raised before any OSError handling: ``SpeakerModel.embed``,
    ``embed_many`` and ``classify`` of a name longer than the file system allows gave a bare OSError."""
    model = voxaug.SpeakerModel.load(models[kind])
    long = tmp_path / ("a" * 300 + suffix)
    for call in (model.embed, model.classify, lambda clip: model.embed_many([clip])):
        with pytest.raises(VoxaugError, match=rf"a{re.escape(suffix)}: cannot read the clip \(File name too long\)$"):
            call(long)


def test_an_index_created_after_the_working_folder_changed_names_the_model_where_it_was_loaded(tmp_path, monkeypatch):
    """A model loaded by a relative name had its path made absolute when the sidecar was written, against the
    working folder of that moment: loaded as ``last.pt`` and given to ``SpeakerIndex.create`` after a chdir, the
    sidecar named a file in the new folder, and ``SpeakerIndex.open`` without a model said "model not found"."""
    from hw4_factory import make_hw4

    data = make_hw4(tmp_path / "hw4", speakers=2)
    trained = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--d-model", "16",
                                  "--layers", "1", "--device", "cpu", "-q", "--cache-dir", str(tmp_path / "cache")])
    assert trained.exit_code == 0, trained.output
    monkeypatch.chdir(tmp_path / "run")
    model = voxaug.SpeakerModel.load("last.pt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
    index.enroll("alice", sorted(data.glob("uttr-00*.pt")))
    assert json.loads(sidecar_path(tmp_path / "spk.faiss").read_text())["checkpoint"]["path"] == str(
        (tmp_path / "run" / "last.pt").resolve())
    assert voxaug.SpeakerIndex.open(tmp_path / "spk.faiss").speakers == ["alice"]


def test_identify_answers_from_one_view_of_the_index_while_another_thread_removes_a_speaker(models, tiny_synth,
                                                                                            tmp_path):
    """``identify`` read the object's view of the index afresh at each step, and a thread's ``remove`` replaces that
    view: one landing between two reads searched the new FAISS index and named its rows by the old labels, so a
    clip of ``b`` was answered ``a``, a speaker whose vectors were gone. Whichever of the reads the removal follows,
    the answer is the index's before it or after it, never a mix."""
    import threading

    clips = {"a": wavs(tiny_synth, "enroll", "new000"), "b": wavs(tiny_synth, "enroll", "new001")}
    query = wavs(tiny_synth, "test", "new001")[0]

    class Watched(voxaug.SpeakerIndex):
        """Runs ``on_read`` whenever the view is read, as a thread switch there would."""

        @property
        def data(self):
            self.on_read()
            return self.__dict__["data"]

        @data.setter
        def data(self, value):
            self.__dict__["data"] = value

        def on_read(self) -> None:
            pass

    def answers(at_read: int) -> tuple[dict, bool]:
        folder = tmp_path / str(at_read)
        folder.mkdir()
        index = voxaug.SpeakerIndex.create(folder / "spk.faiss", models["onnx"], per="utterance")
        index.enroll_many(clips)
        index.__class__ = Watched
        reader, reads, removed = threading.current_thread(), [0], threading.Event()

        def remove_a_on_that_read() -> None:
            if threading.current_thread() is not reader or removed.is_set():
                return
            reads[0] += 1
            if reads[0] == at_read:
                writer = threading.Thread(target=index.remove, args=("a",))
                writer.start()
                writer.join(60)
                assert not writer.is_alive()
                removed.set()

        index.on_read = remove_a_on_that_read
        return index.identify(query, top_k=2), removed.is_set()

    before, _ = answers(0)
    voxaug.SpeakerIndex.open(tmp_path / "0" / "spk.faiss").remove("a")
    after = voxaug.SpeakerIndex.open(tmp_path / "0" / "spk.faiss").identify(query, top_k=2)
    assert [hit["speaker"] for hit in after["top"]] == ["b"]
    for at_read in range(1, 12):
        answer, removed = answers(at_read)
        assert answer in (before, after), f"removal at read {at_read}: {answer}"
        if not removed:
            break


@pytest.mark.parametrize("objects", ["one", "two"])
def test_threads_enrolling_at_once_through_one_or_two_objects_of_a_file_lose_no_speaker(models, tiny_synth, tmp_path,
                                                                                        objects):
    """What the docs promise a web server's threads: the index lock holds between threads of one process (each
    takes its own ``flock``), and every write rereads the file under it, so no thread's speakers are lost."""
    import threading

    clips = wavs(tiny_synth, "enroll", "new000") + wavs(tiny_synth, "enroll", "new001")
    first = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    first.enroll("seed", clips[-1:])
    indexes = [first, first if objects == "one" else voxaug.SpeakerIndex.open(first.path, model=first.model)]
    barrier, errors = threading.Barrier(2), []

    def enroll(thread: int) -> None:
        barrier.wait(60)
        try:
            for turn in range(2):
                indexes[thread].enroll(f"s{thread}{turn}", clips[2 * thread + turn : 2 * thread + turn + 1])
        except Exception as exc:  # reported by the assertion below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=enroll, args=(thread,)) for thread in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert voxaug.SpeakerIndex.open(first.path).speakers == ["s00", "s01", "s10", "s11", "seed"]


def test_identify_refuses_an_unread_audio_file_in_a_clip_folder_before_answering_any(models, tiny_synth, tmp_path):
    """A folder's .m4a is listed as a clip so that it is named, not left out: identify printed the answers of the
    clips before it, then stopped at it (exit 2), as it no longer does for a bad clip argument."""
    index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", models["onnx"])
    index.enroll("a", wavs(tiny_synth, "enroll", "new000"))
    folder = tmp_path / "clips"
    shutil.copytree(tiny_synth / "unseen" / "test" / "new000", folder)
    (folder / "zz-extra.m4a").write_bytes(b"not read")
    sorted(folder.glob("*.wav"))[0].with_suffix(".mp3").write_bytes(b"ID3 the original of this .wav")
    for args in ([folder], ["--json", folder]):
        one_line_error(*invoke("identify", "--index", index.path, *args),
                       f"error: {folder / 'zz-extra.m4a'}: unsupported clip type '.m4a'")
    (folder / "zz-extra.m4a").unlink()
    code, output = invoke("identify", "--index", index.path, "--json", folder)
    assert code == 0 and len(output.splitlines()) == len(list(folder.glob("*.pt"))), output


def test_loading_a_checkpoint_leaves_the_callers_random_stream_as_it_was(models, tiny_synth):
    """The model was built with random weights before the file's replaced them: each load drew from torch's global
    generator, so a seeded notebook's or test suite's later draws changed with whether it had loaded a model."""
    clip = wavs(tiny_synth, "enroll", "new000")[0]
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = voxaug.SpeakerModel.load(models["ckpt"])
    second = voxaug.SpeakerModel.load(models["ckpt"])
    assert torch.equal(torch.rand(3), expected)
    assert np.array_equal(first.embed(clip), second.embed(clip))
    assert all(weight.dtype == torch.float32 for weight in first.engine.loaded.model.state_dict().values()
               if weight.is_floating_point())


def test_a_checkpoint_embeds_and_enrols_where_the_caller_made_float64_torch_s_default(models, tiny_synth, tmp_path):
    """Scientific code often sets ``torch.set_default_dtype(torch.float64)``: the checkpoint's model was then built in
    float64, and the padding and averaging of clips made float64 too, so every embed failed with torch's bare
    'mat1 and mat2 must have the same dtype'."""
    clip = sorted(tiny_synth.glob("uttr-*.pt"))[0]
    expected = voxaug.SpeakerModel.load(models["ckpt"]).embed(clip)
    torch.set_default_dtype(torch.float64)
    try:
        model = voxaug.SpeakerModel.load(models["ckpt"])
        embedding = model.embed(clip)
        index = voxaug.SpeakerIndex.create(tmp_path / "spk.faiss", model)
        index.enroll("new000", wavs(tiny_synth, "enroll", "new000"))
        result = index.identify(clip)
    finally:
        torch.set_default_dtype(torch.float32)
    assert embedding.dtype == np.float32 and np.array_equal(embedding, expected)
    assert [entry["speaker"] for entry in result["top"]] == ["new000"]
