"""The training-step speed changes, timed interleaved on the cpu preset (batch 32 x 128 frames,
default augmentation, AM-Softmax loss, backward, clipping, AdamW), each variant with its own copy of
the same initial model:

- ``torchaudio``: torchaudio's ``Conformer.forward`` on voxaug's parameters (what voxaug ran before;
  the batches are unpadded, so its padding hook had nothing to do), AdamW looping over tensors;
- ``conformer_forward``: voxaug's batch-first forward with its CPU dropout, same AdamW;
- ``+ fused AdamW``: and AdamW's fused kernel (``fused=True``);
- optionally ``torch.compile`` of the model (its compile time is reported) and bf16 autocast.

    python benchmarks/speed_ab.py [--reps 20] [--compile] [--bf16] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_bench import interleaved_medians  # noqa: E402
from voxaug.augment import TrainBatch, build_pipeline, total_loss  # noqa: E402
from voxaug.augment.pipeline import DEFAULT_AUGMENT  # noqa: E402
from voxaug.config import create_config  # noqa: E402
from voxaug.model import ConformerSpeakerNet, build_model  # noqa: E402
from voxaug.safeio import atomic_write_json  # noqa: E402
from report import at_least, json_output  # noqa: E402

BASELINE = "torchaudio forward, AdamW for-loop"
OURS = "conformer_forward, AdamW for-loop"


def torchaudio_forward(model: ConformerSpeakerNet, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits through torchaudio's own ``Conformer.forward`` (time-major, nn.MultiheadAttention, F.dropout)."""
    frames, _ = model.encoder(model.input_proj(features), lengths)
    return model.head(model.embedding(model.pooling(frames, lengths)))


def _step(model: nn.Module, forward: Callable, optimizer: torch.optim.Optimizer, batches: list[TrainBatch],
          augment: Callable, bf16: bool = False) -> Callable[[], None]:
    position = 0
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        nonlocal position
        batch = augment(batches[position % len(batches)], generator)
        position += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(batch.features, batch.lengths)
            loss = total_loss(model, logits, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    return step


def measure_speed_changes(reps: int = 20, classes: int = 40, compile_model: bool = False, bf16: bool = False) -> dict:
    """Median step seconds per variant and each one's speed-up over ``torchaudio``; ``bench.py`` imports this."""
    config = create_config("cpu")
    config.model.num_classes = classes
    g = torch.Generator().manual_seed(0)
    batches = [TrainBatch.from_labels(torch.randn(config.batch, config.segment, config.model.n_mels, generator=g),
                                      torch.full((config.batch,), config.segment),
                                      torch.randint(0, classes, (config.batch,), generator=g)) for _ in range(4)]
    augment = build_pipeline(DEFAULT_AUGMENT, config.augment)

    def fresh(fused: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(config.model).train()
        return model, torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                        fused=fused)

    steps: dict[str, Callable[[], None]] = {}
    model, optimizer = fresh(False)
    steps[BASELINE] = _step(model, lambda f, n, m=model: torchaudio_forward(m, f, n), optimizer, batches, augment)
    model, optimizer = fresh(False)
    steps[OURS] = _step(model, lambda f, n, m=model: m(f, n)[1], optimizer, batches, augment)
    model, optimizer = fresh(True)
    steps["conformer_forward, AdamW fused"] = _step(model, lambda f, n, m=model: m(f, n)[1], optimizer, batches,
                                                    augment)
    result: dict = {"batch": config.batch, "segment": config.segment, "augment": DEFAULT_AUGMENT, "reps": reps,
                    "threads": torch.get_num_threads()}
    if bf16:
        model, optimizer = fresh(True)
        steps["conformer_forward, AdamW fused, bf16 autocast"] = _step(
            model, lambda f, n, m=model: m(f, n)[1], optimizer, batches, augment, bf16=True)
    if compile_model:
        model, optimizer = fresh(True)
        compiled = torch.compile(model)
        step = _step(model, lambda f, n: compiled(f, n)[1], optimizer, batches, augment)
        start = time.perf_counter()
        step()
        result["compile_s"] = time.perf_counter() - start
        steps["conformer_forward, AdamW fused, torch.compile"] = step
    medians = interleaved_medians(steps, reps)
    result["variants"] = {label: {"step_s": s, "utt_per_s": config.batch / s, "speedup": medians[BASELINE] / s}
                          for label, s in medians.items()}
    return result


def report(result: dict) -> str:
    lines = [f"cpu preset, batch {result['batch']} x {result['segment']} frames, `{result['augment']}`, "
             f"{result['threads']} threads, median of {result['reps']} interleaved steps",
             "", "| variant | ms/step | utt/s | speed-up |", "|---|---|---|---|"]
    for label, v in result["variants"].items():
        lines.append(f"| {label} | {1000 * v['step_s']:.1f} | {v['utt_per_s']:.0f} | {v['speedup']:.2f}x |")
    if "compile_s" in result:
        lines.append(f"\ntorch.compile: first step (compilation) took {result['compile_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=at_least(1), default=20, help="timed steps per variant (default 20)")
    parser.add_argument("--compile", action="store_true",
                        help="add a torch.compile variant (compiling takes about a minute)")
    parser.add_argument("--bf16", action="store_true", help="add a bf16-autocast variant")
    parser.add_argument("--json", type=json_output)
    args = parser.parse_args(argv)
    result = measure_speed_changes(args.reps, compile_model=args.compile, bf16=args.bf16)
    print(report(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
