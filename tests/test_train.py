"""The trainer: learns, logs what it promises, refuses to clobber a run, and resumes exactly."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import Result

import voxaug.inference as inference
import voxaug.train as training
from conftest import straight_and_resumed, tiny_config
from voxaug.config import resolve_config
from voxaug.checkpoint import load_checkpoint, save_checkpoint
from voxaug.data.sources import ClipFolderSource
from voxaug.errors import VoxaugError
from voxaug.features import FrontendConfig
from voxaug.train import Trainer, load_optimizer_state, lr_at


def test_short_run_beats_chance_and_writes_the_run_folder(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [75, 150]
    assert set(rows[0]) >= {"step", "loss", "train_acc", "val_acc", "lr", "elapsed_s"}
    chance = 1 / 5
    assert rows[-1]["val_acc"] >= 3 * chance
    assert rows[-1]["train_acc"] >= 3 * chance
    for name in ("config.json", "best.pt", "last.pt", "curves.png"):
        assert (trained_run / name).stat().st_size > 0
    config = json.loads((trained_run / "config.json").read_text())
    assert config["steps"] == 150 and config["run"]["speakers"] == 5
    best = load_checkpoint(trained_run / "best.pt")
    assert best["frontend"]["n_mels"] == 40 and len(best["speakers"]) == 5
    assert "optimizer" not in best and "optimizer" in load_checkpoint(trained_run / "last.pt")


def test_refuses_to_overwrite_an_existing_run(trained_run, tiny_synth):
    before = (trained_run / "last.pt").read_bytes()
    with pytest.raises(VoxaugError, match="already holds a run"):
        Trainer(tiny_config(), tiny_synth, trained_run, progress=False).fit()
    assert (trained_run / "last.pt").read_bytes() == before


def test_resume_reaches_the_same_weights(tiny_synth, tmp_path, monkeypatch):
    def config():
        return tiny_config(train={"steps": 40, "eval_every": 20})

    straight, resumed = straight_and_resumed(config, tiny_synth, tmp_path, monkeypatch, stop_at=27)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert straight["step"] == resumed["step"] == 40
    rows = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [20, 40]


def test_run_folder_and_setting_refusals_come_before_any_data_is_read(trained_run, tiny_synth, tmp_path, monkeypatch):
    """Each depends only on the run folder, the options and the dataset's layout: on a real corpus reading the
    data first would cost minutes to hours before the refusal."""
    monkeypatch.setattr(training, "open_dataset_store", lambda *a, **k: pytest.fail("data read before refusing"))
    noise = tmp_path / "noise80"
    noise.mkdir()
    torch.save(torch.randn(200, 80), noise / "n.pt")
    cases = [
        (tiny_config(), trained_run, False, "already holds a run"),
        (tiny_config(), tmp_path / "missing", True, "nothing to resume"),
        (resolve_config("cpu", toml_path=None, overrides={"device": "cpu"}, frontend_overrides={"sample_rate": 8000}),
         tmp_path / "new", False, r"front-end settings \(f_max, sample_rate\) do not change"),
        (tiny_config(augment={"names": ["noise"], "noise": {"noise_dir": str(noise)}}), tmp_path / "new", False,
         "noise features have 80 mel bands, the training features 40"),
    ]
    for config, run, resume, refusal in cases:
        with pytest.raises(VoxaugError, match=refusal):
            Trainer(config, tiny_synth, run, progress=False, resume=resume)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "new").exists()


def test_front_end_settings_on_a_folder_of_feature_clips_are_refused_as_on_the_hw4_layout(tiny_synth, tmp_path):
    """A `<speaker>/*.pt` folder is features too: a --sample-rate would be recorded as the model's without
    changing what it trained on, and identify would then featurise audio unlike the training data."""
    features = tmp_path / "enroll"
    shutil.copytree(tiny_synth / "unseen" / "enroll", features, ignore=shutil.ignore_patterns("*.wav"))
    config = resolve_config("cpu", overrides={"device": "cpu"}, frontend_overrides={"sample_rate": 8000})
    with pytest.raises(VoxaugError, match=r"enroll: holds log-mel features, which front-end settings"):
        Trainer(config, features, tmp_path / "run", progress=False, resume=False)
    twins = ClipFolderSource(tiny_synth / "unseen" / "enroll", FrontendConfig(sample_rate=8000, f_max=3800.0))
    assert {u.path.suffix for u in twins.utterances} == {".wav"}  # with audio twins, the audio is what it trains on
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_synth / "unseen" / "enroll", mixed)
    next(mixed.rglob("*.wav")).unlink()  # one clip left as features alone: it would train at 16 kHz among 8 kHz
    with pytest.raises(VoxaugError, match=r"mixed: holds log-mel features, which front-end settings"):
        Trainer(config, mixed, tmp_path / "run", progress=False, resume=False)


def test_a_run_resumed_from_its_checkpoint_alone_keeps_the_front_end_it_trained_with(tiny_synth, tmp_path):
    """Only last.pt was copied (no config.json): the settings come from the checkpoint, and another front end
    is refused rather than featurising the clips anew for weights trained on other features."""
    audio = tmp_path / "audio"
    for speaker in sorted((tiny_synth / "unseen" / "enroll").iterdir())[:3]:
        (audio / speaker.name).mkdir(parents=True)
        for wav in sorted(speaker.glob("*.wav")) + sorted((tiny_synth / "unseen" / "test" / speaker.name).glob("*.wav")):
            (audio / speaker.name / f"{wav.parent.parent.name}-{wav.name}").write_bytes(wav.read_bytes())
    config = tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1, "val_fraction": 0.0})
    config.frontend = {"sample_rate": 8000, "f_max": 4000.0}
    Trainer(config, audio, tmp_path / "run8k", progress=False, workers=0).fit()
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "last.pt").write_bytes((tmp_path / "run8k" / "last.pt").read_bytes())
    saved = Trainer.config_from_run(moved, steps=6)
    assert saved.frontend == {"sample_rate": 8000, "f_max": 4000.0}
    Trainer(saved, audio, moved, progress=False, workers=0, resume=True).fit()
    assert load_checkpoint(moved / "last.pt")["frontend"]["sample_rate"] == 8000
    other = Trainer.config_from_run(moved, steps=8)
    other.frontend = {}
    with pytest.raises(VoxaugError, match=r"last\.pt: cannot resume with a different front end"):
        Trainer(other, audio, moved, progress=False, workers=0, resume=True).fit()


def test_a_second_training_into_a_run_folder_being_written_is_refused_and_changes_nothing(tiny_synth, tmp_path):
    """Before the first evaluation there is no last.pt to refuse on: the run folder's lock is what stops a second
    training from deleting the first one's metrics and interleaving checkpoints."""
    from voxaug.safeio import exclusive_lock

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "config.json").write_text("{}")
    with exclusive_lock(run / training.RUN_LOCK, 0.0, lambda: AssertionError("lock taken")):
        with pytest.raises(VoxaugError, match=r"run: another training is writing this run folder"):
            Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1}), tiny_synth, run, progress=False).fit()
        assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n' and (run / "config.json").read_text() == "{}"
    Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1}), tiny_synth, run, progress=False).fit()
    assert (run / "last.pt").exists() and not (run / training.RUN_LOCK).exists(), "released when training ends"


def test_resume_without_last_checkpoint_is_refused(tiny_synth, tmp_path):
    with pytest.raises(VoxaugError, match="nothing to resume"):
        Trainer(tiny_config(), tiny_synth, tmp_path / "empty", progress=False).fit(resume=True)


def test_schedule_warms_up_then_decays():
    config = tiny_config(train={"steps": 100, "warmup": 10, "lr": 1.0})
    rates = [lr_at(step, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] < 0.01


def test_non_finite_loss_stops_with_a_clear_message(tiny_synth, tmp_path):
    trainer = Trainer(tiny_config(train={"steps": 30, "max_bad_steps": 3}), tiny_synth, tmp_path / "nan", progress=False)
    trainer.model.input_proj.weight.data.fill_(float("nan"))
    with pytest.raises(VoxaugError, match="NaN/Inf for 3 steps in a row"):
        trainer.fit()


def test_no_amp_is_recorded_and_changes_nothing_on_the_cpu(tiny_synth, tmp_path):
    """--no-amp only matters on CUDA: the CPU trains in float32 either way, to the same weights."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    common = ["train", str(tiny_synth), "--steps", "4", "--eval-every", "4", "--batch", "8", "--segment", "64",
              "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32", "--device", "cpu",
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    for run, flag in (("amp", "--amp"), ("fp32", "--no-amp")):
        result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / run), flag])
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["amp"] is False
    assert json.loads((tmp_path / "amp" / "config.json").read_text())["amp"] is True
    with_amp, without = (load_checkpoint(tmp_path / run / "last.pt") for run in ("amp", "fp32"))
    assert all(torch.equal(with_amp["model"][name], without["model"][name]) for name in with_amp["model"])
    assert with_amp["scaler"] == {} and without["scaler"] == {}


def test_a_run_saved_on_another_kind_of_device_resumes(tiny_synth, tmp_path):
    """A GPU run's last.pt holds a CUDA generator state (16 bytes) and an enabled GradScaler's state; resumed
    on the CPU, the augmentation stream starts afresh and the scaler is left off, instead of failing."""
    from voxaug.safeio import atomic_torch_save

    Trainer(tiny_config(train={"steps": 10, "eval_every": 10}), tiny_synth, tmp_path / "run", progress=False).fit()
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    last["augment_generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA Philox state
    last["scaler"] = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                      "_growth_tracker": 3}
    for group in last["optimizer"]["param_groups"]:
        group["fused"] = True  # a CUDA run's AdamW
    atomic_torch_save(tmp_path / "run" / "last.pt", last)
    config = Trainer.config_from_run(tmp_path / "run", steps=20)
    trainer = Trainer(config, tiny_synth, tmp_path / "run", progress=False)
    summary = trainer.fit(resume=True)
    assert summary.steps == 20 and summary.skipped_steps == 0 and not trainer.scaler.is_enabled()
    assert all(group["fused"] is False for group in trainer.optimizer.param_groups)  # the CPU's choice, not the saved one


def test_an_optimizer_state_from_another_device_keeps_this_optimizers_fused_kernel():
    """The failure seen on an H200 (a CPU run resumed on CUDA), reproduced on the CPU: an unfused state loaded into
    a fused AdamW driven by an enabled GradScaler must keep the fused kernel, which takes the scaler's inf flags."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    unfused = torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=False)
    layer(torch.randn(3, 4)).sum().backward()
    unfused.step()
    fused = torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True)
    load_optimizer_state(fused, unfused.state_dict())
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    fused.zero_grad()
    scaler.scale(layer(torch.randn(3, 4)).sum()).backward()
    scaler.step(fused)
    assert fused.param_groups[0]["fused"] is True and float(fused.state[layer.weight]["step"]) == 2.0


def test_resume_on_other_clips_is_refused_before_the_run_folder_changes(tiny_synth, tmp_path):
    """The split and the sampler's saved order are by store position: the same speakers with clips reordered or
    removed would leak validation clips into training (or index past the store), so the resume is refused."""
    import shutil

    run = tmp_path / "run"
    Trainer(tiny_config(train={"steps": 10, "eval_every": 10}), tiny_synth, run, progress=False).fit()
    edits = {"reordered": lambda utterances: utterances.reverse(), "one-removed": lambda utterances: utterances.pop()}
    for name, edit in edits.items():
        data = shutil.copytree(tiny_synth, tmp_path / name)
        metadata = json.loads((data / "metadata.json").read_text())
        edit(next(iter(metadata["speakers"].values())))
        (data / "metadata.json").write_text(json.dumps(metadata))
        before = {path.name: path.read_bytes() for path in run.iterdir()}
        trainer = Trainer(Trainer.config_from_run(run, steps=20), data, run, progress=False)
        expected = rf"last\.pt: the run was trained on other data: 90 clips from {re.escape(str(tiny_synth))}"
        with pytest.raises(VoxaugError, match=expected):
            trainer.fit(resume=True)
        assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    last = load_checkpoint(run / "last.pt")
    assert last["clips"]["count"] == 90
    del last["clips"]  # a run from before the field: only its speakers can be compared
    last["speakers"] = last["speakers"][:-1]
    save_checkpoint(run / "last.pt", last)
    with pytest.raises(VoxaugError, match="trained on other data: 4 speakers"):
        Trainer(Trainer.config_from_run(run, steps=20), tiny_synth, run, progress=False).fit(resume=True)


def test_resume_takes_the_same_command_and_refuses_changed_options(tiny_synth, tmp_path):
    """--resume puts the options given on the run's saved config: the same command continues the run, while an
    option, --config value or --preset that differs is refused by name before anything in the run changes."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    toml, run = tmp_path / "run.toml", tmp_path / "run"
    toml.write_text('preset = "baseline"\n[model]\ndropout = 0.2\n')
    command = ["train", str(tiny_synth), "--out", str(run), "--config", str(toml), "--eval-every", "2", "--batch", "8",
               "--segment", "64", "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32",
               "--augment", "specaug", "--specaug-freq", "5", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
               "--quiet"]
    for extra in (["--steps", "2"], ["--steps", "4", "--resume"]):
        result = CliRunner().invoke(app, [*command, *extra])
        assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["preset"] == "baseline"  # the TOML's, with no --preset
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    toml.write_text('preset = "baseline"\n[model]\ndropout = 0.3\n')
    changed = CliRunner().invoke(app, [*command, "--steps", "6", "--resume", "--lr", "0.01", "--specaug-freq", "7",
                                       "--preset", "cpu"])
    assert changed.exit_code == 2, changed.output
    errors = [line for line in changed.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in changed.output, changed.output
    assert errors[0].startswith(f"error: {run / 'config.json'}: --resume cannot change "
                                "--specaug-freq, --lr, model.dropout, --preset:"), errors[0]
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_resume_drops_a_cut_last_metrics_line_and_refuses_a_bad_one_before_it(tiny_synth, tmp_path):
    """metrics.jsonl is appended to, so a crash can leave its last line half written: the resume drops it. A
    line that is not a row anywhere else is damage, refused naming the file and the line."""
    run = tmp_path / "run"
    Trainer(tiny_config(train={"steps": 10, "eval_every": 5}), tiny_synth, run, progress=False).fit()
    metrics = run / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join([rows[0], "{not json", rows[1]]) + "\n")
    with pytest.raises(VoxaugError, match=r"metrics\.jsonl: line 2: not a metrics row"):
        Trainer(Trainer.config_from_run(run, steps=15), tiny_synth, run, progress=False).fit(resume=True)
    metrics.write_text("\n".join(rows) + '\n{"step": 15, "loss": 0.')
    Trainer(Trainer.config_from_run(run, steps=15), tiny_synth, run, progress=False).fit(resume=True)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [5, 10, 15]


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999999999])
def test_a_seed_out_of_numpys_range_is_refused(seed):
    with pytest.raises(VoxaugError, match=rf"--seed must be a whole number in \[0, 4294967295\], got {seed}"):
        tiny_config(train={"seed": seed}).validate()
    tiny_config(train={"seed": 2**32 - 1}).validate()


def test_a_skipped_step_leaves_the_batch_norm_statistics_as_they_were(tiny_synth, tmp_path, monkeypatch):
    import voxaug.train

    trainer = Trainer(tiny_config(train={"steps": 30}), tiny_synth, tmp_path / "run", progress=False)
    before = {name: buffer.clone() for name, buffer in trainer.model.named_buffers()}
    assert any("running_mean" in name for name in before), "the model must hold batch norms for this test to mean much"
    monkeypatch.setattr(voxaug.train, "total_loss", lambda model, logits, batch: logits.sum() * float("nan"))
    assert trainer.train_step() is None and trainer.skipped_steps == 1  # the forward ran in training mode, then skipped
    for name, buffer in trainer.model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_without_a_validation_split_best_pt_follows_the_latest_model(tiny_synth, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(train={"steps": 20, "eval_every": 10, "val_fraction": 0.0}), tiny_synth, run, progress=False).fit()
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["step"] == last["step"] == 20
    assert all(torch.equal(best["model"][name], last["model"][name]) for name in last["model"])


def test_a_batch_of_one_is_refused_for_the_conformer_and_a_warmup_past_the_steps_is_warned_about(tiny_synth, tmp_path):
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    with pytest.raises(VoxaugError, match="--batch must be at least 2 for the conformer"):
        tiny_config(train={"batch": 1}).validate()
    result = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "run"), "--steps", "5",
                                      "--warmup", "10", "--d-model", "32", "--heads", "2", "--layers", "1",
                                      "--embedding-dim", "32", "--batch", "8", "--segment", "64", "--device", "cpu",
                                      "-q"])
    assert result.exit_code == 0, result.output
    assert "warning: --warmup 10 is not below --steps 5" in result.output


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_the_warmup_warning_is_rank_0_s_and_comes_before_the_data_is_read(tiny_synth, tmp_path,
                                                                                         monkeypatch, rank):
    """Every process of a torchrun printed the --warmup warning, where the other DDP lines are rank 0's alone. Here
    the process group is faked (rank ``rank`` of 2) and the trainer, which reads the data, only says it started."""
    import typer
    from typer.testing import CliRunner

    import voxaug.distributed
    from voxaug.cli.main import app
    from voxaug.distributed import DistContext, RankFailed

    def reading_trainer(*args, **kwargs):
        typer.echo("reading the data", err=True)
        raise RankFailed("stopped before training")

    monkeypatch.setattr(voxaug.distributed, "init_distributed", lambda device: DistContext(rank=rank, world_size=2))
    monkeypatch.setattr(training, "Trainer", reading_trainer)
    result = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "run"), "--steps", "5",
                                      "--warmup", "10", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    warning = "warning: --warmup 10 is not below --steps 5"
    assert result.output.count(warning) == (1 if rank == 0 else 0), result.output
    if rank == 0:
        assert result.output.index(warning) < result.output.index("reading the data"), result.output


def test_a_crash_right_after_last_pt_is_saved_loses_no_metrics_row(tiny_synth, tmp_path, monkeypatch):
    """An evaluation appends its metrics row before it writes last.pt, so the resumed run logs the rows of an
    uninterrupted one (a crash between the two leaves a row past last.pt, which the resume drops and logs again)."""
    config = lambda: tiny_config(train={"steps": 9, "eval_every": 3, "warmup": 2})  # noqa: E731
    Trainer(config(), tiny_synth, tmp_path / "straight", progress=False).fit()
    original = training.save_checkpoint

    def crashing_save(path, state):
        original(path, state)
        if path.name == "last.pt" and state["step"] == 6:
            raise KeyboardInterrupt(f"killed after {path.name}")

    monkeypatch.setattr(training, "save_checkpoint", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), tiny_synth, tmp_path / "crashed", progress=False).fit()
    monkeypatch.setattr(training, "save_checkpoint", original)
    Trainer(Trainer.config_from_run(tmp_path / "crashed"), tiny_synth, tmp_path / "crashed", progress=False).fit(resume=True)
    rows = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("straight", "crashed")]
    steps = [[json.loads(line)["step"] for line in lines] for lines in rows]
    assert steps[0] == steps[1] == [3, 6, 9]
    assert [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in rows[1]] == \
        [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in rows[0]]


def test_a_start_that_crashed_before_its_first_checkpoint_leaves_no_rows_to_the_next(tiny_synth, tmp_path, monkeypatch):
    """The first evaluation appends its row before the first last.pt: a crash between them leaves a folder that
    --resume cannot continue, and a new run there must start its log afresh."""
    config = lambda: tiny_config(train={"steps": 6, "eval_every": 3, "warmup": 2})  # noqa: E731
    original = training.save_checkpoint

    def crashing_save(path, state):
        if path.name == "last.pt":
            raise KeyboardInterrupt("killed before the first last.pt")
        original(path, state)

    monkeypatch.setattr(training, "save_checkpoint", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), tiny_synth, tmp_path / "run", progress=False).fit()
    monkeypatch.setattr(training, "save_checkpoint", original)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1 and not (tmp_path / "run" / "last.pt").exists()
    Trainer(config(), tiny_synth, tmp_path / "run", progress=False).fit()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6]


def test_accuracy_is_the_exact_ratio_the_distributed_count_gives(monkeypatch):
    """7 of 10 right is 0.7, not float32's 0.69999999: a run resumed under torchrun (which divides counts) must
    not see an unchanged accuracy as a new best."""
    labels = np.arange(10) % 3
    logits = torch.nn.functional.one_hot(torch.as_tensor(np.where(np.arange(10) < 7, labels, (labels + 1) % 3)), 3)
    monkeypatch.setattr(inference, "run_model", lambda model, store, indices, device, **_: (None, logits.float()))
    assert inference.accuracy(None, types.SimpleNamespace(labels=labels), np.arange(10), torch.device("cpu")) == 7 / 10


def test_resume_accepts_the_augmentations_in_another_order_and_refuses_another_set(tiny_synth, tmp_path):
    """The pipeline applies augmentations in a fixed order, so `noise,reverb` resumes a `reverb,noise` run."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    run = tmp_path / "run"
    command = ["train", str(tiny_synth), "--out", str(run), "--eval-every", "2", "--batch", "8", "--segment", "64",
               "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32", "--device", "cpu",
               "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    started = CliRunner().invoke(app, [*command, "--augment", "reverb,noise", "--steps", "2"])
    assert started.exit_code == 0, started.output
    reordered = CliRunner().invoke(app, [*command, "--augment", "noise,reverb", "--steps", "4", "--resume"])
    assert reordered.exit_code == 0, reordered.output
    assert json.loads((run / "config.json").read_text())["augment"]["names"] == ["reverb", "noise"]
    fewer = CliRunner().invoke(app, [*command, "--augment", "noise", "--steps", "6", "--resume"])
    assert fewer.exit_code == 2 and "--resume cannot change --augment" in fewer.output, fewer.output


def test_a_config_file_is_judged_with_the_command_lines_values_and_named_only_for_its_own_errors(tmp_path):
    """A file value the command line makes valid is accepted; an error the file causes alone names the file;
    one the command line causes does not."""
    toml = tmp_path / "run.toml"
    toml.write_text("[model]\nd_model = 90\n[augment]\nnames = [\"crop\"]\n[augment.crop]\nmin_frames = 400\n")
    config = resolve_config("cpu", toml, model_overrides={"num_heads": 6},
                            augment_overrides={"crop": {"max_frames": 500}})
    assert config.model.d_model == 90 and config.augment["crop"] == {"min_frames": 400, "max_frames": 500}
    with pytest.raises(VoxaugError, match=r"run\.toml: model: d_model 90 must be divisible by num_heads 4"):
        resolve_config("cpu", toml, augment_overrides={"crop": {"max_frames": 500}})
    toml.write_text("steps = 10\n")
    with pytest.raises(VoxaugError) as refused:
        resolve_config("cpu", toml, overrides={"lr": -1.0})
    assert str(refused.value) == "--lr must be positive, got -1.0"


def test_a_feature_run_that_recorded_front_end_settings_before_they_were_refused_still_resumes(tiny_synth, tmp_path):
    """`--sample-rate` on a set of features is refused for a new run; a run saved with it earlier can go on."""
    run = tmp_path / "run"
    Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1}), tiny_synth, run, progress=False).fit()
    recorded = {"sample_rate": 8000, "f_max": 4000.0}
    meta = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**meta, "frontend": recorded}))
    state = load_checkpoint(run / "last.pt")
    state["config"]["frontend"] = recorded
    state["frontend"] = {**state["frontend"], **recorded}  # what such a run used and saved as its front end
    save_checkpoint(run / "last.pt", state)
    config = Trainer.config_from_run(run, steps=6)
    Trainer(config, tiny_synth, run, progress=False).fit(resume=True)
    assert load_checkpoint(run / "last.pt")["step"] == 6
    with pytest.raises(VoxaugError, match=r"front-end settings \(f_max, sample_rate\) do not change"):
        Trainer(config, tiny_synth, tmp_path / "new", progress=False).fit()
    assert not (tmp_path / "new").exists()


def test_an_out_that_is_a_file_or_under_one_is_refused_before_the_data_is_read(tiny_synth, tmp_path):
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    (tmp_path / "afile").write_text("not a folder")
    for out, problem in ((tmp_path / "afile", "--out is an existing file; expected a folder"),
                         (tmp_path / "afile" / "run", "is a file, not a folder")):
        result = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(out), "--steps", "2",
                                          "--cache-dir", str(tmp_path / "cache"), "--quiet"])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and problem in result.output, result.output
    assert not (tmp_path / "cache").exists(), "refused before any featurising"


def test_conformer_options_on_the_baseline_are_refused_by_name(tiny_synth, tmp_path):
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    for extra, named in ((["--margin", "0.3"], "--margin"), (["--scale", "20", "--margin-warmup", "5"], "--scale, --margin-warmup")):
        result = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "run"), "--preset", "baseline",
                                          *extra, "--cache-dir", str(tmp_path / "cache"), "--quiet"])
        assert result.exit_code == 2 and result.output.startswith(f"error: {named}: the transformer-mean baseline"), \
            result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    from voxaug.cli.train import _refuse_conformer_options_on_the_baseline
    from voxaug.config import resolve_config

    _refuse_conformer_options_on_the_baseline(resolve_config("strong", model_overrides={"kind": "transformer-mean"}))


def test_resume_accepts_a_front_end_option_given_at_its_default_value(tiny_synth, tmp_path):
    """--sample-rate 16000 on a run trained at the default rate changes nothing, so it is not a change."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    command = ["train", str(tiny_synth), "--out", str(tmp_path / "run"), "--eval-every", "2", "--batch", "8",
               "--segment", "32", "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32",
               "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert CliRunner().invoke(app, [*command, "--steps", "2"]).exit_code == 0
    same = CliRunner().invoke(app, [*command, "--steps", "4", "--resume", "--sample-rate", "16000"])
    assert same.exit_code == 0, same.output
    other = CliRunner().invoke(app, [*command, "--steps", "6", "--resume", "--sample-rate", "8000"])
    assert other.exit_code == 2 and "--resume cannot change" in other.output and "--sample-rate" in other.output


def test_resume_accepts_an_augmentation_strength_given_at_its_default_value(tiny_synth, tmp_path):
    """--reverb-p 0.5 (or a TOML's [augment.reverb] p = 0.5) on a run that left reverb at its default p changes
    nothing, so it is not a change; another value still is."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    run = tmp_path / "run"
    command = ["train", str(tiny_synth), "--out", str(run), "--eval-every", "2", "--batch", "8", "--segment", "32",
               "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32", "--augment",
               "reverb,specaug", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert CliRunner().invoke(app, [*command, "--steps", "2"]).exit_code == 0
    saved = (run / "config.json").read_text()
    same = CliRunner().invoke(app, [*command, "--steps", "4", "--resume", "--reverb-p", "0.5", "--specaug-freq", "6"])
    assert same.exit_code == 0, same.output
    assert json.loads((run / "config.json").read_text())["augment"] == json.loads(saved)["augment"]
    toml = tmp_path / "same.toml"
    toml.write_text("[augment.reverb]\np = 0.5\n")
    from_file = CliRunner().invoke(app, [*command, "--steps", "6", "--resume", "--config", str(toml)])
    assert from_file.exit_code == 0, from_file.output
    other = CliRunner().invoke(app, [*command, "--steps", "8", "--resume", "--reverb-p", "0.7"])
    assert other.exit_code == 2 and "--resume cannot change --reverb-p" in other.output, other.output


def two_step_command(tiny_synth: Path, run: Path, cache: Path) -> list[str]:
    """The damaged-run tests' ``train`` command line, without its --steps."""
    return ["train", str(tiny_synth), "--out", str(run), "--eval-every", "2", "--batch", "8", "--segment", "32",
            "--d-model", "32", "--layers", "1", "--heads", "2", "--embedding-dim", "32", "--augment", "none",
            "--device", "cpu", "--cache-dir", str(cache), "--quiet"]


@pytest.fixture(scope="module")
def two_step_original(tiny_synth: Path, tmp_path_factory) -> Path:
    """A tiny run trained for 2 steps through the CLI, once per module: every damaged-run test damages its own copy."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    root = tmp_path_factory.mktemp("two-step")
    command = two_step_command(tiny_synth, root / "run", root / "cache")
    assert CliRunner().invoke(app, [*command, "--steps", "2"]).exit_code == 0
    return root


@pytest.fixture
def two_step_run(two_step_original: Path, tiny_synth: Path, tmp_path: Path) -> tuple[Path, Callable[[], Result]]:
    """This test's copy of the 2-step run, and a call that resumes it to 4 through the CLI (the damaged-run tests)."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    run = Path(shutil.copytree(two_step_original / "run", tmp_path / "run"))
    command = two_step_command(tiny_synth, run, two_step_original / "cache")
    return run, lambda: CliRunner().invoke(app, [*command, "--steps", "4", "--resume"])


def test_a_metrics_log_that_is_not_utf8_is_refused_by_name_by_resume_and_plot(two_step_run, tmp_path):
    """Damage to metrics.jsonl is bad input (exit 2, the file named), not a bug (exit 3), and changes nothing."""
    run, resume = two_step_run
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b"\xff\xfe\n")
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    for result in (resume(), CliRunner().invoke(app, ["plot", str(run), "--out", str(tmp_path / "c.png")])):
        assert result.exit_code == 2, result.output
        assert f"error: {metrics}: not a metrics log" in result.output, result.output
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_metrics_row_the_full_disk_refuses_is_one_error_naming_the_log(tiny_synth, tmp_path, monkeypatch):
    """metrics.jsonl is appended to, not replaced: a full disk failed with a bare "No space left on device"."""
    original = Trainer.write_config

    def log_on_a_full_disk(self):
        original(self)
        (self.run_dir / "metrics.jsonl").symlink_to("/dev/full")

    monkeypatch.setattr(Trainer, "write_config", log_on_a_full_disk)
    log = re.escape(str(tmp_path / "run" / "metrics.jsonl"))
    with pytest.raises(VoxaugError, match=rf"^{log}: cannot write: No space left on device"):
        Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1}), tiny_synth, tmp_path / "run",
                progress=False).fit()


def test_an_append_the_disk_cuts_short_leaves_the_log_without_a_torn_line(tmp_path, monkeypatch):
    from voxaug.safeio import append_text

    log = tmp_path / "metrics.jsonl"
    append_text(log, '{"step": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(log))}: cannot write: No space left on device.*"
                                          r"\(the previous file is kept\)$"):
        append_text(log, '{"step": 2, "train_acc": 0.5}\n')
    assert log.read_text() == '{"step": 1}\n'


def test_conformer_settings_of_a_config_file_on_the_baseline_are_named_by_their_keys_in_it(tiny_synth, tmp_path):
    """`margin = 0.3` in a TOML file was refused as `--margin`, an option the command line did not give."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    toml = tmp_path / "baseline.toml"
    toml.write_text('preset = "baseline"\nmargin_warmup = 5\n[model]\nmargin = 0.3\nkernel_size = 9\n')
    for extra, named in (([], f"[model] margin in {toml}, [model] kernel_size in {toml}, margin_warmup in {toml}"),
                         (["--scale", "20", "--margin", "0.4"],
                          f"--scale, --margin, [model] kernel_size in {toml}, margin_warmup in {toml}")):
        result = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "run"), "--config",
                                          str(toml), *extra, "--cache-dir", str(tmp_path / "cache"), "--quiet"])
        assert result.exit_code == 2 and result.output.startswith(f"error: {named}: the transformer-mean baseline"), \
            result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_new_runs_weights_do_not_depend_on_random_draws_between_construction_and_fit(tiny_synth, tmp_path):
    """Dropout draws from torch's global generator, which the constructor seeds: a Trainer built, then another built
    (or any torch.rand) before its fit, must still train to the weights of a Trainer fitted at once."""
    def config():
        return tiny_config(train={"steps": 4, "eval_every": 4, "warmup": 1})

    Trainer(config(), tiny_synth, tmp_path / "alone", progress=False).fit()
    delayed = Trainer(config(), tiny_synth, tmp_path / "delayed", progress=False)
    torch.rand(1000)
    delayed.fit()
    alone, after = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("alone", "delayed"))
    for name, tensor in alone.items():
        assert torch.equal(tensor, after[name]), name


def test_a_resumed_run_counts_non_finite_steps_in_a_row_as_the_uninterrupted_run(tiny_synth, tmp_path, monkeypatch):
    """Non-finite losses at steps 2 to 4 with max_bad_steps 3 stop the run at step 4; stopped after step 3 and resumed
    from the checkpoint of step 2 (one bad step already in a row), it must stop there too, not train on."""
    real_loss, current = training.total_loss, {"step": 0}

    def loss(model, logits, batch):
        return real_loss(model, logits, batch) * (float("nan") if current["step"] in (1, 2, 3) else 1.0)

    original_step = Trainer.train_step

    def step(self):
        current["step"] = self.step
        if self.step == 3 and self.run_dir.name == "interrupted" and not self.resuming:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(training, "total_loss", loss)
    monkeypatch.setattr(Trainer, "train_step", step)
    config = tiny_config(train={"steps": 8, "eval_every": 2, "warmup": 1, "max_bad_steps": 3})
    with pytest.raises(VoxaugError, match="stopped at step 3: the loss was NaN/Inf for 3 steps in a row"):
        Trainer(copy.deepcopy(config), tiny_synth, tmp_path / "straight", progress=False).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(copy.deepcopy(config), tiny_synth, tmp_path / "interrupted", progress=False).fit()
    resumed = Trainer(Trainer.config_from_run(tmp_path / "interrupted"), tiny_synth, tmp_path / "interrupted",
                      progress=False, resume=True)
    with pytest.raises(VoxaugError, match="stopped at step 3: the loss was NaN/Inf for 3 steps in a row"):
        resumed.fit()


def test_a_resumed_run_names_the_gradient_norm_as_the_uninterrupted_run(tiny_synth, tmp_path, monkeypatch):
    """The steps a checkpoint counts as bad in a row keep their cause: resumed after two gradient-norm skips (--scale
    1e20), the run stops at the third naming the gradient norm, as it does uninterrupted, not the loss."""
    original_step = Trainer.train_step

    def step(self):
        if self.step == 2 and self.run_dir.name == "interrupted" and not self.resuming:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", step)
    config = tiny_config(scale=1e20, train={"steps": 8, "eval_every": 2, "warmup": 1, "max_bad_steps": 3})
    message = r"^training stopped at step 2: the gradient norm was NaN/Inf for 3 steps in a row \("
    with pytest.raises(VoxaugError, match=message):
        Trainer(copy.deepcopy(config), tiny_synth, tmp_path / "straight", progress=False).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(copy.deepcopy(config), tiny_synth, tmp_path / "interrupted", progress=False).fit()
    resumed = Trainer(Trainer.config_from_run(tmp_path / "interrupted"), tiny_synth, tmp_path / "interrupted",
                      progress=False, resume=True)
    with pytest.raises(VoxaugError, match=message):
        resumed.fit()


def test_an_append_that_cannot_open_its_file_does_not_say_a_previous_file_is_kept(tmp_path, monkeypatch):
    """A folder where the log goes, or a log that may not be opened, was reported as "(the previous file is
    kept)": there is no previous file, or nothing was written to it at all."""
    from voxaug.safeio import append_text

    folder = tmp_path / "metrics.jsonl"
    folder.mkdir()
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(folder))}: cannot write: Is a directory$"):
        append_text(folder, '{"step": 1}\n')
    log = tmp_path / "trace.jsonl"
    log.write_text('{"step": 1}\n')

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(log))

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(log))}: cannot write: Permission denied "
                                          r"\(nothing was appended\)$"):
        append_text(log, '{"step": 2}\n')
    assert log.read_text() == '{"step": 1}\n'


def test_a_run_resumed_from_its_last_pt_alone_writes_a_best_pt(tiny_synth, tmp_path):
    """Only last.pt was copied: the best model it records is not there, so the resume's first evaluation writes
    best.pt instead of the summary pointing at a file that does not exist."""
    Trainer(tiny_config(train={"steps": 4, "eval_every": 2}), tiny_synth, tmp_path / "run", progress=False).fit()
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "last.pt").write_bytes((tmp_path / "run" / "last.pt").read_bytes())
    summary = Trainer(Trainer.config_from_run(moved, steps=6), tiny_synth, moved, progress=False).fit(resume=True)
    best = load_checkpoint(moved / "best.pt")
    assert best["step"] == best["best_step"] == summary.best_step == 6
    assert best["best_val_acc"] == summary.best_val_acc


@pytest.fixture(scope="module")
def python_two_step_run(tiny_synth: Path, tmp_path_factory) -> Path:
    """A tiny run trained for 2 steps through the Python API, once per module: each test resumes its own copy."""
    run = tmp_path_factory.mktemp("python-two-step") / "run"
    Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1}), tiny_synth, run, progress=False).fit()
    return run


@pytest.mark.parametrize("setting, value", [("grad_clip", 0.01), ("eval_every", 1), ("max_bad_steps", 3),
                                            ("train_eval_utterances", 5), ("amp", False), ("preset", "strong")])
def test_a_python_api_resume_refuses_every_changed_setting_but_steps_and_device(python_two_step_run, tiny_synth,
                                                                                tmp_path, setting, value):
    """As the command line does: a resume that took another gradient clip (or any setting other than steps and
    device) would train, and record, another recipe than the run's."""
    run = Path(shutil.copytree(python_two_step_run, tmp_path / "run"))
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    other = Trainer.config_from_run(run, steps=4, device="cpu")
    setattr(other, setting, value)
    with pytest.raises(VoxaugError, match=rf"last\.pt: cannot resume with a different {setting};"):
        Trainer(other, tiny_synth, run, progress=False).fit(resume=True)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_resume_names_a_changed_setting_that_only_a_config_file_sets_by_its_key(tiny_synth, tmp_path):
    """grad_clip has no --grad-clip option: a resume refusing a new value must not send the user looking for one."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    run, toml = tmp_path / "run", tmp_path / "run.toml"
    command = ["train", str(tiny_synth), "--out", str(run), "--steps", "2", "--eval-every", "2", "--batch", "4",
               "--segment", "32", "--d-model", "16", "--layers", "1", "--heads", "2", "--embedding-dim", "16",
               "--augment", "none", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert CliRunner().invoke(app, command).exit_code == 0
    toml.write_text("grad_clip = 1.0\nmax_bad_steps = 5\n")
    changed = CliRunner().invoke(app, [*command, "--resume", "--config", str(toml)])
    assert changed.exit_code == 2, changed.output
    assert f"error: {run / 'config.json'}: --resume cannot change grad_clip, max_bad_steps:" in changed.output


def test_a_run_saved_where_more_gpus_were_visible_restores_its_rng_on_fewer(monkeypatch):
    """last.pt holds one CUDA generator state per GPU visible when it was saved; resumed where fewer are visible
    (another node, CUDA_VISIBLE_DEVICES), torch's set_rng_state_all indexed past its generators: IndexError."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # the model is on the GPU: no lazy queue
    monkeypatch.setattr(torch.cuda, "default_generators", (types.SimpleNamespace(set_state=restored.append),))
    saved = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]  # two GPUs' Philox states
    training.set_rng_state({"torch": torch.get_rng_state(), "cuda": saved})
    assert len(restored) == 1 and torch.equal(restored[0], saved[0])


def test_a_no_amp_run_is_evaluated_in_float32_as_it_trains(tiny_synth, tmp_path, monkeypatch):
    """--no-amp trains in float32 on CUDA, but the evaluations that pick best.pt and fill metrics.jsonl ran the model
    under float16 autocast all the same (run_model always asked for it). On the CPU autocast is off either way, so
    what is checked is what every evaluation asks for."""
    asked = []
    real = inference.autocast_for
    monkeypatch.setattr(inference, "autocast_for",
                        lambda device, enabled=True: asked.append(enabled) or real(device, enabled))
    Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "amp": False}), tiny_synth, tmp_path / "run",
            progress=False).fit()
    assert asked and not any(asked)


def test_a_finished_run_resumed_from_its_last_pt_alone_has_nothing_to_train_and_says_done(tiny_synth, tmp_path):
    """Only last.pt of a finished run was copied: ``--resume`` with no step left failed on the missing metrics.jsonl
    after rewriting config.json. As a finished run in full does, it now ends done (exit 0), evaluating once, so that
    the folder gets the best.pt and the log row the summary names; and it continues as the full run does."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    command = ["--eval-every", "2", "--warmup", "1", "--batch", "8", "--segment", "64", "--d-model", "32", "--layers",
               "1", "--heads", "2", "--embedding-dim", "32", "--augment", "specaug", "--device", "cpu", "--quiet"]
    full, alone = tmp_path / "full", tmp_path / "alone"
    assert CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(full), "--steps", "4", *command]).exit_code == 0
    alone.mkdir()
    shutil.copy(full / "last.pt", alone / "last.pt")
    done = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(alone), "--resume"])
    assert done.exit_code == 0, done.output
    logged = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"clean train acc {logged['train_acc']:.4f}" in done.output and f"-> {alone / 'best.pt'}" in done.output
    assert load_checkpoint(alone / "best.pt")["step"] == 4
    assert [json.loads(line)["step"] for line in (alone / "metrics.jsonl").read_text().splitlines()] == [4]
    for run in (full, alone):
        result = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(run), "--steps", "6", "--resume"])
        assert result.exit_code == 0, result.output
    continued = [load_checkpoint(run / "last.pt")["model"] for run in (full, alone)]
    assert all(torch.equal(continued[0][name], continued[1][name]) for name in continued[0])


def test_a_finished_run_resumed_without_its_best_pt_writes_the_best_pt_it_names(tiny_synth, tmp_path):
    """A finished run kept or copied without best.pt (its metrics.jsonl with it), resumed with no step left, said done
    with "best val acc n/a -> RUN/best.pt (predict)" and wrote no best.pt, so that predict failed. It now writes it from
    the model its last logged row scored, as the next evaluation would, and logs no second row for that step."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    run = tmp_path / "run"
    Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1}), tiny_synth, run, progress=False).fit()
    rows = (run / "metrics.jsonl").read_text()
    (run / "best.pt").unlink()
    summary = Trainer(Trainer.config_from_run(run), tiny_synth, run, progress=False).fit(resume=True)
    assert (run / "metrics.jsonl").read_text() == rows
    assert summary.best_val_acc == summary.val_acc == json.loads(rows.splitlines()[-1])["val_acc"]
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["step"] == summary.best_step == 4 and "optimizer" not in best
    assert all(torch.equal(best["model"][name], last["model"][name]) for name in last["model"])
    predicted = CliRunner().invoke(app, ["predict", str(tiny_synth), "--ckpt", str(run / "best.pt"), "--out",
                                         str(tmp_path / "p.csv"), "-q"])
    assert predicted.exit_code == 0, predicted.output


def test_resume_with_steps_below_the_run_is_refused_before_the_data_is_read(tiny_synth, tmp_path, monkeypatch):
    """``--resume --steps 2`` on a run at step 4 was refused only when last.pt was loaded, after the data was packed
    (minutes on a big corpus): the checkpoint's step is checked with the run folder, before any featurising."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    run = tmp_path / "run"
    Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1}), tiny_synth, run, progress=False).fit()
    before = {path.name: path.read_bytes() for path in run.iterdir()}

    def read(*args, **kwargs):
        raise AssertionError("the data was read before --steps was checked")

    monkeypatch.setattr(Trainer, "_open_store", read)
    with pytest.raises(VoxaugError, match=r"last\.pt: is at step 4, past --steps 2; pass --steps above 4"):
        Trainer(Trainer.config_from_run(run, steps=2), tiny_synth, run, progress=False, resume=True)
    refused = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(run), "--resume", "--steps", "2"])
    assert refused.exit_code == 2, refused.output
    assert f"error: {run / 'last.pt'}: is at step 4, past --steps 2" in refused.output
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


@pytest.mark.parametrize("overrides, message", [
    ({"weight_decay": -1.0}, "--weight-decay must be >= 0, got -1.0"),
    ({"weight_decay": float("nan")}, "--weight-decay must be a finite number, got nan"),
    ({"grad_clip": 0.0}, "grad_clip must be > 0, got 0.0"),
])
def test_a_bad_weight_decay_is_named_by_its_option_and_alone(overrides, message):
    """`train --weight-decay -1` said "need weight_decay >= 0 and grad_clip > 0, got -1.0, 5.0": a key where the
    option was given, and beside it a setting the user never touched."""
    with pytest.raises(VoxaugError) as refused:
        resolve_config("cpu", overrides=overrides).validate()
    assert str(refused.value) == message


def _nan_weights_at(monkeypatch, step):
    """The weights made NaN before the evaluation at ``step``, as a step with an absurd --weight-decay leaves them."""
    original_evaluate = Trainer.evaluate

    def evaluate(self, mean_loss):
        if self.step == step:
            self.model.input_proj.weight.data.fill_(float("nan"))
        return original_evaluate(self, mean_loss)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def _nan_loss_at(monkeypatch, bad_steps):
    """The loss made NaN at the given (0-based) steps, as an absurd --lr or --scale makes it."""
    real_loss, current = training.total_loss, {"step": 0}

    def loss(model, logits, batch):
        return real_loss(model, logits, batch) * (float("nan") if current["step"] in bad_steps else 1.0)

    original_step = Trainer.train_step

    def step(self):
        current["step"] = self.step
        return original_step(self)

    monkeypatch.setattr(training, "total_loss", loss)
    monkeypatch.setattr(Trainer, "train_step", step)


def test_a_run_shorter_than_max_bad_steps_with_every_step_skipped_fails(tiny_synth, tmp_path, monkeypatch):
    """Every loss Inf (as --scale 1e308 made it before it was refused): a run of fewer than max_bad_steps steps
    skipped them all and said done."""
    _nan_loss_at(monkeypatch, {0, 1, 2, 3})
    trainer = Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1}), tiny_synth,
                      tmp_path / "run", progress=False)
    with pytest.raises(VoxaugError, match=r"training failed: the loss was NaN/Inf at all 4 steps, each skipped"):
        trainer.fit()


def test_gradients_too_large_for_their_norm_skip_the_step_and_fail_the_run(tiny_synth, tmp_path):
    """--scale 1e20 keeps the loss finite, but the gradients' float32 norm overflows to Inf, so clipping scaled every
    gradient to zero: no step changed the model, none was counted as skipped, and the run said done."""
    config = tiny_config(scale=1e20, train={"steps": 4, "eval_every": 2, "warmup": 1})
    trainer = Trainer(config, tiny_synth, tmp_path / "run", progress=False)
    initial = {name: weight.clone() for name, weight in trainer.model.state_dict().items()}
    with pytest.raises(VoxaugError, match=r"training failed: the gradient norm was NaN/Inf at all 4 steps, each "
                                          r"skipped, so the model is not trained \(lower --lr, --scale"):
        trainer.fit()
    assert trainer.skipped_steps == 4
    assert all(torch.equal(initial[name], weight) for name, weight in trainer.model.state_dict().items())


def test_gradients_too_large_for_their_norm_are_skipped_under_a_grad_scaler_too(tiny_synth, tmp_path):
    """Under AMP the GradScaler skips only gradients that hold Inf; finite ones whose norm overflows were clipped to
    zero and stepped. The skipped step must end its unscale_, which the next step's would otherwise refuse."""
    trainer = Trainer(tiny_config(scale=1e20, train={"steps": 4, "warmup": 1}), tiny_synth, tmp_path / "run",
                      progress=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # the CUDA path's scaler, on the CPU
    for _ in range(2):
        assert trainer.train_step() is None
    assert trainer.skipped_steps == 2


@pytest.mark.parametrize(("nan_losses", "cause"), [(set(), "the gradient norm was NaN/Inf"),
                                                    ({0}, "the loss or its gradient norm was NaN/Inf")])
def test_steps_stopped_by_their_gradient_norm_are_named_so(tiny_synth, tmp_path, monkeypatch, nan_losses, cause):
    """--scale 1e20 keeps the loss finite and overflows its gradient norm: the run stopped saying "the loss was
    NaN/Inf", which sends the user looking for bad data rather than at --scale."""
    _nan_loss_at(monkeypatch, nan_losses)
    config = tiny_config(scale=1e20, train={"steps": 4, "warmup": 1, "max_bad_steps": 2})
    trainer = Trainer(config, tiny_synth, tmp_path / "run", progress=False)
    with pytest.raises(VoxaugError, match=rf"^training stopped at step 1: {cause} for 2 steps in a row \(lower --lr or "
                                          r"--scale, check the data for extreme values; limit: max_bad_steps=2\)$"):
        trainer.fit()


def test_a_grad_scaler_overflow_is_skipped_by_the_scaler_alone_and_not_counted(tiny_synth, tmp_path):
    """Under AMP, Inf gradients (a float16 overflow) are routine: GradScaler skips the step and lowers its scale. The
    step must not also count towards max_bad_steps, or long AMP runs would stop on the scaler's own calibration."""
    trainer = Trainer(tiny_config(train={"steps": 4, "warmup": 1, "max_bad_steps": 1}), tiny_synth, tmp_path / "run",
                      progress=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # the scaled loss overflows: every gradient Inf/NaN
    initial = {name: weight.clone() for name, weight in trainer.model.named_parameters()}
    result = trainer.train_step()
    assert result is not None and trainer.skipped_steps == trainer.bad_in_row == 0
    assert trainer.scaler.get_scale() == pytest.approx(1.5e38)  # the scaler's own skip: it backed off
    assert all(torch.equal(initial[name], weight) for name, weight in trainer.model.named_parameters())


def test_a_nan_loss_under_a_grad_scaler_is_counted_and_the_next_step_still_runs(tiny_synth, tmp_path, monkeypatch):
    """A NaN loss goes through backward too (its check shares the gradient norm's one host sync): the skipped step
    must end the scaler's unscale_, or the next step's would be refused."""
    _nan_loss_at(monkeypatch, {0})
    trainer = Trainer(tiny_config(train={"steps": 4, "warmup": 1}), tiny_synth, tmp_path / "run", progress=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    initial = {name: weight.clone() for name, weight in trainer.model.named_parameters()}
    assert trainer.train_step() is None and trainer.skipped_steps == trainer.bad_in_row == 1
    assert all(torch.equal(initial[name], weight) for name, weight in trainer.model.named_parameters())
    trainer.step += 1
    assert trainer.train_step() is not None and trainer.bad_in_row == 0


def test_a_short_run_ending_with_most_steps_skipped_fails(tiny_synth, tmp_path, monkeypatch):
    """A first step that leaves weights no later step can use (--lr 1e30) skips the rest; the run said done."""
    _nan_loss_at(monkeypatch, {1, 2, 3})
    trainer = Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1}), tiny_synth, tmp_path / "run",
                      progress=False)
    with pytest.raises(VoxaugError, match=r"NaN/Inf at the last 3 of its 4 steps, each skipped"):
        trainer.fit()


def test_a_run_ending_with_nan_weights_fails_and_one_late_skip_does_not(tiny_synth, tmp_path, monkeypatch):
    """One skipped last step of a run that trained is a bad batch, not a failed run; weights left NaN/Inf are."""
    _nan_loss_at(monkeypatch, {3})
    summary = Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1}), tiny_synth, tmp_path / "ok",
                      progress=False).fit()
    assert summary.steps == 4 and summary.skipped_steps == 1
    _nan_weights_at(monkeypatch, 2)
    with pytest.raises(VoxaugError, match=r"model's weights are NaN/Inf \(the loss was NaN/Inf at the last 2 of its 4"):
        Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1}), tiny_synth, tmp_path / "nan",
                progress=False).fit()


def test_resuming_from_a_last_pt_overwritten_by_best_pt_says_what_it_holds(tiny_synth, tmp_path):
    """A last.pt that is a copy of best.pt was refused with 'resume from last.pt', though it is last.pt."""
    run = tmp_path / "run"
    config = tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1})
    Trainer(copy.deepcopy(config), tiny_synth, run, progress=False).fit()
    shutil.copy(run / "best.pt", run / "last.pt")
    config.steps = 4
    with pytest.raises(VoxaugError) as refused:
        Trainer(config, tiny_synth, run, progress=False, resume=True).fit()
    assert str(refused.value) == (f"{run / 'last.pt'}: holds no optimizer state (a copy of best.pt, which keeps only "
                                  "the model?), so the run cannot continue from it: put back the last.pt that "
                                  "training wrote, or start a new run with another --out")


def test_a_learning_rate_that_overflows_adamws_float32_step_is_refused_up_front():
    """--lr 1e308 passed the finite check and crashed at the first step: 'unexpected RuntimeError: value cannot be
    converted to type float without overflow', exit 3."""
    with pytest.raises(VoxaugError) as refused:
        resolve_config("cpu", overrides={"lr": 1e308}).validate()
    assert str(refused.value) == "--lr must be at most 1e+37 (AdamW steps in float32), got 1e+308"
    resolve_config("cpu", overrides={"lr": 1e37, "weight_decay": 0.0}).validate()


def test_best_pt_never_takes_weights_a_step_left_nan(tiny_synth, tmp_path, monkeypatch):
    """Without a validation split best.pt follows the latest model: NaN weights at the last evaluation replaced the
    good best.pt of the one before, so a failed run lost its last usable model."""
    _nan_weights_at(monkeypatch, 4)
    run = tmp_path / "run"
    with pytest.raises(VoxaugError, match="model's weights are NaN/Inf"):
        Trainer(tiny_config(train={"steps": 4, "eval_every": 2, "warmup": 1, "val_fraction": 0.0}), tiny_synth, run,
                progress=False).fit()
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["step"] == 2
    assert all(bool(torch.isfinite(weight).all()) for weight in best["model"].values() if weight.is_floating_point())


def test_a_run_whose_last_step_leaves_nan_weights_fails_instead_of_naming_a_missing_best_pt(tiny_synth, tmp_path,
                                                                                           monkeypatch):
    """A last step with a finite loss that left the weights NaN (``--steps 1 --lr 1 --weight-decay 1e300``) ended
    'done', exit 0, naming RUN/best.pt (predict) though best.pt refuses such weights and none was written."""
    _nan_weights_at(monkeypatch, 2)
    run = tmp_path / "run"
    with pytest.raises(VoxaugError) as refused:
        Trainer(tiny_config(train={"steps": 2, "eval_every": 2, "warmup": 1}), tiny_synth, run, progress=False).fit()
    assert str(refused.value) == ("training failed: the model's weights are NaN/Inf (after its last step; lower --lr, "
                                  "--weight-decay or --scale)")
    assert not (run / "best.pt").exists()


@pytest.mark.parametrize("line", ["[" * 100000, '{"step": ' + "9" * 5000 + "}"], ids=["nested", "long-number"])
def test_a_metrics_line_json_cannot_parse_is_refused_by_name_by_resume(two_step_run, line):
    """A line nested thousands deep or with a number of over 4300 digits made json raise RecursionError or
    ValueError, not JSONDecodeError: resume ended 'unexpected RecursionError', exit 3, instead of naming the log."""
    run, resume = two_step_run
    metrics = run / "metrics.jsonl"
    metrics.write_text(line + "\n" + metrics.read_text())
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    result = resume()
    assert result.exit_code == 2, result.output
    assert f"error: {metrics}: line 1: not a metrics row" in result.output, result.output
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


@pytest.mark.parametrize("value", ["[" * 10000 + "]" * 10000, "9" * 5000], ids=["nested", "long-number"])
def test_a_config_file_tomllib_cannot_parse_is_refused_by_name(tmp_path, value):
    """Arrays nested thousands deep, or an integer of over 4300 digits, made tomllib raise RecursionError or a plain
    ValueError, not TOMLDecodeError: train --config ended 'unexpected RecursionError', exit 3."""
    toml = tmp_path / "run.toml"
    toml.write_text(f"steps = {value}\n")
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(toml))}: unreadable TOML \("):
        resolve_config("cpu", toml)


def test_a_damaged_run_config_is_refused_by_resume_naming_the_file(two_step_run):
    """A bad value in RUN/config.json was refused as if an option were wrong ('config: warmup must be an int',
    '--lr must be positive', naming no file), and an [augment] that is no table ended 'unexpected AttributeError',
    exit 3."""
    run, resume = two_step_run
    settings = run / "config.json"
    saved = json.loads(settings.read_text())
    for key, value, problem in (("warmup", "", "config: warmup must be an int, got ''"),
                                ("lr", -1.0, "--lr must be positive, got -1.0"),
                                ("augment", 1.5, "[augment] must be a table of augmentation settings, got 1.5")):
        settings.write_text(json.dumps({**saved, key: value}))
        before = {path.name: path.read_bytes() for path in run.iterdir()}
        result = resume()
        assert result.exit_code == 2, result.output
        assert f"error: {settings}: {problem}\n" in result.output, result.output
        assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_a_last_pt_whose_weight_names_were_damaged_is_refused_by_resume_naming_it(two_step_run):
    """A flipped byte in a weight's name inside last.pt (torch checks no CRC) ended the resume with load_state_dict's
    'unexpected RuntimeError: Error(s) in loading state_dict', exit 3."""
    run, resume = two_step_run
    state = load_checkpoint(run / "last.pt")
    name = next(iter(state["model"]))
    state["model"]["x" + name[1:]] = state["model"].pop(name)
    save_checkpoint(run / "last.pt", {key: value for key, value in state.items() if key not in ("format", "version")})
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    result = resume()
    assert result.exit_code == 2, result.output
    assert f"error: {run / 'last.pt'}: checkpoint weights do not match its own configuration (missing {name}" \
        in result.output, result.output
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_a_scale_that_overflows_the_float32_logits_is_refused_up_front(tmp_path):
    """`train --scale 1e308` passed the finite check; every loss was then Inf and the run stopped after
    max_bad_steps steps (minutes in), saying 'lower --lr'."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    result = CliRunner().invoke(app, ["train", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"),
                                      "--scale", "1e308"])
    assert result.exit_code == 2, result.output
    assert result.output == "error: --scale must be at most 1e+37 (the logits are float32), got 1e+308\n"
    resolve_config("cpu", model_overrides={"scale": 1e37}).validate()


@pytest.mark.parametrize("weight_decay", [600.0, 1e308])
def test_a_weight_decay_that_zeroes_or_flips_the_weights_is_refused_up_front(weight_decay):
    """AdamW multiplies each weight by 1 - lr x weight decay: `--weight-decay 600` (lr 2e-3) zeroed or flipped them
    every step and the run ended 'done' at chance accuracy; 1e308 made them NaN and stopped the run after
    max_bad_steps steps, saying 'lower --lr'."""
    with pytest.raises(VoxaugError, match=r"^--weight-decay \S+ times --lr 0.002 must be below 1"):
        resolve_config("cpu", overrides={"weight_decay": weight_decay}).validate()
    resolve_config("cpu", overrides={"weight_decay": 499.0}).validate()


def test_a_run_config_with_bad_augmentations_or_preset_is_refused_by_resume_naming_it(two_step_run):
    """config.json's augmentations were checked only when the pipeline was built ('[augment] names must be ...',
    '--reverb-p ... got 7', naming no file), and an unknown preset was blamed on last.pt ('cannot resume with a
    different preset')."""
    run, resume = two_step_run
    settings = run / "config.json"
    saved = json.loads(settings.read_text())
    for key, value, problem in (("augment", {"names": 5}, "[augment] names must be a list of augmentation names"),
                                ("augment", {"names": [], "reverb": {"p": 7}}, "--reverb-p (reverb p) must be a "
                                                                               "probability in [0, 1], got 7"),
                                ("preset", "nope", "preset 'nope' is not known; accepted: cpu")):
        settings.write_text(json.dumps({**saved, key: value}))
        before = {path.name: path.read_bytes() for path in run.iterdir()}
        result = resume()
        assert result.exit_code == 2, result.output
        assert f"error: {settings}: {problem}" in " ".join(result.output.split()), result.output
        assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_a_last_pt_whose_training_state_was_damaged_is_refused_by_resume_naming_it(two_step_run):
    """An optimizer, sampler, RNG or step entry of the wrong type or shape in last.pt ended the resume 'unexpected
    TypeError/RuntimeError', exit 3 (a moment tensor of another shape only at the first step, after config.json was
    rewritten); it is refused by name, exit 2, and the run folder is left as it was."""
    run, resume = two_step_run
    original = load_checkpoint(run / "last.pt")

    def first_moment(state, value):
        next(iter(state["optimizer"]["state"].values()))["exp_avg"] = value

    damaged = "training state is damaged ("
    damages = [(damaged, lambda state: state.__setitem__("optimizer", "x")),
               (f"{damaged}ValueError: exp_avg is (3,)", lambda state: first_moment(state, torch.zeros(3))),
               (f"{damaged}TypeError: lr, betas", lambda state: state["optimizer"]["param_groups"][0]
                .__setitem__("betas", "x")),
               (damaged, lambda state: state["sampler"].__setitem__("generator", torch.zeros(3, dtype=torch.uint8))),
               (damaged, lambda state: state.__setitem__("augment_generator", "x")),
               (damaged, lambda state: state["rng"].__setitem__("torch", torch.zeros(5056))),
               ("step count", lambda state: state.__setitem__("step", "x")),
               (damaged, lambda state: state.__setitem__("elapsed_s", "x"))]
    for part, damage in damages:
        state = copy.deepcopy(original)
        damage(state)
        save_checkpoint(run / "last.pt", {key: value for key, value in state.items() if key not in ("format", "version")})
        before = {path.name: path.read_bytes() for path in run.iterdir()}
        result = resume()
        assert result.exit_code == 2, result.output
        assert f"error: {run / 'last.pt'}: its {part}" in " ".join(result.output.split()), result.output
        assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_resume_out_of_memory_is_not_reported_as_a_damaged_last_pt(two_step_run, monkeypatch):
    """damaged_state took every RuntimeError while the training state was restored for damage: a CUDA out-of-memory
    on loading the optimizer state said 'its training state is damaged ... put back the last.pt that training wrote,
    or start a new run', of a sound file; and under --debug the traceback lost where the error came from."""
    run, resume = two_step_run
    before = {path.name: path.read_bytes() for path in run.iterdir()}

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", out_of_memory)
    result = resume()
    assert result.exit_code == 3 and "damaged" not in result.output, result.output
    assert "error: unexpected OutOfMemoryError: CUDA out of memory" in result.output, result.output
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_a_damaged_training_state_keeps_the_error_it_comes_from_for_debug(two_step_run, monkeypatch):
    """The damaged-state error was raised ``from None``: with --debug its traceback ended in damaged_state, without
    the line that failed (a bug in the sampler read as damage could not be found)."""
    run, resume = two_step_run
    state = load_checkpoint(run / "last.pt")
    state["elapsed_s"] = "x"
    save_checkpoint(run / "last.pt", {key: value for key, value in state.items() if key not in ("format", "version")})
    monkeypatch.setenv("VOXAUG_DEBUG", "1")
    result = resume()
    assert isinstance(result.exception, VoxaugError) and "damaged" in str(result.exception), result.output
    assert isinstance(result.exception.__cause__, ValueError), result.exception.__cause__


def test_a_moment_tensor_of_shape_scalar_in_last_pt_is_refused_by_resume_naming_it(two_step_run):
    """check_optimizer_state let any 0-dimensional state tensor pass (only ``step`` is one): an ``exp_avg`` of shape
    () was loaded, and the resume failed only at its first step: 'unexpected RuntimeError: output with shape []
    doesn't match the broadcast shape', exit 3."""
    run, resume = two_step_run
    state = load_checkpoint(run / "last.pt")
    next(iter(state["optimizer"]["state"].values()))["exp_avg"] = torch.tensor(0.0)
    save_checkpoint(run / "last.pt", {key: value for key, value in state.items() if key not in ("format", "version")})
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    result = resume()
    assert result.exit_code == 2, result.output
    assert f"error: {run / 'last.pt'}: its training state is damaged (ValueError: exp_avg is () for a weight" in \
        " ".join(result.output.split()), result.output
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_synth_and_fit_without_progress_start_no_tqdm_monitor_thread(tmp_path, monkeypatch):
    """A notebook or service that generates data and trains with progress off got a ``tqdm_monitor`` thread for the
    life of its process: tqdm starts it when any bar is built, even a disabled one (synth, packing, the train bar)."""
    import threading

    import tqdm

    from conftest import TINY_SYNTH
    from voxaug.synth import generate

    if tqdm.tqdm.monitor is not None:  # started by an earlier test's bar
        tqdm.tqdm.monitor.exit()
    monkeypatch.setattr(tqdm.tqdm, "monitor", None)
    data = tmp_path / "data"
    generate(data, TINY_SYNTH, progress=False)
    Trainer(tiny_config(train={"steps": 2, "eval_every": 2}), data, tmp_path / "run", cache_dir=tmp_path / "cache",
            progress=False).fit()
    assert "tqdm_monitor" not in [thread.name for thread in threading.enumerate()]


def test_a_run_s_config_json_given_back_as_config_trains_the_same_weights(two_step_original, tiny_synth, tmp_path):
    """The run folder's record reproduces the run: ``--config RUN/config.json`` (with DATA and --out only) trained
    the same weights, and resumes with it. It was refused as malformed TOML, so the record could not be fed back."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    cache = ["--cache-dir", str(two_step_original / "cache"), "--quiet"]
    first = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "first"), "--steps", "3",
                                     "--eval-every", "3", "--batch", "8", "--segment", "32", "--d-model", "32",
                                     "--layers", "1", "--heads", "2", "--embedding-dim", "32", "--lr", "0.004",
                                     "--margin", "0.3", "--val-fraction", "0.25", "--seed", "5", "--augment",
                                     "specaug,mixup", "--mixup-alpha", "0.5", "--specaug-freq", "3", "--device", "cpu",
                                     *cache])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "again"), "--config",
                                     str(tmp_path / "first" / "config.json"), *cache])
    assert again.exit_code == 0, again.output
    recorded, retrained = (load_checkpoint(tmp_path / run / "last.pt") for run in ("first", "again"))
    assert retrained["config"] == recorded["config"]
    assert all(torch.equal(recorded["model"][key], retrained["model"][key]) for key in recorded["model"])
    resumed = CliRunner().invoke(app, ["train", str(tiny_synth), "--out", str(tmp_path / "again"), "--config",
                                       str(tmp_path / "again" / "config.json"), "--steps", "4", "--resume", *cache])
    assert resumed.exit_code == 0, resumed.output


def test_a_run_config_saved_before_versioned_settings_is_read_back_as_it_was_trained(tmp_path, monkeypatch):
    """A config.json written before split_version and input_norm existed, given as --config, is the split and raw
    features it was trained with (as --resume reads it), not today's defaults; its relative noise folder is the
    working directory's, as --resume reads it, not the run folder's."""
    from voxaug.config import TrainConfig

    record = TrainConfig(augment={"names": ["noise"], "noise": {"noise_dir": "noises"}}).to_dict()
    del record["split_version"], record["model"]["input_norm"]
    (tmp_path / "noises").mkdir()
    torch.save(torch.zeros(20, 40), tmp_path / "noises" / "fan.pt")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({**record, "run": {"speakers": 6}}))
    monkeypatch.chdir(tmp_path)
    config = resolve_config(None, tmp_path / "run" / "config.json")
    assert (config.split_version, config.model.input_norm) == (1, "none")
    assert config.augment["noise"]["noise_dir"] == str(tmp_path / "noises")


def test_a_json_config_that_is_no_run_s_record_is_refused_not_read_as_an_old_run(tmp_path):
    """Every run's config.json has a ``run`` table; a hand-written JSON without one was read as a run saved before
    split_version and input_norm existed: silently split by version 1, and raw features when it set ``[model]``."""
    config = tmp_path / "mine.json"
    config.write_text(json.dumps({"steps": 50, "model": {"d_model": 64}}))
    with pytest.raises(VoxaugError) as refused:
        resolve_config(None, config)
    assert str(refused.value) == (f"{config}: not a run's config.json (it has no \"run\" table, which every run "
                                  "records); give hand-written settings as a TOML file")


def test_a_run_s_config_json_with_fewer_augmentations_named_on_the_command_line(tmp_path):
    """``--config RUN/config.json --augment specaug`` (the run again, less one augmentation) was refused for the
    record's own table of the augmentation left out, which only editing the record could remove: the command line
    beats the file, and the left-out augmentation's settings go with it."""
    from voxaug.config import TrainConfig

    record = TrainConfig(augment={"names": ["specaug", "mixup"], "specaug": {"freq_width": 3},
                                  "mixup": {"alpha": 0.5}}).to_dict()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({**record, "run": {"speakers": 6}}))
    fewer = resolve_config(None, tmp_path / "run" / "config.json", augment_overrides={"names": ["specaug"]})
    assert fewer.augment == {"names": ["specaug"], "specaug": {"freq_width": 3}}
    none = resolve_config(None, tmp_path / "run" / "config.json", augment_overrides={"names": []})
    assert none.augment == {"names": []}
    assert resolve_config(None, tmp_path / "run" / "config.json").augment == record["augment"]


def test_a_run_s_record_with_another_preset_named_is_refused_not_run_under_that_name(tmp_path):
    """A record sets every value a preset gives, so `--config RUN/config.json --preset strong` trained the recorded cpu
    run under the name strong."""
    from voxaug.config import create_config

    record = tmp_path / "config.json"
    record.write_text(json.dumps({**create_config("cpu").to_dict(), "run": {}}))
    with pytest.raises(VoxaugError, match=r"^--preset strong: .*config\.json is the record of a cpu run"):
        resolve_config(preset="strong", toml_path=record)
    assert resolve_config(preset="cpu", toml_path=record).preset == "cpu"
    assert resolve_config(toml_path=record) == resolve_config(preset="cpu", toml_path=record)


@pytest.mark.parametrize("preset", ["", "strnog"])
def test_an_unknown_preset_with_a_run_s_record_is_refused_as_unknown(tmp_path, preset):
    """`--config RUN/config.json --preset ""` (an unset ``$PRESET``) or a misspelt name was refused as another preset
    than the record's ("the run would be named  without being one"), not as the unknown name it is."""
    from voxaug.config import create_config

    record = tmp_path / "config.json"
    record.write_text(json.dumps({**create_config("cpu").to_dict(), "run": {}}))
    with pytest.raises(VoxaugError) as refused:
        resolve_config(preset=preset, toml_path=record)
    assert str(refused.value) == f"--preset {preset!r} is not known; accepted: cpu, strong, boss, baseline"


def test_training_runs_with_gradients_where_the_caller_turned_them_off(tiny_synth, tmp_path):
    """A notebook that ran inference under ``torch.set_grad_enabled(False)`` (or inside ``torch.no_grad()``) and then
    trained failed on the first step with torch's bare 'element 0 of tensors does not require grad'."""
    with torch.no_grad():
        summary = Trainer(tiny_config(train={"steps": 4, "eval_every": 4}), tiny_synth, tmp_path / "run",
                          progress=False).fit()
        assert not torch.is_grad_enabled()  # the caller's setting, back after the call
    assert summary.steps == 4 and summary.skipped_steps == 0


def test_training_leaves_the_callers_random_stream_as_it_was_interrupted_or_not(tiny_synth, tmp_path, monkeypatch):
    """The trainer seeds torch's global generator and draws from it (initial weights, dropout): a notebook's, a
    service's or a test suite's later draws changed with whether it had trained, and were the run's seed's."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Trainer(tiny_config(train={"steps": 4, "eval_every": 4}), tiny_synth, tmp_path / "run", progress=False).fit()
    assert torch.equal(torch.rand(3), expected)

    def interrupted_step(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    torch.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(train={"steps": 4, "eval_every": 4}), tiny_synth, tmp_path / "stopped",
                progress=False).fit()
    assert torch.equal(torch.rand(3), expected)
