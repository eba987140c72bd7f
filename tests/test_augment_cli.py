"""`voxaug train --augment …` and the strength options: early clean refusals, saved strengths, the default."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from voxaug.augment import AUGMENTATIONS
from voxaug.augment.pipeline import DEFAULT_AUGMENT
from voxaug.cli.main import app

runner = CliRunner()
TINY = ["--steps", "4", "--eval-every", "4", "--batch", "8", "--segment", "64", "--d-model", "32", "--layers", "1",
        "--heads", "2", "--embedding-dim", "32", "--device", "cpu", "--quiet"]


def output_of(result) -> str:
    return result.output + (getattr(result, "stderr", "") or "")


@pytest.mark.parametrize(
    "arguments, needles",
    [
        (["--augment", "specaug,bogus"], ["bogus", *sorted(AUGMENTATIONS), "none"]),
        (["--augment", "mixup", "--mixup-alpha", "-1"], ["-1", "mixup-alpha"]),
        (["--specaug-freq", "-3"], ["-3", "specaug-freq"]),
        (["--augment", "crop", "--crop-min", "200", "--crop-max", "100"], ["200", "100"]),
        (["--input-norm", "cepstral"], ["--input-norm", "cepstral", "mean", "none"]),
        (["--augment", "specaug", "--wave-snr-p", "0.5", "--rir-p", "0.2"],
         ["--rir-p, --wave-snr-p: options of the 'wave' augmentation"]),
        (["--augment", "specaug", "--noise-p", "0.3"], ["--noise-p: options of the 'noise' or 'wave' augmentation"]),
        (["--augment", "specaug", "--mixup-alpha", "0.5"], ["--mixup-alpha: sets the 'mixup' augmentation", "(specaug)"]),
        (["--augment", "none", "--specaug-freq", "10"], ["--specaug-freq: sets the 'specaug' augmentation", "(none)"]),
        (["--augment", "specaug", "--specaug-time", "inf"], ["--specaug-time", "inf"]),
        (["--augment", "specaug", "--specaug-time", "nan"], ["--specaug-time", "nan"]),
    ],
)
def test_bad_augmentation_is_refused_before_reading_data(tmp_path, arguments, needles):
    missing = tmp_path / "no-such-data"
    result = runner.invoke(app, ["train", str(missing), "--out", str(tmp_path / "run"), *arguments])
    text = output_of(result)
    assert result.exit_code == 2, text
    assert "error:" in text and "Traceback" not in text
    assert "no-such-data" not in text, "the augmentation must be refused before the data path is looked at"
    for needle in needles:
        assert needle in text
    assert not (tmp_path / "run").exists()


def test_help_states_the_default_and_the_options():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = " ".join(output_of(result).split())
    assert DEFAULT_AUGMENT in text
    for option in ("--augment", "--specaug-freq", "--specaug-time", "--mixup-alpha", "--crop-min", "--crop-max"):
        assert option in text


def test_strengths_are_saved_in_config_json(tiny_synth, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny_synth), "--out", str(run), *TINY, "--augment", "mixup,crop,specaug",
                                 "--specaug-freq", "5", "--specaug-time", "12", "--mixup-alpha", "0.25",
                                 "--crop-min", "32", "--crop-max", "48"])
    assert result.exit_code == 0, output_of(result)
    assert "augment: crop,specaug,mixup" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["augment"] == {"names": ["mixup", "crop", "specaug"], "specaug": {"freq_width": 5, "time_width": 12},
                                 "mixup": {"alpha": 0.25}, "crop": {"min_frames": 32, "max_frames": 48}}
    assert "RandomCrop(min_frames=32, max_frames=48)" in config["run"]["augmentations"]


def test_no_augment_option_means_the_default_and_none_turns_it_off(tiny_synth, tmp_path):
    default = runner.invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "d"), *TINY])
    assert default.exit_code == 0, output_of(default)
    assert json.loads((tmp_path / "d" / "config.json").read_text())["augment"]["names"] == DEFAULT_AUGMENT.split(",")
    assert f"(predict); embed with {tmp_path / 'd' / 'last.pt'}" in default.output  # the summary names both models' uses
    off = runner.invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "n"), *TINY, "--augment", "none"])
    assert off.exit_code == 0 and "augment: none" in off.output
    assert json.loads((tmp_path / "n" / "config.json").read_text())["augment"]["names"] == []


def _fake_run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_overlays_runs_with_labels_and_states_the_gap(tmp_path):
    rows = [{"step": s, "loss": 1.0, "train_acc": t, "val_acc": v, "lr": 0.001} for s, t, v in ((10, 0.5, 0.4), (20, 0.99, 0.7))]
    first = _fake_run(tmp_path / "a" / "run", rows)
    second = _fake_run(tmp_path / "b" / "run", [{**r, "train_acc": r["val_acc"] + 0.05} for r in rows])
    out = tmp_path / "compare.png"
    result = runner.invoke(app, ["plot", str(first), str(second), "--labels", "none,specaug+mixup", "--out", str(out)])
    assert result.exit_code == 0, output_of(result)
    assert out.stat().st_size > 0 and "gap +0.290" in result.output and "gap +0.050" in result.output
    wrong = runner.invoke(app, ["plot", str(first), str(second), "--labels", "only-one", "--out", str(out)])
    assert wrong.exit_code == 2 and "2 runs" in output_of(wrong)
    vector = runner.invoke(app, ["plot", str(first), "--out", str(tmp_path / "compare.SVG")])
    assert vector.exit_code == 0 and (tmp_path / "compare.SVG").read_text().lstrip().startswith("<?xml")
    for name in ("compare.txt", "compare"):
        refused = runner.invoke(app, ["plot", str(first), "--out", str(tmp_path / name)])
        assert refused.exit_code == 2 and f"{tmp_path / name}: --out names the figure's format" in output_of(refused)
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("row", [{"step": 1}, [1, 2], {"step": 1, "train_acc": "0.5"}, {"step": 1, "train_acc": 0.5, "val_acc": True}])
def test_plot_refuses_a_metrics_line_that_is_json_but_not_a_metrics_row(tmp_path, row):
    run = _fake_run(tmp_path / "run", [{"step": 0, "train_acc": 0.1, "val_acc": None}, row])
    refused = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "curves.png")])
    assert refused.exit_code == 2 and f"{run / 'metrics.jsonl'}: line 2: not a metrics row" in output_of(refused)


def test_plot_leaves_out_a_last_line_cut_short_by_a_kill_and_refuses_one_elsewhere(tmp_path):
    rows = [{"step": s, "train_acc": 0.5, "val_acc": 0.4} for s in (10, 20)]
    run = _fake_run(tmp_path / "run", rows)
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 30, "train_a')  # a training killed while appending its next row
    done = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "curves.png")])
    assert done.exit_code == 0 and (tmp_path / "curves.png").stat().st_size > 0, output_of(done)
    assert done.stderr == f"warning: {run / 'metrics.jsonl'}: line 3 is cut short (a killed run); left out\n"
    with open(run / "metrics.jsonl", "a") as log:
        log.write("\n" + json.dumps(rows[0]) + "\n")  # the cut line is now in the middle: damage, not a kill
    refused = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "curves.png")])
    assert refused.exit_code == 2 and "line 3 is not JSON" in output_of(refused)


@pytest.mark.parametrize("text", ["", "\n\n", '{"step": 30, "train_a'])
def test_plot_refuses_a_run_whose_log_holds_no_rows(tmp_path, text):
    """An empty log, or one whose only line a kill cut short, has nothing to draw: refused naming it, with no figure
    written (it wrote an empty one, or one without that run, and exited 0)."""
    first = _fake_run(tmp_path / "first", [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(text)
    for runs in ([empty], [first, empty]):
        refused = runner.invoke(app, ["plot", *map(str, runs), "--out", str(tmp_path / "curves.png")])
        assert refused.exit_code == 2 and f"{empty / 'metrics.jsonl'}: holds no metrics rows" in output_of(refused)
        assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("row", [{"step": 1, "train_acc": float("nan"), "val_acc": 0.4},
                                 {"step": 1, "train_acc": 0.5, "val_acc": float("inf")},
                                 {"step": float("-inf"), "train_acc": 0.5, "val_acc": None}])
def test_plot_refuses_nan_or_infinity_in_a_metrics_row(tmp_path, row):
    """JSON's NaN and Infinity parse as floats, but no training logs them: refused as damage (they were drawn as
    nothing and printed as 'train nan ... gap +nan')."""
    run = _fake_run(tmp_path / "run", [{"step": 0, "train_acc": 0.1, "val_acc": None}, row])
    refused = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "curves.png")])
    assert refused.exit_code == 2 and f"{run / 'metrics.jsonl'}: line 2: not a metrics row" in output_of(refused)
    assert not (tmp_path / "curves.png").exists()


def test_plot_draws_a_run_whose_folder_name_is_not_utf8(tmp_path):
    """A file name's undecodable bytes (os.fsdecode's surrogates) reached the legend, which matplotlib cannot draw:
    plot (and train, at its end, for curves.png) failed with a multi-line 'unexpected TypeError'."""
    import os

    from voxaug.plot import plot_runs

    run = _fake_run(tmp_path / os.fsdecode(b"run-\xff"), [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}])
    for labels in (None, [os.fsdecode(b"caf\xe9")]):
        (tmp_path / "curves.png").unlink(missing_ok=True)
        assert plot_runs([run], tmp_path / "curves.png", labels)[0][0]["step"] == 10
        assert (tmp_path / "curves.png").stat().st_size > 0


def test_version_prints_the_installed_release():
    """`voxaug --version` answers what a bug report and a pin need: the release the package metadata records."""
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"voxaug {version('voxaug')}\n", result.output


@pytest.mark.parametrize("line", ['{"step": 1, "train_acc": 1' + "0" * 400 + ', "val_acc": null}',
                                  '{"step": 1' + "1" * 5000 + ', "train_acc": 0.5, "val_acc": null}',
                                  "[" * 100_000 + "]" * 100_000],
                         ids=["too-large-for-a-float", "over-4300-digits", "nested-100000-deep"])
def test_plot_refuses_a_metrics_line_of_huge_numbers_or_deep_nesting_in_one_line(tmp_path, line):
    """JSON integers have no limit and arrays no depth: such a line ended plot in `unexpected OverflowError`,
    `ValueError` or `RecursionError` (status 3) instead of an error naming the log and the line."""
    run = _fake_run(tmp_path / "run", [{"step": 0, "train_acc": 0.1, "val_acc": None}])
    with open(run / "metrics.jsonl", "a") as log:
        log.write(line + "\n")
    refused = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "curves.png")])
    assert refused.exit_code == 2 and f"{run / 'metrics.jsonl'}: line 2" in output_of(refused), output_of(refused)
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("arguments, option", [
    (["--augment", "noise", "--noise-dir", ""], "--noise-dir"),
    (["--augment", "wave", "--noise-dir", ""], "--noise-dir"),
    (["--augment", "wave", "--rir-dir", ""], "--rir-dir"),
])
def test_an_empty_folder_option_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch, arguments, option):
    """``--noise-dir ""`` (an unset shell variable) was the working directory, scanned as the noise folder."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "no-such-data", "--out", "run", *arguments])
    text = output_of(result)
    assert result.exit_code == 2, text
    assert text.startswith("error: ") and f"'{option}': an empty folder name" in text, text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("names, key", [("noise", "noise_dir"), ("wave", "noise_dir"), ("wave", "rir_dir")])
def test_an_empty_folder_in_a_config_file_is_refused_naming_the_file(tmp_path, monkeypatch, names, key):
    """``noise_dir = ""`` in a TOML file read the working directory as the noise (or RIR) folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.pt").write_bytes(b"")  # what the working directory may hold: a checkpoint, a feature file
    toml = tmp_path / "empty.toml"
    toml.write_text(f'[augment]\nnames = ["{names}"]\n[augment.{names}]\n{key} = ""\n')
    result = runner.invoke(app, ["train", "no-such-data", "--out", "run", "--config", str(toml)])
    text = output_of(result)
    assert result.exit_code == 2, text
    assert text.startswith(f"error: {toml}: ") and f"{names} {key}" in text and "an empty folder name" in text, text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("toml, extra, named", [
    ('[augment]\nnames = ["specaug"]\n[augment.mixup]\nalpha = 0.5\n', [], "(specaug)"),
    ("[augment.mixup]\nalpha = 0.5\n", [], f"({DEFAULT_AUGMENT.replace(',', ', ')})"),
    ('[augment]\nnames = ["mixup"]\n[augment.mixup]\nalpha = 0.5\n', ["--augment", "specaug"], "(specaug)"),
    ('[augment]\nnames = ["specaug"]\n[augment.wave]\nrir_p = 0.2\n', [], "(specaug)"),
], ids=["file-names", "default-names", "augment-option", "wave"])
def test_a_config_table_of_an_augmentation_not_named_is_refused_naming_the_file_and_table(tmp_path, toml, extra, named):
    """``[augment.mixup]`` in a TOML file whose run does not name mixup was accepted and did nothing, while the
    command line refuses ``--mixup-alpha`` alike (``--augment specaug``)."""
    config = tmp_path / "aug.toml"
    config.write_text(toml)
    table = toml.split("[augment.")[1].split("]")[0]
    result = runner.invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"),
                                 "--config", str(config), *extra])
    text = output_of(result)
    assert result.exit_code == 2, text
    assert text.startswith(f"error: {config}: [augment.{table}]: sets the '{table}' augmentation, which is not among "
                           f"those named {named}"), text
    assert not (tmp_path / "run").exists()


def test_a_config_table_of_a_named_augmentation_is_taken(tiny_synth, tmp_path):
    config = tmp_path / "aug.toml"
    config.write_text('[augment]\nnames = ["mixup"]\n[augment.mixup]\nalpha = 0.5\n')
    result = runner.invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "run"), "--config", str(config),
                                 *TINY])
    assert result.exit_code == 0, output_of(result)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["augment"]["mixup"] == {"alpha": 0.5}


def refused_in_an_empty_folder(tmp_path, monkeypatch, arguments: list[str], problem: str) -> None:
    """The command, run in the empty ``tmp_path``, exits 2 with one error holding ``problem`` and writes nothing."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, arguments)
    text = output_of(result)
    assert result.exit_code == 2, text
    assert text.startswith("error: ") and problem in text, text
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize("arguments, option", [
    (["enroll", "--index", "x.faiss", "--speakers-dir", ""], "--speakers-dir"),
    (["evaluate", "data", "--ckpt", "c.pt", "--out", "report", "--enroll", "", "--test", "t"], "--enroll"),
    (["evaluate", "data", "--ckpt", "c.pt", "--out", "report", "--enroll", "e", "--test", ""], "--test"),
    (["evaluate", "data", "--ckpt", "c.pt", "--out", "report", "--impostors", ""], "--impostors"),
    (["embed", "data", "--ckpt", "c.pt", "--out", "emb", "--cache-dir", ""], "--cache-dir"),
])
def test_every_folder_option_refuses_an_empty_name_as_train_does(tmp_path, monkeypatch, arguments, option):
    """``--speakers-dir ""`` read the working directory as the speakers' folder, and ``--cache-dir ""`` would have
    packed features into it: an empty name is refused before any work, as --noise-dir's is."""
    refused_in_an_empty_folder(tmp_path, monkeypatch, arguments, f"'{option}': an empty folder name")


@pytest.mark.parametrize("given", ["the run's metrics.jsonl", "a run whose metrics.jsonl is a folder"])
def test_plot_says_what_is_there_when_a_run_or_its_log_is_of_the_wrong_kind(tmp_path, given):
    """`plot RUN/metrics.jsonl` said "RUN/metrics.jsonl/metrics.jsonl: metrics log not found (is this a voxaug run
    folder?)", a path nobody gave, of a log that is there; a metrics.jsonl that is a folder was called not found."""
    run = _fake_run(tmp_path / "run", [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}])
    if given == "the run's metrics.jsonl":
        argument, expected = run / "metrics.jsonl", "not a folder; expected a run folder (the one holding metrics.jsonl)"
    else:
        (run / "metrics.jsonl").unlink()
        (run / "metrics.jsonl").mkdir()
        argument, expected = run, "expected a metrics log file, found a folder"
    refused = runner.invoke(app, ["plot", str(argument), "--out", str(tmp_path / "curves.png")])
    named = argument if argument.name == "metrics.jsonl" else argument / "metrics.jsonl"
    assert (refused.exit_code, refused.output) == (2, f"error: {named}: {expected}\n")
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("given, shown", [("1e308", "1e+308"), ("3e9", "3000000000.0")])
def test_a_specaug_time_past_the_range_is_refused_as_typed_not_in_hundreds_of_digits(tmp_path, given, shown):
    """`--specaug-time 1e308` was made a whole number of frames before it was checked: its refusal printed all 309
    digits of int(1e308), over four lines."""
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--augment", "specaug",
                                 "--specaug-time", given])
    assert (result.exit_code, result.output) == (2, "error: --specaug-time (specaug time_width) must be a fraction in "
                                                    "[0, 1) of the length or a whole number of frames up to 2147483647, "
                                                    f"got {shown}\n")


@pytest.mark.parametrize("runs, labels, error", [
    (1, "a,b", "error: --labels: got 2 labels for 1 run"),
    (2, "a,", "error: --labels 'a,': name 2 is empty; give one name per run"),
    (2, " ,b", "error: --labels ' ,b': name 1 is empty; give one name per run"),
])
def test_plot_labels_are_counted_in_words_and_none_may_be_empty(tmp_path, runs, labels, error):
    """'got 2 labels for 1 runs' miscounted its noun, and --labels 'a,' drew a curve the legend did not name."""
    folders = [str(_fake_run(tmp_path / f"run{n}", [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}]))
               for n in range(runs)]
    result = runner.invoke(app, ["plot", *folders, "--labels", labels, "--out", str(tmp_path / "c.png")])
    assert (result.exit_code, result.output) == (2, error + "\n")
    assert not (tmp_path / "c.png").exists()


def test_plot_runs_counts_labels_and_runs_in_words_as_the_cli_does(tmp_path):
    """The Python API's plot_runs said 'got 2 labels for 1 runs' where `voxaug plot` says '1 run'."""
    from voxaug.errors import VoxaugError
    from voxaug.plot import plot_runs

    run = _fake_run(tmp_path / "run", [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}])
    with pytest.raises(VoxaugError) as refused:
        plot_runs([run], tmp_path / "c.png", ["a", "b"])
    assert str(refused.value) == "--labels: got 2 labels for 1 run"
    assert not (tmp_path / "c.png").exists()


def _legend_texts(monkeypatch) -> list[list[str]]:
    """The legend entries of each axis of every figure plot_runs saves."""
    from matplotlib.figure import Figure

    seen, save = [], Figure.savefig

    def savefig(figure, *args, **kwargs):
        seen.extend([text.get_text() for text in axis.get_legend().get_texts()] if axis.get_legend() else []
                    for axis in figure.axes)
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


@pytest.mark.parametrize("labels", [["_base", "aug"], None])
def test_plot_names_a_run_whose_label_starts_with_an_underscore_in_the_legend(tmp_path, monkeypatch, labels):
    """matplotlib leaves out of the legend any curve whose label starts with '_': `--labels _base,aug` (or a run
    folder named _base) drew that run's curves unnamed, as the refused empty label did."""
    from voxaug.plot import plot_runs

    rows = [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}]
    runs = [_fake_run(tmp_path / name, rows) for name in ("_base", "aug")]
    seen = _legend_texts(monkeypatch)
    plot_runs(runs, tmp_path / "c.png", labels)
    accuracy, gap = seen
    assert len(accuracy) == 4 and len(gap) == 2
    assert any("_base train" in text for text in accuracy) and any("_base (" in text for text in gap)


def test_plot_and_training_draw_a_dollar_sign_in_a_label_or_run_folder_as_itself(tmp_path):
    """A label with two '$' was parsed as TeX math: `--labels 'a$\\foo$,b'` and `train --out 'r$\\foo$'` (its
    curves.png, after last.pt was written) failed with 'unexpected ParseFatalException', exit 3."""
    rows = [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}]
    run = _fake_run(tmp_path / "r$\\foo$", rows)
    other = _fake_run(tmp_path / "b", rows)
    for labels in ([], ["--labels", "a$\\foo$,cost $5$"]):
        result = runner.invoke(app, ["plot", str(run), str(other), *labels, "--out", str(tmp_path / "c.png")])
        assert result.exit_code == 0, output_of(result)
        assert (tmp_path / "c.png").stat().st_size > 0


def test_a_mixup_alpha_whose_beta_draws_are_nan_is_refused_before_reading_data(tmp_path):
    """`--mixup-alpha 1e-320` passed the (0, 10] check; every λ was then NaN, so was every loss, and the run stopped
    after max_bad_steps steps saying 'lower --lr'."""
    result = runner.invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"),
                                 "--augment", "mixup", "--mixup-alpha", "1e-320"])
    assert result.exit_code == 2, output_of(result)
    assert result.output == "error: --mixup-alpha (mixup alpha) must be a number in [1e-300, 10], got 1e-320\n"


def test_an_empty_preset_is_refused_before_reading_data(tmp_path):
    """`train --preset ""` (an unset ``$PRESET``) trained the cpu preset, where every other empty name is refused."""
    result = runner.invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"),
                                 "--preset", ""])
    assert result.exit_code == 2, result.output
    assert result.output == "error: --preset '' is not known; accepted: cpu, strong, boss, baseline\n"


@pytest.mark.parametrize("arguments, option", [
    (["train", "data", "--out", " "], "--out"),
    (["train", "data", "--out", "run", "--noise-dir", "  "], "--noise-dir"),
    (["train", "data", "--out", "run", "--rir-dir", "\t"], "--rir-dir"),
    (["predict", "data", "--ckpt", "c.pt", "--out", "p.csv", "--cache-dir", " "], "--cache-dir"),
    (["enroll", "--index", "x.faiss", "--speakers-dir", " "], "--speakers-dir"),
    (["evaluate", "data", "--ckpt", "c.pt", "--out", " "], "--out"),
    (["evaluate", "data", "--ckpt", "c.pt", "--out", "report", "--impostors", " "], "--impostors"),
    (["synth", " ", "--speakers", "2", "--utterances", "2"], "out"),
])
def test_every_folder_option_refuses_a_name_of_only_whitespace(tmp_path, monkeypatch, arguments, option):
    """``--cache-dir " "`` (``"$CACHE "`` with the variable unset) made a folder named by a space, and ``train --out " "``
    a run folder whose messages read ``-> /best.pt``: a name no one means, which every message prints as nothing."""
    refused_in_an_empty_folder(tmp_path, monkeypatch, arguments, f"'{option}': a folder name of only whitespace")


@pytest.mark.parametrize("names, key", [("noise", "noise_dir"), ("wave", "rir_dir")])
def test_a_folder_of_only_whitespace_in_a_config_file_is_refused_as_the_option_is(tmp_path, monkeypatch, names, key):
    """``noise_dir = " "`` in a TOML file was made absolute against the file's folder and looked for there."""
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "blank.toml"
    toml.write_text(f'[augment]\nnames = ["{names}"]\n[augment.{names}]\n{key} = " "\n')
    result = runner.invoke(app, ["train", "no-such-data", "--out", "run", "--config", str(toml)])
    text = output_of(result)
    assert result.exit_code == 2, text
    assert text.startswith(f"error: {toml}: ") and f"{names} {key}" in text \
        and "' ' is a folder name of only whitespace" in text, text
    assert not (tmp_path / "run").exists()


def test_with_stderr_closed_a_warning_is_not_written_among_the_output(tmp_path):
    """`voxaug plot ... 2>&-`: Python's sys.stderr is None then, and print(..., file=None) writes to stdout, so the
    cut-short warning landed among what the command prints for scripts."""
    import subprocess
    import sys

    run = _fake_run(tmp_path / "run", [{"step": s, "train_acc": 0.5, "val_acc": 0.4} for s in (10, 20)])
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 30, "train_a')
    done = subprocess.run([sys.executable, "-c", "import os, sys; os.close(2); sys.stderr = None; "
                           "from voxaug.__main__ import main; sys.argv[0] = 'voxaug'; main()",
                           "plot", str(run), "--out", str(tmp_path / "curves.png")],
                          stdout=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "curves.png").stat().st_size > 0
    assert "warning" not in done.stdout and "cut short" not in done.stdout, done.stdout


def test_a_cut_short_log_line_read_without_stderr_is_not_written_to_stdout(tmp_path, capsys, monkeypatch):
    """``read_metrics`` in a program without stderr (started with ``2>&-``, not through ``voxaug``): its
    ``print(..., file=sys.stderr)`` wrote the warning to stdout, among the program's output."""
    import sys

    from voxaug.plot import read_metrics

    run = _fake_run(tmp_path / "run", [{"step": 10, "train_acc": 0.5, "val_acc": 0.4}])
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 20, "train_a')
    monkeypatch.setattr(sys, "stderr", None)
    assert [row["step"] for row in read_metrics(run)] == [10]
    assert capsys.readouterr().out == ""


def test_plots_leave_the_callers_matplotlib_backend_and_open_figures_alone(tmp_path):
    """A notebook's or a GUI's matplotlib is the caller's: importing the trainer (voxaug.plot) or `evaluate`'s map
    switched the backend to Agg, which closed every figure the caller had open and stopped ``plt.show`` showing any."""
    run = _fake_run(tmp_path / "run", [{"step": 10, "loss": 1.0, "train_acc": 0.5, "val_acc": 0.4, "lr": 0.001}])
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import numpy as np
plt.figure()
from voxaug.plot import plot_runs
from voxaug.embeddings.evaluation import LabelledEmbeddings, embedding_map
plot_runs([{str(run)!r}], {str(tmp_path / "curves.png")!r})
points = LabelledEmbeddings(np.eye(4, dtype=np.float32), np.array(["a", "a", "b", "b"]))
embedding_map({{"train": points}}, {str(tmp_path / "map.png")!r}, "pca", 0)
print(matplotlib.get_backend(), plt.get_fignums())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "[1]"]
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "map.png").stat().st_size > 0
