"""Training needs clips of at least two speakers: with one, the classifier's loss is 0 and nothing is learned."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from hw4_factory import make_hw4, rewrite_metadata
from voxaug.cli.main import app
from voxaug.errors import VoxaugError
from voxaug.train import Trainer


def test_an_hw4_folder_of_one_speaker_is_refused(tmp_path):
    root = make_hw4(tmp_path / "d", speakers=1)
    with pytest.raises(VoxaugError, match=r"metadata.json: holds utterances of 1 speaker \('id10000'\).*at least 2"):
        Trainer(tiny_config(train={"steps": 2}), root, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_mapping_of_three_speakers_with_utterances_of_one_is_refused(tmp_path):
    root = make_hw4(tmp_path / "d", speakers=3)
    rewrite_metadata(root, lambda m: m.update(speakers={"id10001": m["speakers"]["id10001"]}))
    with pytest.raises(VoxaugError, match="holds utterances of 1 speaker"):
        Trainer(tiny_config(train={"steps": 2}), root, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)


def test_a_clip_folder_of_one_speaker_is_one_error_line(tmp_path):
    hw4 = make_hw4(tmp_path / "hw4", speakers=1)
    (tmp_path / "clips" / "alice").mkdir(parents=True)
    for clip in sorted(hw4.glob("uttr-*.pt")):
        shutil.copy(clip, tmp_path / "clips" / "alice" / clip.name)
    (tmp_path / "clips" / "bob").mkdir()  # an empty speaker folder is no speaker
    result = CliRunner().invoke(app, ["train", str(tmp_path / "clips"), "--out", str(tmp_path / "run"), "--steps", "2",
                                      "--device", "cpu", "-q", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (f"error: {tmp_path / 'clips'}: holds utterances of 1 speaker "
                                                      "('alice'); training a speaker classifier needs at least 2")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("silence", ["empty list", "left out"])
def test_a_mapped_speaker_without_utterances_is_a_warning_in_train_and_predict(tmp_path, silence):
    """A speaker that mapping.json lists and metadata.json gives no utterances was trained silently as a class that
    never saw an example, and predict could answer it all the same."""
    root = make_hw4(tmp_path / "d", speakers=3)
    rewrite_metadata(root, lambda m: m["speakers"].update(id10002=[]) if silence == "empty list"
                     else m["speakers"].pop("id10002"))
    warning = (f"warning: {root / 'metadata.json'}: 1 of the 3 speakers of mapping.json has no utterances ('id10002'); "
               "its class is never trained, yet the classifier can still answer it")
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--steps", "2", "--eval-every", "2",
                                 "--warmup", "1", "--d-model", "32", "--layers", "1", "--heads", "2", "--device", "cpu",
                                 "-q", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stderr.strip().splitlines() == [warning]
    result = runner.invoke(app, ["predict", str(root), "--ckpt", str(tmp_path / "run" / "best.pt"), "--out",
                                 str(tmp_path / "p.csv"), "-q", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stderr.strip().splitlines() == [warning]


def test_with_speed_the_warning_counts_the_three_classes_of_a_speaker_without_utterances(tmp_path):
    """With ``speed`` a speaker is three classes (speeds 1, 0.9 and 1.1), all untrained, and the warning said one."""
    root = make_hw4(tmp_path / "d", speakers=3)
    rewrite_metadata(root, lambda m: m["speakers"].pop("id10002"))
    result = CliRunner().invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--augment", "speed",
                                      "--steps", "2", "--eval-every", "2", "--warmup", "1", "--d-model", "32",
                                      "--layers", "1", "--heads", "2", "--device", "cpu", "-q",
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warning: {root / 'metadata.json'}: 1 of the 3 speakers of mapping.json has no utterances ('id10002'); its 3 "
        "classes (one per speed) are never trained, yet the classifier can still answer it"]


def test_predict_with_a_speed_model_counts_the_three_untrained_classes_as_train_does(tmp_path):
    """train warned of a silent speaker's 3 classes (one per speed); predict, of the same model, said "its class"."""
    root = make_hw4(tmp_path / "d", speakers=3)
    rewrite_metadata(root, lambda m: m["speakers"].pop("id10002"))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--augment", "speed", "--steps", "2",
                                 "--eval-every", "2", "--warmup", "1", "--d-model", "32", "--layers", "1", "--heads", "2",
                                 "--device", "cpu", "-q", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output + result.stderr
    warned = result.stderr.strip().splitlines()
    result = runner.invoke(app, ["predict", str(root), "--ckpt", str(tmp_path / "run" / "best.pt"), "--out",
                                 str(tmp_path / "p.csv"), "-q", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stderr.strip().splitlines() == warned and "its 3 classes (one per speed)" in warned[0], warned


def two_speaker_clips(tmp_path: Path) -> Path:
    """A clip-folder dataset of two speakers, alice and bob (an HW4 set's features, one folder per speaker)."""
    hw4 = make_hw4(tmp_path / "hw4", speakers=2)
    clips = tmp_path / "clips"
    for speaker, prefix in (("alice", "uttr-00"), ("bob", "uttr-01")):
        (clips / speaker).mkdir(parents=True)
        for clip in sorted(hw4.glob(f"{prefix}*.pt")):
            shutil.copy(clip, clips / speaker / clip.name)
    return clips


def test_a_run_folder_inside_a_clip_folder_dataset_is_refused_before_it_becomes_a_speaker(tmp_path):
    """`train DATA --out DATA/run` trained, and from then on DATA had a speaker 'run' whose clips were best.pt and
    last.pt: `--resume` failed with "cannot resume with a different model", and another train or embed of DATA took
    'run' for a class. An HW4 DATA reads only what its listings name, so a run may live inside it."""
    clips = two_speaker_clips(tmp_path)
    run = clips / "run"
    result = CliRunner().invoke(app, ["train", str(clips), "--out", str(run), "--steps", "2", "--device", "cpu", "-q",
                                      "--cache-dir", str(tmp_path / "cache")])
    assert (result.exit_code, result.output) == (2, f"error: {run}: --out lies inside DATA {clips}, whose folders are "
                                                    "speakers: the run's checkpoints would be read as clips of a speaker "
                                                    "'run'; put the run outside DATA\n")
    assert not run.exists()


def test_a_clip_folder_dataset_as_its_own_run_folder_is_refused(tmp_path):
    """`train DATA --out DATA` trained and wrote best.pt and last.pt at DATA's top, where clips of no speaker are
    refused: the run's own `--resume`, and every later read of DATA, failed with "holds clips of no speaker"."""
    clips = two_speaker_clips(tmp_path)
    result = CliRunner().invoke(app, ["train", str(clips), "--out", str(clips), "--steps", "1", "--d-model", "16",
                                      "--layers", "1", "--device", "cpu", "-q", "--cache-dir", str(tmp_path / "cache")])
    assert (result.exit_code, result.output) == (2, f"error: {clips}: --out is DATA {clips} itself, whose folders are "
                                                    "speakers: the run's checkpoints would be read as clips of no "
                                                    "speaker, and DATA refused from then on; put the run outside "
                                                    "DATA\n")
    assert sorted(p.name for p in clips.iterdir()) == ["alice", "bob"]


def test_a_run_folder_in_a_hidden_folder_of_a_clip_folder_dataset_is_accepted(tmp_path):
    """`train DATA --out DATA/.runs/r1` was refused as a run read as the clips of a speaker '.runs', yet hidden
    folders are never read as speakers or clips: the run trains there and DATA keeps its two speakers."""
    clips = two_speaker_clips(tmp_path)
    run = clips / ".runs" / "r1"
    result = CliRunner().invoke(app, ["train", str(clips), "--out", str(run), "--steps", "1", "--d-model", "16",
                                      "--layers", "1", "--device", "cpu", "-q", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert (run / "last.pt").is_file()
    from voxaug.data.sources import ClipFolderSource
    assert ClipFolderSource(clips).speakers == ["alice", "bob"]


def test_speakers_the_validation_split_leaves_out_are_a_warning(tmp_path, capsys):
    """A speaker with a single utterance stays in training, so validation accuracy silently said nothing about it; with
    every speaker so, --val-fraction 0.2 silently became 0 (no validation accuracy, best.pt the latest model)."""
    root = make_hw4(tmp_path / "d", speakers=3, per_speaker=5)
    rewrite_metadata(root, lambda m: m["speakers"].update(id10002=m["speakers"]["id10002"][:1]))
    trainer = Trainer(tiny_config(train={"steps": 2}), root, tmp_path / "run", cache_dir=tmp_path / "cache",
                      progress=False)
    assert trainer.store.labels[trainer.val_indices].tolist().count(2) == 0
    assert capsys.readouterr().err == ("warning: 1 of the 3 speakers has no validation utterance ('id10002': a single "
                                       "utterance, or no recording small enough to hold out); validation accuracy "
                                       "leaves it out\n")
    rewrite_metadata(root, lambda m: m.update(speakers={name: clips[:1] for name, clips in m["speakers"].items()}))
    Trainer(tiny_config(train={"steps": 2}), root, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == (f"{root}: feature cache packed again: 8 clips removed since it was packed\n"
                                       "warning: none of the 3 speakers has a validation utterance (a single "
                                       "utterance, or no recording small enough to hold out): there is no validation "
                                       "accuracy, and best.pt follows the latest model, as with --val-fraction 0\n")
    Trainer(tiny_config(train={"steps": 2, "val_fraction": 0.0}), root, tmp_path / "run", cache_dir=tmp_path / "cache",
            progress=False)
    assert capsys.readouterr().err == ""


def test_training_and_clip_folder_warnings_are_never_written_to_stdout(tmp_path, capsys, monkeypatch):
    """A class never trained, a speaker left out of validation and an empty speaker folder were said with
    ``print(..., file=sys.stderr)``, which writes to stdout in a program without stderr (started with ``2>&-``, not
    through ``voxaug``): among its output. As the store's skip warnings, they are dropped there."""
    from voxaug.data.sources import ClipFolderSource

    root = make_hw4(tmp_path / "d", speakers=4, per_speaker=5)
    rewrite_metadata(root, lambda m: m["speakers"].update(id10002=m["speakers"]["id10002"][:1], id10003=[]))
    (tmp_path / "clips" / "alice").mkdir(parents=True)
    (tmp_path / "clips" / "bob").mkdir()
    (tmp_path / "clips" / "carol").mkdir()  # an empty speaker folder
    for speaker in ("alice", "bob"):
        shutil.copy(next(root.glob("uttr-*.pt")), tmp_path / "clips" / speaker / "one.pt")

    def warn_all() -> None:
        Trainer(tiny_config(train={"steps": 2}), root, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
        ClipFolderSource(tmp_path / "clips")

    warn_all()
    said = capsys.readouterr()
    assert said.out == "" and len(said.err.strip().splitlines()) == 3, said.err
    monkeypatch.setattr(sys, "stderr", None)
    warn_all()
    assert capsys.readouterr().out == ""
