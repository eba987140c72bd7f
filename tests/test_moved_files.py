"""What voxaug wrote, moved: a project folder renamed or unpacked elsewhere, an index copied beside a deployed model.
The index's sidecar named its model by an absolute path only, so a moved index said "model not found" although its
model had moved with it (or lay beside it), the same file by its SHA-256."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import voxaug
from voxaug.cli.main import app
from voxaug.embeddings.index import SpeakerIndex as IndexData
from voxaug.embeddings.index import sidecar_path
from voxaug.errors import VoxaugError

runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder holding a dataset, a one-step run and a speaker index of two speakers built from it."""
    from hw4_factory import make_hw4

    root = tmp_path_factory.mktemp("moved") / "project"
    data = make_hw4(root / "data", speakers=2)
    trained = runner.invoke(app, ["train", str(data), "--out", str(root / "run"), "--steps", "1", "--d-model", "16",
                                  "--layers", "1", "--device", "cpu", "-q", "--cache-dir", str(root.parent / "cache")])
    assert trained.exit_code == 0, trained.output
    index = voxaug.SpeakerIndex.create(root / "idx" / "spk.faiss", voxaug.SpeakerModel.load(root / "run" / "last.pt"))
    index.enroll("alice", sorted(data.glob("uttr-*.pt"))[:2])
    return root


def moved_copy(project: Path, tmp_path: Path) -> Path:
    """The project as another machine sees it after ``tar`` or ``cp -a``: the same tree under another path, and the
    original gone."""
    return Path(shutil.copytree(project, tmp_path / "elsewhere" / "renamed", symlinks=True))


def forget_where_it_was_made(moved: Path, tmp_path: Path) -> Path:
    """The moved sidecar's recorded model path set to a place that is not the project's (the project fixture stays
    where it was made, and a moved index must not lean on it); returns that place."""
    side = sidecar_path(moved / "idx" / "spk.faiss")
    sidecar = json.loads(side.read_text())
    sidecar["checkpoint"]["path"] = str(tmp_path / "gone" / "run" / "last.pt")
    side.write_text(json.dumps(sidecar))
    return Path(sidecar["checkpoint"]["path"])


def clip_of(project: Path) -> Path:
    return sorted((project / "data").glob("uttr-*.pt"))[-1]


def test_identify_finds_the_model_moved_with_its_index_from_another_folder(project, tmp_path, monkeypatch):
    moved = moved_copy(project, tmp_path)
    forget_where_it_was_made(moved, tmp_path)
    monkeypatch.chdir(tmp_path)
    answered = runner.invoke(app, ["identify", "--index", str(moved / "idx" / "spk.faiss"), str(clip_of(moved)),
                                   "--json"])
    assert answered.exit_code == 0, answered.output
    index = voxaug.SpeakerIndex.open(moved / "idx" / "spk.faiss")
    assert index.model.path == moved / "run" / "last.pt"
    index.enroll("bob", sorted((moved / "data").glob("uttr-*.pt"))[2:4])  # written again: still led to its own model
    assert voxaug.SpeakerIndex.open(moved / "idx" / "spk.faiss").model.path == moved / "run" / "last.pt"


def deployed_beside_model(project: Path, tmp_path: Path, recorded: str) -> Path:
    """A deployment folder: the index, its sidecar and the model side by side, the run they came from not there; the
    sidecar records the model at ``recorded`` and no relative path (as one written before relative paths)."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("spk.faiss", "spk.faiss.json"):
        shutil.copy2(project / "idx" / name, deploy / name)
    shutil.copy2(project / "run" / "last.pt", deploy / "last.pt")
    sidecar = json.loads((deploy / "spk.faiss.json").read_text())
    sidecar["checkpoint"] = {key: value for key, value in sidecar["checkpoint"].items() if key != "relative_path"}
    sidecar["checkpoint"]["path"] = recorded
    (deploy / "spk.faiss.json").write_text(json.dumps(sidecar))
    return deploy


def test_an_index_copied_beside_its_model_finds_it_there(project, tmp_path):
    """A deployment folder: the index, its sidecar and the model side by side, the run they came from not there."""
    deploy = deployed_beside_model(project, tmp_path, str(tmp_path / "gone" / "last.pt"))
    assert voxaug.SpeakerIndex.open(deploy / "spk.faiss").speakers == ["alice"]


@pytest.mark.parametrize("recorded", [r"C:\Users\me\runs\last.pt", r"\\server\share\runs\last.pt"])
def test_an_index_built_on_windows_and_copied_beside_its_model_finds_it_there(project, tmp_path, recorded):
    """Trained on Windows with the index on another drive (no relative path leads there), then copied to a POSIX
    server beside the model: the recorded name, backslashes and all, was looked for beside the index as one file
    name, and the index said "model not found"."""
    deploy = deployed_beside_model(project, tmp_path, recorded)
    assert voxaug.SpeakerIndex.open(deploy / "spk.faiss").model.path == deploy / "last.pt"


def test_an_index_enrolled_after_a_move_still_finds_its_model_after_the_next_move(project, tmp_path):
    moved = moved_copy(project, tmp_path / "first")
    forget_where_it_was_made(moved, tmp_path)
    index = voxaug.SpeakerIndex.open(moved / "idx" / "spk.faiss")
    index.enroll("bob", sorted((moved / "data").glob("uttr-*.pt"))[2:4])
    again = moved_copy(moved, tmp_path / "second")
    shutil.rmtree(moved)
    assert voxaug.SpeakerIndex.open(again / "idx" / "spk.faiss").speakers == ["alice", "bob"]


def test_a_moved_index_without_its_model_says_where_to_point(project, tmp_path):
    moved = moved_copy(project, tmp_path)
    forget_where_it_was_made(moved, tmp_path)
    (moved / "run" / "last.pt").unlink()
    with pytest.raises(VoxaugError, match=r"model not found .*pass --model or --ckpt"):
        voxaug.SpeakerIndex.open(moved / "idx" / "spk.faiss")


def test_a_moved_index_takes_the_model_of_its_own_weights(project, tmp_path):
    """``cp -a`` of a project, then the original run trained on: the recorded path holds other weights now, and the
    model that moved with the index is the index's own."""
    moved = moved_copy(project, tmp_path)
    retrained = forget_where_it_was_made(moved, tmp_path)
    retrained.parent.mkdir(parents=True)
    shutil.copy2(moved / "data" / "mapping.json", retrained)  # any file that is not the index's model
    index = voxaug.SpeakerIndex.open(moved / "idx" / "spk.faiss")
    assert index.model.path == moved / "run" / "last.pt"
    index.enroll("bob", sorted((moved / "data").glob("uttr-*.pt"))[2:4])  # written again: still led to its own model
    assert voxaug.SpeakerIndex.open(moved / "idx" / "spk.faiss").model.path == moved / "run" / "last.pt"


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux's /proc/self/mem, a file no read gets")
def test_a_moved_index_passes_over_an_unreadable_file_at_its_recorded_path(project, tmp_path):
    """The recorded path now leads to a file that cannot be read (another user's, mode 600; here /proc/self/mem,
    which refuses a read even to root): hashing it to choose between the places stopped identify with a traceback
    (an OSError) instead of finding the index's own model that moved with it."""
    moved = moved_copy(project, tmp_path)
    recorded = forget_where_it_was_made(moved, tmp_path)
    recorded.parent.mkdir(parents=True)
    recorded.symlink_to("/proc/self/mem")
    assert voxaug.SpeakerIndex.open(moved / "idx" / "spk.faiss").model.path == moved / "run" / "last.pt"
    answered = runner.invoke(app, ["identify", "--index", str(moved / "idx" / "spk.faiss"), str(clip_of(moved))])
    assert answered.exit_code == 0, answered.output


def small_index(folder: Path) -> Path:
    """An index of two speakers written at ``folder/spk.faiss`` (no model: nothing is embedded)."""
    index = IndexData(dim=4, checkpoint={"path": "x.pt", "sha256": "ab"}, frontend={"n_mels": 40})
    index.add("s1", np.eye(4, dtype=np.float32)[:2])
    index.add("s2", np.eye(4, dtype=np.float32)[2:])
    folder.mkdir(parents=True, exist_ok=True)
    index.save(folder / "spk.faiss")
    return folder / "spk.faiss"


def test_an_index_renamed_without_its_sidecar_names_the_sidecar_to_rename(tmp_path):
    """``mv spk.faiss other.faiss``: the error said only that other.faiss.json is missing, with spk.faiss.json, the
    sidecar that records this very index, beside it."""
    path = small_index(tmp_path)
    path.rename(tmp_path / "other.faiss")
    with pytest.raises(VoxaugError) as error:
        IndexData.load(tmp_path / "other.faiss")
    assert str(error.value) == (f"{tmp_path / 'other.faiss.json'}: the index's sidecar is missing (it records labels, "
                                f"checkpoint and front end); {tmp_path / 'spk.faiss.json'} records this index: rename "
                                "it to other.faiss.json (an index and its sidecar move together)")
    (tmp_path / "spk.faiss.json").rename(tmp_path / "other.faiss.json")
    assert IndexData.load(tmp_path / "other.faiss").labels == ["s1", "s2"]


def test_a_sidecar_whose_index_was_renamed_names_the_index_file(tmp_path):
    path = small_index(tmp_path)
    path.rename(tmp_path / "other.faiss")
    with pytest.raises(VoxaugError) as error:
        IndexData.load(tmp_path / "spk.faiss")
    assert str(error.value) == (f"{path}: speaker index not found (its sidecar is there); {tmp_path / 'other.faiss'} "
                                "is the index it records: rename it to spk.faiss (an index and its sidecar move "
                                "together)")


def test_an_index_copied_over_another_s_without_its_sidecar_says_to_copy_both(tmp_path):
    """Two copies of one index enrolled apart, then one's index file copied over the other's: a clear refusal, not
    the other copy's speakers named by these labels."""
    first, second = small_index(tmp_path / "a"), small_index(tmp_path / "b")
    grown = IndexData.load(first)
    grown.add("s3", np.full((1, 4), 0.5, dtype=np.float32))
    grown.save(first)
    shutil.copy2(first, second)
    with pytest.raises(VoxaugError, match=r"index does not match its sidecar .*copy an index and its sidecar together"):
        IndexData.load(second)
