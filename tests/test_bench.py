"""The benchmarks' own logic at tiny sizes: bench.py's targets, interleaving, FLOP counting, peak RSS;
overfit.py's arms, seeds and mean difference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench  # noqa: E402
import overfit  # noqa: E402
from train_bench import interleaved_medians  # noqa: E402

from voxaug.config import create_config  # noqa: E402

PASSING = {"augment_overhead": 0.01, "packed_speedup": 20.0, "train_utt_per_s": 150.0,
           "reference_train_utt_per_s": 100.0}


def test_targets_pass_and_each_failure_is_named():
    assert bench.failed_targets(PASSING) == []
    for key, value in (("augment_overhead", 0.05), ("packed_speedup", 9.9), ("train_utt_per_s", 99.0)):
        failed = bench.failed_targets({**PASSING, key: value})
        assert len(failed) == 1 and failed[0].startswith(key)


def test_main_exits_non_zero_and_names_the_failed_target(monkeypatch, tmp_path, capsys):
    slow = {**PASSING, "train_utt_per_s": 50.0}
    measured = {**slow, "failed_targets": bench.failed_targets(slow)}
    monkeypatch.setattr(bench, "run_benchmarks", lambda size, quiet: measured)
    monkeypatch.setattr(bench, "markdown_table", lambda result: "table")
    assert bench.main(["--quick", "--json", str(tmp_path / "out.json")]) == 1
    assert "train_utt_per_s" in capsys.readouterr().err
    assert '"train_utt_per_s": 50.0' in (tmp_path / "out.json").read_text()


def test_variants_are_timed_in_turn():
    calls: list[str] = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_convolution_flops_count_depthwise_groups():
    """The depthwise convolutions (the pointwise ones run as matrix products): forward and backward
    are 3x the forward's multiply-adds x 2, not FlopCounterMode's dense count of the backward."""
    batch, segment, classes = 2, 16, 7
    m = create_config("cpu").model
    forward = m.num_layers * batch * segment * m.d_model * m.kernel_size * 2
    flops = bench.step_flops("cpu", classes, batch, segment)
    assert flops["train_gflop_conv"] == pytest.approx(3 * forward / 1e9)
    assert flops["train_gflop_per_step"] > flops["train_gflop_conv"]


def test_child_peak_rss_counts_only_the_child():
    baseline = bench.child_peak_rss_mb([sys.executable, "-c", "pass"])
    touch_200_mib = "b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    grown = bench.child_peak_rss_mb([sys.executable, "-c", touch_200_mib])
    assert baseline < 100
    assert 190 <= grown - baseline < 260  # MiB, whatever unit the platform reports


def test_overfit_benchmark_runs_both_arms_per_seed_and_reports_the_mean_difference(tmp_path):
    result = overfit.run_benchmark(steps=2, seeds=2, speakers=4, utterances=6, augment="specaug", first_seed=5,
                                   workdir=tmp_path, jobs=1, log=lambda line: None)
    assert sorted((r["seed"], r["augment"]) for r in result["rows"]) == [
        (5, "none"), (5, "specaug"), (6, "none"), (6, "specaug")]
    for r in result["rows"]:
        assert r["gap"] == pytest.approx(r["train_acc"] - r["val_acc"], abs=1e-6)
    for key in ("val_acc", "gap"):
        arm_mean = {arm: sum(r[key] for r in result["rows"] if r["augment"] == arm) / 2 for arm in ("none", "specaug")}
        assert result["difference"][key] == pytest.approx(arm_mean["specaug"] - arm_mean["none"])
    assert "| **difference** |" in overfit.table(result)
