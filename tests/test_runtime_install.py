"""The runtime-only install (`pip install voxaug`, no extras): no torch, its size measured, and from it the
`voxaug` command enrols wav clips and identifies wav clips with an exported model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voxaug.export import export_onnx

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "deploy" / "runtime-constraints.txt"
SIZE_BUDGET_BYTES = 200_000_000  # the 200 MB, decimal: the stricter reading
PYTHON_310_BYTES = 225_000_000  # 218 MB measured: the newest onnxruntime for 3.10 (1.23.2) requires sympy
RUNTIME = ("numpy", "numpy.libs", "onnxruntime", "faiss", "faiss_cpu.libs")


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A venv without pip of its own (so only voxaug's install is measured), filled by this interpreter's pip
    with the deployment constraints that docs/deployment.md gives for a size-sensitive install."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-compile", "-c", str(CONSTRAINTS), str(REPO)], check=True, capture_output=True)
    return venv


def run(venv: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "voxaug"), *map(str, args)], capture_output=True, text=True)


def test_runtime_install_has_no_torch_and_fits_its_budget(runtime_venv):
    probe = ("import importlib.util as u; print(' '.join(m for m in ('torch', 'torchaudio', 'sklearn', 'scipy', "
             "'matplotlib', 'audiomentations') if u.find_spec(m)))")
    found = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.split() == []
    site = next((runtime_venv / "lib").glob("python3*/site-packages"))
    size = folder_bytes(site)
    runtime = sum(folder_bytes(site / name) for name in RUNTIME)
    print(f"runtime-only site-packages: {size / 1e6:.0f} MB, of which numpy, onnxruntime and faiss-cpu "
          f"{runtime / 1e6:.0f} MB")
    assert runtime > 0 and size < (SIZE_BUDGET_BYTES if sys.version_info >= (3, 11) else PYTHON_310_BYTES)


def test_runtime_install_enrols_and_identifies_wav_clips_with_an_exported_model(runtime_venv, trained_run, tiny_synth,
                                                                               tmp_path):
    model = tmp_path / "model.onnx"
    export_onnx(trained_run / "best.pt", model)
    index = tmp_path / "spk.faiss"
    for speaker in ("new000", "new001"):
        clips = sorted((tiny_synth / "unseen" / "enroll" / speaker).glob("*.wav"))
        done = run(runtime_venv, "enroll", "--index", index, "--model", model, "--speaker", speaker, *clips)
        assert done.returncode == 0 and f"enrolled {speaker} from {len(clips)} clips" in done.stdout, done.stderr
    queries = sorted((tiny_synth / "unseen" / "test").glob("*/*.wav"))
    done = run(runtime_venv, "identify", "--index", index, "--json", *queries)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [record["clip"] for record in records] == [str(query) for query in queries]
    assert all(record["top"][0]["speaker"] in ("new000", "new001") for record in records)
    feature_clip = queries[0].with_suffix(".pt")
    done = run(runtime_venv, "identify", "--index", index, feature_clip)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert str(feature_clip) in done.stderr and 'pip install "voxaug[train]"' in done.stderr


def test_runtime_install_identifies_with_the_export_of_the_checkpoint_an_index_was_built_with(runtime_venv, trained_run,
                                                                                              tiny_synth, tmp_path):
    """Enrol with the checkpoint where torch is, ship its export with the same index."""
    import voxaug

    ckpt, model, index = trained_run / "best.pt", tmp_path / "model.onnx", tmp_path / "spk.faiss"
    export_onnx(ckpt, model)
    built = voxaug.SpeakerIndex.create(index, ckpt)
    for speaker in ("new000", "new001"):
        built.enroll(speaker, sorted((tiny_synth / "unseen" / "enroll" / speaker).glob("*.wav")))
    queries = sorted((tiny_synth / "unseen" / "test").glob("*/*.wav"))
    done = run(runtime_venv, "identify", "--index", index, "--model", model, "--json", *queries)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [record["top"][0]["speaker"] for record in records] == [built.identify(q)["top"][0]["speaker"] for q in queries]
    done = run(runtime_venv, "identify", "--index", index, queries[0])  # the sidecar's model is the checkpoint
    assert done.returncode == 2 and str(ckpt.name) in done.stderr and "needs torch" in done.stderr, done.stderr


def test_runtime_install_refuses_training_commands_naming_the_train_extra(runtime_venv, tiny_synth, tmp_path):
    done = run(runtime_venv, "embed", tiny_synth, "--ckpt", tmp_path / "any.pt", "--out", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'embed: this needs torch' in done.stderr and 'pip install "voxaug[train]"' in done.stderr
