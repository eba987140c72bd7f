"""Bad input to embed/enroll/identify: one clear line naming the file, non-zero exit, index untouched."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from voxaug.checkpoint import load_checkpoint, save_checkpoint
from voxaug.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def index_dir(trained_run, tiny_synth, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    enroll = sorted((tiny_synth / "unseen" / "enroll").iterdir())[0]
    result = runner.invoke(app, ["enroll", "--index", str(folder / "spk.faiss"), "--speaker", enroll.name,
                                 "--ckpt", str(trained_run / "best.pt"), "--device", "cpu", str(enroll)])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(trained_run / "best.pt")
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(folder / "other.pt", state)
    return folder


def _clip(folder, name, value):
    path = folder / name
    torch.save(value, path)
    return path


CASES = {
    "missing clip": lambda d: ["identify", "--index", d / "spk.faiss", d / "nope.pt"], 
    "unreadable clip": lambda d: ["identify", "--index", d / "spk.faiss", _write(d / "junk.pt", b"junk")],
    "wrong n_mels": lambda d: ["identify", "--index", d / "spk.faiss", _clip(d, "m80.pt", torch.zeros(50, 80))],
    "empty clip": lambda d: ["identify", "--index", d / "spk.faiss", _clip(d, "empty.pt", torch.zeros(0, 40))],
    "too short": lambda d: ["identify", "--index", d / "spk.faiss", _clip(d, "short.pt", torch.zeros(3, 40))],
    "NaN clip": lambda d: ["identify", "--index", d / "spk.faiss", _clip(d, "nan.pt", torch.full((50, 40), float("nan")))],
    "no sidecar": lambda d: ["identify", "--index", _no_sidecar(d), _clip(d, "ok.pt", torch.zeros(50, 40))],
    "corrupt index": lambda d: ["identify", "--index", _corrupt_index(d), _clip(d, "ok.pt", torch.zeros(50, 40))],
    "corrupt sidecar": lambda d: ["identify", "--index", _corrupt_sidecar(d), _clip(d, "ok.pt", torch.zeros(50, 40))],
    "other checkpoint": lambda d: ["identify", "--index", d / "spk.faiss", "--ckpt", d / "other.pt",
                                   _clip(d, "ok.pt", torch.zeros(50, 40))],
    "enrol twice": lambda d: ["enroll", "--index", d / "spk.faiss", "--speaker", _first_speaker(d),
                              _clip(d, "ok.pt", torch.zeros(50, 40))],
    "enrol bad clip": lambda d: ["enroll", "--index", d / "spk.faiss", "--speaker", "newbie", _clip(d, "nan2.pt", torch.full((50, 40), float("inf")))],
    "enrol other checkpoint": lambda d: ["enroll", "--index", d / "spk.faiss", "--speaker", "newbie", "--ckpt", d / "other.pt",
                                         _clip(d, "ok.pt", torch.zeros(50, 40))],
}

EXPECTED = {
    "missing clip": ("nope.pt", "not found"),
    "unreadable clip": ("junk.pt", "not a readable"),
    "wrong n_mels": ("m80.pt", "40 mel bins, found 80"),
    "empty clip": ("empty.pt", "0 frames"),
    "too short": ("short.pt", "at least"),
    "NaN clip": ("nan.pt", "NaN"),
    "no sidecar": ("lonely.faiss.json", "sidecar is missing"),
    "corrupt index": ("broken.faiss", "does not match its sidecar"),
    "corrupt sidecar": ("badside.faiss.json", "malformed JSON"),
    "other checkpoint": ("other.pt", "does not match the index"),
    "enrol twice": ("spk.faiss", "already enrolled"),
    "enrol bad clip": ("nan2.pt", "NaN or Inf"),
    "enrol other checkpoint": ("other.pt", "does not match the index"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


def _copy_index(d, name):
    shutil.copy(d / "spk.faiss", d / name)
    shutil.copy(d / "spk.faiss.json", d / f"{name}.json")
    return d / name


def _no_sidecar(d):
    shutil.copy(d / "spk.faiss", d / "lonely.faiss")
    return d / "lonely.faiss"


def _corrupt_index(d):
    path = _copy_index(d, "broken.faiss")
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    return path


def _corrupt_sidecar(d):
    path = _copy_index(d, "badside.faiss")
    (d / "badside.faiss.json").write_text('{"format": ')
    return path


def _first_speaker(d):
    return json.loads((d / "spk.faiss.json").read_text())["labels"][0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(index_dir, case):
    before = {p.name: p.read_bytes() for p in index_dir.glob("spk.faiss*")}
    args = [str(a) for a in CASES[case](index_dir)]
    result = runner.invoke(app, args + ["--device", "cpu"])
    assert result.exit_code != 0
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in result.output
    filename, problem = EXPECTED[case]
    assert filename in message and problem in message, message
    assert {p.name: p.read_bytes() for p in index_dir.glob("spk.faiss*")} == before
