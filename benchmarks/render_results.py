"""Render the result tables in docs/ and the README from benchmarks/results/*.json, so no number is retyped.

A table in a docs page sits between two markers that name its JSON file:

    <!-- results: bench_quick_2026-11-28_amd-epyc-2core.json -->
    ...rendered table...
    <!-- /results -->

    python benchmarks/render_results.py           # rewrite every marked table in docs/ and the README
    python benchmarks/render_results.py --check   # exit 1 naming each table that differs from its JSON
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from report import percent, times

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.\-]+)(?: (?P<view>\w+))? -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
HELD_OUT = (120, 180)  # crosscheck's validation and test clips


def bench_table(result: dict) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import markdown_table

    return markdown_table(result)


def crosscheck_table(result: dict) -> str:
    """Per-seed rows, then the mean of each arm (augmentation, input normalisation, segment and batch, any other
    `voxaug train` options) over its seeds, val + test weighted by clip count. Rows recorded before crosscheck.py
    stored the run's input normalisation, segment and batch ran with the options they name and the cpu preset's
    128 x 32 of then."""
    counts = {(row.get("val_clips", HELD_OUT[0]), row.get("test_clips", HELD_OUT[1])) for row in result["rows"]}
    val_n, test_n = counts.pop() if len(counts) == 1 else HELD_OUT  # rows recorded before the counts: the default set's
    lines = [f"| augment | input norm | segment x batch | other options | seed | val acc ({val_n} clips) | "
             f"test acc ({test_n} clips) | val + test ({val_n + test_n} clips) |", "|---|---|---|---|---|---|---|---|"]
    arms: dict[tuple[str, str, str, str], list[tuple[float, float]]] = defaultdict(list)

    def split_options(row: dict) -> tuple[dict[str, str], list[str]]:
        """The row's options with columns of their own (each takes one value), and the rest in order."""
        words, own, rest = iter(row.get("options", "").split()), {}, []
        for word in words:
            if word in ("--input-norm", "--segment", "--batch"):
                own[word] = next(words, "")
            else:
                rest.append(word)
        return own, rest

    def norm(row: dict) -> str:
        return row.get("input_norm") or split_options(row)[0].get("--input-norm") or "none"

    def shape(row: dict) -> str:
        return f"{row.get('segment', 128)} x {row.get('batch', 32)}"

    def other(row: dict) -> str:
        rest = split_options(row)[1]
        return f"`{' '.join(rest)}`" if rest else "-"

    def order(row: dict) -> tuple:
        return norm(row) != "none", shape(row) != "128 x 32", other(row) != "-", row["seed"], row["augment"] != "none", \
            row["augment"], other(row)

    for row in sorted(result["rows"], key=order):
        both = (val_n * row["val_acc"] + test_n * row["test_acc"]) / (val_n + test_n)
        lines.append(f"| `{row['augment']}` | {norm(row)} | {shape(row)} | {other(row)} | {row['seed']} | "
                     f"{row['val_acc']:.3f} | {row['test_acc']:.3f} | {both:.3f} |")
        arms[(row["augment"], norm(row), shape(row), other(row))].append((row["val_acc"], row["test_acc"]))
    for (arm, input_norm, size, options), scores in arms.items():
        if len(scores) > 1:
            val, test = statistics.fmean(s[0] for s in scores), statistics.fmean(s[1] for s in scores)
            both = (val_n * val + test_n * test) / (val_n + test_n)
            lines.append(f"| **`{arm}`** | {input_norm} | {size} | {options} | mean of {len(scores)} | {val:.3f} | "
                         f"{test:.3f} | **{both:.3f}** |")
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


def backend_crosscheck_table(result: dict) -> str:
    """Unseen speakers among all enrolled, per model, for each back end and score normalisation (models of one
    augmentation are named by their seeds alone)."""
    first = result["runs"][0]["rows"]
    arms = [(r["backend"], r["score_norm"]) for r in first]
    runs = result["runs"]
    if len({run["augment"] for run in runs}) == 1:
        models = f"`{runs[0]['augment']}` seeds " + ", ".join(str(run["seed"]) for run in runs)
    else:
        models = ", ".join(f"`{run['augment']}` seed {run['seed']}" for run in runs)
    lines = [f"| back end | score | unseen among all {first[0]['enrolled']}: " + models
             + " | mean | among newcomers (mean) | trained speakers' test clips among all (mean) "
             "| impostors unknown (mean) | EER (mean) |", "|---|---|---|---|---|---|---|---|"]
    for backend, norm in arms:
        rows = [next(r for r in run["rows"] if (r["backend"], r["score_norm"]) == (backend, norm))
                for run in result["runs"]]
        mean = {key: statistics.fmean(r[key] for r in rows) for key in
                ("unseen_among_all", "unseen_among_newcomers", "trained_test_among_all", "impostors_unknown", "eer")}
        lines.append(f"| {backend} | {score_label(rows[0])} | " + ", ".join(f"{r['unseen_among_all']:.3f}" for r in rows)
                     + f" | {mean['unseen_among_all']:.3f} | {mean['unseen_among_newcomers']:.3f} | "
                       f"{mean['trained_test_among_all']:.3f} | {mean['impostors_unknown']:.3f} | {mean['eer']:.3f} |")
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


DEFAULT_ARM = ("plda", "none")
"""The back end and score normalisation ``embed --index`` uses by default: bold in the tables."""
TRAINING_ARM = ("lda", "none")
"""The arm the training comparisons (openset_training.json) were scored with: the default when they were measured."""
BACKEND_COLUMNS = [("unseen_among_all", "unseen among all {n}"), ("unseen_among_newcomers", "unseen among the newcomers"),
                   ("trained_test_among_all", "trained speakers' test clips among all {n}"), ("eer", "EER"),
                   ("min_dcf", "minDCF"), ("dir", "DIR at FAR {far}"), ("impostors_unknown", "impostors answered unknown")]
COMPACT_COLUMNS = ("unseen_among_all", "unseen_among_newcomers", "eer", "min_dcf")


def arm_row(rows: list[dict], arm: tuple[str, str]) -> dict:
    return next(row for row in rows if (row["backend"], row["score_norm"]) == arm)


def score_label(row: dict) -> str:
    """What an arm's scores are: AS-norm, or the back end's own score (PLDA or cosine)."""
    return "AS-norm" if row["score_norm"] == "asnorm" else "PLDA" if row["backend"] == "plda" else "cosine"


def backend_table(result: dict, compact: bool = False) -> str:
    """One model's back-end ablation: every back end with and without AS-norm, the default (plda) in bold;
    ``compact`` (the README's view) keeps the identification and verification columns only."""
    enrolled = result["rows"][0]["enrolled"]
    columns = [(key, title) for key, title in BACKEND_COLUMNS if not compact or key in COMPACT_COLUMNS]
    far = percent(result.get("target_far", 0.01))  # results written before it was recorded used the default
    lines = ["| back end | score | " + " | ".join(title.format(n=enrolled, far=far) for _, title in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for row in result["rows"]:
        cells = [row["backend"], score_label(row)]
        cells += [f"{row[key]:.3f}" for key, _ in columns]
        if (row["backend"], row["score_norm"]) == DEFAULT_ARM:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines if compact else lines + ["", f"{result['machine']}, {result['date']}"])


def checkpoint_table(result: dict) -> str:
    """Each training's ``best.pt`` (best closed-set validation accuracy) against its ``last.pt`` (the end of the
    schedule), scored by the default arm: which checkpoint to embed with."""
    trainings: dict[str, dict[str, dict]] = defaultdict(dict)  # run folder -> {"best.pt": run, "last.pt": run}
    for run in result["runs"]:
        trainings[str(Path(run["checkpoint"]).parent)][Path(run["checkpoint"]).name] = run
    pairs = [(runs["best.pt"], runs["last.pt"]) for runs in trainings.values()]
    enrolled = pairs[0][0]["rows"][0]["enrolled"]
    lines = [f"| training | `best.pt`: step (validation accuracy) | unseen among all {enrolled}: `best.pt` | `last.pt` "
             "| trained speakers' test clips among all: `best.pt` | `last.pt` | EER: `best.pt` | `last.pt` |",
             "|---|---|---|---|---|---|---|---|"]
    keys = ("unseen_among_all", "trained_test_among_all", "eer")
    for best, last in pairs:
        scored = [arm_row(best["rows"], DEFAULT_ARM), arm_row(last["rows"], DEFAULT_ARM)]
        lines.append(f"| `{last['augment']}` seed {last['seed']}, {last['step']} steps | {best['step']} ({best['best_val_acc']:.3f}) | "
                     + " | ".join(f"{scored[0][key]:.3f} | {scored[1][key]:.3f}" for key in keys) + " |")
    means = [statistics.fmean(arm_row(pair[side]["rows"], DEFAULT_ARM)[key] for pair in pairs)
             for key in keys for side in (0, 1)]
    lines.append(f"| mean of {len(pairs)} | | " + " | ".join(f"**{mean:.3f}**" for mean in means) + " |")
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


def openset_training_table(result: dict) -> str:
    """Training choices against the open-set figure: per set and arm, one back end's unseen top-1 among all
    enrolled per seed and its mean, beside closed-set held-out accuracy and EER. The back end is the
    result's ``arm`` (``[backend, score_norm]``), else LDA with cosine, the default when the first were measured."""
    arm = tuple(result.get("arm", TRAINING_ARM))
    lines = ["| set | training | seeds | held-out accuracy (closed set) | unseen among all enrolled, per seed | mean "
             "| among the newcomers | trained speakers' test clips among all | EER |", "|---|---|---|---|---|---|---|---|---|"]
    for data in result["sets"]:
        arms: dict[str, list[dict]] = defaultdict(list)
        for run in data["runs"]:
            arms[run["training"]].append(run)
        for training, runs in arms.items():
            rows = [arm_row(run["rows"], arm) for run in runs]
            mean = {key: statistics.fmean(r[key] for r in rows) for key in
                    ("unseen_among_all", "unseen_among_newcomers", "trained_test_among_all", "eer")}
            held_out = statistics.fmean(run["held_out_acc"] for run in runs)
            lines.append(f"| {data['name']} | {training} | {', '.join(str(run['seed']) for run in runs)} | {held_out:.3f} | "
                         + ", ".join(f"{r['unseen_among_all']:.3f}" for r in rows)
                         + f" | **{mean['unseen_among_all']:.3f}** | {mean['unseen_among_newcomers']:.3f} | "
                           f"{mean['trained_test_among_all']:.3f} | {mean['eer']:.3f} |")
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


def retrain_ceiling_table(result: dict) -> str:
    """Newcomers' test clips among everyone, per seed: a model retrained with them as classes against the usual
    model with them enrolled, each scored by cosine after LDA and by PLDA."""
    lines = ["| seed | retrained with the newcomers as classes: softmax | cosine (LDA) | PLDA | its trained speakers' test "
             "clips, cosine / PLDA | enrolled without retraining: cosine (LDA) | PLDA | its trained speakers' test clips, "
             "cosine / PLDA |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        usual = (f"{row['usual_unseen_among_all']:.3f} | {row['usual_unseen_plda']:.3f} | "
                 f"{row['usual_trained_test_among_all']:.3f} / {row['usual_trained_test_plda']:.3f}"
                 if "usual_unseen_among_all" in row else "- | - | -")
        lines.append(f"| {row['seed']} | {row['unseen_softmax']:.3f} | {row['unseen_cosine_lda']:.3f} | "
                     f"{row['unseen_plda']:.3f} | {row['trained_test_cosine_lda']:.3f} / {row['trained_test_plda']:.3f} | "
                     f"{usual} |")
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


def _asnorm_groups(result: dict) -> dict[tuple[str, str, str], list[list[dict]]]:
    """asnorm_cohorts.py's rows grouped by (set, trials, back end): one list of rows per model."""
    groups: dict[tuple[str, str, str], list[list[dict]]] = defaultdict(list)
    for run in result["runs"]:
        for backend in dict.fromkeys(row["backend"] for row in run["rows"]):
            groups[(run["set"], run["trials"], backend)].append([row for row in run["rows"] if row["backend"] == backend])
    return groups


def _lowers_both(row: dict, plain: dict) -> bool:
    return row["eer"] < plain["eer"] and row["min_dcf"] < plain["min_dcf"]


def _arm(models: list[list[dict]], arm: tuple[str, int]) -> list[dict | None]:
    """Each model's row of one (cohort, K) arm, ``None`` where that model lacks it."""
    return [next((row for row in rows if (row["cohort"], row["top_k"]) == arm), None) for rows in models]


def _plain_rows(models: list[list[dict]]) -> list[dict]:
    """Each model's row without AS-norm."""
    return [next(row for row in rows if row["cohort"] == "none") for rows in models]


def _mean_eer_dcf(rows: list[dict]) -> str:
    return f"{statistics.fmean(r['eer'] for r in rows):.3f} / {statistics.fmean(r['min_dcf'] for r in rows):.3f}"


def _asnorm_cells(rows: list[dict], plains: list[dict]) -> str:
    """Mean EER / minDCF of one arm over the models, and on how many it lowers both."""
    if None in rows:  # a cohort of fewer clips than the arm's K: the sweep left that arm out
        return "- | -"
    return f"{_mean_eer_dcf(rows)} | {sum(_lowers_both(r, p) for r, p in zip(rows, plains))} of {len(rows)}"


def asnorm_cohorts_table(result: dict) -> str:
    """Per set, trial set and back end, over its models: the plain score's EER and minDCF, AS-norm's with the stored
    cohort (validation, K 20), how many models that cohort lowers both on, and every cohort and K that lowers both
    on every model."""
    lines = ["| set (models) | trials | back end | plain EER / minDCF (mean) | AS-norm, stored cohort (validation, K 20): "
             "EER / minDCF (mean) | models where it lowers both | cohorts and K that lower both on every model |",
             "|---|---|---|---|---|---|---|"]
    for (name, trials, backend), models in _asnorm_groups(result).items():
        plains = _plain_rows(models)
        everywhere: dict[str, list[str]] = defaultdict(list)
        for arm in [(row["cohort"], row["top_k"]) for row in models[0] if row["cohort"] != "none"]:
            found = _arm(models, arm)
            if all(row is not None and _lowers_both(row, plain) for row, plain in zip(found, plains)):
                everywhere[arm[0]].append(str(arm[1]))
        tried = sum(1 for row in models[0] if row["cohort"] != "none")
        lines.append(f"| {name} ({len(models)}) | {trials} ({plains[0]['trials']:,}; {plains[0]['same_trials']:,} same) | "
                     f"{backend} | {_mean_eer_dcf(plains)} | {_asnorm_cells(_arm(models, ('validation', 20)), plains)} | "
                     + ("; ".join(f"{cohort} K {', '.join(ks)}" for cohort, ks in everywhere.items()) or f"none of the {tried}")
                     + " |")
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


def asnorm_external_table(result: dict) -> str:
    """An external cohort's sweep: per set, trial set and back end, the plain score, the stored cohort and the
    external arm (utterances or speaker means, K) that lowers both EER and minDCF on the most models (ties: the
    lower mean minDCF)."""
    lines = ["| cohort set (models) | trials | back end | plain EER / minDCF (mean) | stored cohort (validation, K 20): "
             "EER / minDCF | lowers both on | external arm that lowers both on the most models (picked on them) | "
             "its EER / minDCF | lowers both on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (name, trials, backend), models in _asnorm_groups(result).items():
        plains = _plain_rows(models)
        arms = [(row["cohort"], row["top_k"]) for row in models[0] if row["cohort"].startswith("external")]
        found = {arm: _arm(models, arm) for arm in arms}
        found = {arm: rows for arm, rows in found.items() if None not in rows}
        best = max(found, key=lambda arm: (sum(_lowers_both(r, p) for r, p in zip(found[arm], plains)),
                                           -statistics.fmean(r["min_dcf"] for r in found[arm])))
        lines.append(f"| {name} ({len(models)}) | {trials} ({plains[0]['same_trials']:,} same of {plains[0]['trials']:,}) | "
                     f"{backend} | {_mean_eer_dcf(plains)} | "
                     f"{_asnorm_cells(_arm(models, ('validation', 20)), plains)} | {best[0]}, K {best[1]} | "
                     f"{_asnorm_cells(found[best], plains)} |")
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


def calibration_holdout_table(result: dict) -> str:
    """Each model's two folds: the threshold picked on one, what evaluate predicts there, and what identify does
    with the other fold's clips and the impostors at it; the last row gives the mean over every fold."""
    lines = ["| model (seed) | threshold picked on | threshold | predicted acceptance | held-out acceptance "
             "| predicted DIR | held-out DIR | impostors unknown |", "|---|---|---|---|---|---|---|---|"]
    rows = [row for run in result["runs"] for row in run["rows"]]
    for run in result["runs"]:
        for row in run["rows"]:
            lines.append(f"| seed {run['seed']} | fold {row['fold']} ({row['calibrated_on']} clips; the other "
                         f"{row['identified']} held out) | {row['threshold']:.3f} | {row['predicted_acceptance']:.3f} "
                         f"| {row['held_out_acceptance']:.3f} | {row['predicted_dir']:.3f} | {row['held_out_dir']:.3f} "
                         f"| {row.get('impostors_unknown', float('nan')):.3f} |")
    gaps = [abs(row["held_out_acceptance"] - row["predicted_acceptance"]) for row in rows]
    mean = {key: statistics.mean(row[key] for row in rows) for key in
            ("predicted_acceptance", "held_out_acceptance", "predicted_dir", "held_out_dir")}
    unknown = [row["impostors_unknown"] for row in rows if "impostors_unknown" in row]
    lines.append(f"| mean of {len(rows)} folds | held-out acceptance off the prediction by {statistics.mean(gaps):.3f} "
                 f"on average, {max(gaps):.3f} at most | | {mean['predicted_acceptance']:.3f} "
                 f"| {mean['held_out_acceptance']:.3f} | {mean['predicted_dir']:.3f} | {mean['held_out_dir']:.3f} "
                 f"| {statistics.mean(unknown) if unknown else float('nan'):.3f} (lowest {min(unknown, default=float('nan')):.3f}) |")
    lines.append("")
    lines.append(f"{result['machine']}, {result['date']}; back end {result['backend']}, scores {result['score_norm']}, "
                 f"FAR {result['target_far']:g}")
    return "\n".join(lines)


def parity_table(result: dict) -> str:
    """ONNX Runtime against torch: worst cosine and argmax agreement per comparison."""
    lines = ["| compared | pairs | worst cosine | argmax the same |", "|---|---|---|---|"]
    lines += [f"| {r['compared']} | {r['pairs']} | {r['worst_cosine']:.7f} | {r['argmax_same']}/{r['pairs']} |"
              for r in result["rows"]]
    return "\n".join(lines + ["", f"{result['machine']}, {result['date']}"])


def augment_cost_table(result: dict) -> str:
    """Each augmentation's cost against a plain cpu-preset step, the default last."""
    order = ["channel", "reverb", "noise", "speed", "specaug", "mixup", "crop"]
    lines = ["| augmentation | augment ms | % of a step | step ms | step delta |", "|---|---|---|---|---|"]
    for name in order + [key for key in result["variants"] if key.startswith("default")]:
        row = result["variants"][name]
        delta = f"{100 * row['step_delta']:+.1f}%".replace("-", "\u2212")
        fraction = f"{100 * row['augment_fraction']:.2f}%"
        if name.startswith("default"):
            label, fraction = f"**default** (`{name[name.index('(') + 1:-1]}`)", f"**{fraction}**"
        else:
            label = f"`{name}`"
            delta += " (shorter batches)" if name == "crop" else ""
        lines.append(f"| {label} | {1000 * row['augment_s']:.2f} | {fraction} | {1000 * row['step_s']:.1f} | {delta} |")
    return "\n".join(lines)


def hnsw_table(low: dict, high: dict) -> str:
    """HNSW efSearch sweep on speaker-shaped vectors: the LDA space beside the network's own."""
    lines = [f"| efSearch | {low['dim']}-D (LDA space, `lda` and `plda`): ms/query | speed-up | recall@1 | "
             f"{high['dim']}-D (`--backend none`): ms/query | speed-up | recall@1 |", "|---|---|---|---|---|---|---|"]
    for ef in low["sweep"]:
        points = [run["sweep"][ef] for run in (low, high)]
        cells = [cell for p in points for cell in (f"{p['ms']:.3f}", times(p["speedup"]), f"{p['recall_at_1']:.3f}")]
        if int(ef) == low["default_ef_search"]:
            lines.append(f"| **{ef} (voxaug's setting)** | " + " | ".join(f"**{cell}**" for cell in cells) + " |")
        else:
            lines.append(f"| {ef} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gpu_footer(result: dict) -> str:
    env = result["environment"]
    return (f"{env['card']} ({env['gpu_memory_gib']} GiB, driver {env['nvidia_smi'].split(', ')[1]}), "
            f"{env['cpu_cores']} CPU cores, torch {env['torch']}, CUDA {env['cuda']}, {result['date']}, "
            f"commit {(env['commit'] or 'unknown')[:7]}")


def solo_utt_per_s(run: dict) -> float:
    """Utterances per second of a training run that had the card alone: as the first gpu_check runs recorded it,
    else (gpu_check records no speed of its own since runs share the card) from its steps, batch and loop time."""
    return run["utt_per_s"] if "utt_per_s" in run else run["steps"] * run["batch"] / run["train_s"]


def gpu_check_table(result: dict, compact: bool = False) -> str:
    """``benchmarks/gpu_check.py``'s stages: training speed and accuracy with and without AMP, the step
    against the homework loop, and the cross-device checks (``compact``: the README's boss rows). A run
    of some stages (``--only``) shows those."""
    stages = result["stages"]
    bench = stages["train_bench"]["by_batch"] if "train_bench" in stages else []
    boss = {row["batch"]: row for row in bench if row["preset"] == "boss"}
    if compact:
        card = f"{result['environment']['card']}, {result['date']}"
        return "\n".join([f"| `boss` step, {card} | voxaug, AMP | homework loop, same card |", "|---|---|---|"] + [
            f"| batch {batch} | {row['train_utt_per_s']:.0f} utt/s | {row['reference_train_utt_per_s']:.0f} "
            f"utt/s ({row['train_speedup']:.2f}x) |" for batch, row in sorted(boss.items())])
    lines = ["| measure | result | ratio / check |", "|---|---|---|"]
    if "cuda_tests" in stages:
        tests = stages["cuda_tests"]
        lines.append(f"| CUDA-marked tests (`pytest -m cuda`) | {tests['summary']} | none skipped: {not tests.get('skipped')} |")
    training = stages.get("training", {"runs": []})
    shared = training.get("concurrent_runs", 1)
    for preset in ("strong", "boss") if training["runs"] else ():
        rows = {amp: [r for r in training["runs"] if r["preset"] == preset and r["amp"] is amp] for amp in (True, False)}
        memory = {amp: max(r["peak_gpu_mib"] for r in rows[amp]) for amp in rows}
        verdict = training["amp_vs_fp32"][preset]
        run = rows[True][0]
        setting = (f"`{preset}`, {run['steps']} steps (warm-up {run['warmup']}), batch {run['batch']}, "
                   f"{len(rows[True])} seeds ({', '.join(str(r['seed']) for r in rows[True])})")
        if shared == 1:  # one run at a time (the first runs, or --jobs 1): their own speeds
            speed = {amp: statistics.fmean(solo_utt_per_s(r) for r in rows[amp]) for amp in rows}
            amp_speedup = verdict.get("amp_speedup", speed[True] / speed[False])
            lines.append(f"| {setting}: AMP / float32 | {speed[True]:.0f} / {speed[False]:.0f} utt/s, "
                         f"peak {memory[True]} / {memory[False]} MiB | AMP {amp_speedup:.2f}x float32's speed |")
        else:
            lines.append(f"| {setting}, {shared} runs sharing the card: AMP / float32 | peak {memory[True]} / "
                         f"{memory[False]} MiB per run | speed: `train_bench`, alone on the card |")
        error = f" ± {verdict['standard_error']:.3f}" if verdict.get("standard_error") is not None else ""
        lines.append(f"| `{preset}` validation accuracy ({run['val_utterances']} clips): AMP / float32 | "
                     f"{verdict['mean_val_acc_amp']:.3f} / {verdict['mean_val_acc_fp32']:.3f} "
                     f"(per seed {', '.join(f'{d:+.3f}' for d in verdict['per_seed_difference'])}) | "
                     f"{verdict['val_acc_difference']:+.3f}{error} (target within ±{training['tolerance']:.2f}); "
                     f"non-finite steps: {sum(r['skipped_steps'] for r in rows[True] + rows[False])} |")
    for row in bench:
        lines.append(f"| `{row['preset']}` step, batch {row['batch']}, interleaved: voxaug AMP / float32 / homework loop | "
                     f"{row['train_utt_per_s']:.0f} / {row['fp32_train_utt_per_s']:.0f} / "
                     f"{row['reference_train_utt_per_s']:.0f} utt/s | {row['train_speedup']:.2f}x the homework loop; "
                     f"AMP {row['amp_speedup']:.2f}x float32 |")
    if "step_profile" in stages:
        profile = stages["step_profile"]
        lines.append(f"| profile of a `strong` step, batch 32, AMP ({profile['steps']} steps) | "
                     f"{profile['wall_ms_per_step']:.0f} ms wall, {profile['gpu_kernel_ms_per_step']:.1f} ms in GPU "
                     f"kernels, {profile['device_ops_per_step']:.0f} device operations | GPU busy "
                     f"{profile['gpu_busy_fraction']:.0%} of the step |")
    if "torchrun_nccl" in stages:
        nccl = stages["torchrun_nccl"]
        lines.append(f"| `torchrun --standalone --nproc_per_node=1`, 20 steps | `{nccl['banner'].split(';')[0]}` | "
                     f"ok: {nccl['ok']} |")
    if "embed_identify" in stages:
        embed = stages["embed_identify"]
        lines.append(f"| `embed` + `enroll` + `identify --device cuda` vs the CPU | {embed['utterances']} embeddings, "
                     f"lowest cosine {embed['min_cosine_gpu_vs_cpu']:.4f} | same decision on "
                     f"{embed['same_decision_gpu_vs_cpu']} of {embed['clips']} clips |")
    if "cross_device" in stages:
        cross = stages["cross_device"]
        lines += [
            f"| GPU checkpoint, `predict` on CPU vs GPU | {cross['gpu_checkpoint']['same_prediction']} of "
            f"{cross['gpu_checkpoint']['utterances']} the same | |",
            f"| CPU checkpoint, `predict` on CPU vs GPU | {cross['cpu_checkpoint']['same_prediction']} of "
            f"{cross['cpu_checkpoint']['utterances']} the same | |",
            f"| CPU run resumed with `--device cuda` | {cross['cpu_run_resumed_on_cuda'].replace('|', '·')} | |"]
    elif "embed_identify" in stages:  # the stage before it ran: the run ended at its time limit
        lines.append("| checkpoints across devices (`predict`, resume) | not reached: the run ended at its time limit | |")
    return "\n".join(lines + ["", gpu_footer(result)])


def render(name: str, view: str | None = None) -> str:
    """The markdown for one results file, chosen by what the file holds (``view``: ``compact`` for the README,
    ``checkpoints`` for a back-end ablation of each training's best.pt and last.pt)."""
    path = RESULTS / name
    if view not in (None, "compact", "checkpoints"):
        raise SystemExit(f"error: results marker for {name}: unknown view {view!r}; accepted: compact, checkpoints")
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such results file")
    result = json.loads(path.read_text(encoding="utf-8"))
    if name == "hnsw_speakers.json":  # rendered beside its 192-D run
        return hnsw_table(result, json.loads((RESULTS / "hnsw_speakers_192d.json").read_text(encoding="utf-8")))
    if "variants" in result:
        return augment_cost_table(result)
    if "stages" in result and {"train_bench", "training"} & set(result["stages"]):
        return gpu_check_table(result, compact=view == "compact")
    if "train_utt_per_s" in result:
        return bench_table(result)
    if "sets" in result:
        return openset_training_table(result)
    if "runs" in result and "cohort" in result["runs"][0]["rows"][0]:  # asnorm_cohorts.py, with --external-cohort or not
        external = any(row["cohort"].startswith("external") for run in result["runs"] for row in run["rows"])
        return asnorm_external_table(result) if external else asnorm_cohorts_table(result)
    if "runs" in result and "held_out_acceptance" in result["runs"][0]["rows"][0]:
        return calibration_holdout_table(result)
    if "runs" in result and "unseen_among_all" in result["runs"][0]["rows"][0]:
        return checkpoint_table(result) if view == "checkpoints" else backend_crosscheck_table(result)
    if "rows" in result and "unseen_softmax" in result["rows"][0]:
        return retrain_ceiling_table(result)
    if "rows" in result and "unseen_among_all" in result["rows"][0]:
        return backend_table(result, compact=view == "compact")
    if "rows" in result and "worst_cosine" in result["rows"][0]:
        return parity_table(result)
    if "rows" in result and "test_acc" in result["rows"][0]:
        return crosscheck_table(result)
    raise SystemExit(f"error: {path}: no renderer knows this results file")


def refresh(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), m.group("view")) + "\n" + m.group(5), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its JSON")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    stale = []
    pages = sorted(args.docs.glob("*.md")) + [readme for readme in [args.docs.parent / "README.md"] if readme.is_file()]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        fresh = refresh(text)
        if fresh != text:
            stale.append(page.name)
            if not args.check:
                page.write_text(fresh, encoding="utf-8")
    if args.check and stale:
        print(f"error: tables differ from benchmarks/results/ in {', '.join(stale)}; "
              "run python benchmarks/render_results.py", file=sys.stderr)
        return 1
    if not args.check:
        print(f"rendered tables in {', '.join(stale) or 'no page (all up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
