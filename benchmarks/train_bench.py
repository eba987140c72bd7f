"""Training throughput of voxaug's step (its Trainer, default augmentation) against a plain loop of
the homework's Boss code at the same model size and batch, timed interleaved, and batch loading from
the packed store against per-file torch.load. ``benchmarks/bench.py`` imports these functions.

    python benchmarks/train_bench.py [--preset cpu] [--data DIR] [--steps N] [--device cpu|cuda] [--json FILE]

On CUDA voxaug's step runs with mixed precision (its default) and, as a third arm, in float32
(--no-amp); the homework's loop runs as it was written, in float32, on the same card. Each timed
step ends with a CUDA synchronize. Prints measured numbers and ratios; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_hw4 import Classifier, HW4Dataset, collate_batch  # noqa: E402
from voxaug.config import create_config  # noqa: E402
from voxaug.data.batching import SegmentSampler  # noqa: E402
from voxaug.data.store import PackedStore  # noqa: E402
from voxaug.synth import SynthConfig, generate  # noqa: E402
from voxaug.train import Trainer  # noqa: E402
from voxaug.safeio import atomic_write_json  # noqa: E402
from report import at_least, json_output  # noqa: E402


def ensure_data(data: Path | None, workdir: Path) -> Path:
    if data is not None:
        return data
    out = workdir / "synth"
    if not (out / "metadata.json").exists():
        generate(out, SynthConfig(speakers=40, utterances=20, unseen=0), progress=False)
    return out


def _time_steps(step: Callable[[], object], steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(steps: dict[str, Callable[[], object]], reps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each step function, called in turn rep by rep (A, B, A, B, ...) so that load
    from other processes hits every variant alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(reps):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def make_trainer(data: Path, run_dir: Path, cache_dir: Path, preset: str = "cpu", batch: int | None = None,
                 device: str = "cpu", amp: bool = True) -> Trainer:
    """voxaug's own Trainer with the preset's settings and the default augmentation; ``trainer.train_step``
    is the step users run (nothing is written to ``run_dir`` before ``fit``)."""
    config = create_config(preset)
    config.device = device
    config.amp = amp
    config.batch = batch or config.batch
    return Trainer(config, data, run_dir, cache_dir=cache_dir, progress=False)


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a timed step includes it."""
    if device == "cuda":
        torch.cuda.synchronize()


def voxaug_step(trainer: Trainer) -> Callable[[], None]:
    """One training step of ``trainer`` (sampling, augmentation, forward, backward, clipping, AdamW)."""

    def step() -> None:
        if trainer.train_step() is None:
            raise RuntimeError("the benchmark's training loss was not finite")
        synchronize(trainer.device.type)

    return step


def reference_step(data: Path, preset: str, batch: int, n_speakers: int, device: str = "cpu") -> Callable[[], None]:
    """One step of the homework's loop (DataLoader of torch.load, Conformer, AdMSoftmax, AdamW) at
    the preset's model size, batch and segment length, on ``device`` in float32 as the homework ran it."""
    config = create_config(preset)
    m = config.model
    torch.manual_seed(0)
    model = Classifier(m.d_model, n_speakers, m.num_heads, m.ffn_dim, m.num_layers, m.kernel_size, m.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    loader = torch.utils.data.DataLoader(HW4Dataset(data, config.segment), batch_size=batch, shuffle=True,
                                         drop_last=True, collate_fn=collate_batch)
    iterator = iter(loader)

    def step() -> None:
        nonlocal iterator
        try:
            mels, labels = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            mels, labels = next(iterator)
        loss = model(mels.to(device), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        synchronize(device)

    return step


def compare_training(data: Path, workdir: Path, preset: str = "cpu", batch: int | None = None,
                     reps: int = 20, device: str = "cpu") -> tuple[dict, Trainer]:
    """voxaug's training step against the homework loop, interleaved; also returns the trainer (its store).
    On CUDA a float32 voxaug arm (``--no-amp``) runs in the same rotation."""
    trainer = make_trainer(data, workdir / "run", workdir / "cache", preset, batch, device)
    batch = trainer.config.batch
    arms = {"voxaug": voxaug_step(trainer),
            "reference": reference_step(data, preset, batch, len(trainer.speakers), device)}
    if device == "cuda":
        fp32 = make_trainer(data, workdir / "run_fp32", workdir / "cache", preset, batch, device, amp=False)
        arms["voxaug_fp32"] = voxaug_step(fp32)
    medians = interleaved_medians(arms, reps)
    ours, reference = medians["voxaug"], medians["reference"]
    result = {"preset": preset, "device": device, "batch": batch, "segment": trainer.config.segment,
              "augment": ",".join(trainer.pipeline.names) or "none", "train_reps": reps,
              "train_step_s": ours, "reference_step_s": reference,
              "train_utt_per_s": batch / ours, "reference_train_utt_per_s": batch / reference,
              "train_speedup": reference / ours}
    if "voxaug_fp32" in medians:
        result.update(fp32_step_s=medians["voxaug_fp32"], fp32_train_utt_per_s=batch / medians["voxaug_fp32"],
                      amp_speedup=medians["voxaug_fp32"] / ours)
    return result, trainer


def loading_seconds(store: PackedStore, data: Path, batch: int, segment: int, repeats: int) -> tuple[float, float]:
    """Median seconds to assemble one batch: from the packed store vs torch.load per file (homework)."""
    sampler = SegmentSampler(store, np.arange(len(store)), batch, segment, seed=0)
    packed = _time_steps(sampler.next_batch, repeats)
    dataset = HW4Dataset(data, segment)
    rng = np.random.default_rng(0)

    def per_file() -> None:
        collate_batch([dataset[int(i)] for i in rng.integers(0, len(dataset), batch)])

    return packed, _time_steps(per_file, repeats)


def run(data: Path | None = None, preset: str = "cpu", batch: int = 32, steps: int = 20, quick: bool = False,
        device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_data(data, Path(tmp))
        result, trainer = compare_training(data, Path(tmp), preset, batch, steps, device)
        packed, per_file = loading_seconds(trainer.store, data, batch, trainer.config.segment, 10 if quick else 50)
    return {
        **result,
        "threads": torch.get_num_threads(),
        "packed_batch_ms": packed * 1000,
        "torch_load_batch_ms": per_file * 1000,
        "packed_speedup": per_file / packed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="HW4-layout folder (default: a fresh synth set)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch", type=at_least(1), default=32)
    parser.add_argument("--steps", type=at_least(1), help="timed training steps per arm (default 20, or 5 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 5 timed steps (unless --steps is given) and 10 batch loads instead of 50")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=json_output)
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else 5 if args.quick else 20  # an explicit --steps wins over --quick
    result = run(args.data, args.preset, args.batch, steps, args.quick, args.device)
    print(f"training step, preset {result['preset']}, batch {result['batch']}, augment {result['augment']}, "
          f"{args.device}, {result['threads']} threads, interleaved")
    print(f"  voxaug     {result['train_step_s'] * 1000:8.1f} ms/step  {result['train_utt_per_s']:8.1f} utt/s")
    if "fp32_step_s" in result:
        print(f"  voxaug fp32{result['fp32_step_s'] * 1000:8.1f} ms/step  {result['fp32_train_utt_per_s']:8.1f} utt/s"
              f"  (mixed precision {result['amp_speedup']:.2f}x)")
    print(f"  homework   {result['reference_step_s'] * 1000:8.1f} ms/step  {result['reference_train_utt_per_s']:8.1f} utt/s")
    print(f"  speed-up   {result['train_speedup']:.2f}x")
    print("batch loading")
    print(f"  packed store    {result['packed_batch_ms']:8.2f} ms/batch")
    print(f"  torch.load/file {result['torch_load_batch_ms']:8.2f} ms/batch")
    print(f"  speed-up        {result['packed_speedup']:.1f}x")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
