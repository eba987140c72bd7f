"""predict --out never replaces a file predict reads: the checkpoint, or a file of the dataset."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from hw4_factory import make_hw4
from voxaug.cli.main import app
from voxaug.train import Trainer


@pytest.fixture(scope="module")
def hw4_and_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_out")
    data = make_hw4(root / "data")
    Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1}), data, root / "run", progress=False).fit()
    return data, root / "run" / "best.pt"


@pytest.mark.parametrize("target", ["checkpoint", "testdata.json", "uttr-0004.pt", "mapping.json", "metadata.json"])
def test_predict_refuses_an_out_that_is_one_of_its_inputs(hw4_and_ckpt, target):
    data, ckpt = hw4_and_ckpt
    out = ckpt if target == "checkpoint" else data / target
    before = out.read_bytes()
    result = CliRunner().invoke(app, ["predict", str(data), "--ckpt", str(ckpt), "--out", str(out), "-q",
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: --out is ") and "which predict reads" in lines[0]
    assert out.read_bytes() == before


def test_predict_still_replaces_an_earlier_csv(hw4_and_ckpt, tmp_path):
    data, ckpt = hw4_and_ckpt
    out = tmp_path / "submission.csv"
    out.write_text("old\n")
    result = CliRunner().invoke(app, ["predict", str(data), "--ckpt", str(ckpt), "--out", str(out), "-q",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("Id,Category\nuttr-0004.pt,")


def test_predict_refuses_an_out_that_is_a_training_clip_of_the_dataset(hw4_and_ckpt):
    """Only testdata.json's clips were compared: metadata.json's uttr-*.pt files, which the test split does not read,
    were replaced by the CSV."""
    data, ckpt = hw4_and_ckpt
    out = data / "uttr-0000.pt"
    before = out.read_bytes()
    result = CliRunner().invoke(app, ["predict", str(data), "--ckpt", str(ckpt), "--out", str(out), "-q",
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(f"error: {out}: --out is ") and "uttr-0000.pt" in result.output
    assert out.read_bytes() == before


def test_predict_writes_a_clip_name_s_own_bytes_and_every_id_round_trips(hw4_and_ckpt, tmp_path):
    """A clip folder's file name that is not UTF-8 (``os.fsdecode``'s surrogates) stopped predict with an unexpected
    UnicodeEncodeError (exit 3) after the whole run, writing no CSV; embed's items.csv writes such a name's bytes."""
    import csv
    import os
    import shutil

    data, ckpt = hw4_and_ckpt
    names = [os.fsdecode(b"caf\xe9.pt"), '=1+1,"q".pt', "a\nb.pt"]
    speaker = tmp_path / "clips" / "id10000"
    speaker.mkdir(parents=True)
    for number, name in enumerate(names):
        shutil.copy(data / f"uttr-00{number:02d}.pt", speaker / name)
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "clips"), "--ckpt", str(ckpt), "--out", str(out), "-q",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["Id", "Category"]
    assert sorted(row[0] for row in rows[1:]) == sorted(f"id10000/{name}" for name in names)
    assert b"id10000/caf\xe9.pt," in out.read_bytes()


def test_predict_refuses_the_folder_around_the_hw4_folder_and_writes_no_csv(hw4_and_ckpt, tmp_path):
    """The homework unzips to Dataset/ (the sample code's data_dir): given the folder around it, predict read Dataset
    as one speaker's clip folder and wrote a row for every training and test clip, Ids 'Dataset/uttr-….pt' that the
    competition rejects."""
    import shutil

    data, ckpt = hw4_and_ckpt
    download = tmp_path / "ml2022spring-hw4"
    shutil.copytree(data, download / "Dataset")
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(app, ["predict", str(download), "--ckpt", str(ckpt), "--out", str(out), "-q",
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: {download}: no mapping.json here, but {download / 'Dataset'} has one: "
                                     "give that HW4 folder as DATA")
    assert not out.exists()
