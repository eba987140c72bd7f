"""Audio throughput: featurising an audio corpus into the packed store, and waveform augmentation
(`wave`: read, crop, audiomentations, log-mel) in DataLoader workers against what the training step
consumes.

    python benchmarks/audio_bench.py [--data AUDIO_ROOT] [--quick] [--json FILE]

Every number printed is measured on this machine; nothing is hard-coded. ``run_audio_bench`` returns
the same numbers as a dict for ``benchmarks/bench.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from voxaug.augment import TrainBatch, build_pipeline, total_loss
from voxaug.augment.wave import WaveAugmentation
from voxaug.config import create_config
from voxaug.data.audio_store import build_audio_store
from voxaug.data.sources import DatasetSource, open_source
from voxaug.data.store import PackedStore
from voxaug.data.wave_batches import WaveBatchSource
from voxaug.features import FrontendConfig
from voxaug.model import build_model
from voxaug.synth import SynthConfig, generate
from voxaug.safeio import atomic_write_json
from report import at_least, json_output


def ensure_audio(data: Path | None, workdir: Path, quick: bool) -> Path:
    """The audio tree to measure: ``data``, or `voxaug synth` training audio written under ``workdir``."""
    if data is not None:
        return data
    config = SynthConfig(speakers=4 if quick else 10, utterances=8 if quick else 20, unseen=0, seed=0,
                         write_training_audio=True)
    if not (workdir / "synth" / "metadata.json").exists():  # a workdir of an earlier run keeps its corpus
        generate(workdir / "synth", config, progress=False)
    return workdir / "synth" / "wav"


def write_noise(folder: Path, count: int = 4, seconds: float = 3.0, rate: int = 16000) -> Path:
    """A few coloured-noise files standing in for MUSAN."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        white = rng.normal(0, 0.1, int(seconds * rate))
        coloured = np.convolve(white, np.ones(index + 1) / (index + 1), mode="same").astype(np.float32)
        soundfile.write(folder / f"noise{index}.wav", coloured, rate)
    return folder


def featurise_rate(source: DatasetSource, workdir: Path, workers: int) -> dict:
    """Build the packed store from scratch with ``workers`` processes: utterances/s and x real time."""
    seconds = sum(soundfile.info(str(u.path)).duration for u in source.utterances)
    folder = workdir / f"store-w{workers}"
    start = time.perf_counter()
    build_audio_store(source, folder, "bench", progress=False, workers=workers)
    elapsed = time.perf_counter() - start
    return {"workers": workers, "utterances": len(source.utterances), "audio_s": round(seconds, 2),
            "elapsed_s": round(elapsed, 3), "utt_per_s": round(len(source.utterances) / elapsed, 1),
            "x_realtime": round(seconds / elapsed, 1)}


def wave_rate(store: PackedStore, root: Path, wave: WaveAugmentation, workers: int, batch: int, segment: int,
              batches: int) -> dict:
    """Examples/s that ``workers`` produce with the full `wave` chain (read, crop, augment, log-mel)."""
    frontend = FrontendConfig(n_mels=store.n_mels)
    source = WaveBatchSource(store, root, np.arange(len(store)), batch, segment, 0, frontend, wave, workers)
    source.next_batch()  # start the workers before timing
    start = time.perf_counter()
    for _ in range(batches):
        source.next_batch()
    elapsed = time.perf_counter() - start
    source.close()
    examples = batches * batch
    audio = examples * (segment - 1) * frontend.hop_length / frontend.sample_rate
    return {"workers": workers, "examples_per_s": round(examples / elapsed, 1), "x_realtime": round(audio / elapsed, 1)}


def step_consumption(store: PackedStore, root: Path, wave: WaveAugmentation | None, workers: int, batch: int,
                     segment: int, steps: int) -> dict:
    """Training steps of the cpu preset fed by ``WaveBatchSource`` (``wave=None`` and workers 0: the
    data cost is measured separately); reports the step rate and the fraction of time spent waiting for data."""
    config = create_config("cpu")
    config.model.n_mels, config.model.num_classes = store.n_mels, len(store.speakers)
    torch.manual_seed(0)
    model = build_model(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    pipeline = build_pipeline("specaug")
    generator = torch.Generator().manual_seed(0)
    frontend = FrontendConfig(n_mels=store.n_mels)
    source = WaveBatchSource(store, root, np.arange(len(store)), batch, segment, 0, frontend, wave, workers)
    waits, computes = [], []
    for index in range(steps + 2):
        begin = time.perf_counter()
        b = source.next_batch()
        fetched = time.perf_counter()
        augmented = pipeline(TrainBatch.from_labels(b.features, b.lengths, b.labels), generator)
        _, logits = model(augmented.features, augmented.lengths)
        loss = total_loss(model, logits, augmented)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index >= 2:  # the first batches include worker start-up
            waits.append(fetched - begin)
            computes.append(time.perf_counter() - fetched)
    source.close()
    step = statistics.median(computes)
    return {"workers": workers, "wave": wave is not None, "step_s": round(step, 4),
            "examples_per_s": round(batch / step, 1),
            "data_wait_fraction": round(sum(waits) / (sum(waits) + sum(computes)), 3)}


def run_audio_bench(data: Path | None = None, quick: bool = False, workers: tuple[int, ...] = (1, 2),
                    batch: int = 32, segment: int = 128) -> dict:
    """All measurements as one dict (see the module docstring)."""
    torch.set_num_threads(1)
    batches, steps = (4, 4) if quick else (12, 10)
    with tempfile.TemporaryDirectory(prefix="audio-bench-") as tmp:
        workdir = Path(tmp)
        root = ensure_audio(data, workdir, quick)
        wave = WaveAugmentation(noise_dir=str(write_noise(workdir / "noise")), noise_p=0.5)
        # opened once: each opening of a clip folder warns again of its speaker folders without clips
        source = open_source(root, prefer_audio=True)  # a synth unseen/ folder holds x.pt beside x.wav
        featurise = [featurise_rate(source, workdir, w) for w in workers]
        store = PackedStore.open(source, workdir / "cache", progress=False,
                                 builder=lambda s, f, fp, p: build_audio_store(s, f, fp, p, workers=max(workers)))
        augment = [wave_rate(store, root, wave, w, batch, segment, batches) for w in workers]
        consume = step_consumption(store, root, None, 0, batch, segment, steps)
        fed = step_consumption(store, root, wave, 1, batch, segment, steps)
        del store
        return {
            "data": str(data) if data else "voxaug synth training audio",
            "utterances": featurise[0]["utterances"], "batch": batch, "segment": segment,
            "featurise": featurise, "wave_augment": augment, "train_step": consume, "train_with_wave_1_worker": fed,
        }


def report(result: dict) -> str:
    lines = [f"audio corpus: {result['data']} ({result['utterances']} utterances); batch {result['batch']}, "
             f"segment {result['segment']} frames"]
    for row in result["featurise"]:
        lines.append(f"featurise into the packed store, {row['workers']} worker(s): {row['utt_per_s']} utt/s, "
                     f"{row['x_realtime']}x real time ({row['audio_s']} s of audio in {row['elapsed_s']} s)")
    for row in result["wave_augment"]:
        lines.append(f"wave augment + log-mel, {row['workers']} worker(s): {row['examples_per_s']} examples/s, "
                     f"{row['x_realtime']}x real time")
    step = result["train_step"]
    lines.append(f"training step (cpu preset, specaug): {step['step_s'] * 1000:.0f} ms -> consumes "
                 f"{step['examples_per_s']} examples/s")
    for row in result["wave_augment"]:
        lines.append(f"  {row['workers']} worker(s) produce {row['examples_per_s'] / step['examples_per_s']:.1f}x "
                     "what the step consumes")
    fed = result["train_with_wave_1_worker"]
    lines.append(f"training with wave on, 1 worker: step {fed['step_s'] * 1000:.0f} ms, "
                 f"{fed['data_wait_fraction'] * 100:.1f}% of the time waiting for data")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="audio tree ROOT/<speaker>/**/*.wav (default: voxaug synth audio)")
    parser.add_argument("--quick", action="store_true", help="a tiny corpus and few batches (a smoke test)")
    parser.add_argument("--batch", type=at_least(1), default=32)
    parser.add_argument("--segment", type=at_least(1), default=128)
    parser.add_argument("--json", type=json_output, help="also write the results as JSON")
    args = parser.parse_args(argv)
    result = run_audio_bench(args.data, args.quick, batch=args.batch, segment=args.segment)
    print(report(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
