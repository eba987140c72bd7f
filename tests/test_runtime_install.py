"""The runtime-only install (`pip install voxaug`, no extras): no torch, its size measured, and from it the
`voxaug` command enrols wav clips and identifies wav clips with an exported model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from voxaug.export import export_onnx

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
CONSTRAINTS = REPO / "deploy" / "runtime-constraints.txt"
SIZE_BUDGET_BYTES = 200_000_000  # the 200 MB, decimal: the stricter reading
PYTHON_310_BYTES = 225_000_000  # 218 MB measured: the newest onnxruntime for 3.10 (1.23.2) requires sympy
RUNTIME = ("numpy", "numpy.libs", "onnxruntime", "faiss", "faiss_cpu.libs")


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def checkout_copy(tree: Path) -> Path:
    """The checkout's files, without git's, build outputs or caches: a build writes its build/ and egg-info there,
    not into the checkout, and no stale build/lib of an earlier one ships."""
    import shutil

    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                                              "__pycache__", "*.py[cod]", ".pytest_cache", ".hypothesis",
                                                              "demo", "runs", "*.whl"))
    return tree


@pytest.fixture(scope="module")
def checkout_entries() -> list[str]:
    return sorted(path.name for path in REPO.iterdir())


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory, checkout_entries) -> Path:
    """A venv without pip of its own (so only voxaug's install is measured), filled by this interpreter's pip
    with the deployment constraints that docs/deployment.md gives for a size-sensitive install."""
    root = tmp_path_factory.mktemp("runtime")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-compile", "-c", str(CONSTRAINTS), str(checkout_copy(root / "tree"))], check=True,
                   capture_output=True)
    return venv


@pytest.fixture(scope="module")
def build_backend(tmp_path_factory) -> dict[str, str]:
    """The environment of a build as pip makes it: pyproject.toml's build requirements, the newest that match, ahead of
    this interpreter's own setuptools (3.11's venv holds 65.5, which reads no SPDX licence; 3.12's holds none)."""
    target = tmp_path_factory.mktemp("backend")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-warn-conflicts", "--target", str(target),
                    *build_requirements()], check=True, capture_output=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def build_requirements() -> list[str]:
    """``[build-system] requires`` of pyproject.toml."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the train extra's tomli, the same parser
        import tomli as tomllib
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["build-system"]["requires"]


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


def test_the_runtime_install_holds_every_module_of_the_checkout(runtime_venv):
    """The wheel ships the packages pyproject.toml lists, and cli/ and embeddings/ by its package-dir: a subpackage
    or module missing there is still found by an editable install, so only an installed wheel lacks it."""
    installed = next((runtime_venv / "lib").glob("python3*/site-packages")) / "voxaug"
    wanted = {path.relative_to(REPO / "voxaug").as_posix() for path in (REPO / "voxaug").rglob("*.py")}
    for folder in ("cli", "embeddings"):
        wanted |= {f"{folder}/{path.relative_to(REPO / folder).as_posix()}" for path in (REPO / folder).rglob("*.py")}
    assert sorted(wanted - {path.relative_to(installed).as_posix() for path in installed.rglob("*.py")}) == []


def test_the_build_uses_nothing_its_backend_deprecates(build_backend, tmp_path):
    """`license = { text = "MIT" }` under `setuptools>=68`: pip builds with the newest setuptools, which deprecates a
    licence table for an SPDX string and says such builds stop being supported after 2027-02-18, so `pip install .`
    and an install from the sdist would then fail. Its deprecation warnings are errors here."""
    tree = checkout_copy(tmp_path / "tree")
    build = ("import sys, warnings; from setuptools import build_meta; "
             "from setuptools.warnings import SetuptoolsDeprecationWarning; "
             "warnings.simplefilter('error', SetuptoolsDeprecationWarning); "
             "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=tree, env=build_backend,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    metadata = (tmp_path / done.stdout.split()[-1] / "METADATA").read_text(encoding="utf-8")
    assert "License-Expression: MIT" in metadata.splitlines()


def test_the_sdist_carries_every_file_its_tests_read(build_backend, tmp_path):
    """An sdist held tests/test_*.py but not tests/conftest.py, tests/hw4_factory.py, docs/, deploy/, benchmarks/ or
    demo.sh, so its tests stopped at collection (`No module named 'conftest'`, `'hw4_factory'`, `'bench'`)."""
    import tarfile

    tree = checkout_copy(tmp_path / "tree")
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=tree, env=build_backend,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with tarfile.open(tmp_path / done.stdout.split()[-1]) as sdist:
        shipped = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    needed = {path.relative_to(tree).as_posix() for folder in ("tests", "docs", "deploy", "benchmarks")
              for path in (tree / folder).rglob("*") if path.is_file()}
    assert "tests/conftest.py" in needed
    assert sorted((needed | {"demo.sh"}) - shipped) == []


def test_the_declared_typer_floor_runs_the_cli_with_the_click_pip_takes():
    """`typer>=0.12` let pip keep an installed typer 0.12 to 0.17, which the click pip takes (8.5) breaks: `voxaug
    --version` raised TypeError under typer 0.12.5, `--help` of evaluate and export under 0.15, and under 0.17 a
    missing `--out` reached the command as None. 0.18.0 is the first release that runs them (measured with click 8.5.1).
    Up to 0.26 usage errors are worded otherwise (`No such option '--thresh'.` under click 8.4 and later, `Invalid value
    for 'OUT'` for an argument); 0.27.0 is the first to word them as the CLI tests assert, whatever click is installed."""
    floor = re.search(r'"typer>=([0-9.]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert floor is not None and tuple(int(part) for part in floor.group(1).split(".")) >= (0, 27)


def test_python_m_voxaug_and_the_api_work_in_the_root_of_the_clone_it_was_installed_from(runtime_venv):
    """`pip install .` from a clone, then `python -m voxaug` or a script in the clone's root: Python imports the clone's
    voxaug/ ahead of the installed copy, and that lacked voxaug.cli and voxaug.embeddings (cli/ and embeddings/ sit
    beside it), so both stopped at `No module named 'voxaug.cli'` / `'voxaug.embeddings'`."""
    python = str(runtime_venv / "bin" / "python")
    done = subprocess.run([python, "-m", "voxaug", "identify", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "Usage" in done.stdout, done.stderr
    done = subprocess.run([python, "-c", "import voxaug; voxaug.SpeakerIndex"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_checkout_adds_voxaug_cli_and_embeddings_and_no_other_folder_of_its_root():
    """The checkout's root on ``voxaug.__path__`` made every folder there a subpackage: ``import voxaug.tests`` and
    ``voxaug.docs`` worked, and ``voxaug.voxaug`` imported every module a second time, with classes of their own."""
    probe = ("import importlib, voxaug, voxaug.cli, voxaug.embeddings\n"
             "print(voxaug.cli.__file__, voxaug.embeddings.__file__, voxaug.__path__)\n"
             "for name in ('tests', 'docs', 'benchmarks', 'voxaug'):\n"
             "    try:\n"
             "        importlib.import_module('voxaug.' + name)\n"
             "        print('imported', name)\n"
             "    except ModuleNotFoundError:\n"
             "        pass\n")
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO, capture_output=True, text=True)  # no site:
    assert done.returncode == 0, done.stderr  # the checkout's voxaug alone, as a clone installed elsewhere finds it
    found = done.stdout.split("\n")
    assert found[0] == f"{REPO / 'cli' / '__init__.py'} {REPO / 'embeddings' / '__init__.py'} {[str(REPO / 'voxaug')]}"
    assert found[1:] == [""], done.stdout


def test_the_runtime_install_writes_nothing_into_the_checkout(runtime_venv, checkout_entries):
    """pip built the checkout itself: every run left build/ in it (ignored by git, so unseen), whose build/lib the
    next build shipped too, a module deleted from voxaug/ included; and two runs at once built in one folder."""
    assert sorted(path.name for path in REPO.iterdir()) == checkout_entries
