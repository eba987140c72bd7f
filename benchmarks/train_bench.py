"""Training throughput of voxaug's step against a plain loop of the homework's Boss code at the
same model size and batch, and batch loading from the packed store against per-file torch.load.

    python benchmarks/train_bench.py [--preset cpu] [--data DIR] [--steps N] [--json FILE]

Prints measured numbers and ratios; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_hw4 import Classifier, HW4Dataset, collate_batch  # noqa: E402
from voxaug.augment import TrainBatch, build_pipeline, total_loss  # noqa: E402
from voxaug.config import create_config  # noqa: E402
from voxaug.data.batching import SegmentSampler  # noqa: E402
from voxaug.data.sources import open_source  # noqa: E402
from voxaug.data.store import PackedStore  # noqa: E402
from voxaug.model import build_model  # noqa: E402
from voxaug.synth import SynthConfig, generate  # noqa: E402


def ensure_data(data: Path | None, workdir: Path) -> Path:
    if data is not None:
        return data
    out = workdir / "synth"
    if not (out / "metadata.json").exists():
        generate(out, SynthConfig(speakers=40, utterances=20, unseen=0), progress=False)
    return out


def _time_steps(step, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def voxaug_step_seconds(store: PackedStore, preset: str, batch: int, steps: int, augment: str = "none") -> float:
    """Median seconds of one voxaug training step (sampling, augmentation, forward, backward, AdamW)."""
    config = create_config(preset)
    config.model.num_classes = len(store.speakers)
    torch.manual_seed(0)
    model = build_model(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    sampler = SegmentSampler(store, np.arange(len(store)), batch, config.segment, seed=0)
    pipeline = build_pipeline(augment.split(",") if augment != "none" else [], config.augment)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        b = sampler.next_batch()
        augmented = pipeline(TrainBatch.from_labels(b.features, b.lengths, b.labels), generator)
        _, logits = model(augmented.features, augmented.lengths)
        loss = total_loss(model, logits, augmented)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

    return _time_steps(step, steps)


def reference_step_seconds(data: Path, preset: str, batch: int, steps: int, n_speakers: int) -> float:
    """Median seconds of one step of the homework's loop (DataLoader of torch.load, Conformer, AdMSoftmax)."""
    config = create_config(preset)
    m = config.model
    torch.manual_seed(0)
    model = Classifier(m.d_model, n_speakers, m.num_heads, m.ffn_dim, m.num_layers, m.kernel_size, m.dropout)
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
        loss = model(mels, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _time_steps(step, steps)


def loading_seconds(store: PackedStore, data: Path, batch: int, segment: int, repeats: int) -> tuple[float, float]:
    """Median seconds to assemble one batch: from the packed store vs torch.load per file (homework)."""
    sampler = SegmentSampler(store, np.arange(len(store)), batch, segment, seed=0)
    packed = _time_steps(sampler.next_batch, repeats)
    dataset = HW4Dataset(data, segment)
    rng = np.random.default_rng(0)

    def per_file() -> None:
        collate_batch([dataset[int(i)] for i in rng.integers(0, len(dataset), batch)])

    return packed, _time_steps(per_file, repeats)


def run(data: Path | None = None, preset: str = "cpu", batch: int = 32, steps: int = 20, quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_data(data, Path(tmp))
        store = PackedStore.open(open_source(data), Path(tmp) / "cache", progress=False)
        ours = voxaug_step_seconds(store, preset, batch, steps)
        reference = reference_step_seconds(data, preset, batch, steps, len(store.speakers))
        packed, per_file = loading_seconds(store, data, batch, create_config(preset).segment, 10 if quick else 50)
    return {
        "preset": preset,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "train_step_s": ours,
        "reference_step_s": reference,
        "train_utt_per_s": batch / ours,
        "reference_train_utt_per_s": batch / reference,
        "train_speedup": reference / ours,
        "packed_batch_ms": packed * 1000,
        "torch_load_batch_ms": per_file * 1000,
        "packed_speedup": per_file / packed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="HW4-layout folder (default: a fresh synth set)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.data, args.preset, args.batch, 5 if args.quick else args.steps, args.quick)
    print(f"training step, preset {result['preset']}, batch {result['batch']}, {result['threads']} threads")
    print(f"  voxaug     {result['train_step_s'] * 1000:8.1f} ms/step  {result['train_utt_per_s']:8.1f} utt/s")
    print(f"  homework   {result['reference_step_s'] * 1000:8.1f} ms/step  {result['reference_train_utt_per_s']:8.1f} utt/s")
    print(f"  speed-up   {result['train_speedup']:.2f}x")
    print("batch loading")
    print(f"  packed store    {result['packed_batch_ms']:8.2f} ms/batch")
    print(f"  torch.load/file {result['torch_load_batch_ms']:8.2f} ms/batch")
    print(f"  speed-up        {result['packed_speedup']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
