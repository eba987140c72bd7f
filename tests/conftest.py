"""Shared fixtures: a tiny synthetic corpus and a briefly trained checkpoint, built once per session."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from voxaug.cli.common import DEBUG_ENV
from voxaug.config import resolve_config
from voxaug.synth import SynthConfig, generate
from voxaug.train import TRACE_ENV, Trainer

TINY_SYNTH = SynthConfig(speakers=5, utterances=20, unseen=2, enroll_per_unseen=3, test_per_unseen=3,
                         min_seconds=0.8, max_seconds=1.4, seed=7)
TINY_MODEL = {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 1, "kernel_size": 7, "embedding_dim": 32}


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test, and every module or session fixture (which run before a test's own fixtures), packs into a
    private cache, not ~/.cache/voxaug or the developer's $VOXAUG_CACHE."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VOXAUG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(autouse=True)
def _single_thread():
    """Every test runs single-threaded for determinism and speed."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """6 speakers x 12 utterances (HW4 layout) plus 2 unseen speakers, about 1 s each."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, TINY_SYNTH, progress=False)
    return out


def ascii_locale_env() -> dict[str, str]:
    """This process's environment under the C locale, with Python's UTF-8 mode and locale coercion off: a child
    process whose default encoding is ASCII, as under a bare container or a cron job."""
    return {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def descriptors_open_on(path: str | os.PathLike) -> list[str]:
    """This process's file descriptors open on ``path`` (Linux's /proc/self/fd): a lock's must not outlive it."""
    return [fd for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}") == str(path)]


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A new folder that every account can enter and list (pytest's are the running account's alone), removed after:
    for a file that :func:`unreadable_to_this_process` takes away."""
    with tempfile.TemporaryDirectory() as name:
        os.chmod(name, 0o755)
        yield Path(name)


@contextmanager
def unreadable_to_this_process(path: Path) -> Iterator[None]:
    """``path`` at mode 000 for the block, where this process cannot read it. Root reads it all the same, so as root
    the block runs as ``nobody`` (the effective user id only, root's again after); ``path`` must lie in an
    :func:`open_folder`. Skipped where modes do not stop this process's reads (Windows, a capability such as
    CAP_DAC_OVERRIDE, a file system without modes) or there is no ``nobody`` to run as, rather than failing the test."""
    if sys.platform == "win32":
        pytest.skip("Windows does not refuse a read by the file's mode")
    import pwd

    mode = path.stat().st_mode
    as_root = os.geteuid() == 0
    try:
        nobody = pwd.getpwnam("nobody").pw_uid if as_root else None
    except KeyError:
        pytest.skip("running as root, with no `nobody` account to run as")
    path.chmod(0)
    try:
        if nobody is not None:
            try:
                os.seteuid(nobody)
            except PermissionError:
                pytest.skip("running as root without the right to change the effective user (CAP_SETUID)")
        try:
            if readable(path):
                pytest.skip(f"this process reads {path} at mode 000 all the same")
            yield
        finally:
            if nobody is not None:
                os.seteuid(0)
    finally:
        path.chmod(mode)


def readable(path: Path) -> bool:
    """Whether this process may read ``path`` (list it, if a folder)."""
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            path.open("rb").close()
    except PermissionError:
        return False
    return True


def another_owner_and_group() -> tuple[int, int]:
    """An owner and a group to give a file that are not just this account's own: any as root; else this account and
    another group it belongs to. Skipped where it belongs to no other (or on Windows, which has no such owners)."""
    if not hasattr(os, "fchown"):
        pytest.skip("Windows has no file owner and group to keep")
    if os.geteuid() == 0:
        return 54321, 54321
    groups = [gid for gid in os.getgroups() if gid != os.getegid()]
    if not groups:
        pytest.skip("this account belongs to no second group to give a file")
    return os.geteuid(), groups[0]


@pytest.fixture
def nfs_flock(monkeypatch) -> None:
    """``fcntl.flock`` as NFS emulates it, with ``fcntl`` locks: an exclusive lock on a file opened read-only is
    refused (EBADF, as util-linux's flock(1) notes)."""
    import errno
    import fcntl

    real_flock = fcntl.flock

    def flock(fd, operation):
        if operation & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)


def tiny_config(**overrides):
    values = {"steps": 60, "batch": 16, "lr": 3e-3, "warmup": 10, "segment": 64, "eval_every": 30,
              "train_eval_utterances": 40, "val_fraction": 0.2, "seed": 0, "device": "cpu"}
    values.update(overrides.pop("train", {}))
    augment = overrides.pop("augment", {"names": []})
    return resolve_config("cpu", overrides=values, model_overrides={**TINY_MODEL, **overrides}, augment_overrides=augment)


@pytest.fixture(scope="session")
def trained_run(tiny_synth, tmp_path_factory) -> Path:
    """A run folder with best.pt/last.pt from a short training on ``tiny_synth``."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    run = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(1)
    Trainer(tiny_config(train={"steps": 150, "eval_every": 75}), tiny_synth, run, cache_dir=cache, progress=False).fit()
    return run


def straight_and_resumed(make_config, data: Path, root: Path, monkeypatch, stop_at: int) -> tuple[dict, dict]:
    """``last.pt`` of an uninterrupted run and of one stopped at step ``stop_at`` then resumed."""
    from voxaug.checkpoint import load_checkpoint

    Trainer(make_config(), data, root / "straight", progress=False).fit()
    original_step = Trainer.train_step

    def interrupted_step(self):
        if self.step == stop_at:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_config(), data, root / "resumed", progress=False).fit()
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert load_checkpoint(root / "resumed" / "last.pt")["step"] < stop_at, "the interrupted run saved before the stop"
    Trainer(Trainer.config_from_run(root / "resumed"), data, root / "resumed", progress=False).fit(resume=True)
    return load_checkpoint(root / "straight" / "last.pt"), load_checkpoint(root / "resumed" / "last.pt")


@pytest.fixture(scope="session", autouse=True)
def _without_the_developer_s_settings():
    """A developer's VOXAUG_DEBUG turned the one-line errors tests assert into tracebacks, and VOXAUG_TRACE_BATCHES
    wrote a trace into every run (or, not a number, stopped every Trainer); tests that need them set them."""
    with pytest.MonkeyPatch.context() as patch:
        for name in (DEBUG_ENV, TRACE_ENV):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture
def resolutions_of(monkeypatch):
    """``resolutions_of(path)``: a list that grows by one at each ``Path.resolve`` of ``path`` from then on, for tests
    that a listing resolves its folder once, not once per entry."""
    def count(path: Path) -> list[Path]:
        calls: list[Path] = []
        resolve = Path.resolve

        def counting_resolve(self, *args, **kwargs):
            if self == path:
                calls.append(self)
            return resolve(self, *args, **kwargs)

        monkeypatch.setattr(Path, "resolve", counting_resolve)
        return calls
    return count
