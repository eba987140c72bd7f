"""`voxaug synth` is deterministic and in the HW4 layout; `voxaug predict` writes the Kaggle CSV."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_SYNTH
from voxaug.audio import read_audio
from voxaug.cli.main import app
from voxaug.data.sources import HW4Source
from voxaug.features import log_mel
from voxaug.synth import SynthConfig, generate

runner = CliRunner()


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_files(tmp_path):
    config = SynthConfig(speakers=3, utterances=3, unseen=1, enroll_per_unseen=1, test_per_unseen=1,
                         min_seconds=0.5, max_seconds=0.6, seed=5)
    generate(tmp_path / "a", config, progress=False)
    generate(tmp_path / "b", config, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    config.seed = 6
    generate(tmp_path / "c", config, progress=False)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_layout_is_hw4_plus_unseen(tiny_synth):
    source = HW4Source(tiny_synth)
    assert len(source.speakers) == TINY_SYNTH.speakers and source.n_mels == 40
    test = json.loads((tiny_synth / "testdata.json").read_text())["utterances"]
    assert len(test) + len(source.utterances) == TINY_SYNTH.speakers * TINY_SYNTH.utterances
    for part, count in (("enroll", TINY_SYNTH.enroll_per_unseen), ("test", TINY_SYNTH.test_per_unseen)):
        speakers = sorted((tiny_synth / "unseen" / part).iterdir())
        assert len(speakers) == TINY_SYNTH.unseen
        assert len(list(speakers[0].glob("*.pt"))) == count == len(list(speakers[0].glob("*.wav")))
    assert not set(source.speakers) & {p.name for p in (tiny_synth / "unseen" / "test").iterdir()}


def test_wav_files_featurise_to_the_written_features(tiny_synth):
    clip = sorted(sorted((tiny_synth / "unseen" / "test").iterdir())[0].glob("*.pt"))[0].with_suffix("")
    stored = torch.load(clip.with_suffix(".pt"), weights_only=True)
    recomputed = log_mel(read_audio(clip.with_suffix(".wav"), 16000))
    assert recomputed.shape == stored.shape
    assert torch.allclose(recomputed, stored, atol=1e-4)


def test_synth_refuses_a_corpus_larger_than_the_free_space_before_writing(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import voxaug.synth as synth_module

    monkeypatch.setattr(synth_module.shutil, "disk_usage", lambda place: SimpleNamespace(free=10**6))
    result = runner.invoke(app, ["synth", str(tmp_path / "corpus"), "--speakers", "100", "-q"])
    assert result.exit_code == 2 and "the corpus would take about 0.106 GB (2130 clips)" in result.output, result.output
    assert "0.001 GB are free there" in result.output and not (tmp_path / "corpus").exists()


def test_predict_writes_ids_in_testdata_order(tiny_synth, trained_run, tmp_path):
    out = tmp_path / "submission.csv"
    result = runner.invoke(app, ["predict", str(tiny_synth), "--ckpt", str(trained_run / "best.pt"),
                                 "--out", str(out), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["Id", "Category"]
    order = [u["feature_path"] for u in json.loads((tiny_synth / "testdata.json").read_text())["utterances"]]
    assert [r[0] for r in rows[1:]] == order
    truth = dict(list(csv.reader((tiny_synth / "test_labels.csv").open()))[1:])
    assert all(r[1] in set(truth.values()) for r in rows[1:])
    correct = sum(truth[r[0]] == r[1] for r in rows[1:])
    assert correct / len(order) > 2 / TINY_SYNTH.speakers


def test_predict_counts_the_clips_it_has_classified_unless_quiet(tiny_synth, trained_run, tmp_path):
    """After packing, predict classified every test clip without a word: minutes for the homework's 4,000 clips on a
    CPU, which read as a hang."""
    clips = len(json.loads((tiny_synth / "testdata.json").read_text())["utterances"])
    command = ["predict", str(tiny_synth), "--ckpt", str(trained_run / "best.pt"), "--out", str(tmp_path / "s.csv"),
               "--device", "cpu"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert f"classify: {clips}/{clips} utt" in result.stderr.splitlines(), result.stderr
    quiet = runner.invoke(app, [*command, "-q"])
    assert quiet.exit_code == 0 and "classify" not in quiet.stderr, quiet.stderr


def test_predict_refuses_a_mapping_of_other_speakers_than_the_model_s(tiny_synth, trained_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data, ignore=shutil.ignore_patterns("unseen"))
    mapping = json.loads((data / "mapping.json").read_text())
    first, second = list(mapping["speaker2id"])[:2]
    mapping["speaker2id"][first], mapping["speaker2id"][second] = 1, 0  # other ids: the names are what predict writes
    (data / "mapping.json").write_text(json.dumps(mapping))
    command = ["predict", str(data), "--ckpt", str(trained_run / "best.pt"), "--out", str(tmp_path / "p.csv"),
               "--device", "cpu", "-q"]
    assert runner.invoke(app, command).exit_code == 0
    mapping["speaker2id"]["someone"] = mapping["speaker2id"].pop(first)
    (data / "mapping.json").write_text(json.dumps(mapping))
    (tmp_path / "p.csv").unlink()
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and f"lists {len(mapping['speaker2id'])} speakers, not the" in result.output, result.output
    assert f"(e.g. {first!r})" in result.output and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("arguments, needle", [
    (["identify", "--index", "spk.faiss", "--top-k", "three", "clip.pt"], "voxaug identify: Invalid value for '--top-k'"),
    (["identify", "--index", "spk.faiss", "--thresh", "0.5", "clip.pt"], "No such option: --thresh"),
    (["embed", "--ckpt", "best.pt"], "voxaug embed: Missing argument"),
    (["enrol"], "No such command 'enrol'"),
])
def test_usage_errors_are_one_line_naming_the_command(arguments, needle):
    result = runner.invoke(app, arguments, prog_name="voxaug")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ") and needle in result.output, result.output


def test_a_bare_voxaug_still_shows_the_commands():
    result = runner.invoke(app, [], prog_name="voxaug")
    assert "Usage: voxaug" in result.output and "identify" in result.output and "error:" not in result.output


def test_the_hint_of_an_unexpected_error_shows_its_traceback_when_followed(tmp_path, monkeypatch):
    """An unexpected error (a bug) said 'run with --debug for the traceback', and `voxaug plot RUN --out x.png --debug`
    is refused as an unknown option of plot: --debug is the app's, given before the command's name."""
    import voxaug.plot

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(voxaug.plot, "plot_runs", broken)
    monkeypatch.delenv("VOXAUG_DEBUG", raising=False)
    arguments = ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "x.png")]
    first = runner.invoke(app, arguments, prog_name="voxaug")
    assert first.exit_code == 3 and "RuntimeError: a bug" in first.output, first.output
    hint = re.search(r"`voxaug (.+) …`", first.output)
    assert hint, first.output
    again = runner.invoke(app, hint.group(1).split() + arguments[1:])
    assert isinstance(again.exception, RuntimeError), again.output
    monkeypatch.setenv("VOXAUG_DEBUG", "1")
    assert "VOXAUG_DEBUG=1" in first.output and isinstance(runner.invoke(app, arguments).exception, RuntimeError)


@pytest.mark.parametrize("program", ["voxaug", "python -m voxaug"])
def test_the_debug_hint_names_the_program_as_it_was_started(tmp_path, monkeypatch, program):
    """Under `python -m voxaug` (a virtual environment not activated, torchrun) the hint said `voxaug --debug plot …`,
    which the shell may not find: it names the program as the usage line does, then the command's name."""
    import voxaug.plot

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(voxaug.plot, "plot_runs", broken)
    monkeypatch.delenv("VOXAUG_DEBUG", raising=False)
    done = runner.invoke(app, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "x.png")], prog_name=program)
    assert done.exit_code == 3, done.output
    assert done.output == ("error: unexpected RuntimeError: a bug (for the traceback, run it again as "
                           f"`{program} --debug plot …` or with VOXAUG_DEBUG=1)\n")


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2
    assert "missing: dataset not found" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["predict", str(tmp_path), "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "nope.pt: checkpoint not found" in result.output
    assert not (tmp_path / "o.csv").exists()


def test_synth_writes_nothing_into_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "uttr-stale.pt").write_bytes(b"an earlier corpus")
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "old"), "--speakers", "2", "--utterances", "3", "-q"])
    assert result.exit_code == 2 and "not empty" in result.output and str(tmp_path / "old") in result.output
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["uttr-stale.pt"]


def test_a_small_corpus_still_has_a_test_clip_per_speaker_that_predict_can_read(tmp_path):
    generate(tmp_path / "small", SynthConfig(speakers=2, utterances=3, unseen=0, impostors=0, min_seconds=0.5,
                                             max_seconds=0.6), progress=False)
    assert len(HW4Source(tmp_path / "small", split="test").utterances) == 2
    assert len(HW4Source(tmp_path / "small").utterances) == 4


def test_a_reader_that_leaves_early_ends_the_command_quietly_with_its_work_done(tmp_path):
    import subprocess
    import sys

    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "voxaug", "synth", str(tmp_path / "out"), "--speakers", "2", "--utterances", "2",
         "--unseen", "0", "--impostors", "0", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader_gone.stdout.close()  # like `| head -0`: the summary line is written to a closed pipe
    stderr = reader_gone.stderr.read().decode()
    assert reader_gone.wait() == 141 and stderr == ""
    assert len(list((tmp_path / "out").glob("uttr-*.pt"))) == 4


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_predict_warns_of_test_clips_that_metadata_json_lists_for_training(tiny_synth, trained_run, tmp_path):
    """A train/test leak went unsaid: the predictions of clips the model trained on look better than they are."""
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data, ignore=shutil.ignore_patterns("unseen"))
    command = ["predict", str(data), "--ckpt", str(trained_run / "best.pt"), "--out", str(tmp_path / "p.csv"),
               "--device", "cpu", "-q"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    testdata = json.loads((data / "testdata.json").read_text())
    trained = next(iter(json.loads((data / "metadata.json").read_text())["speakers"].values()))[0]["feature_path"]
    testdata["utterances"].append({"feature_path": trained})
    (data / "testdata.json").write_text(json.dumps(testdata))
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    count = len(testdata["utterances"])
    assert (f"warning: {data / 'testdata.json'}: 1 of its {count} clips is a training clip in metadata.json too "
            f"(e.g. {trained!r})") in result.output


@pytest.mark.parametrize("make, problem", [
    (lambda root: (root / "out").symlink_to(root / "nowhere"), "is a symbolic link to nothing"),
    (lambda root: (root / "file").write_text("x"), "is a file, not a folder"),
    (lambda root: ((root / "out").symlink_to(root / "back"), (root / "back").symlink_to(root / "out")),
     "out is a symlink loop (symbolic links that lead back to each other)"),
])
def test_synth_names_why_its_output_folder_cannot_be_created(tmp_path, make, problem):
    """A dangling link was refused as 'cannot create the output folder (File exists)', a path under a file as
    '(Not a directory)': synth now checks OUT as train checks --out."""
    make(tmp_path)
    out = tmp_path / "out" if (tmp_path / "out").is_symlink() else tmp_path / "file" / "out"
    result = CliRunner().invoke(app, ["synth", str(out), "--speakers", "2", "--utterances", "2", "-q"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: {out}: OUT cannot be created") and problem in result.output, result.output


def test_synth_says_one_unseen_speaker_and_one_impostor_in_the_singular(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--speakers", "2", "--utterances", "2",
                                      "--unseen", "1", "--impostors", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output == (f"wrote 2 training and 2 test utterances of 2 speakers, plus 1 unseen speaker and "
                             f"1 impostor, to {tmp_path / 'out'}\n")


def test_predict_warns_of_a_test_clip_that_links_to_a_training_clip_under_another_name(tiny_synth, trained_run,
                                                                                        tmp_path):
    """The leak check compared paths: a hard link to a training clip, listed in testdata.json under another name,
    was predicted without the warning (the duplicate-clip check already compares files)."""
    import os

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data, ignore=shutil.ignore_patterns("unseen"))
    trained = next(iter(json.loads((data / "metadata.json").read_text())["speakers"].values()))[0]["feature_path"]
    os.link(data / trained, data / "uttr-linked.pt")
    testdata = json.loads((data / "testdata.json").read_text())
    testdata["utterances"].append({"feature_path": "uttr-linked.pt"})
    (data / "testdata.json").write_text(json.dumps(testdata))
    result = runner.invoke(app, ["predict", str(data), "--ckpt", str(trained_run / "best.pt"), "--out",
                                 str(tmp_path / "p.csv"), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert (f"warning: {data / 'testdata.json'}: 1 of its {len(testdata['utterances'])} clips is a training clip in "
            "metadata.json too (e.g. 'uttr-linked.pt')") in result.output, result.output


def test_predict_names_the_extra_speaker_of_a_mapping_that_adds_one_to_the_model_s(tiny_synth, trained_run, tmp_path):
    """A mapping.json of the model's speakers plus one named a speaker both have, and said the model's categories
    were speakers the dataset does not have: it is the dataset's extra speaker that the model cannot predict."""
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data, ignore=shutil.ignore_patterns("unseen"))
    mapping = json.loads((data / "mapping.json").read_text())
    mapping["speaker2id"]["zz-newcomer"] = len(mapping["speaker2id"])
    (data / "mapping.json").write_text(json.dumps(mapping))
    result = runner.invoke(app, ["predict", str(data), "--ckpt", str(trained_run / "best.pt"),
                                 "--out", str(tmp_path / "p.csv"), "--device", "cpu", "-q"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data / 'mapping.json'}: "), result.output
    assert "'zz-newcomer'" in lines[0] and "does not have" not in lines[0], lines[0]
    assert not (tmp_path / "p.csv").exists()


def test_synth_cut_short_by_a_file_size_limit_names_the_clip_it_was_writing(tmp_path):
    """torch's zip writer turns a write refused part-way (a full disk, a file size limit) into a RuntimeError: synth's
    feature files let it through as an unexpected error (exit 3) naming no file; now they are written as checkpoints
    are."""
    import resource
    import subprocess
    import sys

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # Python ignores SIGXFSZ: EFBIG

    out = tmp_path / "corpus"
    result = subprocess.run([sys.executable, "-m", "voxaug", "synth", str(out), "--speakers", "2", "--utterances",
                             "2", "--unseen", "1", "--impostors", "1", "-q"], preexec_fn=small_files,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(rf"error: {re.escape(str(out))}/uttr-[0-9a-f]{{24}}\.pt: cannot write: .*\n", result.stderr)
    assert not out.exists()  # the clip's temp file is gone, and the folder synth made for the corpus


@pytest.mark.parametrize("existed", [False, True])
def test_an_interrupted_synth_leaves_the_folder_as_it_was_so_the_same_command_runs_again(tmp_path, monkeypatch,
                                                                                        existed):
    """Ctrl-C or SIGTERM part-way left the clips written so far, and the rerun refused the folder as not empty."""
    import voxaug.synth as synth_module

    config = SynthConfig(speakers=2, utterances=2, unseen=1, impostors=1, enroll_per_unseen=1, test_per_unseen=1,
                         min_seconds=0.5, max_seconds=0.6, seed=5)
    generate(tmp_path / "clean", config, progress=False)
    out = tmp_path / "cut" / "corpus"
    if existed:
        out.mkdir(parents=True)
    real_write = synth_module.write_audio

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_module, "write_audio", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(out, config, progress=False)
    assert out.is_dir() == existed and (not existed or not any(out.iterdir()))
    monkeypatch.setattr(synth_module, "write_audio", real_write)
    generate(out, config, progress=False)
    assert _digest(out) == _digest(tmp_path / "clean")


def test_an_interrupted_synth_removes_only_what_it_wrote_not_files_that_appeared_beside_them(tmp_path, monkeypatch):
    """The clean-up of an interrupted synth emptied the whole folder: a file another writer (a second synth started
    on the same empty folder, the user) put there while it ran was deleted with the partial corpus."""
    import voxaug.synth as synth_module

    config = SynthConfig(speakers=2, utterances=2, unseen=1, impostors=1, enroll_per_unseen=1, test_per_unseen=1,
                         min_seconds=0.5, max_seconds=0.6, seed=5)
    out = tmp_path / "corpus"
    out.mkdir()

    def interrupted(*args, **kwargs):
        (out / "notes.txt").write_text("not synth's")  # appears while the corpus is written
        (out / "other").mkdir(exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_module, "write_audio", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(out, config, progress=False)
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "other"]


def test_progress_into_a_log_file_or_a_pipe_is_whole_lines_not_carriage_returns(tmp_path):
    """`voxaug synth OUT 2> log` (a job's output, a pipe) kept tqdm's every redraw as one long line of ``\\r``s: a
    stderr that is no terminal gets the bar's last state as a plain line instead."""
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--speakers", "2", "--utterances", "2", "--unseen",
                                 "0", "--impostors", "0"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and f"synth {tmp_path / 'out'}: 4/4 utt\n" in result.stderr, repr(result.stderr)
    assert result.stdout.startswith("wrote 2 training and 2 test utterances")


def _run_with_closed(descriptor: int, *args: str):
    """``python -m voxaug ARGS`` started with ``descriptor`` closed, as ``>&-`` (1) or ``2>&-`` (2) start it."""
    import os
    import subprocess
    import sys

    kept = {1: {"stderr": subprocess.PIPE}, 2: {"stdout": subprocess.PIPE}}[descriptor]
    return subprocess.run([sys.executable, "-m", "voxaug", *args], preexec_fn=lambda: os.close(descriptor),
                          text=True, timeout=300, **kept)


def test_a_closed_stdout_is_refused_before_any_work_not_a_silent_success(tmp_path):
    """`voxaug identify … >&-` answered nothing and exited 0: Python drops every write to a closed stdout."""
    closed = _run_with_closed(1, "synth", str(tmp_path / "out"), "--speakers", "2", "--utterances", "2", "-q")
    assert closed.returncode == 2 and closed.stderr.startswith("error: standard output is closed"), closed.stderr
    assert len(closed.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_closed_stderr_does_not_stop_a_command_that_draws_progress(tmp_path):
    """`voxaug synth OUT 2>&-` failed as an unexpected error (status 3) and removed the corpus: the progress bar wrote
    to a stderr that Python had set to None."""
    closed = _run_with_closed(2, "synth", str(tmp_path / "out"), "--speakers", "2", "--utterances", "2", "--unseen",
                              "0", "--impostors", "0")
    assert closed.returncode == 0 and closed.stdout.startswith("wrote 2 training"), closed.stdout
    assert len(list((tmp_path / "out").glob("uttr-*.pt"))) == 4


def test_with_stderr_closed_a_c_library_s_warning_does_not_land_in_an_output_file(tmp_path):
    """`voxaug synth OUT 2>&-`: the first file the command opened took descriptor 2, so what a C library prints to
    stderr (ONNX Runtime, gloo, FAISS: here a write to descriptor 2 after each clip's torch.save) went into the clip
    file being written."""
    import os
    import subprocess
    import sys

    warns_on_stderr = ("import os, sys, torch\n"
                       "saved = torch.save\n"
                       "def save_and_warn(obj, handle):\n"
                       "    saved(obj, handle)\n"
                       "    handle.flush()\n"
                       "    os.write(2, b'[W] a C library warning\\n')\n"
                       "torch.save = save_and_warn\n"
                       "sys.argv = ['voxaug', *sys.argv[1:]]\n"
                       "from voxaug.__main__ import main\n"
                       "main()\n")
    out = tmp_path / "out"
    closed = subprocess.run([sys.executable, "-c", warns_on_stderr, "synth", str(out), "--speakers", "2",
                             "--utterances", "2", "--unseen", "0", "--impostors", "0", "-q"],
                            preexec_fn=lambda: os.close(2), stdout=subprocess.PIPE, text=True, timeout=300)
    assert closed.returncode == 0 and closed.stdout.startswith("wrote 2 training"), closed.stdout
    written = sorted(path for path in out.rglob("*") if path.is_file())
    assert len(written) > 4 and not [path for path in written if b"C library warning" in path.read_bytes()]
