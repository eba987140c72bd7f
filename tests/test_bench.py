"""The benchmarks' own logic at tiny sizes: bench.py's targets, interleaving, FLOP counting, peak RSS;
overfit.py's arms, seeds, differences and saturation; the HNSW and scoring back-end benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench  # noqa: E402
import overfit  # noqa: E402
from train_bench import interleaved_medians  # noqa: E402

from conftest import ascii_locale_env  # noqa: E402

from voxaug.config import create_config  # noqa: E402

PASSING = {"augment_overhead": 0.01, "packed_speedup": 20.0, "train_utt_per_s": 150.0,
           "reference_train_utt_per_s": 100.0, "identify_ms_p50": 9.0, "identify_ms_p50_onnx": 6.0, "cli_help_s": 0.3}


def test_targets_pass_and_each_failure_is_named():
    assert bench.failed_targets(PASSING) == []
    for key, value in (("augment_overhead", 0.05), ("packed_speedup", 9.9), ("train_utt_per_s", 99.0),
                       ("identify_ms_p50_onnx", 10.5), ("identify_ms_p50_onnx", 9.5), ("cli_help_s", 0.6)):
        failed = bench.failed_targets({**PASSING, key: value})
        assert len(failed) == 1 and failed[0].startswith(key)


def test_identify_and_embedding_are_timed_with_torch_and_onnx_in_one_run():
    from embed_bench import embedding_throughput, identify_latency, search_cost

    latency = identify_latency(speakers=4, clips=4)
    cost = search_cost(speakers=5, queries=3, dim=8)
    assert cost["search_speakers"] == 5 and all(cost[f"search_ms_{kind}"] > 0 for kind in ("none", "lda", "plda"))
    assert latency["identify_speakers"] == 4 and latency["identify_ms_p50_onnx"] > 0 and latency["identify_ms_p50"] > 0
    assert latency["identify_backend"] == "plda"
    throughput = embedding_throughput(count=4)
    assert throughput["embed_onnx_one_by_one_utt_per_s"] > 0 and throughput["embed_onnx_vs_torch_one_by_one"] > 0


def test_bucketing_is_compared_with_one_by_one_on_as_many_threads_and_thread_counts_are_restored(monkeypatch):
    import embed_bench
    import torch

    calls = []
    real = embed_bench.embed_tensors

    def recording(model, tensors, device):
        calls.append((len(tensors), torch.get_num_threads()))
        return real(model, tensors, device)

    monkeypatch.setattr(embed_bench, "embed_tensors", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        throughput = embed_bench.embedding_throughput(count=3)
        assert torch.get_num_threads() == 2
        embed_bench.identify_latency(speakers=3, clips=2)  # opens its indexes with threads=1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert throughput["embed_threads"] == 2
    assert calls[1] == (3, 2) and calls[2:5] == [(1, 2)] * 3 and calls[5:8] == [(1, 1)] * 3
    assert throughput["embed_bucketing_speedup"] == throughput["embed_utt_per_s"] / throughput["embed_one_by_one_utt_per_s"]
    assert throughput["embed_onnx_vs_torch_one_by_one"] == (throughput["embed_onnx_one_by_one_utt_per_s"]
                                                           / throughput["embed_one_by_one_1_thread_utt_per_s"])


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


def test_overfit_ablation_runs_every_arm_per_seed_and_reports_the_differences(tmp_path):
    result = overfit.run_benchmark(steps=4, seeds=2, speakers=4, utterances=6, eval_every=2, arms=["none", "specaug", "channel"],
                                   first_seed=5, workdir=tmp_path, jobs=1, log=lambda line: None,
                                   model={"d_model": 32, "ffn_dim": 64, "num_layers": 1})
    assert sorted((r["seed"], r["augment"]) for r in result["rows"]) == [
        (5, "channel"), (5, "none"), (5, "specaug"), (6, "channel"), (6, "none"), (6, "specaug")]
    for r in result["rows"]:
        assert r["gap"] == pytest.approx(r["train_acc"] - r["val_acc"], abs=1e-6)
        assert [point["step"] for point in r["curve"]] == [2, 4]
    for arm in ("specaug", "channel"):
        arm_mean = {a: sum(r["val_acc"] for r in result["rows"] if r["augment"] == a) / 2 for a in ("none", arm)}
        assert result["difference"][arm]["val_acc"] == pytest.approx(arm_mean[arm] - arm_mean["none"])
        assert 0 <= result["wins"][arm] <= 2
    assert set(result["none_saturation"]) == {5, 6}
    assert all(s["last_step"] == 4 for s in result["none_saturation"].values())
    assert "| `channel` |" in overfit.table(result)


def test_saturation_finds_where_train_accuracy_stays_at_one_and_validation_peaks():
    curve = [{"step": s, "train_acc": t, "val_acc": v}
             for s, t, v in ((100, 0.5, 0.3), (200, 1.0, 0.6), (300, 0.99, 0.62), (400, 1.0, 0.65), (500, 1.0, 0.64))]
    assert overfit.saturation(curve) == {"train_acc_1_from": 400, "val_peak_step": 400, "last_step": 500}
    assert overfit.saturation(curve[:3])["train_acc_1_from"] is None


def test_hnsw_benchmark_draws_speaker_shaped_vectors_and_measures_recall(tmp_path):
    import hnsw_speakers

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 16))
    vectors = np.repeat(centres, 10, axis=0) + 0.3 * rng.standard_normal((300, 16))
    np.save(tmp_path / "embeddings.npy", (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32))
    (tmp_path / "items.csv").write_text("row,path,speaker\n" + "".join(f"{i},u{i}.pt,s{i // 10}\n" for i in range(300)))
    shape = hnsw_speakers.real_shape(tmp_path, None)
    assert shape["dim"] == 16 and shape["speakers"] == 30 and 0.8 < shape["own_centroid_cosine"] < 1.0
    base, query = hnsw_speakers.draw(shape, speakers=200, per_speaker=10, queries=20)
    assert base.shape == (2000, 16) and query.shape == (20, 16)
    assert np.allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    result = hnsw_speakers.run(tmp_path, None, vectors=2000, per_speaker=10, queries=20)
    assert set(result["sweep"]) >= {"16", "128"}
    assert all(0.0 <= point["recall_at_1"] <= 1.0 and point["ms"] > 0 for point in result["sweep"].values())


def test_backend_ablation_scores_every_arm(trained_run, tiny_synth, tmp_path, capsys):
    import backend_ablation

    assert backend_ablation.main([str(tiny_synth), "--ckpt", str(trained_run / "best.pt"), "--json",
                                  str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["backend"], r["score_norm"]) for r in rows] == backend_ablation.ARMS
    for r in rows:
        assert r["enrolled"] == 7 and 0 <= r["unseen_among_all"] <= r["unseen_among_newcomers"] + 1e-9 <= 1 + 1e-9
        assert 0 <= r["impostors_unknown"] <= 1 and 0 <= r["eer"] <= 1
        clips = sum(1 for _ in (tiny_synth / "unseen" / "test").glob("*/*.pt"))
        assert r["unseen_wrong"] == round((1 - r["unseen_among_all"]) * clips)
        assert (r["unseen_wrong"] > 0) <= r["unseen_wrong_winners"] <= r["unseen_wrong"]
    assert "| lda | asnorm |" in capsys.readouterr().out


def test_calibration_holdout_picks_the_threshold_on_one_fold_and_identifies_the_other(trained_run, tiny_synth, tmp_path,
                                                                                     monkeypatch):
    import backend_ablation
    import calibration_holdout
    from voxaug.embeddings.calibration import calibrate, open_set_scores
    from voxaug.embeddings.evaluation import LabelledEmbeddings

    dealt = calibration_holdout.folds(LabelledEmbeddings(np.zeros((7, 2)), np.array(list("aaabbcc"))))
    assert [fold.tolist() for fold in dealt] == [[0, 2, 3, 5], [1, 4, 6]]
    ckpt = trained_run / "best.pt"
    assert calibration_holdout.main([str(tiny_synth), "--ckpt", str(ckpt), "--json", str(tmp_path / "h.json")]) == 0
    rows = json.loads((tmp_path / "h.json").read_text())["runs"][0]["rows"]
    clips = sum(1 for _ in (tiny_synth / "unseen" / "test").glob("*/*.pt"))
    assert [r["fold"] for r in rows] == [0, 1] and all(r["calibrated_on"] + r["identified"] == clips for r in rows)
    found = backend_ablation.embed_everything(ckpt, tiny_synth, None)
    index = backend_ablation.enrolled_index(found, "plda", "none")
    unseen = found["unseen_test"]
    for row, fold in zip(rows, calibration_holdout.folds(unseen)):
        picked_on = LabelledEmbeddings(unseen.embeddings[fold], unseen.labels[fold])
        record = calibrate(open_set_scores(index, picked_on.embeddings, picked_on.labels.tolist(), "none"), 0.01, "none", "")
        assert row["threshold"] == record["value"] and row["predicted_acceptance"] == record["acceptance"]
        # identify answers the clips the threshold was picked on as evaluate predicted; the other fold is the test
        assert calibration_holdout.answered(index, picked_on, "none", record["value"])["accepted"] == record["acceptance"]
        held = np.setdiff1d(np.arange(clips), fold)
        expected = calibration_holdout.answered(index, LabelledEmbeddings(unseen.embeddings[held], unseen.labels[held]),
                                                "none", record["value"])
        assert row["held_out_acceptance"] == expected["accepted"] and 0 <= row["impostors_unknown"] <= 1
    import render_results

    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    table = render_results.render("h.json").splitlines()
    assert len(table) == 2 + 2 + 1 + 2  # header, a row per fold, the mean, the machine line
    gaps = [abs(r["held_out_acceptance"] - r["predicted_acceptance"]) for r in rows]
    assert table[4].startswith(f"| mean of 2 folds | held-out acceptance off the prediction by {np.mean(gaps):.3f} "
                               f"on average, {max(gaps):.3f} at most |")


def test_backend_ablation_of_several_models_writes_one_run_each_that_the_renderer_reads(trained_run, tiny_synth,
                                                                                         tmp_path, monkeypatch):
    import backend_ablation
    import render_results

    best, last = str(trained_run / "best.pt"), str(trained_run / "last.pt")
    assert backend_ablation.main([str(tiny_synth), "--ckpt", best, best, last, "--json", str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert [run["checkpoint"] for run in result["runs"]] == [best, best, last] and "--ckpt" in result["command"]
    assert result["runs"][0]["rows"] == result["runs"][1]["rows"]  # the same model scores the same
    assert [run["step"] for run in result["runs"]] == [result["runs"][0]["best_step"]] * 2 + [150]
    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    result["runs"] = result["runs"][:2]
    (tmp_path / "two.json").write_text(json.dumps(result))
    table = render_results.render("two.json")
    plda = next(line for line in table.splitlines() if line.startswith("| plda | PLDA |"))
    figure = f"{result['runs'][0]['rows'][3]['unseen_among_all']:.3f}"
    assert plda.startswith(f"| plda | PLDA | {figure}, {figure} | {figure} |")
    seed, augment = result["runs"][0]["seed"], result["runs"][0]["augment"]
    assert f"among all {result['runs'][0]['rows'][0]['enrolled']}: `{augment}` seeds {seed}, {seed} |" in table
    result["runs"][1]["augment"] = augment + ",mixup"
    (tmp_path / "mixed.json").write_text(json.dumps(result))
    assert f"`{augment}` seed {seed}, `{augment},mixup` seed {seed} |" in render_results.render("mixed.json")


def test_checkpoint_view_sets_each_trainings_best_pt_beside_its_last_pt(tmp_path, monkeypatch):
    import render_results

    def run(name: str, seed: int, step: int, among_all: float) -> dict:
        row = {"backend": "plda", "score_norm": "none", "enrolled": 110, "unseen_among_all": among_all,
               "trained_test_among_all": 0.6, "eer": 0.1}
        return {"checkpoint": f"runs/s{seed}/{name}", "augment": "reverb,noise", "seed": seed, "step": step,
                "best_step": 1200, "best_val_acc": 0.665, "rows": [row]}

    runs = [run("best.pt", 0, 1200, 0.5), run("last.pt", 0, 2000, 0.7), run("best.pt", 1, 1200, 0.6), run("last.pt", 1, 2000, 0.6)]
    (tmp_path / "c.json").write_text(json.dumps({"machine": "m", "date": "d", "runs": runs}))
    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    lines = render_results.render("c.json", "checkpoints").splitlines()
    assert lines[2] == "| `reverb,noise` seed 0, 2000 steps | 1200 (0.665) | 0.500 | 0.700 | 0.600 | 0.600 | 0.100 | 0.100 |"
    assert lines[4].startswith("| mean of 2 | | **0.550** | **0.650** |")


def test_retrain_ceiling_makes_each_newcomer_a_class_the_model_can_name(tiny_synth, tmp_path):
    import retrain_ceiling
    from conftest import tiny_config
    from voxaug.train import Trainer

    copy = tmp_path / "data"
    added = retrain_ceiling.with_newcomers_as_classes(tiny_synth, copy)
    newcomers = sorted(p.name for p in (tiny_synth / "unseen" / "enroll").iterdir())
    assert added == sum(1 for _ in (tiny_synth / "unseen" / "enroll").glob("*/*.pt"))
    metadata = json.loads((copy / "metadata.json").read_text())
    mapping = json.loads((copy / "mapping.json").read_text())
    assert set(newcomers) <= set(metadata["speakers"]) and len(mapping["id2speaker"]) == len(metadata["speakers"])
    assert all((copy / clip["feature_path"]).is_file() for clips in metadata["speakers"].values() for clip in clips)
    assert not (copy / "unseen").exists()  # the newcomers' test clips stay out of training
    Trainer(tiny_config(train={"steps": 30, "eval_every": 30}), copy, tmp_path / "run", progress=False).fit()
    result = retrain_ceiling.ceiling(tmp_path / "run" / "best.pt", copy, tiny_synth / "unseen" / "test", None)
    assert result["classes"] == len(metadata["speakers"])
    assert all(0 <= result[key] <= 1 for key in ("unseen_softmax", "unseen_cosine_lda", "trained_test_cosine_lda"))
    assert all(0 <= result[key] <= 1 for key in ("unseen_plda", "trained_test_plda"))


def test_asnorm_cohort_sweep_scores_both_trial_sets_against_every_cohort(trained_run, tiny_synth, tmp_path, capsys,
                                                                          monkeypatch):
    import asnorm_cohorts
    import render_results

    assert asnorm_cohorts.main([str(tiny_synth), "--ckpt", str(trained_run / "best.pt"), "--trials", "unseen",
                                "validation", "--json", str(tmp_path / "a.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert asnorm_cohorts.main([str(tiny_synth), "--ckpt", str(trained_run / "last.pt"), "--trials", "validation",
                                "--set", "tiny", "--json", str(tmp_path / "a.json"), "--append"]) == 0
    runs = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert runs[:2] == first  # --append keeps the runs already there
    assert [(run["set"], run["trials"]) for run in runs] == [("data", "unseen"), ("data", "validation"),
                                                             ("tiny", "validation")]
    clips = sum(1 for _ in (tiny_synth / "unseen").glob("*/*/*.pt"))
    held_out = json.loads((trained_run / "config.json").read_text())["run"]["val_utterances"]
    assert {r["trials"] for r in runs[0]["rows"]} == {clips * (clips - 1) // 2}
    for run in runs:
        for backend in ("none", "lda", "plda"):
            mine = [r for r in run["rows"] if r["backend"] == backend]
            plain = [r for r in mine if r["cohort"] == "none"]
            assert len(plain) == 1 and {"validation", "training"} <= {r["cohort"] for r in mine}
            assert all(0 <= r["eer"] <= 1 and r["min_dcf"] >= 0 for r in mine)
            assert any(r["eer"] != plain[0]["eer"] or r["min_dcf"] != plain[0]["min_dcf"]
                       for r in mine if r["cohort"] != "none")
    out = capsys.readouterr().out
    assert "| plda | validation | 10 |" in out and "validation trials" in out
    assert {r["trials"] for r in runs[1]["rows"]} == {held_out * (held_out - 1) // 2}
    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    table = render_results.render("a.json").splitlines()
    assert len(table) == 2 + 3 * 3 + 2  # (set, trials) groups x back ends, then the machine line
    assert table[2].startswith("| data (1) | unseen (") and "| tiny (1) | validation (" in table[-3]


def test_asnorm_cohort_sweep_adds_an_external_cohort_named_apart_from_the_trials_speakers(trained_run, tiny_synth,
                                                                                         tmp_path):
    import asnorm_cohorts
    from voxaug.checkpoint import load_model

    external = asnorm_cohorts.external_speakers(load_model(trained_run / "last.pt"), tiny_synth, None)
    clips = sorted((tiny_synth / "unseen").glob("[et]*/*/*.pt"))  # enroll and test: every clip of the unseen speakers
    assert len(external.labels) == len(clips)
    assert sorted(external.labels.tolist()) == sorted(f"external:{clip.parent.name}" for clip in clips)
    assert np.allclose(np.linalg.norm(external.embeddings, axis=1), 1.0, atol=1e-4)

    assert asnorm_cohorts.main([str(tiny_synth), "--ckpt", str(trained_run / "last.pt"), "--trials", "validation",
                                "--external-cohort", str(tiny_synth), "--json", str(tmp_path / "a.json")]) == 0
    rows = json.loads((tmp_path / "a.json").read_text())["runs"][0]["rows"]
    for backend in ("none", "lda", "plda"):
        mine = {(r["cohort"], r["top_k"]) for r in rows if r["backend"] == backend}
        assert ("external", 10) in mine and ("external", 20) not in mine  # K is capped at the cohort's 12 clips
        assert not any(cohort == "external centroids" for cohort, _ in mine)  # 2 speakers: fewer than any K


def test_external_cohort_table_names_the_arm_that_lowers_both_on_the_most_models(tmp_path, monkeypatch):
    import render_results

    def row(cohort, top_k, eer, min_dcf):
        return {"backend": "plda", "cohort": cohort, "top_k": top_k, "eer": eer, "min_dcf": min_dcf, "trials": 100,
                "same_trials": 10}

    runs = [{"set": "s", "trials": "unseen", "rows": [row("none", 0, 0.10, 0.50), row("validation", 20, 0.11, 0.60),
                                                      row("external", 10, 0.09, 0.40), row("external", 20, 0.08, 0.45)]},
            {"set": "s", "trials": "unseen", "rows": [row("none", 0, 0.20, 0.70), row("validation", 20, 0.19, 0.60),
                                                      row("external", 10, 0.21, 0.60), row("external", 20, 0.18, 0.65)]}]
    (tmp_path / "x.json").write_text(json.dumps({"date": "d", "machine": "m", "runs": runs}))
    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    table = render_results.render("x.json").splitlines()
    assert "picked on them" in table[0] and len(table) == 5
    assert table[2] == ("| s (2) | unseen (10 same of 100) | plda | 0.150 / 0.600 | 0.150 / 0.600 | 1 of 2 | "
                        "external, K 20 | 0.130 / 0.550 | 2 of 2 |")


def test_cohort_of_speaker_means_averages_each_speakers_vectors_and_counts_its_clips():
    import asnorm_cohorts

    space = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]], dtype=np.float32)
    source = asnorm_cohorts.speaker_means(space, np.array(["a", "a", "b"]))
    assert source.cohort.labels == ["a", "b"]
    assert np.allclose(source.means, [[0.5, 0.5], [3.0, 0.0]]) and source.counts.tolist() == [2.0, 1.0]
    assert np.allclose(source.cohort.vectors, [[0.5 ** 0.5, 0.5 ** 0.5], [1.0, 0.0]])  # unit rows for cosines


def test_onnx_parity_compares_every_length_and_wav_file(trained_run, tiny_synth, tmp_path):
    import onnx_parity

    assert onnx_parity.main([str(tiny_synth), "--ckpt", str(trained_run / "best.pt"), "--max-frames", "120",
                             "--batches", "1", "--json", str(tmp_path / "p.json")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    wavs = len(list(tiny_synth.rglob("*.wav")))
    assert [r["pairs"] for r in rows][1:] == [8, wavs, wavs] and rows[0]["pairs"] > 8
    assert all(r["worst_cosine"] > 0.9999 and r["argmax_same"] == r["pairs"] for r in rows)


def test_onnx_parity_compares_only_the_lengths_the_data_holds(trained_run, tiny_synth, tmp_path):
    import shutil

    import onnx_parity
    import torch

    data = tmp_path / "two"
    data.mkdir()
    for path in sorted(tiny_synth.glob("uttr-*.pt"))[:2]:
        shutil.copy(path, data)
    held = sum(torch.load(p, weights_only=True).shape[0] for p in data.glob("uttr-*.pt"))
    assert onnx_parity.main([str(data), "--ckpt", str(trained_run / "best.pt"), "--max-frames", "3000",
                             "--batches", "1", "--json", str(tmp_path / "p.json")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert rows[0]["compared"].endswith(f"..{held} frames")
    assert rows[0]["worst_cosine"] > 0.9999 and rows[0]["argmax_same"] == rows[0]["pairs"]


def test_a_json_file_in_a_missing_folder_is_refused_before_the_run(tmp_path, capsys):
    import onnx_parity

    with pytest.raises(SystemExit) as exit_info:
        onnx_parity.main([str(tmp_path), "--ckpt", "x.pt", "--json", str(tmp_path / "no" / "p.json")])
    assert exit_info.value.code == 2
    assert f"folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--steps", "-3"], ["--jobs", "two"]])
def test_counts_that_would_end_a_run_in_a_traceback_are_refused_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        overfit.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f": error: argument {argv[0]}: " in err
    assert "must be at least 1" in err or "expected a whole number" in err


def test_crosscheck_arm_records_the_runs_input_norm_segment_and_batch_and_the_table_shows_them_and_other_options(
        tiny_synth, tmp_path, monkeypatch):
    import crosscheck
    import render_results

    monkeypatch.setenv("VOXAUG_TRACE_BATCHES", "2")  # the training runs in the caller's environment, not a bare one
    row = crosscheck.train_arm(tiny_synth, tmp_path / "arm", "none", 0, 4, ("--segment", "32", "--batch", "8"))
    assert len((tmp_path / "arm" / "run" / "batch_trace.jsonl").read_text().splitlines()) == 2
    assert (row["input_norm"], row["segment"], row["batch"]) == ("mean", 32, 8)
    assert 0 <= row["test_acc"] <= 1 and row["options"] == "--segment 32 --batch 8"
    older = {"augment": "none", "options": "--input-norm mean", "seed": 0, "steps": 4, "val_acc": 0.5, "train_acc": 1.0,
             "test_acc": 0.5}  # recorded before the fields existed: the cpu preset's 128 x 32 of then
    warmed = {**older, "options": "--input-norm mean --margin-warmup 750 --weight-decay 0.2", "seed": 1}
    table = render_results.crosscheck_table({"rows": [row, older, warmed, {**warmed, "seed": 2}], "machine": "m",
                                             "date": "d"}).splitlines()
    assert table[2].startswith("| `none` | mean | 128 x 32 | - | 0 |") and table[5].startswith("| `none` | mean | 32 x 8 | - | 0 |")
    assert table[3].startswith("| `none` | mean | 128 x 32 | `--margin-warmup 750 --weight-decay 0.2` | 1 |")
    means = [line for line in table if "mean of" in line]  # the other options make an arm of their own
    assert means == ["| **`none`** | mean | 128 x 32 | `--margin-warmup 750 --weight-decay 0.2` | mean of 2 | 0.500 | 0.500 "
                     "| **0.500** |"]


def test_training_table_scores_with_the_results_arm_else_lda():
    import render_results

    def row(backend: str, among_all: float) -> dict:
        return {"backend": backend, "score_norm": "none", "unseen_among_all": among_all, "unseen_among_newcomers": 0.9,
                "trained_test_among_all": 0.8, "eer": 0.1}

    run = {"training": "t", "seed": 0, "held_out_acc": 0.9, "rows": [row("lda", 0.25), row("plda", 0.75)]}
    result = {"sets": [{"name": "s", "runs": [run]}], "machine": "m", "date": "d"}
    assert "| **0.250** |" in render_results.openset_training_table(result)
    assert "| **0.750** |" in render_results.openset_training_table({**result, "arm": ["plda", "none"]})


def test_gpu_check_amp_verdict_pairs_runs_by_seed_and_gives_the_standard_error():
    import gpu_check

    amp = [{"val_acc": v} for v in (0.62, 0.50, 0.75)]
    fp32 = [{"val_acc": v} for v in (0.60, 0.51, 0.70)]
    verdict = gpu_check.amp_verdict(amp, fp32)
    assert verdict["per_seed_difference"] == [0.02, -0.01, 0.05] and verdict["val_acc_difference"] == 0.02
    assert verdict["standard_error"] == round(0.03 / 3 ** 0.5, 4)  # sd of the differences (ddof 1) / sqrt(3)
    assert gpu_check.amp_verdict(amp[:1], fp32[:1])["standard_error"] is None


def test_gpu_check_reads_predict_csv_as_utf8_under_an_ascii_locale(tmp_path):
    """predict writes its CSV in UTF-8, but gpu_check read it in the locale's encoding: under ``LC_ALL=C`` with
    ``PYTHONUTF8=0`` a speaker named José stopped the cross-device check on a UnicodeDecodeError."""
    out = tmp_path / "predictions.csv"
    out.write_bytes("Id,Category\nuttr-1.pt,Jos\u00e9\n".encode("utf-8"))
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import gpu_check\n"
              "gpu_check.voxaug = lambda *args, **kwargs: None\n"
              "print(ascii(gpu_check.predictions(None, None, 'cpu', gpu_check.Path(sys.argv[2]))))")
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    result = subprocess.run([sys.executable, "-c", script, str(benchmarks), str(out)], capture_output=True, text=True,
                            timeout=300, env=ascii_locale_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ascii(["José"])


def test_gpu_check_table_gives_solo_speeds_only_for_runs_that_had_the_card_alone():
    import render_results

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    alone = render_results.gpu_check_table(json.loads((results / "gpu_check_2026-11-27_h200.json").read_text()))
    shared = render_results.gpu_check_table(json.loads((results / "gpu_check_2026-11-28_h200.json").read_text()))
    assert "utt/s, peak" in alone and "sharing the card" not in alone
    assert "12 runs sharing the card" in shared and "utt/s, peak" not in shared
    assert "| `strong` step, batch 32, interleaved" in shared
    assert "+0.003 ± 0.018 (target" in shared and " ± 0." not in alone  # the first run had no standard error


def test_asnorm_trial_set_without_a_same_speaker_pair_is_skipped_in_one_line(trained_run, tiny_synth, tmp_path, capsys,
                                                                           monkeypatch):
    import asnorm_cohorts

    real = asnorm_cohorts.embed_everything

    def one_validation_clip_each(*args):
        found = real(*args)
        train, held_out = found["rows"]
        labels = np.asarray(found["train"].labels)
        found["rows"] = train, held_out[np.unique(labels[held_out], return_index=True)[1]]
        return found

    monkeypatch.setattr(asnorm_cohorts, "embed_everything", one_validation_clip_each)
    ckpt = str(trained_run / "last.pt")
    assert asnorm_cohorts.main([str(tiny_synth), "--ckpt", ckpt, "--trials", "validation", "unseen",
                                "--json", str(tmp_path / "a.json")]) == 0
    assert [run["trials"] for run in json.loads((tmp_path / "a.json").read_text())["runs"]] == ["unseen"]
    assert "skipped: validation trials: no speaker has two of the" in capsys.readouterr().err
    assert asnorm_cohorts.main([str(tiny_synth), "--ckpt", ckpt, "--trials", "validation",
                                "--json", str(tmp_path / "b.json")]) == 2
    assert "nothing written" in capsys.readouterr().err and not (tmp_path / "b.json").exists()


def test_hnsw_table_prints_a_speed_up_below_one_with_a_decimal():
    import render_results

    def run(dim, speedup):
        return {"dim": dim, "default_ef_search": 128, "sweep": {"128": {"ms": 0.05, "speedup": speedup, "recall_at_1": 1.0}}}

    table = render_results.hnsw_table(run(4, 0.4), run(32, 30.2))
    assert "| **0.4x** |" in table and "| **30x** |" in table and "0x" not in table.replace("30x", "")


def test_gpu_check_sh_help_prints_its_usage_and_installs_nothing(tmp_path):
    import os
    import subprocess

    fake = tmp_path / "python3"  # stands in for the install and the run, should --help reach them
    fake.write_text('#!/bin/sh\necho "ran python3 $*"\nexit 1\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "VOXAUG_WHEELS": str(tmp_path)}
    for flag in ("--help", "-h"):
        done = subprocess.run(["bash", str(script), flag], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0 and "ran python3" not in done.stdout
        assert done.stdout.startswith("usage: bash benchmarks/gpu_check.sh [RESULT.json]")


def test_gpu_check_sh_takes_a_first_option_as_an_option_not_as_the_result_file(tmp_path):
    import os
    import subprocess

    fake = tmp_path / "python3"  # stands in for the install and the run: prints what it was given
    fake.write_text('#!/bin/sh\necho "ran python3 $*"\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "VOXAUG_WHEELS": str(tmp_path)}
    for args, expected in ((["--only", "tests"], "--json gpu_check.json --only tests"),
                           (["out.json", "--only", "tests"], "--json out.json --only tests"), ([], "--json gpu_check.json")):
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0
        assert done.stdout.splitlines()[-1] == f"ran python3 benchmarks/gpu_check.py {expected}"


def test_gpu_check_sh_offline_builds_voxaug_with_the_backend_pyproject_toml_asks_for(tmp_path):
    """Offline (VOXAUG_WHEELS) voxaug was built by the machine's python3 itself (--no-build-isolation), with whatever
    setuptools it holds: `license = "MIT"` needs setuptools 77, and an older one (3.11's venv holds 65.5) refused
    pyproject.toml. The build is isolated, its backend taken from the wheels in DIR as the rest is."""
    import os

    fake = tmp_path / "python3"  # stands in for the install and the run: logs what it was given
    fake.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/calls"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "VOXAUG_WHEELS": str(tmp_path)}
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    install = (tmp_path / "calls").read_text().splitlines()[0]
    assert install == f"-m pip install -q --no-index --find-links {tmp_path} -e .[train,test]"


def test_onnx_parity_reads_the_wav_files_at_the_checkpoints_sample_rate(trained_run, tiny_synth, tmp_path):
    import onnx_parity
    from voxaug.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(trained_run / "best.pt")
    state["frontend"].update(sample_rate=8000, f_max=4000.0)  # as `voxaug train --sample-rate 8000` saves it
    save_checkpoint(tmp_path / "8k.pt", state)
    assert onnx_parity.main([str(tiny_synth), "--ckpt", str(tmp_path / "8k.pt"), "--max-frames", "60",
                             "--batches", "0", "--json", str(tmp_path / "p.json")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert all(r["worst_cosine"] > 0.9999 and r["argmax_same"] == r["pairs"] for r in rows if r["pairs"])


def voxaug_in_process(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    """gpu_check's ``voxaug`` helper run through CliRunner: a stage's commands and files are under test, not the process
    each started (six torch imports); a non-zero exit raises as gpu_check.command does."""
    from typer.testing import CliRunner

    from voxaug.cli.main import app

    arguments = [str(a) for a in args]
    result = CliRunner().invoke(app, arguments)
    if result.exit_code != 0:
        raise RuntimeError(f"voxaug {' '.join(arguments[:5])} ... exited {result.exit_code}: {result.output[-1500:]}")
    return subprocess.CompletedProcess(arguments, result.exit_code, result.stdout, result.stderr)


def test_gpu_check_embed_identify_stage_replaces_the_index_it_wrote_before(trained_run, tiny_synth, tmp_path,
                                                                           monkeypatch):
    """`--device cpu` writes spk-cpu.faiss twice (as a rerun on a card reuses --workdir's spk-cuda.faiss)."""
    import gpu_check

    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "voxaug", voxaug_in_process)
    result = gpu_check.embed_and_identify(tiny_synth, trained_run / "best.pt", tmp_path)
    assert result["ok"] and result["min_cosine_gpu_vs_cpu"] > 0.99
    assert result["same_decision_gpu_vs_cpu"] == result["clips"] > 0


def test_hnsw_benchmark_reads_items_csv_as_embed_writes_it(tmp_path):
    """`voxaug embed` writes a clip name's own bytes (not UTF-8 on some file systems) into items.csv; the benchmark
    read it as strict UTF-8 (and without newline="", which the csv module needs) and failed with UnicodeDecodeError."""
    import hnsw_speakers

    rng = np.random.default_rng(0)
    vectors = np.repeat(np.eye(4), 3, axis=0) + 0.1 * rng.standard_normal((12, 4))
    np.save(tmp_path / "embeddings.npy", (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32))
    rows = "".join(f'{i},"caf\xe9 {i}\r\nclip.wav",s{i // 3}\n' for i in range(12))
    (tmp_path / "items.csv").write_bytes(b"row,path,speaker\n" + rows.encode("latin-1"))
    shape = hnsw_speakers.real_shape(tmp_path, None)
    assert shape["speakers"] == 4 and shape["utterances"] == 12


@pytest.mark.parametrize("argv", [["train", "DATA", "--seeds", "0"], ["train", "DATA", "--jobs", "0"],
                                  ["train", "DATA", "--steps", "0"],
                                  ["build", "OUT", "--speakers", "0", "--newcomers", "0", "--impostors", "0"]])
def test_crosscheck_counts_that_would_end_in_a_traceback_or_an_empty_set_are_refused_in_one_line(argv, tmp_path,
                                                                                                  capsys):
    """--seeds 0 ended in StatisticsError and --jobs 0 in ValueError after the parse, --steps 0 in a
    CalledProcessError from `voxaug train`, and build --speakers 0 wrote a set with no training speaker."""
    import crosscheck

    with pytest.raises(SystemExit) as exit_info:
        workdir = ["--workdir", str(tmp_path)] if argv[0] == "train" else []
        crosscheck.main([argv[0], str(tmp_path / argv[1]), *argv[2:], *workdir])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f": error: argument {argv[2]}: must be at least " in err


def test_gpu_check_table_renders_a_run_of_one_training_at_a_time_as_gpu_check_records_it_now():
    """`gpu_check.py --jobs 1` (or a 1-CPU machine) records concurrent_runs 1 but, since the runs share the card,
    neither utt_per_s nor amp_speedup: the table's solo branch failed with KeyError 'utt_per_s'."""
    import render_results

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    result = json.loads((results / "gpu_check_2026-11-28_h200.json").read_text())
    training = result["stages"]["training"]
    training["concurrent_runs"] = 1
    assert not any("utt_per_s" in run for run in training["runs"]) and "amp_speedup" not in training["amp_vs_fp32"]["boss"]
    table = render_results.gpu_check_table(result)
    speed = {amp: np.mean([r["steps"] * r["batch"] / r["train_s"] for r in training["runs"]
                           if r["preset"] == "boss" and r["amp"] is amp]) for amp in (True, False)}
    assert f"| {speed[True]:.0f} / {speed[False]:.0f} utt/s, peak " in table and "sharing the card" not in table
    assert f"AMP {speed[True] / speed[False]:.2f}x float32's speed" in table


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--seeds", "0"]])
def test_retrain_ceiling_refuses_a_count_below_one_before_copying_the_data(argv, tiny_synth, tmp_path, capsys):
    """--steps 0 copied the data and then ended in a CalledProcessError from `voxaug train`; --seeds 0 trained
    nothing and wrote an empty table."""
    import retrain_ceiling

    with pytest.raises(SystemExit) as exit_info:
        retrain_ceiling.main([str(tiny_synth), "--workdir", str(tmp_path / "work"), *argv])
    assert exit_info.value.code == 2
    assert f": error: argument {argv[0]}: must be at least 1, got 0" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "work").exists()


def test_retrain_ceiling_shows_the_failing_voxaug_trains_own_error_in_one_line(tiny_synth, tmp_path, capsys):
    """Run again on a workdir that holds a run, without --reuse, it ended in a CalledProcessError traceback after
    `voxaug train`'s own refusal; it now ends with that refusal, as crosscheck.py shows a failed command."""
    import retrain_ceiling

    work = tmp_path / "work"
    (work / "run-seed0").mkdir(parents=True)
    (work / "run-seed0" / "last.pt").write_bytes(b"")
    assert retrain_ceiling.main([str(tiny_synth), "--workdir", str(work), "--steps", "2", "--seeds", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: `voxaug train ") and err[0].endswith("exited with status 2:"), err
    assert "already holds a run" in err[-1] and "Traceback" not in "\n".join(err), err


def test_backend_ablation_labels_the_dir_column_with_the_target_far_it_was_run_at(trained_run, tiny_synth, tmp_path,
                                                                                 capsys, monkeypatch):
    """The DIR column said "at FAR 1%" whatever --target-far was, in the printed table and the rendered one."""
    import backend_ablation
    import render_results

    monkeypatch.setattr(backend_ablation, "ARMS", [("none", "none")])
    assert backend_ablation.main([str(tiny_synth), "--ckpt", str(trained_run / "best.pt"), "--target-far", "0.05",
                                  "--json", str(tmp_path / "b.json")]) == 0
    assert "| DIR at FAR 5% |" in capsys.readouterr().out
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["target_far"] == 0.05 and "| DIR at FAR 5% |" in render_results.backend_table(result)
    del result["target_far"]  # as written before it was recorded, with the default
    assert "| DIR at FAR 1% |" in render_results.backend_table(result)


def test_crosscheck_train_shows_the_failing_voxaug_commands_own_error(tiny_synth, tmp_path, capsys):
    """A failed `voxaug train` ended crosscheck in a CalledProcessError traceback naming the command and its exit
    status only: voxaug's own one-line error, captured, was never shown."""
    import crosscheck

    assert crosscheck.main(["train", str(tiny_synth), "--arms", "none", "--seeds", "1", "--steps", "2", "--jobs", "1",
                            "--train-options", "--batch -3", "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: `voxaug train ") and err[0].endswith("--batch -3` exited with status 2:"), err
    assert err[-1] == "  error: --batch must be a whole number in [1, 2147483647], got -3", err


@pytest.mark.parametrize("script", ["overfit", "crosscheck"])
@pytest.mark.parametrize("arms", ["", " ; "])
def test_an_empty_arm_list_is_refused_in_one_line(script, arms, tmp_path, capsys, monkeypatch):
    """``crosscheck.py train --arms ""`` trained nothing and printed an empty table; ``overfit.py --arms ""`` trained
    every arm, as if no list had been given."""
    import crosscheck

    def no_training(*args, **kwargs):
        raise AssertionError("an empty arm list went on to training")

    monkeypatch.setattr(overfit, "generate", no_training)
    with pytest.raises(SystemExit) as exit_info:
        if script == "overfit":
            overfit.main(["--arms", arms, "--quick", "--workdir", str(tmp_path)])
        else:
            crosscheck.main(["train", str(tmp_path), "--arms", arms, "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f": error: argument --arms: no arms in {arms!r}; give ';'-separated --augment specs, such as "
                        "'none;specaug'"), err
    with pytest.raises(ValueError, match="arms: an empty list"):
        overfit.run_benchmark(steps=1, seeds=1, speakers=2, utterances=2, eval_every=1, arms=[], workdir=tmp_path)


@pytest.mark.parametrize("argv, steps", [(["--quick", "--steps", "40"], 40), (["--steps", "40", "--quick"], 40),
                                         (["--quick"], 5), ([], 20)])
def test_train_bench_quick_keeps_an_explicit_steps(argv, steps, monkeypatch):
    """``--quick`` replaced the timed steps with 5 whatever ``--steps`` said, without a word."""
    import train_bench

    class Ran(Exception):
        pass

    def run(data, preset, batch, timed, quick, device):
        raise Ran(timed, quick)

    monkeypatch.setattr(train_bench, "run", run)
    with pytest.raises(Ran) as ran:
        train_bench.main(argv)
    assert ran.value.args == (steps, "--quick" in argv)


@pytest.mark.parametrize("script", ["backend_ablation", "calibration_holdout"])
@pytest.mark.parametrize("rate", ["2", "0", "1", "-0.1", "nan", "abc"])
def test_a_target_far_outside_zero_to_one_is_refused_before_any_embedding(tmp_path, monkeypatch, capsys, script, rate):
    """``--target-far 2`` was checked only when calibrating, after every embedding: a traceback minutes in."""
    import importlib

    module = importlib.import_module(script)

    def embedded(*args, **kwargs):
        raise AssertionError("embedded before --target-far was checked")

    monkeypatch.setattr(module, "embed_everything", embedded)
    with pytest.raises(SystemExit) as stopped:
        module.main([str(tmp_path), "--ckpt", str(tmp_path / "best.pt"), "--target-far", rate])
    assert stopped.value.code == 2
    assert f"argument --target-far: must be a rate in (0, 1), got {rate!r}" in capsys.readouterr().err


def test_overfit_saturation_line_of_a_run_that_never_saturated_says_so():
    """A ``none`` run whose clean train accuracy never stayed at 1.0 printed "1.0 from step None"."""
    result = {"none_saturation": {0: {"train_acc_1_from": None, "val_peak_step": 4, "last_step": 4},
                                  1: {"train_acc_1_from": 400, "val_peak_step": 300, "last_step": 500}}}
    lines = overfit.saturation_lines(result)
    assert lines[0] == ("none, seed 0: clean train accuracy below 1.0 at the end, validation peaked at step 4, "
                        "run ended at step 4")
    assert lines[1] == ("none, seed 1: clean train accuracy 1.0 from step 400, validation peaked at step 300, "
                        "run ended at step 500")


@pytest.mark.parametrize("script", ["asnorm_cohorts", "backend_ablation", "calibration_holdout"])
def test_an_empty_cache_dir_is_refused_before_any_embedding(tmp_path, monkeypatch, capsys, script):
    """``--cache-dir ""`` (a variable unset) was ``Path("")``, the working directory, which the run filled with
    cache folders; `voxaug --cache-dir ""` refuses it."""
    import importlib

    module = importlib.import_module(script)

    def embedded(*args, **kwargs):
        raise AssertionError("embedded before --cache-dir was checked")

    monkeypatch.setattr(module, "embed_everything", embedded)
    with pytest.raises(SystemExit) as stopped:
        module.main([str(tmp_path), "--ckpt", str(tmp_path / "best.pt"), "--cache-dir", ""])
    assert stopped.value.code == 2
    assert "argument --cache-dir: an empty folder name; give a folder or leave the option out" in capsys.readouterr().err


@pytest.mark.parametrize("script,argv,first_work", [
    ("gpu_check", ["--device", "cpu"], "environment"), ("overfit", [], "run_benchmark"),
    ("retrain_ceiling", ["data"], "with_newcomers_as_classes"), ("crosscheck", ["train", "data"], "ProcessPoolExecutor")])
def test_an_empty_workdir_is_refused_before_anything_in_the_working_directory_is_touched(
        tmp_path, monkeypatch, capsys, script, argv, first_work):
    """``--workdir ""`` (a variable unset) was ``Path("")``, the working directory: gpu_check removed its runs/
    folder (``rm -r runs`` before its first stage), and the others filled it with data and run folders."""
    import importlib

    module = importlib.import_module(script)

    def worked(*args, **kwargs):
        raise AssertionError("went on to work before --workdir was checked")

    monkeypatch.setattr(module, first_work, worked)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    argv = [*argv, "--workdir", ""]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as stopped:
        module.main() if script == "gpu_check" else module.main(argv)
    assert stopped.value.code == 2
    assert "argument --workdir: an empty folder name" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"] and (tmp_path / "runs" / "mine").is_dir()


def test_a_benchmark_folder_option_refuses_a_name_of_only_whitespace_as_the_commands_do():
    """``--cache-dir " "`` or ``--workdir " "`` made a folder named by a space."""
    import argparse

    from report import folder_name

    with pytest.raises(argparse.ArgumentTypeError, match=r"a folder name of only whitespace \(' '\)"):
        folder_name(" ")
    assert folder_name(" x") == Path(" x")  # whitespace around a name is the user's to give


def test_json_output_refuses_a_name_of_only_whitespace_as_folder_name_does():
    """``--json " "`` wrote the results to a file named by a space (``wrote  ``)."""
    import argparse

    from report import json_output

    with pytest.raises(argparse.ArgumentTypeError, match=r"^a file name of only whitespace \(' '\); give a file for the "
                                                         r"JSON results or leave the option out$"):
        json_output(" ")
    assert json_output(" x.json") == Path(" x.json")  # whitespace around a name is the user's to give
