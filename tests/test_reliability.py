"""Reliability promises: a SIGKILLed run resumes from its last checkpoint; readers never crash on junk."""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import another_owner_and_group, ascii_locale_env, descriptors_open_on, unreadable_to_this_process
from voxaug.checkpoint import load_checkpoint
from voxaug.cli.main import app
from voxaug.data.validate import check_features
from voxaug.errors import VoxaugError
from voxaug.embeddings.index import PENDING_SUFFIX, SpeakerIndex, index_lock, sidecar_path
from voxaug.safeio import (TMP_SUFFIX, atomic_output, atomic_torch_save, atomic_write_bytes, exclusive_lock, read_json,
                            safe_torch_load)

TINY_ARGS = ["--d-model", "32", "--heads", "2", "--layers", "1", "--embedding-dim", "32", "--batch", "16",
             "--segment", "64", "--device", "cpu", "--seed", "0", "-q"]
HOLD_S = 12.0


def test_sigkill_mid_run_then_resume(tiny_synth, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "VOXAUG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "voxaug", "train", str(tiny_synth), "--out", str(run), "--steps", "3000",
               "--eval-every", "10", *TINY_ARGS]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:  # a row is written before its last.pt
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stdout.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_checkpoint(run / "last.pt")
    assert state["step"] >= 30
    finish = state["step"] + 20
    result = CliRunner(env={"VOXAUG_CACHE": env["VOXAUG_CACHE"]}).invoke(  # only the killed run needs a process
        app, ["train", str(tiny_synth), "--out", str(run), "--resume", "--steps", str(finish), "-q"])
    assert result.exit_code == 0, result.output
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


def test_a_strange_pickle_header_gives_the_error_alone_without_torchs_warning(tmp_path):
    path = tmp_path / "odd.pt"
    path.write_bytes(b"\x80\xfa" + bytes(range(40)))  # pickle protocol 250: torch warns, then fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(VoxaugError, match="odd.pt: refused"):
            safe_torch_load(path, "features")
    assert [str(w.message) for w in caught] == []


def test_a_zip_bomb_torch_file_is_refused_before_torch_allocates_what_it_declares(tmp_path):
    saved, bomb = tmp_path / "saved.pt", tmp_path / "bomb.pt"
    torch.save(torch.zeros(1 << 22)[:4000].view(100, 40), saved)  # a 100x40 view of a 16 MiB storage of zeros
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as packed:
        for member in source.infolist():
            packed.writestr(member.filename, source.read(member))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(VoxaugError,
                       match=r"bomb.pt: refused: the feature file declares 16.0 MiB .*\(a zip bomb") as err:
        safe_torch_load(bomb, "feature file")
    assert f"in a file of {bomb.stat().st_size:,} bytes" in str(err.value)  # not "in a 0.0 MiB file"
    assert safe_torch_load(saved, "feature file").shape == (100, 40)  # the same tensor uncompressed is read


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


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "best.pt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_a_text_write_is_utf8_under_an_ascii_locale_and_warns_of_no_default_encoding(tmp_path):
    """``atomic_output(path, "w")`` (synth's test_labels.csv) opened its file in the locale's encoding: under
    ``LC_ALL=C`` with ``PYTHONUTF8=0`` a speaker named José could not be written, and ``-X warn_default_encoding -W
    error`` (a downstream test suite's ``filterwarnings = error``) stopped ``voxaug synth`` on an EncodingWarning."""
    target = tmp_path / "labels.csv"
    script = ("import sys; from voxaug.safeio import atomic_output\n"
              "with atomic_output(sys.argv[1], 'w') as handle:\n    handle.write('Id,Category\\nuttr-1.pt,Jos\\xe9\\n')")
    result = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-W", "error::EncodingWarning", "-c", script,
                             str(target)], capture_output=True, text=True, timeout=120,
                            env=ascii_locale_env())
    assert result.returncode == 0, result.stderr
    assert target.read_text(encoding="utf-8") == "Id,Category\nuttr-1.pt,José\n"


def test_a_write_that_the_disk_cuts_short_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """A full disk often shows only as a short write: numpy says "2112 requested and 2016 written" (no errno, no
    file) and torch's zip writer "unexpected pos" (a RuntimeError, reported as a bug); a read-only folder failed
    on the temp file's name. Each now names the file being written and the room left there."""
    target = tmp_path / "embeddings.npy"
    atomic_write_bytes(target, b"old")
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(target))}: cannot write: 2112 requested and 2016 "
                                          r"written; [0-9.]+ MiB free there \(the previous file is kept\)$"):
        with atomic_output(target) as handle:
            handle.write(b"part")
            raise OSError("2112 requested and 2016 written")
    checkpoint = tmp_path / "last.pt"
    atomic_write_bytes(checkpoint, b"old")

    def short_write(obj, handle):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 239424 vs 239316\nframe #0")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(checkpoint))}: cannot write: \[enforce fail .* vs 239316;"):
        atomic_torch_save(checkpoint, {"step": 1})

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".curves.png.1.x.tmp"))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(tmp_path / 'curves.png'))}: cannot write: Read-only file system$"):
        atomic_write_bytes(tmp_path / "curves.png", b"png")
    assert target.read_bytes() == checkpoint.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy", "last.pt"]


def test_an_error_inside_a_lock_is_not_hidden_by_a_lock_file_that_cannot_be_removed(tmp_path, monkeypatch):
    """On a file system turned read-only the lock file's removal failed too, and its error replaced the real one."""
    lock = tmp_path / ".train.lock"
    real_unlink = os.unlink

    def refuse_lock(path, *args, **kwargs):
        if str(path) == str(lock):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_lock)
    with pytest.raises(ValueError, match="the error that matters"):
        with exclusive_lock(lock, 0.0, lambda: AssertionError("locked")):
            raise ValueError("the error that matters")


def test_an_index_or_run_lock_on_nfs_is_taken(tmp_path, nfs_flock):
    """NFS emulates flock with fcntl locks, which refuse an exclusive lock on a file opened read-only (EBADF): the
    index's and the run folder's lock files were opened read-only, so enroll, embed --index, evaluate --calibrate
    and train on a cluster's NFS disk failed with a bare 'Bad file descriptor'."""
    lock = tmp_path / "spk.faiss.lock"
    with exclusive_lock(lock, 0.0, lambda: AssertionError("locked")):
        assert lock.exists()
    assert not lock.exists()


def refuse_writing(monkeypatch, path) -> None:
    """``path`` opened for writing is refused as another account's 0644 file is to a user who is not root."""
    real_open = os.open

    def other_accounts_file(name, flags, *args, **kwargs):
        if str(name) == str(path) and flags & os.O_ACCMODE != os.O_RDONLY:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", other_accounts_file)


def test_an_index_or_run_lock_file_of_another_account_on_a_local_disk_is_taken_read_only(tmp_path, monkeypatch):
    """The lock file is opened for writing (for NFS); another account's, which refuses that, is opened read-only,
    where a local disk's flock locks it all the same, so accounts sharing an index folder still share its lock."""
    import fcntl

    lock = tmp_path / "spk.faiss.lock"
    refuse_writing(monkeypatch, lock)
    with exclusive_lock(lock, 0.0, lambda: AssertionError("locked")):
        other = os.open(lock, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    assert not lock.exists() and descriptors_open_on(lock) == []


def test_an_index_or_run_lock_that_cannot_be_taken_leaves_no_descriptor_open(tmp_path, monkeypatch, nfs_flock):
    """Another account's lock file on NFS is opened read-only, where flock fails (EBADF): its descriptor stayed open
    for as long as the process lived (an API user's, say), one more each attempt."""
    lock = tmp_path / "spk.faiss.lock"
    refuse_writing(monkeypatch, lock)
    with pytest.raises(OSError, match="Bad file descriptor"):
        with exclusive_lock(lock, 0.0, lambda: AssertionError("locked")):
            pass
    assert descriptors_open_on(lock) == []


def test_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "embeddings.npy"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".embeddings.npy.{dead.pid}.x1{TMP_SUFFIX}"
    live = tmp_path / f".embeddings.npy.{os.getppid()}.x2{TMP_SUFFIX}"
    for path in (stale, live):
        path.write_bytes(b"torn")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not stale.exists() and live.exists()


def test_index_write_cut_before_its_last_rename_loads_the_new_index(tmp_path, monkeypatch):
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    index.add("bob", np.eye(4)[1:2])
    _cut_before_commit(index, path, monkeypatch)
    assert SpeakerIndex.load(path).speakers == ["alice", "bob"]



def _cut_before_commit(index: SpeakerIndex, path, monkeypatch) -> None:
    """``index.save(path)`` killed after its sidecar commit, before the staged bytes are renamed into place."""
    real_replace = os.replace

    def crash_on_commit(source, target):
        if str(source).endswith(PENDING_SUFFIX):
            raise KeyboardInterrupt("killed between the sidecar and the index rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        index.save(path)
    monkeypatch.setattr(os, "replace", real_replace)


def test_saving_an_index_leaves_another_index_whose_name_it_prefixes_alone(tmp_path, monkeypatch):
    older = SpeakerIndex(dim=4)
    older.add("carol", np.eye(4)[2:3])
    _cut_before_commit(older, tmp_path / "spk.faiss.old", monkeypatch)  # committed, staged bytes not yet in place
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(tmp_path / "spk.faiss")
    assert SpeakerIndex.load(tmp_path / "spk.faiss.old").speakers == ["carol"]


def test_temps_of_a_killed_writer_staging_index_bytes_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    staging = f"..spk.faiss.{'a' * 64}{PENDING_SUFFIX}"
    stale = tmp_path / f"{staging}.{dead.pid}.x1{TMP_SUFFIX}"
    live = tmp_path / f"{staging}.{os.getppid()}.x2{TMP_SUFFIX}"
    other = tmp_path / f"..spk.faiss.old.{'b' * 64}{PENDING_SUFFIX}.{dead.pid}.x3{TMP_SUFFIX}"
    for temp in (stale, live, other):
        temp.write_bytes(b"torn")
    index.add("bob", np.eye(4)[1:2])
    index.save(path)
    assert not stale.exists() and live.exists() and other.exists()


def test_a_reader_never_fails_while_a_writer_keeps_committing(tmp_path):
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, numpy as np\n"
        "from voxaug.embeddings.index import SpeakerIndex\n"
        "index = SpeakerIndex.load(sys.argv[1])\n"
        "end = time.monotonic() + 4\n"
        "while time.monotonic() < end:\n"
        "    index.add('bob', np.random.default_rng().normal(size=(1, 4)), append='bob' in index.speakers)\n"
        "    index.save(sys.argv[1])\n"), str(path)])
    loads = 0
    while writer.poll() is None:
        assert SpeakerIndex.load(path).speakers[0] == "alice"
        loads += 1
    assert writer.returncode == 0 and loads > 0


def test_a_sidecar_naming_one_speaker_twice_is_refused(tmp_path):
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.add("bob", np.eye(4)[1:2])
    index.save(path)
    sidecar = json.loads((tmp_path / "spk.faiss.json").read_text())
    sidecar["labels"] = ["alice", "alice"]  # bob's vector under alice's name, the rest of the sidecar consistent
    for field in ("counts", "mean_norms"):
        del sidecar[field]["bob"]
    (tmp_path / "spk.faiss.json").write_text(json.dumps(sidecar))
    with pytest.raises(VoxaugError, match=r"spk.faiss.json: .*'alice'.* more than once"):
        SpeakerIndex.load(path)


HUGE = 10**400  # a JSON integer has no limit; no float holds this one


@pytest.mark.parametrize("per, edit", [
    ("speaker", lambda meta: meta["calibration"].update(value=HUGE, score_norm="none")),
    ("speaker", lambda meta: meta["mean_norms"].update(alice=HUGE)),
    ("speaker", lambda meta: meta.update(backend={"version": 1, "kind": "center", "mean": [HUGE, 0, 0, 0]})),
    ("utterance", lambda meta: meta.update(mean_norms=[1.0])),
    ("utterance", lambda meta: meta.update(mean_norms="alice")),
    ("speaker", lambda meta: meta.update(faiss="IndexHNSWFlat")),
    ("speaker", lambda meta: meta.update(faiss=5)),
], ids=["huge-threshold", "huge-norm", "huge-back-end-mean", "norms-a-list", "norms-a-string", "flat-said-hnsw",
        "faiss-a-number"])
def test_a_hand_edited_sidecar_of_huge_numbers_or_wrong_types_is_refused_naming_it(tmp_path, per, edit):
    """Values out of range and of the wrong type are refused in one line naming the sidecar, not as an unexpected
    OverflowError or TypeError (exit 3); the FAISS bytes, which the hash covers, decide the index's kind."""
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4, mode=per)
    index.add("alice", np.eye(4)[:2])
    index.add("bob", np.eye(4)[2:3])
    index.save(path)
    sidecar = tmp_path / "spk.faiss.json"
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(VoxaugError, match=r"spk\.faiss\.json: "):
        SpeakerIndex.load(path)


def test_a_forked_worker_does_not_keep_the_lock_of_a_process_that_was_killed(tmp_path):
    """A training's data-loader workers are forked while it holds its run folder's lock: one that outlived a kill
    held the lock for seconds, and a resume right after the kill was refused."""
    script = f"""
import os, signal, time
from pathlib import Path
from voxaug.safeio import exclusive_lock
with exclusive_lock(Path({str(tmp_path / 'run.lock')!r}), 0.0, lambda: RuntimeError('busy')):
    worker = os.fork()
    if worker == 0:  # a worker, still busy when its parent dies; its output goes nowhere, so it cannot hold ours
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        time.sleep(30)
        os._exit(0)
    print(worker, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    worker = int(parent.stdout)
    try:
        assert parent.returncode == -signal.SIGKILL and os.kill(worker, 0) is None, "the worker outlives its parent"
        with exclusive_lock(tmp_path / "run.lock", 1.0, lambda: AssertionError("the orphaned worker holds the lock")):
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


def test_writes_go_through_symbolic_links_and_two_links_share_one_lock(tmp_path):
    release = tmp_path / "releases"
    release.mkdir()
    atomic_write_bytes(release / "report.json", b"old")
    (tmp_path / "report.json").symlink_to(release / "report.json")
    atomic_write_bytes(tmp_path / "report.json", b"new")
    assert (tmp_path / "report.json").is_symlink() and (release / "report.json").read_bytes() == b"new"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(release / "spk.faiss")
    for name in ("spk.faiss", "spk.faiss.json"):
        (tmp_path / name).symlink_to(release / name)
    index.add("bob", np.eye(4)[1:2])
    index.save(tmp_path / "spk.faiss")
    assert (tmp_path / "spk.faiss").is_symlink() and SpeakerIndex.load(release / "spk.faiss").speakers == ["alice", "bob"]
    with index_lock(tmp_path / "spk.faiss"):
        with pytest.raises(VoxaugError, match="locked by another"):
            with index_lock(release / "spk.faiss", timeout_s=0):
                pass


def _enroll_command(index, speaker, clips, lock_timeout="120"):
    return [sys.executable, "-m", "voxaug", "enroll", "--index", str(index), "--speaker", speaker,
            "--lock-timeout", lock_timeout, "--device", "cpu", *map(str, clips)]


def test_concurrent_enrolments_wait_for_the_lock_and_both_land(trained_run, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    folders = sorted((tiny_synth / "unseen" / "enroll").iterdir())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first_args = _enroll_command(index, "first", [folders[0]])[3:] + ["--ckpt", str(trained_run / "best.pt")]
    first = CliRunner().invoke(app, first_args)
    assert first.exit_code == 0, first.output  # in-process: only the racers need processes of their own
    with index_lock(index):
        other = sorted((tiny_synth / "unseen" / "test").iterdir())[0]  # a clip belongs to one speaker
        racers = [subprocess.Popen(_enroll_command(index, name, [clips]), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for name, clips in (("second", folders[1]),
                                                                                          ("third", other))]
        time.sleep(HOLD_S)  # longer than an enrolment takes: a racer that did not wait has finished by now
        assert [racer.poll() for racer in racers] == [None, None], "an enrolment ran while the index was locked"
        refused = subprocess.run(_enroll_command(index, "impatient", [folders[1]], lock_timeout="0"), env=env,
                                 capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "index is locked by another voxaug process" in refused.stderr, refused.stderr
    for racer in racers:
        _, stderr = racer.communicate(timeout=120)
        assert racer.returncode == 0, stderr
    loaded = SpeakerIndex.load(index)
    assert sorted(loaded.speakers) == ["first", "second", "third"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spk.faiss", "spk.faiss.json"]


def test_an_index_write_the_disk_refuses_keeps_the_old_index_and_no_staged_bytes(tmp_path, monkeypatch):
    """When the sidecar (the commit point) could not be written, the staged FAISS bytes, as large as the index,
    stayed hidden on the full disk. Staged bytes the old sidecar names (a write cut before its last rename) stay."""
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    real_mkstemp = tempfile.mkstemp

    def no_room_for_the_sidecar(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".spk.faiss.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    before = {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()}
    index.add("bob", np.eye(4)[1:2])
    monkeypatch.setattr(tempfile, "mkstemp", no_room_for_the_sidecar)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(path))}\.json: cannot write: No space left on device"):
        index.save(path)
    assert {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()} == before
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    _cut_before_commit(index, path, monkeypatch)
    committed = {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()}
    monkeypatch.setattr(tempfile, "mkstemp", no_room_for_the_sidecar)
    with pytest.raises(VoxaugError, match="No space left on device"):
        SpeakerIndex.load(path).save(path)
    assert {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()} == committed
    assert SpeakerIndex.load(path).speakers == ["alice", "bob"]


def write_with_its_sidecar(path: Path, data: bytes) -> None:
    """Replace the index at ``path`` by ``data``, with the sidecar made for these bytes (its hash matches them)."""
    path.write_bytes(data)
    meta = json.loads(sidecar_path(path).read_text())
    meta["index_sha256"] = hashlib.sha256(data).hexdigest()
    sidecar_path(path).write_text(json.dumps(meta))


def refuse_faiss_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the bytes reach FAISS's reader, which allocates every array at the length they declare."""
    import faiss

    def allocate(_):
        raise AssertionError("handed to FAISS, which allocates what the file declares")

    monkeypatch.setattr(faiss, "deserialize_index", allocate)


def test_an_hnsw_index_of_l2_distances_is_refused_naming_the_file(tmp_path):
    """An IndexHNSWFlat has one header whatever its metric: one of L2 distances (FAISS's default) was searched as if
    its distances were cosines, the exact match scoring 0 and ranked apart from the nearest speakers."""
    import faiss

    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4, hnsw=True)
    index.add("alice", np.eye(4)[:1])
    index.add("bob", np.eye(4)[1:2])
    index.save(path)
    l2 = faiss.IndexHNSWFlat(4, 32)
    l2.add(index.vectors)
    data = faiss.serialize_index(l2).tobytes()
    write_with_its_sidecar(path, data)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(path))}: IndexHNSWFlat of L2 distances, not of inner products"):
        SpeakerIndex.load(path)


@pytest.mark.parametrize("hnsw", [False, True])
def test_an_index_declaring_an_array_its_bytes_cannot_hold_is_refused_before_faiss_allocates_it(tmp_path, monkeypatch,
                                                                                                hnsw):
    """FAISS allocates each array at the length its file declares, then reads it: a tiny file declaring 2^32 values
    (the flat index's vectors, the HNSW graph's first array) asked for 16 GB, though its sidecar hash matched."""

    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4, hnsw=hnsw)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    data = bytearray(path.read_bytes())
    data[37:45] = (1 << 32).to_bytes(8, "little")  # the count of the first array, after FAISS's 37-byte header
    write_with_its_sidecar(path, bytes(data))
    refuse_faiss_reads(monkeypatch)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(path))}: not a readable FAISS index \(an array declares "
                                          rf"{1 << 32} items"):
        SpeakerIndex.load(path)


def test_an_hnsw_index_whose_vectors_are_not_in_a_flat_index_is_refused_before_faiss_allocates(tmp_path, monkeypatch):
    """Only a flat storage's arrays are checked against the bytes: an IndexHNSWFlat header over a scalar quantizer
    whose codes declare 2^32 bytes would reach FAISS, which allocates them, so any storage but a flat one is refused."""
    import faiss

    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4, hnsw=True)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    written = path.read_bytes()
    graph = written[:written.rindex(b"IxFI")]  # the header and graph, without the flat index of the vectors
    quantizer = faiss.IndexScalarQuantizer(4, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    quantizer.add(np.eye(4, dtype=np.float32)[:1])
    storage = bytearray(faiss.serialize_index(quantizer).tobytes())
    storage[-16:-8] = (1 << 32).to_bytes(8, "little")  # the count of its codes, the last array (8 bytes of codes)
    write_with_its_sidecar(path, graph + bytes(storage))
    refuse_faiss_reads(monkeypatch)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(path))}: not a FAISS flat or HNSW index \(its HNSW "
                                          r"graph's vectors are held by a b'IxSQ' index"):
        SpeakerIndex.load(path)


def test_sigterm_stops_training_as_ctrl_c_does_and_the_run_resumes(tiny_synth, tmp_path):
    """SLURM, Kubernetes and `timeout` stop a job with SIGTERM: the run folder keeps its last complete checkpoint and
    loses its lock and temp files, one line says how to resume, and the status is the shell's 143."""
    from voxaug.train import Trainer

    run = tmp_path / "run"
    env = {**os.environ, "VOXAUG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "voxaug", "train", str(tiny_synth), "--out", str(run), "--steps", "3000",
               "--eval-every", "2", "--augment", "none", *TINY_ARGS]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (run / "last.pt").exists():
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    # the last line, and the only error; Python may print a SIGTERM it had to drop in a finaliser above it
    assert re.fullmatch(r"error: interrupted at step \d+; \S+last\.pt \(step \d+\) is kept: continue with "
                        r"voxaug train \S+ --out \S+ --resume", stderr.splitlines()[-1]), stderr
    assert stderr.count("error:") == 1, stderr
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "a lock or temp file was left"
    steps = load_checkpoint(run / "last.pt")["step"]
    assert f"(step {steps})" in stderr  # read from last.pt itself, whenever the signal landed
    Trainer(Trainer.config_from_run(run, steps=steps + 1), tiny_synth, run, progress=False).fit(resume=True)
    assert load_checkpoint(run / "last.pt")["step"] == steps + 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_whose_exception_a_finaliser_swallowed_still_stops_training_at_the_next_step():
    """Python drops an exception raised in a ``__del__``, where the signal may land: the training loop's check
    raises it again."""
    from voxaug.interrupt import Terminated, sigterm_as_interrupt, stop_if_terminated

    class SignalledWhileFinalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)

    with sigterm_as_interrupt():
        finalised = SignalledWhileFinalised()
        del finalised
        with pytest.raises(Terminated):
            stop_if_terminated()
    stop_if_terminated()  # a later command starts afresh


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads a worker's state from /proc")
def test_data_workers_stopped_with_the_command_do_not_turn_its_sigterm_into_a_worker_error(monkeypatch):
    """`timeout` and SLURM send SIGTERM to the whole process group: the DataLoader workers died of it too, while the
    command cleaned up, and torch's SIGCHLD handler raised 'DataLoader worker ... is killed by signal: Terminated'
    over the interrupt (in its place, or as a traceback under the one-line error)."""
    from torch.utils.data import DataLoader

    from voxaug.interrupt import Terminated, sigterm_as_interrupt

    handler = signal.getsignal(signal.SIGCHLD)
    lost = []  # what Python could only print, as "Exception ignored in ...", under the one-line error
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: lost.append(unraisable.exc_value))
    try:
        with pytest.raises(Terminated):
            with sigterm_as_interrupt():
                batches = iter(DataLoader(range(100), num_workers=1))
                next(batches)
                worker = batches._workers[0].pid
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)  # not reached
                finally:  # the clean-up, as the group's SIGTERM (from another process: not the parent's) ends the worker
                    subprocess.run(["kill", "-TERM", str(worker)], check=True, timeout=30)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and open(f"/proc/{worker}/stat").read().split(")")[-1].split()[0] != "Z":
                        time.sleep(0.01)
                    time.sleep(0.1)  # SIGCHLD is handled here
        del batches
    finally:
        signal.signal(signal.SIGCHLD, handler)
    assert not lost, lost


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_while_sigterm_is_an_interrupt_dies_of_sigterm_as_before():
    """Data workers forked inside the block inherited the handler, and a SIGTERM before torch set its own there
    raised this process's exception in the child ("Exception ignored ... Terminated")."""
    from voxaug.interrupt import sigterm_as_interrupt

    with sigterm_as_interrupt():
        child = os.fork()
        if child == 0:
            os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """SIGINT at Python's own handler, as a command started from a terminal has it: pytest run as a background job of
    a script (`cmd &` without job control) starts with SIGINT ignored, which the interrupt block rightly leaves so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def break_import_with_signal(monkeypatch, module: str, signum: int | None) -> None:
    """The first import of ``module`` fails as a C extension's initialisation does when a signal lands in it (or fails
    so with no signal): CPython makes the interrupt an ``ImportError``, here without its cause, as numpy's C API
    import does."""
    real_import = builtins.__import__

    def import_interrupted(name, *args, **kwargs):
        if name != module:
            return real_import(name, *args, **kwargs)
        monkeypatch.setattr(builtins, "__import__", real_import)
        try:
            if signum is not None:
                signal.raise_signal(signum)
                time.sleep(5)  # not reached: the handler raises
        except KeyboardInterrupt:
            pass
        raise ImportError("initialization failed")

    monkeypatch.setattr(builtins, "__import__", import_interrupted)


@pytest.mark.parametrize("signum, code, line", [
    (signal.SIGTERM, 143, "error: interrupted"),
    (signal.SIGINT, 130, "error: interrupted"),
    (None, 3, "error: unexpected ImportError: initialization failed (for the traceback, run it again as "
              "`voxaug --debug train …` or with VOXAUG_DEBUG=1)"),
])
def test_an_interrupt_that_lands_in_a_lazy_import_ends_as_the_interrupt_not_an_unexpected_error(
        tmp_path, monkeypatch, ctrl_c_as_in_a_terminal, signum, code, line):
    """SIGTERM or Ctrl-C landing while a command imported a C extension (torch, faiss, onnxruntime...) came out as
    'unexpected ImportError: initialization failed' and exit 3; an ImportError with no signal still reports so."""
    break_import_with_signal(monkeypatch, "voxaug.augment.pipeline", signum)  # the train command's first lazy import
    result = CliRunner().invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
                                prog_name="voxaug")
    assert (result.exit_code, result.output) == (code, line + "\n")


def test_a_sigterm_that_breaks_an_import_inside_training_says_where_the_run_stopped(tmp_path, monkeypatch):
    """Training's own interrupt message (the step, how to resume) is kept when the signal comes out as another error;
    with --debug the error it broke is shown above it."""
    import voxaug.train

    class TrainerStoppedInAnImport:
        def __init__(self, *args, **kwargs):
            self.step = 7

        def fit(self):
            import voxaug.checkpoint  # noqa: F401  (broken below, as a lazy import during a step)

    monkeypatch.setattr(voxaug.train, "Trainer", TrainerStoppedInAnImport)
    break_import_with_signal(monkeypatch, "voxaug.checkpoint", signal.SIGTERM)
    result = CliRunner().invoke(app, ["--debug", "train", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 143, result.output
    assert result.output.splitlines()[-1] == ("error: interrupted at step 7, before the first checkpoint: nothing to "
                                              "resume; start the run again"), result.output
    assert "ImportError: initialization failed" in result.output and result.output.count("error:") == 1, result.output


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_an_interrupt_received_before_a_fork_is_not_the_childs(ctrl_c_as_in_a_terminal):
    """The record of a received signal is per process: a worker forked during the clean-up does not stop as if it had
    been interrupted, and its Ctrl-C is Python's own again."""
    from voxaug.interrupt import Terminated, sigterm_as_interrupt, stop_if_terminated

    with sigterm_as_interrupt():
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # not reached
        child = os.fork()
        if child == 0:
            try:
                stop_if_terminated()
            except BaseException:
                os._exit(1)
            os._exit(0 if signal.getsignal(signal.SIGINT) is signal.default_int_handler else 2)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_ctrl_c_the_process_ignores_stays_ignored_inside_and_after_the_block():
    """`trap '' INT` and a background job (`&`) of a script start the command with SIGINT ignored: Ctrl-C neither
    stops it nor is noted as an interrupt that a later error would be reported as."""
    from voxaug.interrupt import sigterm_as_interrupt, stop_if_terminated

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            stop_if_terminated()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_index_that_cannot_be_renamed_into_place_is_named_not_its_staged_copy(tmp_path, monkeypatch):
    """The last rename's OSError named `.spk.faiss.<sha256>.pending`, a file the user never asked for; a folder
    where the index goes was found only there, after its sidecar had been replaced."""
    folder = tmp_path / "taken" / "spk.faiss"
    (folder / "inside").mkdir(parents=True)
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(folder))}: is a folder; expected a file name"):
        index.save(folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["spk.faiss"]
    path = tmp_path / "spk.faiss"
    real_replace = os.replace

    def busy(source, target):
        if str(source).endswith(PENDING_SUFFIX):
            raise OSError(errno.EBUSY, "Device or resource busy", str(source), None, str(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(path))}: cannot write: Device or resource busy \(the "
                                          r"new index is committed: it loads from the staged copy "
                                          r"\.spk\.faiss\.[0-9a-f]{64}\.pending beside it\)$"):
        index.save(path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert SpeakerIndex.load(path).speakers == ["alice"]


@pytest.mark.parametrize("name", ["alice\nforged.wav\tbob 0.99", "unknown", " alice"])
def test_identify_prints_an_odd_speaker_name_quoted_so_it_cannot_forge_a_row(name):
    """Labels are not covered by the index's hash, and older voxaug enrolled names holding a tab: a sidecar naming
    a speaker ``alice\\nforged.wav\\tbob 0.99`` printed a forged row in identify's table, and one named
    ``unknown`` read as no answer. Such names are printed quoted, one row per clip still."""
    from voxaug.cli.identify import format_row
    from voxaug.embeddings.identify import Identification

    result = Identification("clip.wav", [(name, 0.9), ("bob", 0.1)], softmax_speaker=name, softmax_prob=0.8,
                            decision=name)
    row = format_row(result)
    assert len(row.splitlines()) == 4, row
    assert f"decision: {name!r} (threshold" in row and f"top-2: {name!r} 0.900  bob 0.100" in row, row
    assert f"softmax: {name!r} (p=0.800)" in row, row
    plain = format_row(Identification("clip.wav", [("alice", 0.9)], softmax_speaker="alice", softmax_prob=0.8,
                                      decision="alice"))
    assert "decision: alice (threshold" in plain and "top-1: alice 0.900" in plain, plain


def test_a_checkpoint_whose_config_names_a_huge_model_is_refused_before_it_is_built(tmp_path):
    """A model is built from the checkpoint's config, then given its weights: a 100 kB file whose config named
    d_model 8192 took 23 GB and was killed, and one of 10**12 classes ended in `unexpected RuntimeError` (status 3).
    The config's shapes are checked against the weights the file holds before any memory is taken for them."""
    from conftest import tiny_config

    from voxaug.checkpoint import load_model, save_checkpoint
    from voxaug.features import FrontendConfig
    from voxaug.model import build_model

    config = tiny_config()
    config.model.num_classes = 3
    state = {"config": config.to_dict(), "frontend": FrontendConfig().to_dict(), "speakers": ["a", "b", "c"],
             "model": build_model(config.model).state_dict(), "step": 0}
    save_checkpoint(tmp_path / "small.pt", state)
    assert load_model(tmp_path / "small.pt").speakers == ["a", "b", "c"]
    state["config"]["model"]["num_classes"] = 10**12  # 128 TB of classifier weights
    save_checkpoint(tmp_path / "huge.pt", state)
    with pytest.raises(VoxaugError, match=r"huge\.pt: checkpoint weights do not match its own configuration "
                                          r"\(shape head\.weight \(3, 32\) vs \(1000000000000, 32\)\)"):
        load_model(tmp_path / "huge.pt")


def test_a_checkpoint_s_weights_become_the_model_s_own_float32_tensors(tmp_path):
    """A checkpoint's weights were assigned to the model as the file stores them: one a script saved as integers
    failed with torch's multi-line 'Error(s) in loading state_dict', and two saved as one tensor stayed one, so
    fine-tuning the loaded model changed both. They are copied into the model's own float32 weights, as before."""
    from conftest import tiny_config

    from voxaug.checkpoint import load_model, save_checkpoint
    from voxaug.features import FrontendConfig
    from voxaug.model import build_model

    config = tiny_config()
    config.model.num_classes = 3
    weights = build_model(config.model).state_dict()
    weights["head.weight"] = weights["head.weight"].mul(100).round().long()
    weights["embedding.1.bias"] = weights["embedding.1.weight"]  # the same shape: saved as one tensor
    state = {"config": config.to_dict(), "frontend": FrontendConfig().to_dict(), "speakers": ["a", "b", "c"],
             "model": weights, "step": 0}
    save_checkpoint(tmp_path / "stored.pt", state)
    model = load_model(tmp_path / "stored.pt").model
    assert model.head.weight.dtype == torch.float32
    assert torch.equal(model.head.weight, weights["head.weight"].float())
    with torch.no_grad():
        model.embedding[1].weight.add_(1.0)
    assert torch.equal(model.embedding[1].bias, weights["embedding.1.weight"])


def test_loading_a_checkpoint_in_a_fresh_process_imports_no_sympy(tmp_path):
    """``load_model`` gave the meta-built model its storage with ``Module.to_empty``, whose first call imports sympy
    through torch's Python reference of ``empty_like``: every `voxaug identify` and ``SpeakerIndex.open`` took 0.5-1.5 s
    and 35 MB more than before the model was built on the meta device."""
    from conftest import tiny_config

    from voxaug.checkpoint import save_checkpoint
    from voxaug.features import FrontendConfig
    from voxaug.model import build_model

    config = tiny_config()
    config.model.num_classes = 3
    state = {"config": config.to_dict(), "frontend": FrontendConfig().to_dict(), "speakers": ["a", "b", "c"],
             "model": build_model(config.model).state_dict(), "step": 0}
    save_checkpoint(tmp_path / "model.pt", state)
    script = ("import sys; from voxaug.checkpoint import load_model; load_model(sys.argv[1]); "
              "print(sorted(name for name in ('sympy', 'torch.fx.experimental.symbolic_shapes') if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.pt")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_identify_counts_a_speaker_named_unknown_it_accepted_as_identified():
    """An older sidecar may name a speaker ``unknown`` (it still loads): a clip accepted as that speaker was printed
    as ``decision: 'unknown'`` and then counted among the clips answered unknown in the closing line."""
    from voxaug.cli.identify import summary_line
    from voxaug.embeddings.identify import Identification

    accepted = Identification("a.wav", [("unknown", 0.9)], softmax_speaker="bob", softmax_prob=0.8, decision="unknown")
    rejected = Identification("b.wav", [("unknown", 0.2)], softmax_speaker="bob", softmax_prob=0.8, decision="unknown")
    assert summary_line([accepted, rejected]) == "2 clips: 1 identified, 1 unknown"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_speaker_name_holding_a_line_separator_is_refused_and_printed_quoted(separator):
    """``str.splitlines()`` (and many a log reader) ends a line at U+2028 and U+2029 too, which are not control
    characters: a name holding one was enrolled, and printed bare it split identify's row in two."""
    from voxaug.cli.identify import format_row
    from voxaug.embeddings.identify import Identification, check_speaker_name
    from voxaug.embeddings.speaker_index import check_index_speakers

    name = f"alice{separator}forged.wav"
    with pytest.raises(VoxaugError, match="holds a control character"):
        check_speaker_name(name)
    with pytest.raises(VoxaugError, match=r"^train\.csv: speaker name .* holds a control character"):
        check_index_speakers(["bob", name], "train.csv")
    row = format_row(Identification("clip.wav", [(name, 0.9)], softmax_speaker=name, softmax_prob=0.8, decision=name))
    assert len(row.splitlines()) == 4 and f"decision: {name!r} (threshold" in row, row


def test_an_index_and_sidecar_that_disagree_are_refused_in_one_line_naming_both_files(tmp_path):
    """One of the pair replaced by an older copy, or a sidecar edited to list fewer speakers, was refused naming only
    one of the two files (the index for a hash mismatch, the sidecar for a row count), though either may be the
    stale one."""
    path, side = tmp_path / "spk.faiss", tmp_path / "spk.faiss.json"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:2])
    index.save(path)
    old_index, old_side = path.read_bytes(), side.read_text()
    index.add("bob", np.eye(4)[2:3])
    index.save(path)
    new_index, new_side = path.read_bytes(), side.read_text()
    meta = json.loads(new_side)
    for field in ("counts", "mean_norms"):
        del meta[field]["bob"]
    meta["labels"].remove("bob")
    for index_bytes, sidecar_text in ((old_index, new_side), (new_index, old_side), (new_index, json.dumps(meta))):
        path.write_bytes(index_bytes)
        side.write_text(sidecar_text)
        with pytest.raises(VoxaugError) as error:
            SpeakerIndex.load(path)
        message = str(error.value)
        assert "\n" not in message and str(path) in message.replace(str(side), "") and str(side) in message, message


def test_an_atomic_write_syncs_the_file_before_renaming_it_and_the_folder_after(tmp_path, monkeypatch):
    """Durability: without the fsync before the rename, a power loss can leave the new name on an empty file."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", os.stat(source).st_ino))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "report.json", b"new")
    written = (tmp_path / "report.json").stat().st_ino
    renamed = events.index(("replace", written))
    assert ("fsync", written) in events[:renamed] and ("fsync", tmp_path.stat().st_ino) in events[renamed:]


def test_an_atomic_write_keeps_the_files_mode_and_gives_a_new_file_opens_mode(tmp_path):
    """A new output is readable as open() would make it (not mkstemp's 0o600); rewriting a file the user chmod-ed
    keeps that mode rather than resetting it."""
    import stat

    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # open()'s mode under this umask, found apart from the code that computes it
    opens_mode = stat.S_IMODE(plain.stat().st_mode)
    target = tmp_path / "spk.faiss.json"
    atomic_write_bytes(target, b"old")
    assert stat.S_IMODE(target.stat().st_mode) == opens_mode
    kept = 0o640 if opens_mode != 0o640 else 0o600
    target.chmod(kept)
    atomic_write_bytes(target, b"new")
    assert stat.S_IMODE(target.stat().st_mode) == kept and target.read_bytes() == b"new"


def test_an_atomic_write_keeps_the_owner_and_group_of_the_file_it_replaces(tmp_path):
    """A lab's index of group ``lab`` and mode 660, enrolled into by one member, became that member's own group's, and
    the other members (its owner too) could no longer read it. Root keeps the owner as well."""
    owner, group = another_owner_and_group()
    target = tmp_path / "spk.faiss.json"
    atomic_write_bytes(target, b"old")
    os.chown(target, owner, group)
    target.chmod(0o660)
    atomic_write_bytes(target, b"new")
    kept = target.stat()
    assert (kept.st_uid, kept.st_gid, kept.st_mode & 0o777) == (owner, group, 0o660) and target.read_bytes() == b"new"


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EROFS, errno.EIO])
def test_an_atomic_write_is_made_where_the_file_system_refuses_to_give_the_file_its_owner(tmp_path, monkeypatch,
                                                                                          refusal):
    """NFS under root_squash, FAT/exFAT and CIFS refuse a change of owner or group (EPERM, EINVAL, ENOTSUP): keeping
    them is a courtesy, and the write goes on with this account's, at the mode of the file it replaces."""
    target = tmp_path / "spk.faiss.json"
    atomic_write_bytes(target, b"old")
    target.chmod(0o640)

    def refuse(fd: int, owner: int, group: int) -> None:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "fchown", refuse)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640


def test_a_json_file_the_user_may_not_read_is_named_once_with_the_reason(open_folder):
    """An index sidecar, run config or HW4 metadata.json of another account was "cannot read index sidecar ([Errno 13]
    Permission denied: '/the/same/path')": the file named twice, with Python's errno."""
    path = open_folder / "spk.faiss.json"
    path.write_text("{}")
    with unreadable_to_this_process(path), pytest.raises(VoxaugError) as refused:
        read_json(path, "index sidecar")
    assert str(refused.value) == f"{path}: cannot read index sidecar (Permission denied)"


def test_a_json_file_behind_a_symlink_loop_a_long_name_or_a_folder_that_cannot_be_searched_is_named_with_why(
        open_folder):
    """read_json asked first whether the file exists: a symlink loop was "index sidecar not found", and a name too long
    for the file system or a run folder of another account (mode 700) a bare OSError instead of one line naming it."""
    (open_folder / "run").mkdir()
    config = open_folder / "run" / "config.json"
    config.write_text("{}")
    with unreadable_to_this_process(config.parent), pytest.raises(VoxaugError) as refused:
        read_json(config, "run config")
    assert str(refused.value) == f"{config}: cannot read run config (Permission denied)"
    loop = open_folder / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(VoxaugError, match=r"loop\.json: cannot read index sidecar \(symlink loop"):
        read_json(loop, "index sidecar")
    with pytest.raises(VoxaugError, match=r"x{300}\.json: cannot read index sidecar \(File name too long\)"):
        read_json(open_folder / f"{'x' * 300}.json", "index sidecar")


@pytest.mark.parametrize("name", ["\u202eecilA", "bob\u2067 0.999  eve", "\u202bx\u202c"])
def test_identify_prints_a_name_holding_a_bidirectional_override_quoted_so_it_cannot_reorder_its_row(name):
    """A speaker (or clip) name holding U+202E or another bidirectional control reorders the line it is printed in:
    ``\\u202eecilA`` showed as ``Alice`` in identify's table. Quoted, ``repr`` shows the control as an escape;
    right-to-left letters, which need no control, are printed as they are."""
    from voxaug.cli.identify import format_row
    from voxaug.embeddings.identify import Identification

    row = format_row(Identification(name, [(name, 0.9), ("שלום", 0.1)], softmax_speaker=name, softmax_prob=0.8,
                                     decision=name))
    assert row.splitlines()[0] == repr(name) and f"decision: {name!r} (threshold" in row, row
    assert f"top-2: {name!r} 0.900  שלום 0.100" in row and f"softmax: {name!r} (p=0.800)" in row, row
    assert all(character.isprintable() for character in row.replace("\n", "")), row


def test_identify_prints_a_name_with_undecodable_bytes_quoted_so_a_strict_utf8_stdout_can_take_it():
    """A clip file (or a ``--speakers-dir`` folder) whose name is not UTF-8 reaches the table as ``os.fsdecode``'s
    surrogates: under a UTF-8 locale such as en_US.UTF-8 (stdout's errors strict), identify stopped at that clip with
    an unexpected UnicodeEncodeError (exit 3) after printing the clips before it. Such names are printed quoted."""
    from voxaug.cli.identify import format_row
    from voxaug.embeddings.identify import Identification

    clip, name = os.fsdecode(b"clips/caf\xe9.wav"), os.fsdecode(b"ren\xe9e")
    row = format_row(Identification(clip, [(name, 0.9)], softmax_speaker=name, softmax_prob=0.8, decision=name))
    row.encode("utf-8")  # what a strict UTF-8 stdout does with it
    assert row.splitlines()[0] == repr(clip) and f"decision: {name!r} (threshold" in row, row


def save_interrupted(index: SpeakerIndex, path: os.PathLike, moment: str, monkeypatch) -> None:
    """``index.save(path)`` cut short by Ctrl-C at ``moment``: once the index bytes are staged ("staged"), while the
    sidecar is written ("sidecar"), or once it is ("committed")."""
    import voxaug.embeddings.index as index_module

    writer = "atomic_write_bytes" if moment == "staged" else "atomic_write_text"
    real_write = getattr(index_module, writer)

    def interrupted(target, content, **options):
        if moment != "sidecar":
            real_write(target, content, **options)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(index_module, writer, interrupted)
        with pytest.raises(KeyboardInterrupt):
            index.save(path)


@pytest.mark.parametrize("moment", ["staged", "sidecar", "committed"])
def test_an_index_save_interrupted_before_its_commit_leaves_no_staged_copy(tmp_path, monkeypatch, moment):
    """Ctrl-C or SIGTERM once the index bytes were staged, or while the sidecar was written, left the staged
    `.spk.faiss.<sha256>.pending` copy of the index behind, as large as the index, until the next save; only once the
    sidecar names it (committed) does a load need it."""
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    index.add("bob", np.eye(4)[1:2])
    save_interrupted(index, path, moment, monkeypatch)
    committed = moment == "committed"
    assert SpeakerIndex.load(path).speakers == (["alice", "bob"] if committed else ["alice"])
    staged = [p.name for p in tmp_path.iterdir() if p.name.endswith(PENDING_SUFFIX)]
    assert len(staged) == committed, staged


def test_enroll_prints_a_name_with_undecodable_bytes_quoted_so_a_strict_utf8_stdout_can_take_it(trained_run, tiny_synth,
                                                                                                 tmp_path):
    """A speaker name that is not UTF-8 (a Latin-1 folder under --speakers-dir, or such a --speaker word) holds
    ``os.fsdecode``'s surrogates: under en_US.UTF-8 or PYTHONIOENCODING=utf-8 (stdout's errors strict) enroll wrote
    the index, then stopped with an unexpected UnicodeEncodeError (exit 3) printing what it had done, so a script
    took the enrolment for failed. The names are printed quoted, as identify's table prints them."""
    import shutil

    from typer.testing import CliRunner

    from voxaug.cli.main import app

    def enroll(*args: object) -> str:
        result = CliRunner().invoke(app, ["enroll", "--index", str(tmp_path / "spk.faiss"), *map(str, args)])
        assert result.exit_code == 0, result.output
        return result.output

    first, second = sorted(p for p in (tiny_synth / "unseen" / "enroll").iterdir() if p.is_dir())[:2]
    carl, dave = os.fsdecode(b"carl\xe9"), os.fsdecode(b"dav\xe9")
    output = enroll("--ckpt", trained_run / "best.pt", "--speaker", carl, *sorted(first.glob("*.pt")))
    assert output.startswith(f"enrolled {carl!r} from "), output
    shutil.copytree(second, tmp_path / "people" / dave)
    assert f"(1 new: {dave!r})" in enroll("--speakers-dir", tmp_path / "people", "--append")
    assert enroll("--remove", carl).startswith(f"removed {carl!r}; 1 speaker remains")


def test_a_checkpoint_write_cut_short_says_why_the_disk_refused_it_not_torchs_assertion(tmp_path):
    """torch's zip writer turns the OSError of a write refused part-way into "[enforce fail at inline_container.cc]
    unexpected pos ..." and the free space was added as for a full disk: under a file size limit or a quota the
    error read as a torch bug beside gigabytes free. The write's own OSError, kept as the RuntimeError's context,
    now gives the reason."""
    import resource

    checkpoint = tmp_path / "last.pt"
    atomic_write_bytes(checkpoint, b"old")
    code = ("import sys, torch\nfrom voxaug.errors import VoxaugError\nfrom voxaug.safeio import atomic_torch_save\n"
            "try:\n    atomic_torch_save(sys.argv[1], {'weights': torch.zeros(100_000)})\n"
            "except VoxaugError as exc:\n    print(exc)")

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))  # Python ignores SIGXFSZ: EFBIG

    result = subprocess.run([sys.executable, "-c", code, str(checkpoint)], preexec_fn=small_files,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout == f"{checkpoint}: cannot write: File too large (the previous file is kept)\n", result
    assert checkpoint.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_index_bytes_the_disk_refuses_to_stage_name_the_index_not_its_staged_copy(tmp_path, monkeypatch):
    """The FAISS bytes are staged first, as `.spk.faiss.<sha256>.pending`: a full disk there (an enrol, a --remove)
    was reported under that name, a file the user never asked for, and without saying the index was kept."""
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    real_mkstemp = tempfile.mkstemp

    def no_room_for_the_staged_bytes(*args, **kwargs):
        if kwargs.get("prefix", "").endswith(PENDING_SUFFIX + f".{os.getpid()}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", no_room_for_the_staged_bytes)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(path))}: cannot write: No space left on device; "
                                          r"[0-9.]+ MiB free there$"):
        index.save(path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    index.save(path)
    before = {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()}
    index.add("bob", np.eye(4)[1:2])
    monkeypatch.setattr(tempfile, "mkstemp", no_room_for_the_staged_bytes)
    with pytest.raises(VoxaugError, match=rf"^{re.escape(str(path))}: cannot write: No space left on device; "
                                          r"[0-9.]+ MiB free there \(the previous file is kept\)$"):
        index.save(path)
    assert {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()} == before


@pytest.mark.parametrize("moment", ["staged", "sidecar", "committed"])
def test_an_interrupted_save_of_an_unchanged_index_leaves_no_staged_copy(tmp_path, monkeypatch, moment):
    """Saving an index again as it is (a re-run calibration that finds the same threshold) gives the sidecar text
    already on disk: cut short before its commit, the save took that old text for its own commit and kept the staged
    `.spk.faiss.<sha256>.pending` copy, as large as the index, though spk.faiss holds those very bytes."""
    path = tmp_path / "spk.faiss"
    index = SpeakerIndex(dim=4)
    index.add("alice", np.eye(4)[:1])
    index.save(path)
    before = {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()}
    save_interrupted(index, path, moment, monkeypatch)
    assert {entry.name: entry.read_bytes() for entry in tmp_path.iterdir()} == before
    assert SpeakerIndex.load(path).speakers == ["alice"]


def test_a_lock_whose_release_is_interrupted_is_still_released(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) landing while the holder removed the lock file skipped closing its descriptor, so a
    process that lives on (the Python API, a notebook) kept the flock: every later enrol waited, then failed."""
    import pathlib

    lock = tmp_path / "spk.faiss.lock"
    real_unlink = pathlib.Path.unlink

    def interrupted(self, missing_ok=False):
        if self == lock:
            raise KeyboardInterrupt
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with exclusive_lock(lock, 0.0, lambda: AssertionError("locked")):
            pass
    monkeypatch.setattr(pathlib.Path, "unlink", real_unlink)
    with exclusive_lock(lock, 0.0, lambda: AssertionError("the interrupted holder still holds the lock")):
        pass
