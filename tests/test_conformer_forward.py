"""voxaug's batch-first Conformer forward: the same function as torchaudio's over the same
parameters, padding kept out in training too, and a dropout with the asked-for rate."""

from __future__ import annotations

import pytest
import torch

from voxaug.model import ModelConfig, build_model, conformer_forward, fast_dropout

SMALL = dict(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, kernel_size=7, embedding_dim=24, num_classes=5)


def _encoder(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(dropout=dropout, **SMALL)).encoder


@pytest.mark.parametrize("training", [False, True])
def test_matches_torchaudio_on_unpadded_batches(training):
    """Eval mode, and training mode without dropout (batch-norm statistics, SDPA, gradients)."""
    encoder = _encoder(dropout=0.0).train(training)
    x = torch.randn(3, 20, 32, requires_grad=True)
    lengths = torch.tensor([20, 20, 20])
    ours = conformer_forward(encoder, x, lengths)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    theirs, _ = encoder(x, lengths)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-4)


def test_padding_does_not_leak_in_training_with_dropout():
    """Same random draws, different garbage in the padding: the real frames come out the same."""
    encoder = _encoder(dropout=0.1).train()
    x = torch.randn(2, 24, 32)
    lengths = torch.tensor([15, 24])
    other = x.clone()
    other[0, 15:] = 1e3 * torch.randn(9, 32)
    torch.manual_seed(1)
    first = conformer_forward(encoder, x, lengths)
    torch.manual_seed(1)
    second = conformer_forward(encoder, other, lengths)
    torch.manual_seed(2)
    reseeded = conformer_forward(encoder, x, lengths)
    assert torch.allclose(first[0, :15], second[0, :15], atol=1e-5)
    assert torch.allclose(first[1], second[1], atol=1e-5)
    assert not torch.allclose(first, reseeded, atol=1e-3)  # dropout is active, the test is not vacuous


@pytest.mark.parametrize("p", [0.1, 0.15, 0.5])
def test_fast_dropout_rate_and_scale(p):
    torch.manual_seed(0)
    out = fast_dropout(torch.ones(1_000_001), p, training=True)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 0.003
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)))


def test_fast_dropout_is_identity_when_off_and_seeded_when_on():
    x = torch.randn(4, 50)
    assert torch.equal(fast_dropout(x, 0.1, training=False), x)
    assert torch.equal(fast_dropout(x, 0.0, training=True), x)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.3, training=True)
    assert torch.equal(a, b) and not torch.equal(a, x)
