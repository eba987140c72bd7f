"""Reliability promises: a SIGKILLed run resumes from its last checkpoint; readers never crash on junk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxaug.checkpoint import load_checkpoint
from voxaug.data.validate import check_features
from voxaug.errors import VoxaugError
from voxaug.safeio import read_json, safe_torch_load

TINY_ARGS = ["--d-model", "32", "--heads", "2", "--layers", "1", "--embedding-dim", "32", "--batch", "16",
             "--segment", "64", "--device", "cpu", "--seed", "0", "-q"]


def test_sigkill_mid_run_then_resume(tiny_synth, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "VOXAUG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "voxaug", "train", str(tiny_synth), "--out", str(run), "--steps", "3000",
               "--eval-every", "10", *TINY_ARGS]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stdout.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_checkpoint(run / "last.pt")
    assert state["step"] >= 30
    finish = state["step"] + 20
    result = subprocess.run([sys.executable, "-m", "voxaug", "train", str(tiny_synth), "--out", str(run), "--resume",
                             "--steps", str(finish), "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_checkpoint(run / "last.pt")["step"] == finish
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == finish


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_random_bytes_to_the_readers_give_clean_errors(tmp_path, data):
    path = tmp_path / "fuzz.pt"
    path.write_bytes(data)
    for reader in (lambda: safe_torch_load(path), lambda: read_json(path), lambda: load_checkpoint(path)):
        try:
            reader()
        except VoxaugError as exc:
            assert "fuzz.pt" in str(exc)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=0, max_size=3),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]),
    st.sampled_from([0.0, 1.0, float("nan"), float("inf")]),
)
def test_random_tensors_are_valid_or_refused(shape, dtype, fill):
    tensor = torch.full(shape, fill).to(dtype) if dtype != torch.bool else torch.zeros(shape, dtype=dtype)
    try:
        checked = check_features(tensor, "t.pt", n_mels=5)
    except VoxaugError as exc:
        assert str(exc).startswith("t.pt: ")
        return
    assert checked.dtype == torch.float32 and checked.dim() == 2 and checked.shape[1] == 5
    assert checked.shape[0] > 0 and torch.isfinite(checked).all()


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "voxaug-checkpoint", "payload": Exploit()}, tmp_path / "evil.pt")
    try:
        load_checkpoint(tmp_path / "evil.pt")
    except VoxaugError as exc:
        assert "evil.pt" in str(exc) and "refused" in str(exc)
    else:
        raise AssertionError("a pickled callable was accepted")
    assert not marker.exists()
