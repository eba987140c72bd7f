"""ONNX Runtime against torch on one checkpoint: the worst embedding cosine and how often the argmax agrees.

It exports the checkpoint twice (log-mel in, and ``--with-frontend``: audio at the checkpoint's sample rate in)
and compares, on the same inputs, the exported models under ONNX Runtime with the checkpoint under torch:

- utterances of every length from the model's minimum to ``--max-frames`` (sliced from DATA's features),
  alone and in padded batches of random lengths;
- every wav file under DATA, through the ``--with-frontend`` model, against torchaudio's front end plus the
  model, alone and in padded batches.

    python benchmarks/onnx_parity.py --ckpt demo/run/best.pt demo/data --json parity.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from voxaug.audio import read_audio
from voxaug.checkpoint import load_model
from voxaug.export import export_onnx
from voxaug.features import log_mel
from voxaug.runtime.onnx_model import OnnxSpeakerModel
from voxaug.safeio import atomic_write_json
from report import json_output


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class Agreement:
    """Running worst cosine and argmax agreement over compared pairs."""

    def __init__(self) -> None:
        self.worst, self.same, self.count = 1.0, 0, 0

    def add(self, embedding: np.ndarray, logits: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> None:
        self.worst = min(self.worst, cosine(embedding, reference[0]))
        self.same += int(logits.argmax() == reference[1].argmax())
        self.count += 1

    def row(self, what: str) -> dict:
        return {"compared": what, "pairs": self.count, "worst_cosine": self.worst, "argmax_same": self.same}


def padded(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    batch = np.zeros((len(rows), lengths.max(), *rows[0].shape[1:]), dtype=np.float32)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = r
    return batch, lengths


def run(ckpt: Path, data: Path, max_frames: int, batches: int, seed: int) -> list[dict]:
    loaded = load_model(ckpt, "cpu")
    network, frontend = loaded.model.eval(), loaded.frontend

    @torch.no_grad()
    def reference(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        embedding, logits = network(features[None], torch.tensor([features.shape[0]]))
        return torch.nn.functional.normalize(embedding, dim=1)[0].numpy(), logits[0].numpy()

    with tempfile.TemporaryDirectory() as folder:
        features_model = OnnxSpeakerModel.load(export_onnx(ckpt, Path(folder) / "features.onnx").path, threads=1)
        audio_model = OnnxSpeakerModel.load(export_onnx(ckpt, Path(folder) / "audio.onnx", with_frontend=True).path,
                                            threads=1)
    files = sorted(data.glob("uttr-*.pt"))
    frames = torch.cat([torch.load(p, weights_only=True) for p in files[: 4 * max_frames // 100 + 1]])[:max_frames]
    max_frames = len(frames)  # DATA may hold fewer frames than asked for: label only the lengths compared
    if max_frames < features_model.min_frames:
        raise SystemExit(f"{data}: its uttr-*.pt files hold {max_frames} frames; the model needs at least "
                         f"{features_model.min_frames}")
    lengths = sorted({n for n in range(features_model.min_frames, 100, 7) if n <= max_frames}
                     | set(range(100, max_frames + 1, 97)) | {max_frames})
    batch_size = min(8, len(lengths))
    references = {n: reference(frames[:n]) for n in lengths}
    alone, batched = Agreement(), Agreement()
    for n in lengths:
        alone.add(*features_model.embed_features(frames[:n].numpy()), references[n])
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        pick = rng.choice(lengths, batch_size, replace=False)
        embeddings, logits = features_model.run_features(*padded([frames[:n].numpy() for n in pick]))
        for row, n in enumerate(pick):
            batched.add(embeddings[row], logits[row], references[n])
    waves = [read_audio(p, frontend.sample_rate) for p in sorted(data.rglob("*.wav"))]
    wave_alone, wave_batched = Agreement(), Agreement()
    wave_references = [reference(log_mel(w, frontend)) for w in waves]
    for wave, ref in zip(waves, wave_references):
        wave_alone.add(*audio_model.embed_waveform(wave.numpy()), ref)
    for start in range(0, len(waves), 16):
        group = list(range(start, min(start + 16, len(waves))))
        embeddings, logits = audio_model.run_audio(*padded([waves[i].numpy() for i in group]))
        for row, i in enumerate(group):
            wave_batched.add(embeddings[row], logits[row], wave_references[i])
    return [alone.row(f"features model, alone, {len(lengths)} lengths {lengths[0]}..{lengths[-1]} frames"),
            batched.row(f"features model, {batches} padded batches of {batch_size} of those lengths"),
            wave_alone.row(f"--with-frontend model, alone, {len(waves)} wav files"),
            wave_batched.row("--with-frontend model, padded batches of 16 of those wav files")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a folder of uttr-*.pt features with wav files under it (voxaug synth)")
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--max-frames", type=int, default=3000, help="longest utterance compared (capped at DATA's)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=json_output)
    args = parser.parse_args(argv)
    if args.max_frames < 1 or args.batches < 0:
        parser.error(f"--max-frames must be at least 1 and --batches at least 0, got {args.max_frames} and {args.batches}")
    if not sorted(args.data.glob("uttr-*.pt")):
        parser.error(f"{args.data}: no uttr-*.pt files")
    torch.set_num_threads(1)
    rows = run(args.ckpt, args.data, args.max_frames, args.batches, args.seed)
    print("| compared | pairs | worst cosine | argmax the same |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['compared']} | {r['pairs']} | {r['worst_cosine']:.7f} | {r['argmax_same']}/{r['pairs']} |")
    if args.json:
        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, "
                                      f"{platform.platform()}", "checkpoint": str(args.ckpt), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
