"""What each augmentation costs, as a fraction of one training step of the cpu preset.

A step is the trainer's: augment, forward, AM-Softmax loss, backward, gradient clipping, AdamW.
``wave`` is left out: it runs on waveforms in the data workers (``benchmarks/audio_bench.py``).
The same batches go through every variant, interleaved repetition by repetition so that load from
other processes hits all variants alike; medians are reported. Two numbers per variant:

- ``augment_fraction``: the median time of the augmentation call alone / the median plain step;
- ``step_delta``: (median augmented step - median plain step) / median plain step. It also
  includes the augmentation's effect on the model's work (crop shortens the batch, so it is negative).

    python benchmarks/augment_cost.py [--reps 30] [--json cost.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from voxaug.augment import AUGMENTATIONS, TrainBatch, build_pipeline, total_loss
from voxaug.augment.base import real_frames
from voxaug.augment.pipeline import DEFAULT_AUGMENT
from voxaug.config import create_config
from voxaug.model import build_model
from voxaug.safeio import atomic_write_json
from report import at_least, json_output


def _batches(count: int, batch: int, segment: int, n_mels: int, classes: int, seed: int) -> list[TrainBatch]:
    """Training-like batches: full segments, with a quarter of the examples shorter (padded)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        lengths = torch.full((batch,), segment)
        short = torch.rand(batch, generator=g) < 0.25
        lengths[short] = torch.randint(segment // 3, segment, (int(short.sum()),), generator=g)
        features = torch.randn(batch, segment, n_mels, generator=g) * real_frames(lengths, segment).unsqueeze(2)
        out.append(TrainBatch.from_labels(features, lengths, torch.randint(0, classes, (batch,), generator=g)))
    return out


def measure_augment_cost(reps: int = 30, batches: int = 4, classes: int = 100, threads: int | None = 2,
                         variants: dict[str, str] | None = None, seed: int = 0) -> dict:
    """Median step time of the cpu preset with each augmentation (and the default combination) and without.

    Returns ``{"step_s": plain median, "variants": {label: {"augment_s", "step_s", "augment_fraction",
    "step_delta"}}}``; ``bench.py`` imports this.
    """
    if threads:
        torch.set_num_threads(threads)
    variants = variants or {**{name: name for name in sorted(AUGMENTATIONS) if name != "wave"},
                            f"default ({DEFAULT_AUGMENT})": DEFAULT_AUGMENT}
    pipelines = {"none": build_pipeline("none"), **{label: build_pipeline(spec) for label, spec in variants.items()}}
    copies = max(p.label_copies for p in pipelines.values())
    for pipeline in pipelines.values():
        pipeline.bind(classes)
    config = create_config("cpu")
    config.model.num_classes = classes * copies  # room for speed's extra classes; the same model for every variant
    torch.manual_seed(seed)
    model = build_model(config.model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data = _batches(batches, config.batch, config.segment, config.model.n_mels, classes, seed)
    generator = torch.Generator().manual_seed(seed)
    step_times: dict[str, list[float]] = {label: [] for label in pipelines}
    augment_times: dict[str, list[float]] = {label: [] for label in pipelines}

    def step(label: str, batch: TrainBatch) -> None:
        started = time.perf_counter()
        augmented = pipelines[label](batch, generator)
        augment_times[label].append(time.perf_counter() - started)
        _, logits = model(augmented.features, augmented.lengths)
        loss = total_loss(model, logits, augmented)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step_times[label].append(time.perf_counter() - started)

    for label in pipelines:  # warm-up
        step(label, data[0])
    for times in (*step_times.values(), *augment_times.values()):
        times.clear()
    for rep in range(reps):
        for label in pipelines:
            step(label, data[rep % len(data)])
    plain = statistics.median(step_times["none"])
    result = {"preset": "cpu", "batch": config.batch, "segment": config.segment, "reps": reps,
              "threads": torch.get_num_threads(), "step_s": plain, "variants": {}}
    for label in variants:
        augment_s, step_s = statistics.median(augment_times[label]), statistics.median(step_times[label])
        result["variants"][label] = {"augment_s": augment_s, "step_s": step_s, "augment_fraction": augment_s / plain,
                                     "step_delta": (step_s - plain) / plain}
    return result


def report(result: dict) -> str:
    lines = [f"cpu preset, batch {result['batch']} x {result['segment']} frames, {result['threads']} threads, "
             f"median of {result['reps']} steps: plain step {1000 * result['step_s']:.1f} ms",
             f"{'augmentation':<26}{'augment ms':>11}{'% of step':>11}{'step ms':>10}{'step delta':>12}"]
    for label, v in result["variants"].items():
        lines.append(f"{label:<26}{1000 * v['augment_s']:>11.2f}{100 * v['augment_fraction']:>10.2f}%"
                     f"{1000 * v['step_s']:>10.1f}{100 * v['step_delta']:>+11.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=at_least(1), default=30, help="timed steps per variant (default 30)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=json_output, help="also write the results as JSON")
    args = parser.parse_args(argv)
    result = measure_augment_cost(reps=args.reps, threads=args.threads)
    print(report(result))
    over = [label for label, v in result["variants"].items() if v["augment_fraction"] >= 0.05]
    print("each augmentation under 5% of a step: " + ("yes" if not over else f"NO ({', '.join(over)})"))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
