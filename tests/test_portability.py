"""What Windows lacks, taken away on Linux: ``os.register_at_fork``, ``os.statvfs``, ``os.fchmod``, ``os.fchown`` and
the ``fcntl`` module (its ``msvcrt`` stands in for the lock). The toolkit must still import, lock, write files and
report a full disk."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from voxaug.data.store import cache_lock
from voxaug.safeio import atomic_write_bytes, exclusive_lock, write_error

WITHOUT_FORK_HOOKS_OR_FCNTL = """
import os, sys
import torch, torch.multiprocessing  # torch's own platform checks are not what is tested
del os.register_at_fork
sys.modules["fcntl"] = None
import voxaug.safeio, voxaug.api.engines, voxaug.data.store, voxaug.train
print("imported")
"""


def test_the_toolkit_imports_where_os_has_no_fork_hooks_and_no_fcntl() -> None:
    """Windows: every command failed on import, with AttributeError for ``os.register_at_fork``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WITHOUT_FORK_HOOKS_OR_FCNTL], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "imported"


def fake_msvcrt() -> types.ModuleType:
    """Windows' ``msvcrt.locking`` (non-blocking mode, and unlocking): a held lock raises PermissionError; backed here
    by flock. It checks how the toolkit calls msvcrt, not what Windows does."""
    module = types.ModuleType("msvcrt")
    module.LK_UNLCK, module.LK_NBLCK = 0, 2
    module.locked, module.unlocked = [], []  # the descriptors it locked, and unlocked

    def locking(fd: int, mode: int, nbytes: int) -> None:
        assert mode in (module.LK_UNLCK, module.LK_NBLCK) and (nbytes, os.lseek(fd, 0, os.SEEK_CUR)) == (1, 0)
        if mode == module.LK_UNLCK:
            fcntl.flock(fd, fcntl.LOCK_UN)
            module.unlocked.append(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PermissionError(errno.EACCES, "Permission denied") from None
        module.locked.append(fd)

    module.locking = locking
    return module


@pytest.fixture
def windows_locks(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """No fcntl, as on Windows (``import fcntl`` raises ImportError); the stand-in for its msvcrt."""
    msvcrt = fake_msvcrt()
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    return msvcrt


class Busy(Exception):
    pass


def test_the_run_lock_excludes_a_second_holder_without_fcntl(tmp_path: Path, windows_locks: types.ModuleType) -> None:
    lock = tmp_path / "run.lock"
    with exclusive_lock(lock, 0.0, Busy):
        with pytest.raises(Busy):
            with exclusive_lock(lock, 0.0, Busy):
                pass
    with exclusive_lock(lock, 0.0, Busy):  # released: taken again at once
        pass


def test_the_feature_cache_lock_is_held_without_fcntl(tmp_path: Path, windows_locks: types.ModuleType) -> None:
    with cache_lock(tmp_path):
        assert len(windows_locks.locked) == 1  # through msvcrt: a module-level `import fcntl` failed on Windows
        fd = os.open(tmp_path / ".lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the real flock, which the stand-in for msvcrt took
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_a_full_disk_is_reported_where_os_has_no_statvfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows: the one-line error about a full disk became an AttributeError from inside its own making."""
    monkeypatch.delattr(os, "statvfs")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30 - 2**20, 2**20))
    error = write_error(tmp_path / "best.pt", OSError(errno.ENOSPC, "No space left on device"))
    assert str(tmp_path / "best.pt") in str(error)
    assert "No space left on device; 1.0 MiB free there" in str(error)


def test_stale_temps_are_judged_by_age_on_windows_not_by_signalling_their_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.kill(pid, 0)`` probes a process on POSIX; on Windows signal 0 is CTRL_C_EVENT, sent as a Ctrl-C."""
    from voxaug.safeio import STALE_UNOWNED_S, clean_stale_temps

    def ctrl_c(pid: int, sig: int) -> None:
        raise AssertionError(f"os.kill({pid}, {sig}) sends Ctrl-C on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", ctrl_c)
    target = tmp_path / "best.pt"
    old, fresh = tmp_path / ".best.pt.4194301.old.tmp", tmp_path / ".best.pt.4194302.new.tmp"
    for temp in (old, fresh):
        temp.write_bytes(b"partial")
    hours_ago = old.stat().st_mtime - 2 * STALE_UNOWNED_S
    os.utime(old, (hours_ago, hours_ago))
    assert clean_stale_temps(target) == [old]
    assert fresh.exists()


def test_the_lock_byte_is_unlocked_before_its_descriptor_is_closed_without_fcntl(
        tmp_path: Path, windows_locks: types.ModuleType) -> None:
    """Microsoft's ``_locking`` asks for a region to be unlocked before its file is closed, which frees it only when
    the system gets to it: the run, index and cache locks were let go of by closing alone."""
    with exclusive_lock(tmp_path / "run.lock", 0.0, Busy):
        pass
    with cache_lock(tmp_path / "cache"):
        pass
    assert len(windows_locks.locked) == 2 and windows_locks.unlocked == windows_locks.locked


def test_files_are_written_atomically_where_os_has_no_fchmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows before Python 3.13 has no ``os.fchmod``: every atomic write (checkpoints, indexes, reports) failed
    there with AttributeError. The temp file's mode is set by its name instead, and the file keeps its mode."""
    target = tmp_path / "index.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    monkeypatch.delattr(os, "fchmod")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640


def test_files_are_written_atomically_where_os_has_no_fchown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no ``os.fchown`` (nor, before Python 3.13, ``os.fchmod``): a write over a file, which keeps the
    owner and group of the one it replaces where there are such, still replaces it and keeps its mode."""
    target = tmp_path / "index.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    monkeypatch.delattr(os, "fchown")
    monkeypatch.delattr(os, "fchmod")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
