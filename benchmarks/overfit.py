"""Does augmentation fix the overfitting? Train the cpu preset with ``--augment none`` and with the
default augmentation on one ``voxaug synth`` set, same steps and seeds, and compare validation
accuracy, clean train accuracy, the gap between them, and wall time.

    python benchmarks/overfit.py --json overfit.json   # the README numbers (5 seeds, about 45 min on 2 cores)
    python benchmarks/overfit.py --quick               # a smoke run in about a minute
    python benchmarks/overfit.py --augment specaug,mixup --seeds 1 --first-seed 10   # one pilot pair

Runs go ``--jobs`` at a time in separate processes with one torch thread each: on a 2-core machine
two single-threaded runs finish sooner than two two-threaded runs in turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from voxaug.augment.pipeline import DEFAULT_AUGMENT, parse_names
from voxaug.config import cpu, resolve_config
from voxaug.synth import SynthConfig, generate
from voxaug.train import Trainer

FULL = {"steps": cpu().steps, "seeds": 5, "speakers": SynthConfig().speakers, "utterances": SynthConfig().utterances}
QUICK = {"steps": 40, "seeds": 2, "speakers": 8, "utterances": 10}


def train_once(data: Path, out: Path, augment: str, seed: int, steps: int, cache: Path,
               val_fraction: float = 0.2, threads: int | None = None) -> dict:
    """One cpu-preset run; the final clean train and validation accuracy, their gap, and the wall time."""
    if threads:
        torch.set_num_threads(threads)
    overrides = {"steps": steps, "seed": seed, "device": "cpu", "eval_every": max(1, steps // 4),
                 "warmup": min(200, steps // 10), "val_fraction": val_fraction}
    config = resolve_config("cpu", overrides=overrides, augment_overrides={"names": parse_names(augment)})
    started = time.perf_counter()
    summary = Trainer(config, data, out, cache_dir=cache, progress=False).fit()
    wall = time.perf_counter() - started
    return {"augment": augment, "seed": seed, "val_acc": summary.val_acc, "best_val_acc": summary.best_val_acc,
            "train_acc": summary.train_acc, "gap": summary.gap, "wall_s": round(wall, 1)}


def run_benchmark(steps: int, seeds: int, speakers: int, utterances: int, augment: str = DEFAULT_AUGMENT,
                  val_fraction: float = 0.2, workdir: Path | None = None, jobs: int = 1, first_seed: int = 0,
                  log=print) -> dict:
    """Train both arms for every seed and return the rows and the mean differences (augmented - none)."""
    with tempfile.TemporaryDirectory(prefix="voxaug-overfit-") as scratch:
        root = Path(workdir or scratch)
        data = root / "synth"
        started = time.perf_counter()
        if not (data / "metadata.json").exists():
            generate(data, SynthConfig(speakers=speakers, utterances=utterances, unseen=0, seed=0), progress=False)
        log(f"synth: {speakers} speakers x {utterances} utterances in {time.perf_counter() - started:.0f}s -> {data}")
        arms = [(seed, arm) for seed in range(first_seed, first_seed + seeds) for arm in ("none", augment)]
        cache = root / "cache"
        train_once(data, root / "warm-cache", "none", 0, 1, cache, val_fraction)  # pack the store once, before the jobs
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_once, data, root / f"{arm.replace(',', '+')}-seed{seed}", arm, seed, steps,
                                   cache, val_fraction, 1 if jobs > 1 else None) for seed, arm in arms]
            rows = []
            for future in futures:
                rows.append(future.result())
                log(_format(rows[-1]))
    means = {arm: {key: statistics.mean(r[key] for r in rows if r["augment"] == arm)
                   for key in ("val_acc", "best_val_acc", "train_acc", "gap", "wall_s")}
             for arm in ("none", augment)}
    difference = {key: means[augment][key] - means["none"][key] for key in means["none"]}
    return {"steps": steps, "seeds": seeds, "first_seed": first_seed, "speakers": speakers, "utterances": utterances,
            "augment": augment, "val_fraction": val_fraction, "preset": "cpu", "jobs": jobs,
            "threads": 1 if jobs > 1 else torch.get_num_threads(),
            "rows": rows, "mean": means, "difference": difference}


def _format(row: dict) -> str:
    return (f"{row['augment']:<20} seed {row['seed']}  val {row['val_acc']:.3f}  best val {row['best_val_acc']:.3f}  "
            f"train {row['train_acc']:.3f}  gap {row['gap']:+.3f}  wall {row['wall_s']:.0f}s")


def table(result: dict) -> str:
    """The markdown table the README shows."""
    lines = ["| augment | seed | val acc | clean train acc | gap (train - val) | wall time |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['augment']} | {r['seed']} | {r['val_acc']:.3f} | {r['train_acc']:.3f} | {r['gap']:+.3f} | {r['wall_s']:.0f} s |")
    for arm, m in result["mean"].items():
        lines.append(f"| **{arm}** | mean | **{m['val_acc']:.3f}** | {m['train_acc']:.3f} | **{m['gap']:+.3f}** | {m['wall_s']:.0f} s |")
    d = result["difference"]
    lines.append(f"| **difference** | | **{d['val_acc']:+.3f}** | {d['train_acc']:+.3f} | **{d['gap']:+.3f}** | {d['wall_s']:+.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help=f"training steps per run (default {FULL['steps']})")
    parser.add_argument("--seeds", type=int, help=f"seeds per arm (default {FULL['seeds']})")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up (default 0)")
    parser.add_argument("--speakers", type=int, help=f"synthetic training speakers (default {FULL['speakers']})")
    parser.add_argument("--utterances", type=int, help=f"utterances per speaker (default {FULL['utterances']})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--augment", default=DEFAULT_AUGMENT, help=f"the augmented arm (default {DEFAULT_AUGMENT})")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="held-out share of each speaker's utterances (default 0.2: a steadier validation accuracy)")
    parser.add_argument("--workdir", type=Path, help="keep the synth set and run folders here (default: a temp folder)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads when --jobs is 1 (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    parse_names(args.augment)
    result = run_benchmark(**sizes, augment=args.augment, val_fraction=args.val_fraction, workdir=args.workdir,
                           jobs=args.jobs, first_seed=args.first_seed)
    print()
    print(table(result))
    d = result["difference"]
    print(f"\nmean difference ({args.augment} - none): val acc {d['val_acc']:+.4f}, gap {d['gap']:+.4f}, "
          f"wall {d['wall_s']:+.1f}s per run")
    better = d["val_acc"] > 0 and d["gap"] < 0
    print("augmentation " + ("beats" if better else "does NOT beat") + " no augmentation (higher val acc and smaller gap)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
