"""The CUDA path (``pytest -m cuda``; skipped without a GPU): mixed-precision training with its
GradScaler, float32 training with --no-amp, checkpoints that cross between GPU and CPU both ways,
and GPU embeddings that agree with the CPU's. ``benchmarks/gpu_check.sh`` runs these on a real card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxaug.checkpoint import load_checkpoint, load_model
from voxaug.data.sources import open_source
from voxaug.data.store import PackedStore
from voxaug.embeddings.extract import embed_store
from voxaug.inference import run_model
from voxaug.train import Trainer

from conftest import tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def cuda_trainer(data, run, amp: bool = True, steps: int = 20) -> Trainer:
    config = tiny_config(train={"steps": steps, "eval_every": 10, "device": "cuda", "amp": amp})
    return Trainer(config, data, run, progress=False)


@pytest.mark.parametrize("amp", [True, False])
def test_training_on_cuda_stays_finite_with_and_without_amp(tiny_synth, tmp_path, amp):
    trainer = cuda_trainer(tiny_synth, tmp_path / "run", amp=amp)
    assert trainer.scaler.is_enabled() is amp
    summary = trainer.fit()
    assert summary.skipped_steps == 0 and summary.steps == 20
    assert next(trainer.model.parameters()).device.type == "cuda"
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert bool(last["scaler"]) is amp  # a GradScaler saves its scale only when enabled
    assert all(torch.isfinite(value).all() for value in last["model"].values() if value.is_floating_point())


def test_a_gpu_checkpoint_predicts_on_the_cpu_as_on_the_gpu(tiny_synth, tmp_path):
    cuda_trainer(tiny_synth, tmp_path / "run").fit()
    store = PackedStore.open(open_source(tiny_synth), tmp_path / "cache", progress=False)
    indices = np.arange(len(store))
    on_cpu = run_model(load_model(tmp_path / "run" / "best.pt", CPU).model, store, indices, CPU)
    on_gpu = run_model(load_model(tmp_path / "run" / "best.pt", CUDA).model, store, indices, CUDA)
    agree = (on_cpu[1].argmax(1) == on_gpu[1].argmax(1)).float().mean()
    assert agree >= 0.95  # float16 on the GPU may flip a near-tie, no more
    assert torch.nn.functional.cosine_similarity(on_cpu[0], on_gpu[0]).min() > 0.99


def test_a_cpu_run_resumes_on_cuda(tiny_synth, tmp_path):
    """The CPU saves an empty GradScaler state; resuming on CUDA starts a fresh scaler instead of failing."""
    Trainer(tiny_config(train={"steps": 10, "eval_every": 10}), tiny_synth, tmp_path / "run", progress=False).fit()
    config = Trainer.config_from_run(tmp_path / "run", steps=20, device="cuda")
    summary = Trainer(config, tiny_synth, tmp_path / "run", progress=False).fit(resume=True)
    assert summary.steps == 20 and summary.skipped_steps == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["scaler"]


def test_cuda_embeddings_match_the_cpu(trained_run, tiny_synth, tmp_path):
    store = PackedStore.open(open_source(tiny_synth), tmp_path / "cache", progress=False)
    indices = np.arange(len(store))
    on_cpu = embed_store(load_model(trained_run / "best.pt", CPU).model, store, indices, CPU, progress=False)
    on_gpu = embed_store(load_model(trained_run / "best.pt", CUDA).model, store, indices, CUDA, progress=False)
    assert on_gpu.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(on_gpu.embeddings, axis=1), 1.0, atol=1e-4)
    assert (on_cpu.embeddings * on_gpu.embeddings).sum(1).min() > 0.99
