"""One table of bad inputs across train, predict, embed, enroll, identify and evaluate.

Every row runs a command on a world of real outputs (a trained run, predictions, embeddings, a
speaker index, an evaluation report) and asserts: a non-zero exit, one ``error:`` line that names
the file or option and the problem, no traceback, no pickled code run, and every existing output
byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from voxaug.checkpoint import load_checkpoint, save_checkpoint
from voxaug.cli.main import app

runner = CliRunner()
MARKER = "pwned"


@dataclass
class World:
    """The outputs bad inputs must not touch (``root``) and a scratch folder for the inputs (``bad``)."""

    root: Path
    data: Path

    @property
    def bad(self) -> Path:
        return self.root / "bad"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def ckpt(self) -> Path:
        return self.run / "best.pt"

    @property
    def index(self) -> Path:
        return self.root / "spk.faiss"

    @property
    def two_speaker_index(self) -> Path:
        """An unseen speaker and an impostor: the fewest speakers evaluate --index scores open-set figures on."""
        return self.root / "two.faiss"


def invoke(args: list) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output  # stdout and stderr, interleaved


@pytest.fixture(scope="module")
def world(trained_run, tiny_synth, tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("world"), tiny_synth)
    shutil.copytree(trained_run, w.run)
    enroll = sorted((tiny_synth / "unseen" / "enroll").iterdir())[0]
    impostor = sorted((tiny_synth / "unseen" / "impostors").iterdir())[0]
    for args in (["enroll", "--index", w.index, "--speaker", enroll.name, "--ckpt", w.ckpt, enroll],
                 ["enroll", "--index", w.two_speaker_index, "--speaker", enroll.name, "--ckpt", w.ckpt, enroll],
                 ["enroll", "--index", w.two_speaker_index, "--speaker", impostor.name, impostor],
                 ["predict", "--ckpt", w.ckpt, tiny_synth, "--out", w.root / "pred.csv", "-q"],
                 ["embed", "--ckpt", w.ckpt, tiny_synth, "--out", w.root / "emb", "-q"],
                 ["evaluate", "--ckpt", w.ckpt, tiny_synth, "--out", w.root / "report", "--max-pairs", "200", "-q"]):
        code, output = invoke([*args, "--device", "cpu"])
        assert code == 0, output
    w.bad.mkdir()
    state = load_checkpoint(w.ckpt)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(w.bad / "other.pt", state)
    return w


def snapshot(w: World) -> dict[str, bytes]:
    return {str(p.relative_to(w.root)): p.read_bytes() for p in sorted(w.root.rglob("*"))
            if p.is_file() and w.bad not in p.parents}


# ---- builders of bad inputs (each returns the path to pass) ------------------------------------

def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def symlink_loop(w: World, name: str) -> Path:
    """``name`` and ``name.back`` in the bad folder, two symbolic links that point at each other."""
    path, back = w.bad / name, w.bad / f"{name}.back"
    if not path.is_symlink():
        path.symlink_to(back)
        back.symlink_to(path)
    return path


def tensor(path: Path, value: object) -> Path:
    torch.save(value, path)
    return path


class Exploit:
    """Unpickling it would run ``touch MARKER`` in the working folder of the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (os.system, (f"touch {self.folder / MARKER}",))


def dataset(w: World, name: str, edit: Callable[[Path], None]) -> Path:
    """A copy of the training set (HW4 layout) broken by ``edit``."""
    root = w.bad / name
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(w.data, root, ignore=shutil.ignore_patterns("unseen"))
    edit(root)
    return root


def repeat_a_speaker(root: Path) -> None:
    """metadata.json with its first speaker listed a second time (JSON would keep only the second list)."""
    metadata = json.loads((root / "metadata.json").read_text())
    speakers = metadata.pop("speakers")
    first = next(iter(speakers))
    listed = [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in speakers.items()]
    listed.append(f"{json.dumps(first)}: {json.dumps(speakers[first][:1])}")
    write(root / "metadata.json", json.dumps(metadata)[:-1] + ', "speakers": {' + ", ".join(listed) + "}}")


def pt_clips_only(w: World) -> Path:
    """The newcomers' enrolment folders without their audio twins: <speaker>/ folders of features alone."""
    root = w.bad / "pt-only"
    if not root.exists():
        shutil.copytree(w.data / "unseen" / "enroll", root, ignore=shutil.ignore_patterns("*.wav"))
    return root


def noise_of_80_bands(w: World) -> Path:
    folder = w.bad / "noise80"
    folder.mkdir(exist_ok=True)
    torch.save(torch.randn(200, 80), folder / "n.pt")
    return folder


def first_feature(root: Path, position: int = 0) -> Path:
    metadata = json.loads((root / "metadata.json").read_text())
    return root / next(iter(metadata["speakers"].values()))[position]["feature_path"]


def set_first_feature_path(root: Path, value: str) -> None:
    metadata = json.loads((root / "metadata.json").read_text())
    next(iter(metadata["speakers"].values()))[0]["feature_path"] = value
    (root / "metadata.json").write_text(json.dumps(metadata))


def list_first_clip_again(root: Path, listing: str) -> None:
    """metadata.json: the first clip also under the last speaker; testdata.json: the first clip twice."""
    table = json.loads((root / listing).read_text())
    if listing == "metadata.json":
        entries = list(table["speakers"].values())
        entries[-1].append(dict(entries[0][0]))
    else:
        table["utterances"].append(dict(table["utterances"][0]))
    (root / listing).write_text(json.dumps(table))


def checkpoint(w: World, name: str, edit: Callable[[dict], None]) -> Path:
    state = load_checkpoint(w.ckpt)
    edit(state)
    save_checkpoint(w.bad / name, state)
    return w.bad / name


def nan_weight(state: dict) -> None:
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))


def wider_model(state: dict) -> None:
    state["config"]["model"]["d_model"] *= 2


def index_copy(w: World, name: str, edit_index: Callable[[bytes], bytes] | None = None,
               sidecar: Callable[[dict], dict | str] | None = None) -> Path:
    path = w.bad / name
    data = w.index.read_bytes()
    path.write_bytes(edit_index(data) if edit_index else data)
    meta = json.loads(Path(f"{w.index}.json").read_text())
    meta = sidecar(meta) if sidecar else meta
    if meta is not None:
        Path(f"{path}.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return path


def with_key(meta: dict, **changes) -> dict:
    return {**meta, **changes}


def audio(path: Path, samples: np.ndarray) -> Path:
    sf.write(path, samples, 16000, subtype="FLOAT")
    return path


def run_copy(w: World, name: str, edit: Callable[[Path], None]) -> Path:
    run = w.bad / name
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(w.run, run)
    edit(run)
    return run


def clip(w: World) -> Path:
    return tensor(w.bad / "ok.pt", torch.randn(60, 40))


def first_enrolled(w: World) -> str:
    return json.loads(Path(f"{w.index}.json").read_text())["labels"][0]


TRAIN = ["--steps", "4", "--batch", "8", "--segment", "32", "--d-model", "32", "--heads", "2", "--layers", "1",
         "--embedding-dim", "32", "--device", "cpu", "-q"]


def train(w: World, data: Path, *extra) -> list:
    return ["train", data, "--out", w.bad / "new-run", *TRAIN, *extra]


def identify(w: World, *clips, index: Path | None = None, extra: tuple = ()) -> list:
    return ["identify", "--index", index or w.index, *extra, *clips, "--device", "cpu"]


def enroll(w: World, *extra) -> list:
    return ["enroll", "--index", w.index, *extra, "--device", "cpu"]


def evaluate(w: World, *extra, ckpt: Path | None = None) -> list:
    return ["evaluate", "--ckpt", ckpt or w.ckpt, w.data, "--out", w.root / "report", *extra, "--device", "cpu", "-q"]


def predict(w: World, ckpt: Path, data: Path | None = None, out: Path | None = None) -> list:
    return ["predict", "--ckpt", ckpt, data or w.data, "--out", out or w.root / "pred.csv", "--device", "cpu", "-q"]


def embed(w: World, *extra, data: Path | None = None, ckpt: Path | None = None) -> list:
    return ["embed", "--ckpt", ckpt or w.ckpt, data or w.data, "--out", w.root / "emb", *extra, "--device", "cpu", "-q"]


# ---- the table: name -> (command, (file or option, problem)) -----------------------------------

Case = tuple[Callable[[World], list], tuple[str, str]]
CASES: dict[str, Case] = {
    # train: dataset files, features, paths, options, run folder
    "train: dataset folder missing": (lambda w: train(w, w.bad / "nodata"), ("nodata", "dataset not found")),
    "train: metadata.json truncated": (
        lambda w: train(w, dataset(w, "trunc-meta", lambda r: write(r / "metadata.json", (r / "metadata.json").read_text()[:40]))),
        ("metadata.json", "malformed JSON")),
    "train: metadata.json names a speaker twice": (
        lambda w: train(w, dataset(w, "twice-meta", repeat_a_speaker)), ("metadata.json", "appears twice")),
    "train: mapping.json missing": (
        lambda w: train(w, dataset(w, "no-map", lambda r: (r / "mapping.json").unlink())), ("mapping.json", "not found")),
    "train: feature file empty": (
        lambda w: train(w, dataset(w, "empty-feat", lambda r: write(first_feature(r), b""))), ("uttr-", "empty (0 bytes)")),
    "train: feature holds NaN": (
        lambda w: train(w, dataset(w, "nan-feat", lambda r: tensor(first_feature(r), torch.full((50, 40), float("nan"))))),
        ("uttr-", "NaN or Inf")),
    "train: feature of 80 mel bins": (
        lambda w: train(w, dataset(w, "mels-feat", lambda r: tensor(first_feature(r), torch.zeros(50, 80)))),
        ("uttr-", "expected 40 mel bins, found 80")),
    "train: feature pickles code": (
        lambda w: train(w, dataset(w, "evil-feat", lambda r: tensor(first_feature(r), {"x": Exploit(w.bad)}))),
        ("uttr-", "refused")),
    "train: clip listed under two speakers": (
        lambda w: train(w, dataset(w, "twice", lambda r: list_first_clip_again(r, "metadata.json"))),
        ("metadata.json", "is listed twice (under 'spk000' and")),
    "train: feature_path with a NUL byte": (
        lambda w: train(w, dataset(w, "nul", lambda r: set_first_feature_path(r, "uttr\x00.pt"))),
        ("metadata.json", "is not a usable path")),
    "train: feature is a meta tensor": (
        lambda w: train(w, dataset(w, "meta-feat", lambda r: tensor(first_feature(r), torch.zeros(50, 40, device="meta")))),
        ("uttr-", "found one on device 'meta'")),
    "train: feature_path with ..": (
        lambda w: train(w, dataset(w, "dotdot", lambda r: set_first_feature_path(r, "../spk.faiss"))),
        ("metadata.json", "outside the dataset folder")),
    "train: absolute feature_path": (
        lambda w: train(w, dataset(w, "absolute", lambda r: set_first_feature_path(r, str(w.ckpt)))),
        ("metadata.json", "is absolute")),
    "train: unknown augmentation": (lambda w: train(w, w.data, "--augment", "specaug,bogus"),
                                    ("--augment", "unknown augmentation 'bogus'")),
    "train: --sample-rate on a set of features": (lambda w: train(w, w.data, "--sample-rate", "8000"),
                                                   ("data", "front-end settings (f_max, sample_rate) do not change")),
    "train: --sample-rate on a folder of .pt clips": (
        lambda w: train(w, pt_clips_only(w), "--sample-rate", "8000"),
        ("pt-only", "front-end settings (f_max, sample_rate) do not change")),
    "train: --n-mels other than the features'": (lambda w: train(w, w.data, "--n-mels", "80"),
                                                  ("metadata.json", "n_mels is 40, but the front end has 80")),
    "train: --segment past any length": (lambda w: train(w, w.data, "--segment", "99999999999999999999"),
                                         ("--segment", "[1, 2147483647]")),
    "train: --specaug-time past any length": (lambda w: train(w, w.data, "--augment", "specaug", "--specaug-time", "1e20"),
                                              ("--specaug-time", "of frames up to 2147483647")),
    "train: TOML wave noise_dir not a path": (
        lambda w: train(w, w.data, "--config", write(w.bad / "w.toml", '[augment]\nnames = ["wave"]\n'
                                                                        "[augment.wave]\nnoise_dir = 5\n")),
        ("w.toml", "(wave noise_dir) must be a folder path, got 5")),
    "train: TOML log_floor of 0": (
        lambda w: train(w, w.data, "--config", write(w.bad / "floor.toml", "[frontend]\nlog_floor = 0.0\n")),
        ("floor.toml", "log_floor must be > 0")),
    "train: --noise-dir a symlink loop": (
        lambda w: train(w, w.data, "--augment", "noise", "--noise-dir", symlink_loop(w, "noise-loop")),
        ("noise-loop", "--noise-dir: symlink loop")),
    "train: TOML noise_dir a symlink loop": (
        lambda w: train(w, w.data, "--config", write(w.bad / "loop.toml", '[augment]\nnames = ["noise"]\n'
                                                     f'[augment.noise]\nnoise_dir = "{symlink_loop(w, "toml-loop")}"\n')),
        ("toml-loop", "[augment.noise] noise_dir: symlink loop")),
    "train: --noise-dir of 80-band features": (
        lambda w: train(w, w.data, "--augment", "noise", "--noise-dir", noise_of_80_bands(w)),
        ("noise80", "noise features have 80 mel bands, the training features 40")),
    "train: negative --workers on features": (lambda w: train(w, w.data, "--workers", "-1"), ("--workers", ">= 0, got -1")),
    "train: negative learning rate": (lambda w: train(w, w.data, "--lr", "-1"), ("--lr", "must be positive")),
    "train: validation fraction 1.5": (lambda w: train(w, w.data, "--val-fraction", "1.5"), ("--val-fraction", "[0, 1)")),
    "train: malformed TOML config": (lambda w: train(w, w.data, "--config", write(w.bad / "c.toml", "[train\nsteps=")),
                                     ("c.toml", "malformed TOML")),
    "train: TOML strength of unknown name": (
        lambda w: train(w, w.data, "--config", write(w.bad / "aug.toml", "[augment.specaug]\nfreq_widht = 3\n")),
        ("aug.toml", "unknown parameters ['freq_widht']")),
    "train: TOML negative learning rate": (lambda w: train(w, w.data, "--config", write(w.bad / "lr.toml", "lr = -1.0\n")),
                                           ("lr.toml", "--lr must be positive")),
    "train: TOML sets what the data decides": (
        lambda w: train(w, w.data, "--config", write(w.bad / "mels.toml", "[model]\nn_mels = 80\n")),
        ("mels.toml", "[model] n_mels: set from the data")),
    "train: existing run without --resume": (lambda w: ["train", w.data, "--out", w.run, *TRAIN],
                                             ("run", "already holds a run")),
    "train: --resume to fewer steps": (lambda w: ["train", w.data, "--out", w.run, "--resume", "--steps", "5", "-q"],
                                       ("last.pt", "past --steps 5")),
    "train: --resume from truncated last.pt": (
        lambda w: ["train", w.data, "--resume", "-q", "--out",
                   run_copy(w, "cut-run", lambda r: write(r / "last.pt", (r / "last.pt").read_bytes()[:5000]))],
        ("last.pt", "truncated or corrupt")),
    # predict: checkpoints
    "predict: checkpoint missing": (lambda w: predict(w, w.bad / "nope.pt"), ("nope.pt", "checkpoint not found")),
    "predict: a JSON file as --ckpt": (lambda w: predict(w, write(w.bad / "config.pt", b'{"step": 1}')),
                                       ("config.pt", "or a binary pickle, and this one starts with '{\"step\"")),
    "predict: checkpoint empty": (lambda w: predict(w, write(w.bad / "zero.pt", b"")), ("zero.pt", "empty (0 bytes)")),
    "predict: checkpoint truncated": (lambda w: predict(w, write(w.bad / "cut.pt", w.ckpt.read_bytes()[:-4096])),
                                      ("cut.pt", "truncated or corrupt")),
    "predict: not a voxaug checkpoint": (lambda w: predict(w, tensor(w.bad / "dict.pt", {"a": torch.zeros(2)})),
                                         ("dict.pt", "not a voxaug checkpoint")),
    "predict: checkpoint pickles code": (
        lambda w: predict(w, tensor(w.bad / "evil.pt", {"format": "voxaug-checkpoint", "x": Exploit(w.bad)})),
        ("evil.pt", "refused")),
    "predict: an ONNX export as --ckpt": (lambda w: predict(w, write(w.bad / "model.onnx", b"\x08\x07")),
                                          ("model.onnx", "an ONNX export, not a checkpoint: this takes a training "
                                                         "checkpoint")),
    "predict: NaN weights": (lambda w: predict(w, checkpoint(w, "nanw.pt", nan_weight)), ("nanw.pt", "NaN or Inf")),
    "predict: weights of another shape": (lambda w: predict(w, checkpoint(w, "wide.pt", wider_model)),
                                          ("wide.pt", "do not match its own configuration")),
    "predict: testdata.json malformed": (
        lambda w: predict(w, w.ckpt, dataset(w, "bad-test", lambda r: write(r / "testdata.json", '{"utterances": [}'))),
        ("testdata.json", "malformed JSON")),
    "predict: testdata.json lists a clip twice": (
        lambda w: predict(w, w.ckpt, dataset(w, "test-twice", lambda r: list_first_clip_again(r, "testdata.json"))),
        ("testdata.json", "is listed twice")),
    "predict: --out is a folder": (lambda w: predict(w, w.ckpt, out=w.run), ("--out", "existing folder")),
    # embed: options, data, outputs
    "embed: --batch 0": (lambda w: embed(w, "--batch", "0"), ("--batch", "positive")),
    "embed: --window 0": (lambda w: embed(w, "--window", "0"), ("--window", "positive")),
    "embed: --hop without --window": (lambda w: embed(w, "--hop", "20"), ("--hop", "give --window too")),
    "embed: --per unknown": (lambda w: embed(w, "--per", "bogus"), ("--per 'bogus'", "accepted: speaker, utterance")),
    "embed: --out is a file": (lambda w: ["embed", "--ckpt", w.ckpt, w.data, "--out", w.root / "pred.csv", "--device", "cpu"],
                               ("--out", "existing file")),
    "embed: checkpoint is a folder": (lambda w: embed(w, ckpt=w.run), ("run", "found a folder")),
    "embed: --index over an index with enrolled speakers": (lambda w: embed(w, "--index", w.index),
                                                            ("spk.faiss", "an index is already there")),
    "embed: --index of speakers the model never trained on": (
        lambda w: embed(w, "--index", w.bad / "new.faiss", data=w.data / "unseen" / "enroll"),
        ("enroll", "speakers are not the")),
    "embed: Inf feature over existing embeddings": (
        lambda w: embed(w, data=dataset(w, "inf-feat", lambda r: tensor(first_feature(r), torch.full((50, 40), float("inf"))))),
        ("uttr-", "NaN or Inf")),
    # enroll: index, checkpoint, clips, options
    "enroll: speaker already enrolled": (lambda w: enroll(w, "--speaker", first_enrolled(w), clip(w)),
                                         ("spk.faiss", "already enrolled")),
    "enroll: Inf clip": (lambda w: enroll(w, "--speaker", "newbie", tensor(w.bad / "inf.pt", torch.full((50, 40), float("inf")))),
                         ("inf.pt", "NaN or Inf")),
    "enroll: clip a symlink loop": (lambda w: enroll(w, "--speaker", "newbie", symlink_loop(w, "loop.pt")),
                                    ("loop.pt", "clip: symlink loop")),
    "enroll: --index a symlink loop": (
        lambda w: ["enroll", "--index", symlink_loop(w, "loop.faiss"), "--ckpt", w.ckpt, "--speaker", "newbie",
                   tensor(w.bad / "fine.pt", torch.randn(50, 40)), "--device", "cpu"],
        ("loop.faiss", "loop.faiss is a symlink loop (symbolic links that lead back to each other)")),
    "embed: --index a symlink loop": (lambda w: embed(w, "--index", symlink_loop(w, "embed-loop.faiss")),
                                      ("embed-loop.faiss", "embed-loop.faiss is a symlink loop (symbolic links")),
    "enroll: clip of finite values too large for the network": (
        lambda w: enroll(w, "--speaker", "newbie", tensor(w.bad / "huge.pt", torch.full((50, 40), 1e20))),
        ("huge.pt", "as large as 1e+20; log-mel")),
    "enroll: another checkpoint": (lambda w: enroll(w, "--speaker", "newbie", "--ckpt", w.bad / "other.pt", clip(w)),
                                   ("other.pt", "does not match the index")),
    "enroll: new index without --ckpt": (
        lambda w: ["enroll", "--index", w.bad / "new.faiss", "--speaker", "x", clip(w), "--device", "cpu"],
        ("new.faiss", "pass --ckpt")),
    "enroll: --per unknown": (lambda w: enroll(w, "--speaker", "x", "--per", "clip", clip(w)), ("--per 'clip'", "accepted")),
    "enroll: --per utterance on an index per speaker": (lambda w: enroll(w, "--speaker", "x", "--per", "utterance", clip(w)),
                                                        ("spk.faiss", "this one is per speaker")),
    "enroll: remove unknown speaker": (lambda w: enroll(w, "--remove", "nobody"), ("spk.faiss", "'nobody' is not enrolled")),
    "enroll: remove from a missing index": (
        lambda w: ["enroll", "--index", w.bad / "no" / "such" / "spk.faiss", "--remove", "x"],
        ("spk.faiss", "speaker index not found; nothing to remove")),
    "enroll: --remove with a model": (lambda w: enroll(w, "--remove", first_enrolled(w), "--ckpt", w.bad / "other.pt"),
                                      ("--remove", "takes only --index")),
    "enroll: --index is a folder": (lambda w: ["enroll", "--index", w.bad, "--ckpt", w.ckpt, "--speaker", "x", clip(w)],
                                    ("--index", "is an existing folder")),
    "enroll: negative --lock-timeout": (lambda w: enroll(w, "--speaker", "x", "--lock-timeout", "-1", clip(w)),
                                        ("--lock-timeout", ">= 0")),
    "enroll: no clips": (lambda w: enroll(w, "--speaker", "x"), ("--speaker x", "no enrolment clips")),
    "enroll: wav that is not audio": (lambda w: enroll(w, "--speaker", "x", write(w.bad / "junk.wav", b"RIFF0000WAVEjunk")),
                                      ("junk.wav", "not a readable audio file")),
    "enroll: empty flac": (lambda w: enroll(w, "--speaker", "x", write(w.bad / "empty.flac", b"")),
                           ("empty.flac", "empty (0 bytes)")),
    "enroll: NaN audio samples": (
        lambda w: enroll(w, "--speaker", "x", audio(w.bad / "nan.wav", np.full(16000, np.nan, dtype=np.float32))),
        ("nan.wav", "NaN or Inf")),
    # identify: clips, index, sidecar, options
    "identify: clip missing": (lambda w: identify(w, w.bad / "nope.pt"), ("nope.pt", "not found")),
    "identify: clip of junk bytes": (lambda w: identify(w, write(w.bad / "junk.pt", b"junk")), ("junk.pt", "not a readable")),
    "identify: clip of 80 mel bins": (lambda w: identify(w, tensor(w.bad / "m80.pt", torch.zeros(50, 80))),
                                      ("m80.pt", "40 mel bins, found 80")),
    "identify: clip of 0 frames": (lambda w: identify(w, tensor(w.bad / "empty.pt", torch.zeros(0, 40))), ("empty.pt", "0 frames")),
    "identify: clip of 3 frames": (lambda w: identify(w, tensor(w.bad / "short.pt", torch.zeros(3, 40))), ("short.pt", "at least")),
    "identify: 3-D clip": (lambda w: identify(w, tensor(w.bad / "cube.pt", torch.zeros(2, 50, 40))), ("cube.pt", "2-D")),
    "identify: NaN clip": (lambda w: identify(w, tensor(w.bad / "nan.pt", torch.full((50, 40), float("nan")))), ("nan.pt", "NaN")),
    "identify: clip pickles code": (lambda w: identify(w, tensor(w.bad / "evil-clip.pt", [Exploit(w.bad)])),
                                    ("evil-clip.pt", "refused")),
    "identify: unsupported clip type": (lambda w: identify(w, write(w.bad / "clip.txt", "hi")), ("clip.txt", "unsupported clip type")),
    "identify: index missing": (lambda w: identify(w, clip(w), index=w.bad / "none.faiss"), ("none.faiss", "not found")),
    "identify: sidecar missing": (lambda w: identify(w, clip(w), index=index_copy(w, "lonely.faiss", sidecar=lambda m: None)),
                                  ("lonely.faiss.json", "sidecar is missing")),
    "identify: index bytes corrupt": (
        lambda w: identify(w, clip(w), index=index_copy(w, "broken.faiss", edit_index=lambda b: b[:-7] + b"garbage")),
        ("broken.faiss", "does not match its sidecar")),
    "identify: sidecar truncated": (lambda w: identify(w, clip(w), index=index_copy(w, "cut.faiss", sidecar=lambda m: '{"format": ')),
                                    ("cut.faiss.json", "malformed JSON")),
    "identify: sidecar of another dimension": (
        lambda w: identify(w, clip(w), index=index_copy(w, "dim.faiss", sidecar=lambda m: with_key(m, dimension=64))),
        ("dim.faiss.json", "dimension 64")),
    "identify: another checkpoint": (lambda w: identify(w, clip(w), extra=("--ckpt", w.bad / "other.pt")),
                                     ("other.pt", "does not match the index")),
    "identify: --top-k 0": (lambda w: identify(w, clip(w), extra=("--top-k", "0")), ("--top-k", "positive")),
    "identify: --threshold 2": (lambda w: identify(w, clip(w), extra=("--threshold", "2")), ("--threshold", "[-1, 1]")),
    # evaluate: options, trials, folders, checkpoint
    "evaluate: --max-pairs 0": (lambda w: evaluate(w, "--max-pairs", "0"), ("--max-pairs", "at least 2")),
    "evaluate: --max-pairs 1": (lambda w: evaluate(w, "--max-pairs", "1"), ("--max-pairs", "at least 2 (a same-speaker and a different-speaker pair), got 1")),
    "evaluate: --enroll without --test": (lambda w: evaluate(w, "--enroll", w.data / "unseen" / "enroll"),
                                          ("--enroll and --test", "together")),
    "evaluate: --enroll folder missing": (lambda w: evaluate(w, "--enroll", w.bad / "nowhere", "--test", w.data / "unseen" / "test"),
                                          ("nowhere", "--enroll folder not found")),
    "evaluate: --impostors a file": (lambda w: evaluate(w, "--index", w.index, "--impostors", write(w.bad / "imp.txt", "x\n")),
                                     ("imp.txt", "--impostors is a file, not a folder")),
    "evaluate: --test speakers not in --index": (
        lambda w: evaluate(w, "--enroll", w.data / "unseen" / "enroll", "--test", w.data / "unseen" / "test",
                           "--index", w.two_speaker_index),
        ("two.faiss", "have test clips in")),
    "evaluate: --index without the speakers it is scored on": (
        lambda w: evaluate(w, "--index", w.two_speaker_index), ("two.faiss", "the open-set figures score")),
    "evaluate: --index of one speaker": (lambda w: evaluate(w, "--index", w.index),
                                         ("spk.faiss", "holds 1 enrolled speaker(s)")),
    "evaluate: --map unknown": (lambda w: evaluate(w, "--map", "umap"), ("--map 'umap'", "accepted")),
    "evaluate: malformed trials line": (lambda w: evaluate(w, "--trials", write(w.bad / "t1.txt", "same a.pt b.pt\n")),
                                        ("t1.txt", "line 1: expected 'LABEL CLIP1 CLIP2'")),
    "evaluate: trial clip missing": (lambda w: evaluate(w, "--trials", write(w.bad / "t2.txt", "1 nope.pt nope2.pt\n")),
                                     ("t2.txt", "clip 'nope.pt' not found")),
    "evaluate: trial clip outside the dataset": (
        lambda w: evaluate(w, "--trials", write(w.bad / "t3.txt", "1 ../run/best.pt ../spk.faiss\n")),
        ("t3.txt", "outside the dataset folder")),
    "evaluate: trials file not UTF-8": (
        lambda w: evaluate(w, "--trials", write(w.bad / "t4.txt", b"# caf\xe9\n1 a.pt b.pt\n")),
        ("t4.txt", "not UTF-8 text")),
    "evaluate: trials of one label only": (
        lambda w: evaluate(w, "--trials", write(w.bad / "t5.txt", "\ufeff1 {0} {1}\n".format(
            *(first_feature(w.data, position).relative_to(w.data) for position in (0, 1))))),
        ("t5.txt", "every trial is labelled 1")),
    "evaluate: truncated checkpoint": (lambda w: evaluate(w, ckpt=write(w.bad / "cut2.pt", w.ckpt.read_bytes()[:3000])),
                                       ("cut2.pt", "truncated or corrupt")),
}


def test_the_table_covers_every_command_with_25_inputs():
    commands = {name.split(":")[0] for name in CASES}
    assert commands == {"train", "predict", "embed", "enroll", "identify", "evaluate"}
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(world, case):
    command, (names, problem) = CASES[case]
    before = snapshot(world)
    code, output = invoke(command(world))
    assert code != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert names in errors[0] and problem in errors[0], errors[0]
    assert not (world.bad / MARKER).exists(), "unpickling ran code"
    after = snapshot(world)
    assert after.keys() == before.keys(), sorted(set(after) ^ set(before))
    changed = [name for name in before if after[name] != before[name]]
    assert not changed, f"bad input changed existing outputs: {changed}"


def test_a_refused_remove_from_a_missing_index_makes_no_folder(world):
    code, output = invoke(["enroll", "--index", world.bad / "nowhere" / "spk.faiss", "--remove", "x"])
    assert code == 2 and "speaker index not found" in output
    assert not (world.bad / "nowhere").exists()


def test_debug_flag_shows_the_traceback(world):
    args = [str(a) for a in identify(world, world.bad / "missing.pt")]
    plain = subprocess.run([sys.executable, "-m", "voxaug", *args], capture_output=True, text=True, timeout=120)
    debug = subprocess.run([sys.executable, "-m", "voxaug", "--debug", *args], capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "missing.pt" in debug.stderr


@pytest.mark.parametrize("option", ["train --config", "evaluate --trials", "identify --index"])
def test_a_folder_where_a_file_goes_is_called_a_folder_not_missing(tmp_path, option):
    """A folder given for a file was reported as "not found", sending the user to look for a file that is there."""
    folder = tmp_path / "a folder"
    folder.mkdir()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    command = {
        "train --config": ["train", tmp_path / "data", "--out", tmp_path / "run", "--config", folder, "-q"],
        "evaluate --trials": ["evaluate", tmp_path / "data", "--ckpt", tmp_path / "junk.pt", "--out",
                              tmp_path / "report", "--trials", folder, "-q"],
        "identify --index": ["identify", "--index", folder, tmp_path / "clip.pt"],
    }[option]
    code, output = invoke(command)
    assert code == 2 and output.count("\n") == 1, output
    assert output.startswith(f"error: {folder}") and "found a folder" in output and "not found" not in output, output


def test_a_tilde_after_the_equals_sign_of_a_path_option_is_the_home_folder(tmp_path, monkeypatch):
    """bash leaves ``~`` as it is in ``--out=~/run``: train wrote a folder named ``~`` in the working directory, and
    ``--config=~/c.toml`` or ``--index=~/spk.faiss`` were not found. Every path option expands it, as --noise-dir does."""
    from hw4_factory import make_hw4

    home = tmp_path / "home"
    data = make_hw4(home / "data", speakers=2, per_speaker=3)
    (home / "c.toml").write_text("[model]\nd_model = 32\nnum_layers = 1\nnum_heads = 2\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    code, output = invoke(["train", data, "--out=~/run", "--config=~/c.toml", "--cache-dir=~/cache", "--steps", "2",
                           "--eval-every", "2", "--warmup", "1", "--device", "cpu", "-q"])
    assert code == 0, output
    assert (home / "run" / "best.pt").is_file() and (home / "cache").is_dir() and not (tmp_path / "~").exists()
    code, output = invoke(["identify", "--index=~/spk.faiss", data / "uttr-0000.pt"])
    assert (code, output) == (2, f"error: {home / 'spk.faiss'}: speaker index not found\n")


def test_a_tilde_of_no_such_user_in_a_path_option_is_one_error_naming_the_option():
    code, output = invoke(["identify", "--index=~voxaug_no_such_user/spk.faiss", "clip.pt"])
    assert (code, output) == (2, "error: --index '~voxaug_no_such_user/spk.faiss': the home folder of "
                                 "'~voxaug_no_such_user' cannot be found\n")


@pytest.fixture(params=["/dev/null", "fifo"])
def special_file(request, tmp_path) -> tuple[Path, str]:
    """A character device or a named pipe where a file goes, and what an error calls it."""
    if request.param == "fifo":
        os.mkfifo(tmp_path / "pipe")
        return tmp_path / "pipe", "a named pipe"
    return Path(request.param), "a character device"


@pytest.mark.parametrize("option", ["train --config", "export --ckpt", "evaluate --trials"])
def test_a_device_or_pipe_where_a_file_goes_is_called_what_it_is_not_a_folder(tmp_path, option, special_file):
    """``train --config /dev/null`` said "expected a config file, found a folder": /dev/null is no folder."""
    special, found = special_file
    (tmp_path / "junk.pt").write_bytes(b"junk")
    command, what = {
        "train --config": (["train", tmp_path / "data", "--out", tmp_path / "run", "--config", special, "-q"], "config"),
        "export --ckpt": (["export", "--ckpt", special, "--out", tmp_path / "m.onnx"], "checkpoint"),
        "evaluate --trials": (["evaluate", tmp_path / "data", "--ckpt", tmp_path / "junk.pt", "--out", tmp_path / "report",
                               "--trials", special, "-q"], "trials"),
    }[option]
    assert invoke(command) == (2, f"error: {special}: expected a {what} file, found {found}\n")


@pytest.mark.parametrize("command", ["identify", "enroll"])
def test_a_device_or_pipe_given_as_the_speaker_index_is_called_what_it_is_not_missing(tmp_path, command, special_file):
    """``identify --index /dev/null`` said "speaker index not found" of a file that is there: the index loader
    named a folder only, as the other readers did before they named devices and pipes too."""
    special, found = special_file
    args = {"identify": ["identify", "--index", special, tmp_path / "x.pt"],
            "enroll": ["enroll", "--index", special, "--speaker", "a", tmp_path / "x.pt"]}[command]
    assert invoke(args) == (2, f"error: {special}: expected a speaker index file, found {found}\n")


def test_a_device_or_pipe_as_the_checkpoint_to_resume_is_called_what_it_is(tmp_path, special_file):
    """A checkpoint that is /dev/null or a pipe was "empty (0 bytes)" (the speaker index's case is the test above)."""
    special, found = special_file
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").symlink_to(special)
    code, output = invoke(["train", tmp_path / "data", "--out", run, "--resume", "-q"])
    assert (code, output) == (2, f"error: {run / 'last.pt'}: expected a checkpoint file, found {found}\n")


@pytest.mark.parametrize("what", ["checkpoint", "noise feature file"])
def test_safe_torch_load_of_a_device_names_it_and_says_file_once(what):
    from voxaug.errors import VoxaugError
    from voxaug.safeio import safe_torch_load

    with pytest.raises(VoxaugError, match=rf"^/dev/null: expected a {what}( file)?, found a character device$"):
        safe_torch_load("/dev/null", what)
    with pytest.raises(VoxaugError) as error:
        safe_torch_load("/dev/null", what)
    assert "file file" not in str(error.value)


@pytest.mark.parametrize("replace", [(), ("--replace",)])
@pytest.mark.parametrize("target", ["the checkpoint", "a dataset's JSON at the sidecar's place"])
def test_embed_never_writes_its_index_over_a_file_that_is_no_index(world, tmp_path, target, replace):
    """`embed --index run/last.pt --replace` wrote the index over the checkpoint it embedded with, and
    `--index DATA/mapping --replace` over DATA/mapping.json; without --replace either was called "an index"."""
    ckpt = tmp_path / "last.pt"
    shutil.copy(world.ckpt, ckpt)
    if target == "the checkpoint":
        index, kept = ckpt, ckpt
    else:
        index, kept = tmp_path / "mapping", write(tmp_path / "mapping.json", '{"speaker2id": {"a": 0}}')
    before = kept.read_bytes()
    code, output = invoke(["embed", "--ckpt", ckpt, world.data, "--out", tmp_path / "emb", "--index", index, *replace,
                           "--device", "cpu", "-q"])
    assert code == 2 and output.count("\n") == 1, output
    assert output.startswith("error: ") and kept.name in output and "is not a speaker index" in output, output
    assert kept.read_bytes() == before


@pytest.mark.parametrize("given", ["a checkpoint", "the index's sidecar"])
def test_a_file_of_another_kind_given_as_the_index_is_named_as_that(world, given):
    """`identify --index run/best.pt` (or `--index spk.faiss.json`) blamed a missing sidecar, best.pt.json, a file
    the user never named, instead of saying that the file given is no speaker index."""
    index, problem = {"a checkpoint": (world.ckpt, "not a speaker index"),
                      "the index's sidecar": (Path(f"{world.index}.json"), f"this is the sidecar of the speaker "
                                                                             f"index {world.index}")}[given]
    code, output = invoke(identify(world, clip(world), index=index))
    assert code == 2 and output.startswith(f"error: {index}: {problem}") and output.count("\n") == 1, output
    assert ".json.json" not in output and "sidecar is missing" not in output


def _onnx_model_bytes() -> bytes:
    onnx = pytest.importorskip("onnx")
    tensor_info = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1]) for name in ("x", "y")]
    identity = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([identity], "g", tensor_info[:1], tensor_info[1:])
    return onnx.helper.make_model(graph).SerializeToString()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("kind, content, named", [
    ("onnx", _onnx_model_bytes, "an ONNX model, not a torch file (an ONNX export is given as --model FILE.onnx)"),
    ("faiss", lambda: b"IxFI" + bytes(60), "a FAISS speaker index, not a torch file"),
    ("npy", lambda: _npy_bytes(np.zeros((3, 40), dtype=np.float32)), "a NumPy array (.npy), not a torch file"),
])
def test_a_known_file_of_another_kind_named_pt_is_named_by_its_kind(tmp_path, kind, content, named):
    """An ONNX export (or a FAISS index, an .npy array) renamed .pt and given as --ckpt was refused with its first
    bytes escaped, 'starts with '\\x08\\x08\\x12\\x07pytorch...'', over two lines for a FAISS header, not by what it is."""
    given = write(tmp_path / f"{kind}.pt", content())
    code, output = invoke(["export", "--ckpt", given, "--out", tmp_path / "m.onnx"])
    assert (code, output) == (2, f"error: {given}: not a readable checkpoint: this is {named}\n")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
@pytest.mark.parametrize("place", ["index", "sidecar"])
def test_embed_never_replaces_a_pipe_or_device_given_as_its_index(world, tmp_path, place):
    """`embed --index /dev/null --replace` (or a named pipe) was taken for "an index already there", and with
    --replace the index was renamed over it: run as root, /dev/null became a regular file."""
    index = tmp_path / "spk.faiss"
    pipe = index if place == "index" else Path(f"{index}.json")
    os.mkfifo(pipe)
    for replace in ((), ("--replace",)):
        code, output = invoke(["embed", "--ckpt", world.ckpt, world.data, "--out", tmp_path / "emb", "--index", index,
                               *replace, "--device", "cpu", "-q"])
        assert code == 2 and output.count("\n") == 1, output
        assert output.startswith(f"error: {pipe}: exists and is not a speaker index"), output
        assert pipe.is_fifo() and not (tmp_path / "emb").exists()


@pytest.mark.parametrize("beside", ["nothing", "a FAISS index"])
def test_embed_replace_rebuilds_a_damaged_sidecar_only_beside_an_index(world, tmp_path, beside):
    """`embed --index notes --replace` wrote the sidecar over notes.json, a JSON Lines file (not JSON, so taken for a
    damaged sidecar): only an index beside it makes a damaged FILE.json this index's, which --replace rebuilds."""
    index, side = tmp_path / "notes", write(tmp_path / "notes.json", '{"a": 1}\n{"a": 2}\n')
    if beside == "a FAISS index":
        shutil.copy(world.index, index)
    before = side.read_bytes()
    code, output = invoke(["embed", "--ckpt", world.ckpt, world.data, "--out", tmp_path / "emb", "--index", index,
                           "--replace", "--device", "cpu", "-q"])
    if beside == "a FAISS index":
        assert code == 0 and json.loads(side.read_text())["format"] == "voxaug-speaker-index", output
    else:
        assert (code, output) == (2, f"error: {side}: exists and is not a speaker index or its sidecar; embed --index "
                                     "would write over it: choose another --index (nothing was written)\n")
        assert side.read_bytes() == before and not index.exists()


def test_embed_given_an_index_sidecar_as_its_index_names_it_as_that(world, tmp_path):
    """`embed --index spk.faiss.json` said the sidecar "exists and is not a speaker index or its sidecar"."""
    index = tmp_path / "spk.faiss"
    shutil.copy(world.index, index)
    side = Path(shutil.copy(f"{world.index}.json", f"{index}.json"))
    before = side.read_bytes()
    code, output = invoke(["embed", "--ckpt", world.ckpt, world.data, "--out", tmp_path / "emb", "--index", side,
                           "--replace", "--device", "cpu", "-q"])
    assert (code, output) == (2, f"error: {side}: this is the sidecar of the speaker index {index}; give that file as "
                                 "--index (nothing was written)\n")
    assert side.read_bytes() == before


@pytest.mark.parametrize("kind", ["webp", "wav"])
def test_only_a_riff_file_that_says_wave_is_named_a_wav_file(tmp_path, kind):
    """A WebP image (or an AVI video: RIFF files too) named .pt and given as --ckpt was called "a WAV audio file"."""
    if kind == "wav":
        buffer = io.BytesIO()
        sf.write(buffer, np.zeros(160, dtype=np.float32), 16000, format="WAV")
        content, named = buffer.getvalue(), "this is a WAV audio file, not a torch file"
    else:
        content, named = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(24), "corrupt or not a torch file"
    given = write(tmp_path / f"{kind}.pt", content)
    code, output = invoke(["export", "--ckpt", given, "--out", tmp_path / "m.onnx"])
    assert code == 2 and output.startswith(f"error: {given}: not a readable checkpoint") and named in output, output


def test_an_index_whose_sidecar_place_is_a_folder_is_not_said_to_miss_it(world, tmp_path):
    """`identify --index spk.faiss` with a folder spk.faiss.json said "the index's sidecar is missing"."""
    index = Path(shutil.copy(world.index, tmp_path / "spk.faiss"))
    side = Path(f"{index}.json")
    side.mkdir()
    code, output = invoke(identify(world, clip(world), index=index))
    assert (code, output) == (2, f"error: {side}: expected an index sidecar file, found a folder\n")


@pytest.mark.parametrize("extra", [(), ("--index", "spk.faiss")])
def test_evaluate_refuses_a_lock_timeout_without_calibrate(tmp_path, extra):
    """Only --calibrate takes the index's lock: --lock-timeout without it was accepted and did nothing."""
    fake = write(tmp_path / "last.pt", "x")
    args = ["evaluate", tmp_path, "--ckpt", fake, "--out", tmp_path / "report", *extra]
    code, output = invoke([*args, "--lock-timeout", "5"])
    assert (code, output) == (2, "error: --lock-timeout 5: only --calibrate waits for the index's lock (to write its "
                                 "threshold); pass --calibrate, or leave it out\n")
    code, output = invoke([*args, "--lock-timeout", "60"])  # its default, given: nothing to refuse
    assert code == 2 and "--lock-timeout" not in output, output


@pytest.mark.parametrize("value, shown", [("inf", "inf"), ("-1", "-1.0")])
def test_a_lock_timeout_out_of_range_is_refused_without_contradicting_itself(tmp_path, value, shown):
    """--lock-timeout inf was refused as 'must be a number of seconds >= 0, got inf', which it is: say finite."""
    clip_file = write(tmp_path / "c.pt", "x")
    code, output = invoke(["enroll", "--index", tmp_path / "spk.faiss", "--speaker", "a", "--lock-timeout", value,
                           clip_file])
    assert (code, output) == (2, f"error: --lock-timeout must be a finite number of seconds >= 0, got {shown}\n")


def test_embed_refuses_an_empty_score_norm_as_identify_and_evaluate_do(tmp_path):
    """``embed --index FILE --score-norm ""`` (an unset ``$NORM``) built an index scoring ``none``, where identify
    and evaluate refuse the empty name: ``score_norm or "none"`` took it for the option left out."""
    ckpt = write(tmp_path / "last.pt", b"not read: the option is checked first")
    code, output = invoke(["embed", "--ckpt", ckpt, tmp_path / "no-such-data", "--out", tmp_path / "emb",
                           "--index", tmp_path / "spk.faiss", "--score-norm", ""])
    assert (code, output) == (2, "error: --score-norm '' is not known; accepted: none, asnorm\n")
    assert not (tmp_path / "emb").exists()


def test_the_suite_ignores_a_developer_s_voxaug_debug_and_trace_batches(tmp_path):
    """With ``VOXAUG_DEBUG=1`` exported (the README's way to see tracebacks) the CLI tests got tracebacks where they
    assert one-line errors (46 failures in test_augment_cli and test_predict_out; here one cheap such test), and
    ``VOXAUG_TRACE_BATCHES`` set to a word stopped every Trainer."""
    test = "test_bad_inputs.py::test_a_tilde_of_no_such_user_in_a_path_option_is_one_error_naming_the_option"
    env = {**os.environ, "VOXAUG_DEBUG": "1", "VOXAUG_TRACE_BATCHES": "some", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "base"), f"{Path(__file__).parent}/{test}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.parametrize("command", ["evaluate", "embed", "train"])
def test_an_empty_out_folder_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch, command):
    """``evaluate --out "$REPORT"`` with the variable unset wrote report.json (embed: embeddings.npy, train: a whole
    run) into the working directory: ``Path("")`` is ``.``, an existing folder, so output_folder took it."""
    ckpt = write(tmp_path / "last.pt", b"not read: the option is refused first")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    model = [] if command == "train" else ["--ckpt", ckpt]
    code, output = invoke([command, tmp_path / "no-such-data", *model, "--out", "", "--device", "cpu"])
    assert code == 2 and output.startswith("error: ") and "'--out': an empty folder name" in output, output
    assert list(work.iterdir()) == []


def test_evaluate_refuses_max_pairs_with_trials(tmp_path):
    """--max-pairs caps the pairs sampled when no --trials is given: with --trials it was accepted and did nothing
    (every trial of the file was scored), as --lock-timeout without --calibrate was."""
    fake = write(tmp_path / "last.pt", "x")
    trials = write(tmp_path / "trials.txt", "1 a.pt b.pt\n0 a.pt c.pt\n")
    args = ["evaluate", tmp_path, "--ckpt", fake, "--out", tmp_path / "report", "--trials", trials]
    code, output = invoke([*args, "--max-pairs", "5"])
    assert (code, output) == (2, "error: --max-pairs 5: only the pairs sampled from the validation split are capped, "
                                 "and --trials scores every trial of its file; leave one of them out\n")
    code, output = invoke([*args, "--max-pairs", "20000"])  # its default, given: nothing to refuse
    assert code == 2 and "--max-pairs" not in output, output
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("device", ["", "gpu"])
def test_enroll_remove_refuses_an_unknown_device_as_enrolling_does(world, tmp_path, device):
    """``enroll --remove NAME --device ""`` (an unset ``$DEVICE``) or ``--device gpu`` removed the speaker, where
    enrolling, and every other command, refuses such a device: removing embeds nothing, so it went unchecked."""
    index = Path(shutil.copy(world.two_speaker_index, tmp_path / "two.faiss"))
    shutil.copy(f"{world.two_speaker_index}.json", f"{index}.json")
    before = index.read_bytes(), Path(f"{index}.json").read_bytes()
    speaker = sorted((world.data / "unseen" / "enroll").iterdir())[0].name
    code, output = invoke(["enroll", "--index", index, "--remove", speaker, "--device", device])
    assert (code, output) == (2, f"error: --device {device!r} is not known; accepted: auto, cpu, cuda\n")
    assert (index.read_bytes(), Path(f"{index}.json").read_bytes()) == before
    code, output = invoke(["enroll", "--index", index, "--remove", speaker, "--device", "cpu"])
    assert code == 0 and output.startswith(f"removed {speaker}; 1 speaker remains"), output


def test_synth_refuses_an_empty_output_folder_instead_of_writing_into_the_working_directory(tmp_path, monkeypatch):
    """`voxaug synth "$OUT"` with the variable unset wrote the whole corpus into an empty working directory."""
    monkeypatch.chdir(tmp_path)
    code, output = invoke(["synth", "", "--speakers", "2", "--utterances", "2"])
    assert code == 2 and "'out': an empty folder name (it would mean the working directory)" in output, output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, name, kind", [
    (["predict", "", "--ckpt", "c.pt", "--out", "p.csv"], "data", "folder"),
    (["predict", "d", "--ckpt", "", "--out", "p.csv"], "--ckpt", "file"),
    (["predict", "d", "--ckpt", "c.pt", "--out", ""], "--out", "file"),
    (["train", "", "--out", "run"], "data", "folder"),
    (["train", "d", "--out", "run", "--config", ""], "--config", "file"),
    (["embed", "", "--ckpt", "c.pt", "--out", "emb"], "data", "folder"),
    (["embed", "d", "--ckpt", "", "--out", "emb"], "--ckpt", "file"),
    (["embed", "d", "--model", "", "--out", "emb"], "--model", "file"),
    (["embed", "d", "--ckpt", "c.pt", "--out", "emb", "--index", ""], "--index", "file"),
    (["evaluate", "", "--ckpt", "c.pt", "--out", "report"], "data", "folder"),
    (["evaluate", "d", "--ckpt", "c.pt", "--out", "report", "--trials", ""], "--trials", "file"),
    (["evaluate", "d", "--ckpt", "c.pt", "--out", "report", "--index", ""], "--index", "file"),
    (["plot", "", "--out", "x.png"], "runs", "folder"),
    (["plot", "run", "--out", ""], "--out", "file"),
    (["export", "--ckpt", "", "--out", "m.onnx"], "--ckpt", "file"),
    (["export", "--ckpt", "c.pt", "--out", ""], "--out", "file"),
    (["identify", "--index", "", "a.pt"], "--index", "file"),
    (["identify", "--index", "i.faiss", "--ckpt", "", "a.pt"], "--ckpt", "file"),
    (["identify", "--index", "i.faiss", "a.pt", ""], "clips", "clip"),
    (["enroll", "--index", "i.faiss", "--speaker", "x", ""], "clips", "clip"),
    (["enroll", "--index", "", "--speaker", "x", "a.pt"], "--index", "file"),
])
def test_an_empty_path_is_refused_as_empty_not_named_as_the_working_directory(tmp_path, monkeypatch, args, name, kind):
    """``Path("")`` is ``.``: ``predict --ckpt ""`` said ``.: expected a checkpoint file, found a folder``, ``plot ""``
    looked for ``metrics.jsonl``, and an empty DATA or clip argument (an unset variable) read the working directory:
    ``train ""`` packed it as a dataset, ``enroll --speaker x ""`` enrolled every clip under it."""
    monkeypatch.chdir(tmp_path)
    tensor(tmp_path / "stray.pt", torch.zeros(50, 40))
    code, output = invoke(args)
    empty = {"folder": "an empty folder name", "file": "an empty file name",
             "clip": "an empty name (it would mean every clip under the working directory)"}[kind]
    assert code == 2 and f"Invalid value for '{name}': {empty}" in output, output
    assert len(output.strip().splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["stray.pt"]


@pytest.mark.parametrize("args", [["predict", "data", "--ckpt", " ", "--out", "p.csv"],
                                  ["identify", "--index", "spk.faiss", "  "]])
def test_a_file_or_clip_name_of_only_whitespace_is_refused_as_folder_names_are(args):
    code, output = invoke(args)
    assert code == 2 and "name of only whitespace" in output, output


def test_the_command_lines_device_names_are_the_configs():
    """cli/common.py repeats voxaug.config's device names so that `enroll` loads no torch: they must stay the same."""
    from voxaug.cli.common import DEVICES as COMMAND_LINE_DEVICES
    from voxaug.config import DEVICES

    assert COMMAND_LINE_DEVICES == DEVICES


@contextlib.contextmanager
def _fails_instead_of_hanging(seconds: int) -> Iterator[None]:
    """An in-process command that hangs (opening a pipe no one writes, reading a device without end) fails the test
    after ``seconds``, as a subprocess's timeout did, without paying a process's torch import."""
    def hung(signum, frame):
        raise AssertionError(f"still running after {seconds} s: the clip was read instead of refused")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
@pytest.mark.parametrize("kind, name, found", [("fifo", "x.wav", "a named pipe"), ("/dev/zero", "x.wav", "a character device"),
                                               ("/dev/urandom", "x.pt", "a character device")])
def test_enroll_refuses_a_pipe_or_device_given_as_a_clip_instead_of_reading_it_forever(world, tmp_path, kind, name,
                                                                                       found):
    """`enroll --speaker a x.wav` with x.wav a named pipe hung forever (the clip's digest opened it for reading, which
    waits for a writer), and with x.wav a link to /dev/zero read on without end: identify refused both up front."""
    clip_path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(clip_path)
    else:
        clip_path.symlink_to(kind)
    args = ["enroll", "--index", tmp_path / "spk.faiss", "--speaker", "a", "--ckpt", world.ckpt, clip_path,
            "--device", "cpu", "-q"]
    with _fails_instead_of_hanging(120):
        done = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert (done.exit_code, done.stderr) == (2, f"error: {clip_path}: expected a clip file, found {found}\n")
    assert not (tmp_path / "spk.faiss").exists()


@pytest.mark.parametrize("reader", ["identify", "evaluate --trials", "read_mono"])
def test_a_device_or_pipe_named_as_a_clip_is_called_what_it_is_not_missing_or_empty(world, tmp_path, reader,
                                                                                    special_file):
    """`identify x.wav` with x.wav a named pipe (or a link to /dev/null) said "clip not found" of a file that is
    there, a --trials line naming one said "not found in DATA", and the audio reader called it "empty (0 bytes)"."""
    from voxaug.embeddings.evaluation import read_trials
    from voxaug.errors import VoxaugError
    from voxaug.runtime.frontend import read_mono

    special, found = special_file
    data = tmp_path  # the pipe lies in it: a trial's clip must
    clip_path = data / "x.wav"
    clip_path.symlink_to(special)
    if reader == "evaluate --trials" and not special.is_relative_to(tmp_path):  # /dev/null: out of DATA, said so
        with pytest.raises(VoxaugError, match=r"line 1: clip 'x.wav' points outside the dataset folder"):
            read_trials(write(tmp_path / "trials.txt", "1 x.wav y.pt\n0 y.pt z.pt\n"), data)
        return
    if reader == "identify":
        assert invoke(identify(world, clip_path)) == (2, f"error: {clip_path}: expected a clip file, found {found}\n")
        return
    with pytest.raises(VoxaugError) as refused:
        if reader == "evaluate --trials":
            read_trials(write(tmp_path / "trials.txt", "1 x.wav y.pt\n0 y.pt z.pt\n"), data)
        else:
            read_mono(clip_path)
    expected = (f"{tmp_path / 'trials.txt'}: line 1: clip 'x.wav': expected a clip file" if reader == "evaluate --trials"
                else f"{clip_path}: expected an audio file")
    assert str(refused.value) == f"{expected}, found {found}"


def test_a_voxaug_cache_of_only_whitespace_is_refused_as_cache_dir_is(trained_run, tiny_synth, tmp_path, monkeypatch):
    """``VOXAUG_CACHE=" "`` (``"$CACHE "`` with the variable unset) packed features into a folder named by a space in
    the working directory, where ``--cache-dir " "`` is refused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOXAUG_CACHE", " ")
    code, output = invoke(["predict", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", "p.csv", "-q"])
    assert code == 2 and output == ("error: VOXAUG_CACHE ' ' is a folder name of only whitespace; give a folder, or "
                                    "unset it for ~/.cache/voxaug\n"), output
    assert list(tmp_path.iterdir()) == []
