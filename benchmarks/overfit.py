"""Does augmentation fix the overfitting? An ablation trained to saturation.

Every arm (``none``, each augmentation alone, combinations) trains the cpu preset on one ``voxaug
synth`` set with the same steps and seeds. For each arm it reports the final and best validation
accuracy, the clean train accuracy and the gap between them; for the ``none`` arm it reports where
it saturated: the first evaluation from which clean train accuracy stayed at 1.0, and the step of its
best validation accuracy (after which validation stopped rising). A run is long enough when both
come well before its last step.

    python benchmarks/overfit.py --json overfit.json          # the README's ablation (about 2 h on 2 cores)
    python benchmarks/overfit.py --arms "none;specaug" --seeds 1 --first-seed 10   # one pilot pair
    python benchmarks/overfit.py --quick                      # a smoke run: about 2.5 min on 2 idle cores

Runs go ``--jobs`` at a time in separate processes with one torch thread each: on a 2-core machine
two single-threaded runs finish sooner than two two-threaded runs in turn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from voxaug.augment.pipeline import DEFAULT_AUGMENT, parse_names
from voxaug.config import resolve_config
from voxaug.plot import read_metrics
from voxaug.synth import SynthConfig, generate
from voxaug.train import Trainer
from voxaug.safeio import atomic_write_json
from report import arm_list, at_least, folder_name, json_output

ARMS = f"none;channel;reverb;noise;speed;specaug;mixup;crop;{DEFAULT_AUGMENT}"
FULL = {"steps": 3000, "seeds": 3, "speakers": 60, "utterances": 20, "eval_every": 250}
QUICK = {"steps": 40, "seeds": 2, "speakers": 8, "utterances": 10, "eval_every": 10}


def train_once(data: Path, out: Path, augment: str, seed: int, steps: int, cache: Path, eval_every: int,
               val_fraction: float = 0.2, threads: int | None = None, extra: dict | None = None,
               model: dict | None = None) -> dict:
    """One cpu-preset run: final and best validation accuracy, clean train accuracy, gap, curve, wall time."""
    if threads:
        torch.set_num_threads(threads)
    overrides = {"steps": steps, "seed": seed, "device": "cpu", "eval_every": eval_every,
                 "warmup": min(200, steps // 10), "val_fraction": val_fraction, **(extra or {})}
    config = resolve_config("cpu", overrides=overrides, model_overrides=model,
                            augment_overrides={"names": parse_names(augment)})
    started = time.perf_counter()
    summary = Trainer(config, data, out, cache_dir=cache, progress=False).fit()
    wall = time.perf_counter() - started
    curve = [{"step": r["step"], "train_acc": r["train_acc"], "val_acc": r["val_acc"]} for r in read_metrics(out)]
    return {"augment": augment, "seed": seed, "val_acc": summary.val_acc, "best_val_acc": summary.best_val_acc,
            "best_step": summary.best_step, "train_acc": summary.train_acc, "gap": summary.gap,
            "wall_s": round(wall, 1), "curve": curve}


def saturation(curve: list[dict]) -> dict:
    """Where a run saturated: the first evaluation from which clean train accuracy stayed at 1.0
    (None if it never did) and the step of its best validation accuracy."""
    train_full = None
    for row in reversed(curve):
        if row["train_acc"] < 1.0:
            break
        train_full = row["step"]
    best = max(curve, key=lambda row: (row["val_acc"], -row["step"]))
    return {"train_acc_1_from": train_full, "val_peak_step": best["step"], "last_step": curve[-1]["step"]}


def summarise(rows: list[dict], arms: list[str]) -> dict:
    """Per-arm means, differences from ``none`` and wins over it (paired by seed)."""
    means = {arm: {key: statistics.mean(r[key] for r in rows if r["augment"] == arm)
                   for key in ("val_acc", "best_val_acc", "train_acc", "gap", "wall_s")} for arm in arms}
    baseline = {r["seed"]: r for r in rows if r["augment"] == "none"}
    summary = {"mean": means}
    if baseline:
        summary["difference"] = {arm: {key: means[arm][key] - means["none"][key] for key in means[arm]}
                                 for arm in arms if arm != "none"}
        summary["wins"] = {arm: sum(r["val_acc"] > baseline[r["seed"]]["val_acc"] for r in rows if r["augment"] == arm)
                           for arm in arms if arm != "none"}
        summary["none_saturation"] = {seed: saturation(r["curve"]) for seed, r in baseline.items()}
    return summary


def run_benchmark(steps: int, seeds: int, speakers: int, utterances: int, eval_every: int, arms: list[str] | None = None,
                  val_fraction: float = 0.2, workdir: Path | None = None, jobs: int = 1, first_seed: int = 0,
                  extra: dict | None = None, threads: int | None = None, model: dict | None = None,
                  log=print) -> dict:
    """Train every arm for every seed on one synth set; rows, per-arm means and differences from ``none``."""
    arms = ARMS.split(";") if arms is None else arms
    if not arms:
        raise ValueError("arms: an empty list; give the --augment specs to train, or None for every arm")
    for arm in arms:
        parse_names(arm)
    with tempfile.TemporaryDirectory(prefix="voxaug-overfit-") as scratch:
        root = Path(workdir or scratch)
        data = root / f"synth-{speakers}x{utterances}"
        started = time.perf_counter()
        if not (data / "metadata.json").exists():
            generate(data, SynthConfig(speakers=speakers, utterances=utterances, unseen=0, seed=0), progress=False)
        log(f"synth: {speakers} speakers x {utterances} utterances in {time.perf_counter() - started:.0f}s -> {data}")
        cache = root / "cache"
        train_once(data, root / f"warm-cache-{time.time_ns()}", "none", 0, 1, cache, 1, val_fraction, model=model)  # pack once
        runs = [(seed, arm) for seed in range(first_seed, first_seed + seeds) for arm in arms]
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_once, data, root / f"{arm.replace(',', '+')}-seed{seed}-{time.time_ns()}", arm,
                                   seed, steps, cache, eval_every, val_fraction, 1 if jobs > 1 else threads, extra, model)
                       for seed, arm in runs]
            rows = []
            for future in futures:
                rows.append(future.result())
                log(_format(rows[-1]))
    return {"steps": steps, "seeds": seeds, "first_seed": first_seed, "speakers": speakers, "utterances": utterances,
            "eval_every": eval_every, "arms": arms, "val_fraction": val_fraction, "preset": "cpu", "extra": extra or {},
            "model": model or {},
            "jobs": jobs, "threads": 1 if jobs > 1 else (threads or torch.get_num_threads()), "rows": rows,
            **summarise(rows, arms)}


def _format(row: dict) -> str:
    return (f"{row['augment']:<28} seed {row['seed']}  val {row['val_acc']:.3f}  best val {row['best_val_acc']:.3f} "
            f"(step {row['best_step']})  train {row['train_acc']:.3f}  gap {row['gap']:+.3f}  wall {row['wall_s']:.0f}s")


def table(result: dict) -> str:
    """The markdown ablation table the README shows: one line per arm, means over seeds."""
    seeds = result["seeds"]
    lines = [f"| augment | val acc (mean of {seeds}) | Δ vs none | wins | best val acc | clean train acc | gap (train − val) |",
             "|---|---|---|---|---|---|---|"]
    for arm in result["arms"]:
        m = result["mean"][arm]
        delta = result.get("difference", {}).get(arm, {}).get("val_acc")
        wins = result.get("wins", {}).get(arm)
        lines.append(f"| `{arm}` | {m['val_acc']:.3f} | {'—' if delta is None else f'{delta:+.3f}'} | "
                     f"{'—' if wins is None else f'{wins}/{seeds}'} | {m['best_val_acc']:.3f} | {m['train_acc']:.3f} | "
                     f"{m['gap']:+.3f} |")
    return "\n".join(lines)


def saturation_lines(result: dict) -> list[str]:
    """One line per seed of the ``none`` arm: where it saturated, or that clean train accuracy never stayed at 1.0
    (a run too short to saturate, whose line would otherwise read "from step None")."""
    return [f"none, seed {seed}: clean train accuracy "
            + (f"1.0 from step {s['train_acc_1_from']}" if s["train_acc_1_from"] is not None
               else "below 1.0 at the end")
            + f", validation peaked at step {s['val_peak_step']}, run ended at step {s['last_step']}"
            for seed, s in result.get("none_saturation", {}).items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=arm_list, default=ARMS, help=f"';'-separated --augment specs (default {ARMS!r})")
    parser.add_argument("--steps", type=at_least(1), help=f"training steps per run (default {FULL['steps']})")
    parser.add_argument("--seeds", type=at_least(1), help=f"seeds per arm (default {FULL['seeds']})")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up (default 0)")
    parser.add_argument("--speakers", type=at_least(2), help=f"synthetic training speakers (default {FULL['speakers']})")
    parser.add_argument("--utterances", type=at_least(2), help=f"utterances per speaker (default {FULL['utterances']})")
    parser.add_argument("--eval-every", type=at_least(1), help=f"evaluate every N steps (default {FULL['eval_every']})")
    parser.add_argument("--margin-warmup", type=int, help="AM-Softmax margin warm-up steps for every arm (default 0)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay for every arm (default: the preset's)")
    parser.add_argument("--d-model", type=int, help="shrink the cpu preset's model width (default: the preset's 96)")
    parser.add_argument("--layers", type=int, help="shrink the cpu preset's Conformer layers (default: the preset's 2)")
    parser.add_argument("--input-norm", choices=("mean", "none"), help="input normalisation (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="held-out share of each speaker's utterances (default 0.2: a steadier validation accuracy)")
    parser.add_argument("--workdir", type=folder_name, help="keep the synth set and run folders here (default: a temp folder)")
    parser.add_argument("--jobs", type=at_least(1), default=2, help="runs at a time, one torch thread each (default 2)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch threads when --jobs is 1 (default 2)")
    parser.add_argument("--json", type=json_output, help="also write the results as JSON")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    extra = {key: value for key, value in (("margin_warmup", args.margin_warmup), ("weight_decay", args.weight_decay))
             if value is not None}
    model = {key: value for key, value in (("d_model", args.d_model), ("num_layers", args.layers),
                                           ("input_norm", args.input_norm)) if value is not None}
    if "d_model" in model:
        model["ffn_dim"] = 2 * model["d_model"]
    torch.set_num_threads(args.threads)
    result = run_benchmark(**sizes, arms=args.arms, val_fraction=args.val_fraction, workdir=args.workdir, jobs=args.jobs,
                           first_seed=args.first_seed, extra=extra, threads=args.threads, model=model)
    result["date"] = time.strftime("%Y-%m-%d")
    print()
    print(table(result))
    print("\n".join(saturation_lines(result)))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
