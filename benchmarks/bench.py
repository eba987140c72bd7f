"""Every voxaug benchmark in one run: one JSON object and one markdown table, all measured now.

    python benchmarks/bench.py [--quick] [--vectors N] [--json FILE]

- training: voxaug's Trainer step (cpu preset, default augmentation) against a plain loop of the
  homework's Boss code at the same model size and batch, timed interleaved (train_bench.py);
- the default augmentation's cost as a fraction of a cpu-preset step (augment_cost.py);
- batch loading from the packed store against per-file torch.load (train_bench.py);
- embedding throughput, identify latency with 600 enrolled speakers, FAISS flat vs HNSW
  (embed_bench.py); audio featurising and waveform augmentation (audio_bench.py);
- peak RSS of a `voxaug train` run of the cpu preset, in a child process;
- voxaug's Conformer forward against torchaudio's on the same parameters (speed_ab.py);
- matmul FLOPs per training step against the sgemm rate torch.mm reaches here.

FAISS uses 100,000 random 192-D unit vectors by default (their HNSW build took 16-40 s on 2 shared
cores; 1,000,000 took 17 minutes): pass ``--vectors 1000000`` for the full size. A synthetic
corpus is generated into a temporary folder: no network, no data needed. The exit status is 1
when a target in ``TARGETS`` fails (``augment_overhead`` < 0.05, ``packed_speedup`` >= 10,
``train_utt_per_s`` >= ``reference_train_utt_per_s``, ``cli_help_s`` < 0.5, ``identify_ms_p50_onnx``
< 10 and no slower than torch's), and the failed ones are named.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import torch
import torchaudio
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audio_bench import run_audio_bench  # noqa: E402
from augment_cost import measure_augment_cost  # noqa: E402
from embed_bench import embedding_throughput, faiss_search, identify_latency  # noqa: E402
from voxaug.safeio import atomic_write_json  # noqa: E402
from report import at_least, json_output, times  # noqa: E402
from speed_ab import BASELINE, OURS, measure_speed_changes  # noqa: E402
from train_bench import compare_training, loading_seconds  # noqa: E402
from voxaug.augment import TrainBatch, total_loss  # noqa: E402
from voxaug.augment.pipeline import DEFAULT_AUGMENT  # noqa: E402
from voxaug.config import create_config  # noqa: E402
from voxaug.model import build_model  # noqa: E402
from voxaug.synth import SynthConfig, generate  # noqa: E402

FULL_VECTORS = 1_000_000


@dataclass(frozen=True)
class BenchSize:
    """How much of each benchmark to run."""

    name: str
    synth: SynthConfig  # the training corpus
    train_reps: int  # interleaved steps per variant (voxaug, reference)
    augment_reps: int  # interleaved steps per variant (plain, default augmentation)
    loading_reps: int  # batches loaded per method
    embed_utterances: int
    identify_clips: int
    vectors: int  # FAISS base vectors
    rss_steps: int  # steps of the `voxaug train` run whose peak RSS is measured
    speed_reps: int  # interleaved steps per variant of speed_ab
    audio: bool  # run audio_bench (quick size)


SIZES = {
    "full": BenchSize("full", SynthConfig(speakers=40, utterances=20, unseen=0), train_reps=40, augment_reps=40,
                      loading_reps=50, embed_utterances=256, identify_clips=200, vectors=100_000, rss_steps=200,
                      speed_reps=30, audio=True),
    "quick": BenchSize("quick", SynthConfig(speakers=40, utterances=20, unseen=0), train_reps=15, augment_reps=20,
                       loading_reps=20, embed_utterances=64, identify_clips=50, vectors=100_000, rss_steps=40,
                       speed_reps=10, audio=True),
}


@dataclass(frozen=True)
class Target:
    """A bar the run must clear; ``passes`` reads the result."""

    key: str
    bar: str
    passes: Callable[[dict], bool]


TARGETS = (
    Target("augment_overhead", "< 0.05", lambda r: r["augment_overhead"] < 0.05),
    Target("packed_speedup", ">= 10", lambda r: r["packed_speedup"] >= 10),
    Target("train_utt_per_s", ">= reference_train_utt_per_s",
           lambda r: r["train_utt_per_s"] >= r["reference_train_utt_per_s"]),
    Target("cli_help_s", "< 0.5", lambda r: r["cli_help_s"] < 0.5),
    Target("identify_ms_p50_onnx", "< 10 and <= identify_ms_p50",
           lambda r: r["identify_ms_p50_onnx"] < 10 and r["identify_ms_p50_onnx"] <= r["identify_ms_p50"]),
)


def failed_targets(result: dict) -> list[str]:
    """Keys of the targets ``result`` misses, with their bars."""
    return [f"{t.key} {t.bar}" for t in TARGETS if not t.passes(result)]


def cpu_model_name() -> str:
    """The CPU's model name as lscpu shows it (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and with what the numbers were measured."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def step_flops(preset: str, classes: int, batch: int, segment: int) -> dict:
    """Matmul and convolution FLOPs of one training step (forward, loss, backward) of ``preset``.

    FlopCounterMode ignores ``groups`` in ``convolution_backward`` (it would count the depthwise
    convolutions' backward as dense), so the backward of every convolution is taken as twice its
    forward: one product for the input's gradient, one for the weight's. Element-wise work
    (normalisation, activations, dropout, softmax) is not counted.
    """
    config = create_config(preset)
    config.model.num_classes = classes
    torch.manual_seed(0)
    model = build_model(config.model).train()
    features = torch.randn(batch, segment, config.model.n_mels)
    batch_in = TrainBatch.from_labels(features, torch.full((batch,), segment), torch.randint(0, classes, (batch,)))
    with FlopCounterMode(display=False) as counter:
        _, logits = model(batch_in.features, batch_in.lengths)
        total_loss(model, logits, batch_in).backward()
    counts = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    conv_forward = counts.pop("convolution", 0)
    counts.pop("convolution_backward", None)
    total = sum(counts.values()) + 3 * conv_forward
    return {"train_gflop_per_step": total / 1e9, "train_gflop_conv": 3 * conv_forward / 1e9}


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 ``torch.mm`` of two ``size`` x ``size`` matrices, median of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def cli_help_seconds(reps: int = 5) -> float:
    """Median wall time of `voxaug --help` in a fresh interpreter (start-up imports no torch)."""
    command = [sys.executable, "-m", "voxaug", "--help"]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child_peak_rss_mb(command: list[str]) -> float:
    """Run ``command`` and return its peak resident memory in MB (the largest of it and the
    processes it starts). A small parent process runs it and reads RUSAGE_CHILDREN, so that nothing
    else this process has started is counted."""
    waiter = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", waiter, *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    max_rss = int(done.stdout.strip().splitlines()[-1])
    return max_rss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def train_peak_rss(data: Path, workdir: Path, steps: int) -> dict:
    """Peak RSS of ``voxaug train DATA --preset cpu`` for ``steps`` steps, two evaluations included,
    and of a process that only imports the trainer (torch, torchaudio, voxaug), for comparison."""
    command = [sys.executable, "-m", "voxaug", "train", str(data), "--out", str(workdir / "rss-run"),
               "--preset", "cpu", "--steps", str(steps), "--eval-every", str(max(1, steps // 2)), "--device", "cpu",
               "--cache-dir", str(workdir / "rss-cache"), "--quiet"]
    start = time.perf_counter()
    peak = child_peak_rss_mb(command)
    elapsed = time.perf_counter() - start
    imports = child_peak_rss_mb([sys.executable, "-c", "import voxaug.train"])
    return {"peak_rss_mb": peak, "rss_train_steps": steps, "rss_train_wall_s": elapsed, "import_rss_mb": imports}


def audio_summary(result: dict) -> dict:
    """The headline numbers of ``run_audio_bench``; the whole result is kept under ``audio``."""
    featurise = max(result["featurise"], key=lambda row: row["workers"])
    wave = max(result["wave_augment"], key=lambda row: row["workers"])
    return {"audio_featurise_x_realtime": featurise["x_realtime"], "audio_featurise_workers": featurise["workers"],
            "wave_augment_examples_per_s": wave["examples_per_s"], "wave_augment_workers": wave["workers"],
            "wave_train_data_wait_fraction": result["train_with_wave_1_worker"]["data_wait_fraction"],
            "audio": result}


def _timed(label: str, timings: dict[str, float], function: Callable[[], dict], quiet: bool) -> dict:
    if not quiet:
        print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = function()
    timings[label] = round(time.perf_counter() - start, 1)
    return result


def run_benchmarks(size: BenchSize, quiet: bool = False) -> dict:
    """Every measurement at ``size``; returns the flat JSON object bench.py writes."""
    threads = torch.get_num_threads()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    result: dict = {"size": size.name, **machine_info(), "load_average_start": list(os.getloadavg())}
    result["cli_help_s"] = _timed("voxaug --help", timings, cli_help_seconds, quiet)
    with tempfile.TemporaryDirectory(prefix="voxaug-bench-") as tmp:
        workdir = Path(tmp)
        data = workdir / "synth"
        _timed("synthesise corpus", timings, lambda: generate(data, size.synth, progress=False), quiet)
        train, trainer = _timed("training step vs homework loop", timings,
                                lambda: compare_training(data, workdir, "cpu", reps=size.train_reps), quiet)
        result.update(train)
        packed, per_file = _timed("batch loading", timings, partial(
            loading_seconds, trainer.store, data, trainer.config.batch, trainer.config.segment, size.loading_reps), quiet)
        result.update(packed_batch_ms=packed * 1000, torch_load_batch_ms=per_file * 1000,
                      packed_speedup=per_file / packed)
        classes = len(trainer.speakers)
        del trainer  # its packed store and model are not needed for the rest
        cost = _timed("augmentation cost", timings, lambda: measure_augment_cost(
            reps=size.augment_reps, threads=None, variants={"default": DEFAULT_AUGMENT}), quiet)
        default = cost["variants"]["default"]
        result.update(augment_default=DEFAULT_AUGMENT, augment_overhead=default["augment_fraction"],
                      augment_step_delta=default["step_delta"], augment_plain_step_s=cost["step_s"])
        flops = _timed("FLOPs and sgemm", timings, lambda: {
            **step_flops("cpu", classes, result["batch"], result["segment"]), "sgemm_gflops": sgemm_gflops()}, quiet)
        result.update(flops)
        achieved = flops["train_gflop_per_step"] / result["train_step_s"]
        result.update(train_gflops=achieved, flop_utilisation=achieved / flops["sgemm_gflops"])
        speed = _timed("Conformer forward vs torchaudio's", timings,
                       lambda: measure_speed_changes(size.speed_reps, classes), quiet)
        ours = speed["variants"][OURS]
        result.update(torchaudio_forward_step_s=speed["variants"][BASELINE]["step_s"],
                      conformer_forward_step_s=ours["step_s"], conformer_forward_speedup=ours["speedup"],
                      speed_changes=speed)
        result.update(_timed("embedding throughput", timings,
                             lambda: embedding_throughput(size.embed_utterances), quiet))
        result.update(_timed("identify latency", timings, lambda: identify_latency(clips=size.identify_clips), quiet))
        result.update(_timed(f"FAISS {size.vectors:,} vectors", timings, lambda: faiss_search(size.vectors), quiet))
        result.update(_timed("peak RSS of voxaug train", timings,
                             lambda: train_peak_rss(data, workdir, size.rss_steps), quiet))
        if size.audio:
            result.update(_timed("audio featurising and wave augmentation", timings,
                                 lambda: audio_summary(run_audio_bench(quick=True)), quiet))
            torch.set_num_threads(threads)  # run_audio_bench runs single-threaded
    result["threads"] = threads
    result["load_average_end"] = list(os.getloadavg())
    result["section_seconds"] = timings
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["failed_targets"] = failed_targets(result)
    return result


def markdown_table(r: dict) -> str:
    """The README's performance table."""
    n = f"{r['faiss_vectors']:,}"
    rows = [
        ("training step, cpu preset, batch "
         f"{r['batch']} x {r['segment']} frames, `{r['augment']}`", f"{r['train_utt_per_s']:.0f} utt/s "
         f"({1000 * r['train_step_s']:.0f} ms/step)", f"{r['train_speedup']:.2f}x the homework loop"),
        ("homework Boss loop, same size and batch", f"{r['reference_train_utt_per_s']:.0f} utt/s "
         f"({1000 * r['reference_step_s']:.0f} ms/step)", "reference"),
        (f"default augmentation (`{r['augment_default']}`)", f"{100 * r['augment_overhead']:.2f}% of a step",
         "target < 5%"),
        ("batch loading, packed store vs torch.load per file", f"{r['packed_batch_ms']:.2f} ms vs "
         f"{r['torch_load_batch_ms']:.2f} ms", f"{r['packed_speedup']:.1f}x (target >= 10x)"),
        ("same step, voxaug's Conformer forward vs torchaudio's (same parameters)",
         f"{1000 * r['conformer_forward_step_s']:.0f} ms vs {1000 * r['torchaudio_forward_step_s']:.0f} ms",
         f"{r['conformer_forward_speedup']:.2f}x"),
        ("matmul and convolution FLOPs per training step", f"{r['train_gflop_per_step']:.2f} GFLOP, {r['train_gflops']:.1f} GFLOP/s",
         f"{100 * r['flop_utilisation']:.0f}% of sgemm ({r['sgemm_gflops']:.0f} GFLOP/s)"),
        (f"embedding, length-bucketed (150-800 frames), {r['embed_threads']} threads", f"{r['embed_utt_per_s']:.1f} utt/s",
         f"{r['embed_bucketing_speedup']:.2f}x one by one on as many threads"),
        (f"identify, warm process, {r['identify_speakers']} speakers, {r.get('identify_backend', 'no')} back end",
         f"p50 {r['identify_ms_p50']:.1f} ms",
         f"p99 {r['identify_ms_p99']:.1f} ms"),
        (f"identify, warm process, {r['identify_speakers']} speakers, ONNX Runtime (`--model`)",
         f"p50 {r['identify_ms_p50_onnx']:.1f} ms", f"p99 {r['identify_ms_p99_onnx']:.1f} ms (target p50 < 10 ms, "
         "no slower than torch)"),
        ("embedding one by one, torch vs ONNX Runtime (1 thread each)",
         f"{r['embed_one_by_one_1_thread_utt_per_s']:.1f} vs {r['embed_onnx_one_by_one_utt_per_s']:.1f} utt/s",
         f"ONNX {r['embed_onnx_vs_torch_one_by_one']:.2f}x torch"),
        ("`voxaug --help`, fresh process (median of 5)", f"{r['cli_help_s']:.2f} s", "target < 0.5 s"),
        (f"FAISS flat, {n} x 192", f"{r['faiss_flat_ms']:.2f} ms/query", ""),
        (f"FAISS HNSW, {n} x 192, efSearch {r['faiss_hnsw_ef_search']}", f"{r['faiss_hnsw_ms']:.3f} ms/query",
         f"recall@1 {r['faiss_hnsw_recall_at_1']:.3f}, {times(r['faiss_hnsw_speedup'])} flat, "
         f"built in {r['faiss_hnsw_build_s']:.0f} s"),
        (f"peak RSS, `voxaug train --preset cpu` ({r['rss_train_steps']} steps)", f"{r['peak_rss_mb']:.0f} MB",
         f"importing torch + voxaug alone: {r['import_rss_mb']:.0f} MB"),
    ]
    if "audio" in r:
        rows += [
            (f"audio featurising into the packed store, {r['audio_featurise_workers']} workers",
             f"{r['audio_featurise_x_realtime']}x real time", ""),
            (f"`wave` augmentation + log-mel, {r['wave_augment_workers']} workers",
             f"{r['wave_augment_examples_per_s']} examples/s",
             f"training waits {100 * r['wave_train_data_wait_fraction']:.0f}% of the time (1 worker)"),
        ]
    lines = ["| measure | result | ratio / target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append("")
    lines.append(f"{r['cpu']}, {r['cpu_count']} cores, {r['gpu'] or 'no GPU'}, {r['threads']} torch threads, "
                 f"torch {r['torch']}, {r['date']}; load average at start {r['load_average_start'][0]:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 5 minutes on 2 cores)")
    parser.add_argument("--vectors", type=at_least(1000), help=f"FAISS base vectors (default 100,000; {FULL_VECTORS:,} for "
                                                    "the full size, whose HNSW build took 17 minutes on 2 cores)")
    parser.add_argument("--json", type=json_output, help="write the results as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    if args.vectors is not None:
        size = replace(size, vectors=args.vectors)
    result = run_benchmarks(size, quiet=args.quiet)
    result["bench_size"] = {k: v for k, v in asdict(size).items() if k != "synth"}
    print(markdown_table(result))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    if result["failed_targets"]:
        print(f"FAILED targets: {'; '.join(result['failed_targets'])}", file=sys.stderr)
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
