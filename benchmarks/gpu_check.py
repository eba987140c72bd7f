"""The CUDA check: everything a GPU user runs, on a real card, in a few minutes, into one JSON file.

1. the CUDA-marked tests (``pytest -m cuda``);
2. the ``strong`` and ``boss`` presets trained for ``--steps`` steps each on a ``voxaug synth`` set,
   with mixed precision (the default) and with ``--no-amp``, for each of ``--seeds``: validation
   accuracy, steps whose loss was not finite, peak GPU memory. The runs share the card, ``--jobs``
   at a time (a step at batch 32 keeps the GPU busy about a tenth of the time), so that enough
   seeds fit in a few minutes for the AMP-vs-float32 verdict; their speeds are not solo speeds;
3. ``benchmarks/train_bench.py`` on CUDA, alone on the card: the ``strong`` and ``boss`` steps with
   AMP and in float32 against the homework's loop, interleaved, at batch 32 (the homework's), and
   ``boss`` at 128 too;
4. a profile of one ``strong`` step: wall time against GPU kernel time, the costliest host operations;
   ``torchrun --standalone --nproc_per_node=1`` training over NCCL;
5. ``embed``, ``enroll`` and ``identify`` on the GPU, against the same commands on the CPU;
6. a GPU checkpoint predicting on the CPU, a CPU checkpoint predicting on the GPU, a CPU run resumed
   on the GPU.

A failing stage is recorded with its error and the next one runs; the JSON is rewritten after
every stage, so a run cut short still says how far it got. ``benchmarks/gpu_check.sh`` installs the
project and calls this. ``--device cpu`` rehearses every stage on a machine without a GPU (the CPU
stands in for the card; the CUDA tests are then all skipped, so that stage fails). ``--only`` runs
some stages, e.g. to confirm a fix in a minute or two of GPU time. ``--workdir`` is the check's own
scratch folder: its synthetic set is reused, its runs and indexes replaced.

    python benchmarks/gpu_check.py --workdir gpu_work --json gpu_check.json [--steps 600 --seeds 0,1,2]
    python benchmarks/gpu_check.py --only cuda_tests,cross_device               # a quick recheck
    python benchmarks/gpu_check.py --device cpu --steps 20 --bench-reps 3    # rehearsal
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import folder_name  # noqa: E402
from train_bench import make_trainer, synchronize, voxaug_step  # noqa: E402
from train_bench import run as train_bench_run  # noqa: E402
from voxaug.config import create_config  # noqa: E402
from voxaug.data.sources import open_source  # noqa: E402
from voxaug.data.store import PackedStore  # noqa: E402
from voxaug.safeio import atomic_write_json  # noqa: E402
from voxaug.train import Trainer  # noqa: E402

AMP_TOLERANCE = 0.02  # validation accuracy of AMP within 2 points of float32's after the same steps
SYNTH = ["--speakers", "60", "--utterances", "40", "--unseen", "4", "--impostors", "2", "--seed", "0"]
STAGES = ("cuda_tests", "training", "train_bench", "step_profile", "torchrun_nccl", "embed_identify", "cross_device")
VAL_FRACTION = 0.2
DEVICE = "cuda"  # --device cpu rehearses the stages without a GPU


def command(*args: object, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root; a non-zero exit raises with the end of its output."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args[:6]))} ... exited {result.returncode}: "
                           f"{(result.stdout + result.stderr)[-1500:]}")
    return result


def voxaug(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return command(sys.executable, "-m", "voxaug", *args, timeout=timeout)


def environment() -> dict:
    """The card, the driver and the software, as this process sees them."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    card = {"card": None}
    if DEVICE == "cuda":
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        card = {"card": torch.cuda.get_device_name(0),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                "nvidia_smi": smi.stdout.strip() or None}
    return {
        "device": DEVICE,
        **card,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "commit": os.environ.get("VOXAUG_COMMIT") or commit.stdout.strip() or None,  # a copied tree's .git may lag
    }


def cuda_tests() -> dict:
    """``pytest -m cuda``: every CUDA-marked test must run (none skipped) and pass."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail)}
    ok = result.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    return {"ok": ok, "summary": tail, **counts, **({} if ok else {"output": result.stdout[-3000:]})}


def train_preset(data: Path, run_dir: Path, preset: str, amp: bool, steps: int, seed: int, device: str,
                 cache: Path, threads: int) -> dict:
    """One run of ``preset`` (in its own process, ``threads`` torch threads): the training loop's own time
    (evaluation excluded), peak memory and the accuracies it ends with. The warm-up is cut to a quarter
    of the steps so that a short run reaches its peak learning rate, and a fifth of each speaker's
    utterances is held out, so that the AMP-vs-float32 comparison rests on several hundred clips."""
    torch.set_num_threads(threads)
    config = create_config(preset)
    config.device, config.amp, config.seed = device, amp, seed
    config.steps, config.eval_every = steps, steps
    config.warmup = min(config.warmup, steps // 4)
    config.val_fraction = VAL_FRACTION
    trainer = Trainer(config, data, run_dir, cache_dir=cache, progress=False)
    evaluate, spent_evaluating = trainer.evaluate, [0.0]

    def timed_evaluate(mean_loss: float | None) -> dict:
        synchronize(device)
        start = time.perf_counter()
        row = evaluate(mean_loss)
        spent_evaluating[0] += time.perf_counter() - start
        return row

    trainer.evaluate = timed_evaluate
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = trainer.fit()
    synchronize(device)
    train_s = time.perf_counter() - start - spent_evaluating[0]
    return {
        "preset": preset, "amp": amp, "seed": seed, "steps": summary.steps, "batch": config.batch, "warmup": config.warmup,
        "train_s": round(train_s, 2), "steps_per_s": round(summary.steps / train_s, 2),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
        "val_acc": summary.val_acc, "train_acc": summary.train_acc, "skipped_steps": summary.skipped_steps,
        "val_utterances": len(trainer.val_indices),
    }


def amp_verdict(amp_rows: list[dict], fp32_rows: list[dict]) -> dict:
    """AMP against float32 on validation accuracy, paired by seed: the mean difference and its standard
    error (the seed-to-seed spread that a short run carries)."""
    differences = [a["val_acc"] - b["val_acc"] for a, b in zip(amp_rows, fp32_rows)]
    spread = float(np.std(differences, ddof=1) / np.sqrt(len(differences))) if len(differences) > 1 else None
    return {
        "mean_val_acc_amp": round(float(np.mean([r["val_acc"] for r in amp_rows])), 4),
        "mean_val_acc_fp32": round(float(np.mean([r["val_acc"] for r in fp32_rows])), 4),
        "val_acc_difference": round(float(np.mean(differences)), 4),
        "standard_error": None if spread is None else round(spread, 4),
        "per_seed_difference": [round(d, 4) for d in differences]}


def training(data: Path, runs: Path, steps: int, seeds: list[int], jobs: int,
             report: Callable[[dict], None]) -> dict:
    """strong and boss, each with and without AMP for every seed, ``jobs`` runs at a time on the one card,
    and the AMP-vs-float32 verdicts on the mean over seeds. ``report`` gets the rows finished so far."""
    cache = runs.parent / "cache"
    PackedStore.open(open_source(data), cache, progress=False)  # packed once, before the runs share it
    plan = [(preset, seed, amp) for preset in ("strong", "boss") for seed in seeds for amp in (True, False)]
    jobs = max(1, min(jobs, len(plan)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train_preset, data, runs / f"{preset}-{'amp' if amp else 'fp32'}-seed{seed}", preset,
                               amp, steps, seed, DEVICE, cache, threads) for preset, seed, amp in plan]
        for future in as_completed(futures):
            rows.append(future.result())
            report({"ok": False, "unfinished": f"{len(rows)} of {len(plan)} runs", "runs": rows})
    order = {key: n for n, key in enumerate(plan)}
    rows.sort(key=lambda r: order[(r["preset"], r["seed"], r["amp"])])
    verdicts = {}
    for preset in ("strong", "boss"):
        amp_rows, fp32_rows = ([r for r in rows if r["preset"] == preset and r["amp"] is amp] for amp in (True, False))
        verdicts[preset] = amp_verdict(amp_rows, fp32_rows)
    ok = all(r["skipped_steps"] == 0 for r in rows) and all(
        abs(v["val_acc_difference"]) <= AMP_TOLERANCE for v in verdicts.values())
    return {"ok": ok, "concurrent_runs": jobs, "threads_per_run": threads, "runs": rows, "amp_vs_fp32": verdicts,
            "tolerance": AMP_TOLERANCE}


def reference_comparison(data: Path, reps: int) -> dict:
    """``train_bench.py --device cuda``: voxaug's step (AMP, float32) against the homework loop, for
    ``strong`` at batch 32 and ``boss`` at batch 32 and 128."""
    return {"ok": True, "by_batch": [train_bench_run(data, preset=preset, batch=batch, steps=reps, device=DEVICE)
                                     for preset, batch in (("strong", 32), ("boss", 32), ("boss", 128))]}


def step_profile(data: Path, work: Path, steps: int = 20) -> dict:
    """Where a ``strong`` step's time goes (batch 32, AMP): wall time against the time the GPU spends in
    kernels, and the host operations that take longest (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step = voxaug_step(make_trainer(data, work / "profile", work / "profile_cache", "strong", 32, DEVICE))
    for _ in range(5):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall_ms = (time.perf_counter() - start) * 1000 / steps
    events = profiler.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    kernels = sum(e.count for e in events if getattr(e, "self_device_time_total", 0) > 0)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {"ok": True, "steps": steps, "wall_ms_per_step": round(wall_ms, 2),
            "gpu_kernel_ms_per_step": round(device_us / 1000 / steps, 2),
            "gpu_busy_fraction": round(device_us / 1000 / steps / wall_ms, 3),
            "device_ops_per_step": round(kernels / steps, 1),
            "top_host_ops_ms_per_step": {e.key: round(e.self_cpu_time_total / 1000 / steps, 2) for e in top}}


def torchrun_nccl(data: Path, runs: Path) -> dict:
    """One process under torchrun: the process group is NCCL, DDP wraps the model, 20 steps."""
    result = command(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                     "-m", "voxaug", "train", data, "--out", runs / "torchrun", "--steps", 20, "--eval-every", 20,
                     "--device", DEVICE, "--quiet", timeout=300)
    banner = next((line for line in result.stdout.splitlines() if line.startswith("DDP:")), "")
    expected = "(nccl, cuda)" if DEVICE == "cuda" else "(gloo, cpu)"
    return {"ok": expected in banner, "banner": banner,
            "done": next((line for line in result.stdout.splitlines() if line.startswith("done:")), "")}


def identify_lines(index: Path, clips: list[Path], device: str) -> list[dict]:
    out = voxaug("identify", "--index", index, "--json", "--device", device, *clips).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def embed_and_identify(data: Path, ckpt: Path, work: Path) -> dict:
    """embed + enroll + identify with --device cuda, and the same on the CPU: embeddings and answers compared."""
    answers, embeddings = {}, {}
    clips = sorted((data / "unseen" / "test").rglob("*.pt"))
    for device in (DEVICE, "cpu"):
        out, index = work / f"emb-{device}", work / f"spk-{device}.faiss"
        start = time.perf_counter()
        voxaug("embed", "--ckpt", ckpt, data, "--out", out, "--index", index, "--replace", "--device", device, "--quiet")
        embed_s = time.perf_counter() - start
        voxaug("enroll", "--index", index, "--speakers-dir", data / "unseen" / "enroll", "--device", device)
        answers[device] = identify_lines(index, clips, device)
        embeddings[device] = (np.load(out / "embeddings.npy"), round(embed_s, 1))
    gpu, cpu = embeddings[DEVICE][0], embeddings["cpu"][0]
    cosine = (gpu * cpu).sum(1)
    same = sum(a["decision"] == b["decision"] for a, b in zip(answers[DEVICE], answers["cpu"]))
    correct = sum(a["decision"] == Path(a["clip"]).parent.name for a in answers[DEVICE])
    return {"ok": len(answers[DEVICE]) == len(clips) > 0 and float(cosine.min()) > 0.99,
            "utterances": len(gpu), "min_cosine_gpu_vs_cpu": round(float(cosine.min()), 5),
            "embed_s": {"gpu": embeddings[DEVICE][1], "cpu": embeddings["cpu"][1]},
            "clips": len(clips), "same_decision_gpu_vs_cpu": same, "gpu_correct": correct}


def predictions(data: Path, ckpt: Path, device: str, out: Path) -> list[str]:
    voxaug("predict", data, "--ckpt", ckpt, "--out", out, "--device", device)
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:  # as predict writes it
        return [row["Category"] for row in csv.DictReader(handle)]


def cross_device(data: Path, gpu_ckpt: Path, runs: Path, work: Path) -> dict:
    """A GPU checkpoint predicts on the CPU, a CPU one on the GPU, and a CPU run resumes on the GPU."""
    voxaug("train", data, "--out", runs / "cpu", "--steps", 20, "--eval-every", 20, "--device", "cpu", "--quiet",
           timeout=600)
    result = {}
    for name, ckpt in (("gpu_checkpoint", gpu_ckpt), ("cpu_checkpoint", runs / "cpu" / "best.pt")):
        on_cpu = predictions(data, ckpt, "cpu", work / f"{name}-cpu.csv")
        on_gpu = predictions(data, ckpt, DEVICE, work / f"{name}-gpu.csv")
        result[name] = {"utterances": len(on_cpu), "same_prediction": sum(a == b for a, b in zip(on_cpu, on_gpu))}
    resumed = voxaug("train", data, "--out", runs / "cpu", "--resume", "--steps", 40, "--device", DEVICE, "--quiet")
    result["cpu_run_resumed_on_cuda"] = next((line for line in resumed.stdout.splitlines() if line.startswith("done:")), "")
    result["ok"] = all(r["same_prediction"] >= 0.95 * r["utterances"] > 0
                       for r in (result["gpu_checkpoint"], result["cpu_checkpoint"]))
    return result


def gpu_checkpoint(runs: Path, seed: int) -> Path:
    """The ``strong`` AMP run of the training stage, or, when that stage was left out, a 20-step run."""
    trained = runs / f"strong-amp-seed{seed}" / "best.pt"
    if trained.exists():
        return trained
    short = runs / "gpu-short"
    if not (short / "best.pt").exists():
        voxaug("train", runs.parent / "data", "--out", short, "--steps", 20, "--eval-every", 20, "--device", DEVICE,
               "--quiet")
    return short / "best.pt"


def stage(results: dict, name: str, action: Callable[[], dict], json_path: Path, chosen: set[str]) -> None:
    """Run one stage (if ``chosen``), record its result or its error and its seconds, and rewrite the JSON."""
    if name not in chosen:
        return
    print(f"[gpu_check] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        outcome = action()
    except Exception as exc:  # a failing stage is a finding: record it and go on
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-3000:], "traceback": traceback.format_exc()[-3000:]}
    outcome["seconds"] = round(time.perf_counter() - start, 1)
    results["stages"][name] = outcome
    atomic_write_json(json_path, results)
    print(f"[gpu_check] {name}: {'ok' if outcome.get('ok') else 'FAILED'} in {outcome['seconds']} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=folder_name, default=Path("gpu_work"))
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--steps", type=int, default=600, help="steps of each strong/boss training run")
    parser.add_argument("--bench-reps", type=int, default=30, help="timed steps of each train_bench arm")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the strong/boss runs (comma-separated)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="strong/boss runs at a time on the card (default: the CPU count)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a rehearsal without a GPU")
    parser.add_argument("--only", default=",".join(STAGES), help=f"stages to run, of: {', '.join(STAGES)}")
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    if chosen - set(STAGES):
        parser.error(f"--only: unknown stage(s) {', '.join(sorted(chosen - set(STAGES)))}; accepted: {', '.join(STAGES)}")
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is visible to torch; run it on a GPU machine (or rehearse with --device cpu)")
    work, runs, data = args.workdir.resolve(), args.workdir.resolve() / "runs", args.workdir.resolve() / "data"
    for earlier in [runs, *work.glob("emb-*"), *work.glob("spk-*")]:  # run folders and indexes refuse a second go
        if earlier.is_dir():
            shutil.rmtree(earlier)
        else:
            earlier.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    json_path = args.json.resolve()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    env = environment()
    machine = f"{env['card'] or 'no GPU (CPU rehearsal)'}, {env['cpu_cores']} CPU cores"
    results = {"date": datetime.date.today().isoformat(), "machine": machine, "command": " ".join(sys.argv),
               "environment": env, "steps": args.steps, "seeds": seeds, "synth": " ".join(SYNTH), "stages": {}}
    atomic_write_json(json_path, results)
    synth = None
    if not (data / "metadata.json").exists() and chosen - {"cuda_tests"}:  # built while the CUDA tests run
        synth = subprocess.Popen([sys.executable, "-m", "voxaug", "synth", str(data), *SYNTH, "--quiet"], cwd=ROOT)
    stage(results, "cuda_tests", cuda_tests, json_path, chosen)
    if synth is not None and synth.wait(timeout=600) != 0:
        sys.exit(f"gpu_check: voxaug synth {data} exited {synth.returncode}")

    def report_training(partial: dict) -> None:
        results["stages"]["training"] = partial
        atomic_write_json(json_path, results)

    stage(results, "training", lambda: training(data, runs, args.steps, seeds, args.jobs, report_training), json_path,
          chosen)
    stage(results, "train_bench", lambda: reference_comparison(data, args.bench_reps), json_path, chosen)
    stage(results, "step_profile", lambda: step_profile(data, work), json_path, chosen)
    stage(results, "torchrun_nccl", lambda: torchrun_nccl(data, runs), json_path, chosen)
    stage(results, "embed_identify", lambda: embed_and_identify(data, gpu_checkpoint(runs, seeds[0]), work), json_path,
          chosen)
    stage(results, "cross_device", lambda: cross_device(data, gpu_checkpoint(runs, seeds[0]), runs, work), json_path,
          chosen)
    results["ok"] = all(s.get("ok") for s in results["stages"].values())
    atomic_write_json(json_path, results)
    print(json.dumps({name: s.get("ok") for name, s in results["stages"].items()}))
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
