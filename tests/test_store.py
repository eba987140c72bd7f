"""The packed store: built once, reused while sources are unchanged, rebuilt when they change."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from conftest import descriptors_open_on
from hw4_factory import make_hw4
from voxaug.data.batching import SegmentSampler, whole_batches
from voxaug.data.sources import HW4Source
from voxaug.data.store import PackedStore
from voxaug.errors import VoxaugError


def test_reuse_then_rebuild_on_change(tmp_path):
    root = make_hw4(tmp_path / "d")
    first = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert first.rebuilt
    second = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert not second.rebuilt
    changed = torch.ones(7, 40)
    torch.save(changed, root / "uttr-0001.pt")
    stat = (root / "uttr-0001.pt").stat()
    os.utime(root / "uttr-0001.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert third.rebuilt
    assert torch.equal(third.utterance(third.keys.index("uttr-0001.pt")), changed)


def test_a_dataset_folder_with_a_name_as_long_as_the_file_system_allows_has_a_cache(tmp_path):
    root = make_hw4(tmp_path / ("é" * 127))  # 254 bytes: the cache folder's kind and digest would not fit beside it
    store = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert store.rebuilt and len(store.folder.name.encode()) < 160 and len(store) > 0


def test_a_dataset_folder_whose_name_is_not_utf8_has_a_cache(tmp_path):
    root = make_hw4(tmp_path / os.fsdecode(b"latin1-caf\xe9"))  # written on a Latin-1 system: not valid UTF-8
    store = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert store.rebuilt and store.folder.name.startswith("latin1-caf-") and len(store) > 0
    assert not PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).rebuilt


def test_segments_come_from_the_right_utterance(tmp_path):
    root = make_hw4(tmp_path / "d", frames=30)
    store = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    sampler = SegmentSampler(store, np.arange(len(store)), batch_size=5, segment=40, seed=0)
    batch = sampler.next_batch()
    assert batch.features.shape == (5, 40, 40)
    for row, index in enumerate(batch.indices.tolist()):
        whole = store.utterance(index)
        span = int(batch.lengths[row])
        assert span == min(40, whole.shape[0])
        assert any(torch.equal(batch.features[row, :span], whole[s:s + span]) for s in range(whole.shape[0] - span + 1))
        assert (batch.features[row, span:] == 0).all()


def test_sampler_covers_an_epoch_and_resumes_exactly(tmp_path):
    store = PackedStore.open(HW4Source(make_hw4(tmp_path / "d")), tmp_path / "cache", progress=False)
    indices = np.arange(len(store))
    sampler = SegmentSampler(store, indices, batch_size=4, segment=16, seed=1)
    seen = torch.cat([sampler.next_batch().indices for _ in range(3)])
    assert sorted(seen.tolist()) == indices.tolist()
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in sampler.state_dict().items()}
    expected = sampler.next_batch()
    resumed = SegmentSampler(store, indices, batch_size=4, segment=16, seed=99)
    resumed.load_state_dict(state)
    again = resumed.next_batch()
    assert torch.equal(expected.features, again.features) and torch.equal(expected.indices, again.indices)


def test_whole_batches_bucket_by_length_and_cover_everything(tmp_path):
    store = PackedStore.open(HW4Source(make_hw4(tmp_path / "d")), tmp_path / "cache", progress=False)
    seen = []
    for batch in whole_batches(store, np.arange(len(store)), max_frames=200):
        assert batch.features.shape[0] * batch.features.shape[1] <= max(200, int(batch.lengths.max()))
        assert batch.features.shape[1] == int(batch.lengths.max())
        seen += batch.indices.tolist()
    assert sorted(seen) == list(range(len(store)))


def test_two_builds_of_one_folder_with_different_front_ends_never_pair_one_index_with_the_others_features(
        tiny_synth, tmp_path):
    import threading

    from voxaug.data.sources import ClipFolderSource, load_clip
    from voxaug.data.store import build_store
    from voxaug.features import FrontendConfig

    folder = tmp_path / "audio"  # wav files only: the front end makes the features
    for wav in (tiny_synth / "unseen" / "test").rglob("*.wav"):
        (folder / wav.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / wav.parent.name / wav.name).write_bytes(wav.read_bytes())
    wide, narrow = FrontendConfig(f_max=7600.0), FrontendConfig(f_max=4000.0)  # same array size, other features
    started, release, opened = threading.Event(), threading.Event(), {}

    def paused_build(source, store_folder, fingerprint, progress):
        started.set()
        release.wait(30)  # descheduled in the middle of its build
        return build_store(source, store_folder, fingerprint, progress=progress)

    def open_with(name, frontend, builder=None):
        opened[name] = PackedStore.open(ClipFolderSource(folder, frontend), tmp_path / "cache", progress=False,
                                        builder=builder)

    first = threading.Thread(target=open_with, args=("wide", wide, paused_build))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=open_with, args=("narrow", narrow))
    second.start()
    second.join(1.0)
    assert second.is_alive(), "a second build ran while the first was packing the same cache folder"
    release.set()
    first.join(30)
    second.join(30)
    again = PackedStore.open(ClipFolderSource(folder, wide), tmp_path / "cache", progress=False)
    for name, store, frontend in (("wide", opened["wide"], wide), ("narrow", opened["narrow"], narrow),
                                  ("wide, later", again, wide)):
        assert len(store.keys) == 6 and all(key.endswith(".wav") for key in store.keys)
        for row, key in enumerate(store.keys):
            expected = load_clip(folder / key, frontend)
            assert torch.allclose(store.utterance(row), expected), f"{name}: {key}"


def test_a_dataset_reached_through_a_link_or_as_dot_keeps_the_cache_of_its_real_folder(tmp_path, monkeypatch):
    """The cache folder is keyed by the resolved dataset folder, yet was named after the name given: through a link
    of another name (a dataset moved to a faster disk, linked from its old place), or as ``.`` from inside it, the
    same dataset was packed again into a second folder, under a lock of its own."""
    root = make_hw4(tmp_path / "d")
    (tmp_path / "fast").symlink_to(root, target_is_directory=True)
    first = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    through_link = PackedStore.open(HW4Source(tmp_path / "fast"), tmp_path / "cache", progress=False)
    monkeypatch.chdir(root)
    as_dot = PackedStore.open(HW4Source("."), tmp_path / "cache", progress=False)
    assert first.rebuilt and not through_link.rebuilt and not as_dot.rebuilt
    assert through_link.folder == as_dot.folder == first.folder
    assert [folder.name for folder in (tmp_path / "cache").iterdir()] == [first.folder.name]


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_packed_again(tmp_path):
    """`cp -p`, `rsync -a` or `touch -r` give a new file the old one's mtime; features of the same shape are the
    same size. The store must still see the change instead of serving the old features."""
    root = make_hw4(tmp_path / "d")
    target = root / "uttr-0001.pt"
    before = target.stat()
    assert PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).rebuilt
    time.sleep(0.05)  # past the file system's timestamp granularity
    changed = torch.full(tuple(torch.load(target, weights_only=True).shape), 7.0)
    torch.save(changed, target)  # same name, same shape: same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    store = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert store.rebuilt
    assert torch.equal(store.utterance(store.keys.index("uttr-0001.pt")), changed)


def test_a_cache_folder_named_with_a_tilde_in_the_environment_is_under_the_home_folder(tmp_path, monkeypatch):
    """``VOXAUG_CACHE="~/cache"`` (quoted, or from a service's environment file: no shell expands it) packed into a
    folder named ``~`` in the working directory."""
    from voxaug.data.store import default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOXAUG_CACHE", "~/cache")
    assert default_cache_dir() == tmp_path / "home" / "cache"


def test_a_cache_folder_under_an_unknown_users_home_is_one_error_naming_the_variable(monkeypatch):
    """``VOXAUG_CACHE=~nosuchuser/cache`` raised a bare RuntimeError from pathlib (exit 3 from a command)."""
    from voxaug.data.store import default_cache_dir

    monkeypatch.setenv("VOXAUG_CACHE", "~voxaug_no_such_user/cache")
    with pytest.raises(VoxaugError, match=r"^VOXAUG_CACHE '~voxaug_no_such_user/cache': the home folder of "
                                          r"'~voxaug_no_such_user' cannot be found$"):
        default_cache_dir()


def test_no_home_folder_and_no_cache_variable_is_one_error_naming_the_ways_out(monkeypatch):
    """HOME unset for a user with no passwd entry (a container run as an arbitrary uid): every command that packs
    features failed with "unexpected RuntimeError: Could not determine home directory." (exit 3)."""
    pwd = pytest.importorskip("pwd")  # POSIX: where a user's home folder comes from when HOME is unset
    from voxaug.data.store import default_cache_dir

    def no_such_user(uid: int) -> None:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("VOXAUG_CACHE", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_such_user)
    with pytest.raises(VoxaugError, match=r"^no home folder for the default feature cache ~/\.cache/voxaug \(HOME is "
                                          r"unset and this user has none\); set VOXAUG_CACHE or pass --cache-dir$"):
        default_cache_dir()


@pytest.mark.parametrize("kind", ["hw4", "audio"])
def test_a_stale_store_is_rebuilt_on_a_disk_with_room_for_one(tiny_synth, tmp_path, monkeypatch, kind):
    """A rebuild wrote the new features beside the old ones, which without their index no one can open: a disk
    with room for one store (a large corpus's cache) failed with "No space left on device", and so every later run."""
    import errno

    from voxaug.data.audio_store import open_dataset_store
    from voxaug.data.sources import open_source

    root = make_hw4(tmp_path / "d") if kind == "hw4" else tmp_path / "audio"
    for wav in (tiny_synth / "unseen" / "test").rglob("*.wav") if kind == "audio" else ():
        (root / wav.parent.name).mkdir(parents=True, exist_ok=True)
        (root / wav.parent.name / wav.name).write_bytes(wav.read_bytes())
    first, _ = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    room = 1.5 * (first.folder / "features.f32").stat().st_size
    changed = next(u.path for u in open_source(root).utterances)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # stale now
    source = open_source(root)
    load = source.load

    def load_on_a_small_disk(utterance):
        used = sum(path.stat().st_size for path in first.folder.iterdir() if path.is_file())
        if used > room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return load(utterance)

    monkeypatch.setattr(source, "load", load_on_a_small_disk)
    store, _ = open_dataset_store(source, tmp_path / "cache", progress=False, workers=0)
    assert store.rebuilt and store.keys == first.keys and all(key.endswith((".pt", ".wav")) for key in store.keys)
    assert not [path for path in first.folder.iterdir() if path.name.endswith(".tmp")]


def test_a_store_without_its_skipped_list_is_rebuilt_with_the_old_features_unmapped(tiny_synth, tmp_path, monkeypatch):
    """A missing skipped.json rebuilds the store, and the rebuild frees the old features first so that a disk with
    room for one store suffices; but the store opened before the list was checked still mapped them, which keeps
    them on disk through the rebuild: "No space left on device" on such a disk."""
    import weakref

    from voxaug.data.audio_store import SKIPPED_FILE, open_dataset_store
    from voxaug.data.sources import open_source

    root = tmp_path / "audio"
    for wav in (tiny_synth / "unseen" / "test").rglob("*.wav"):
        (root / wav.parent.name).mkdir(parents=True, exist_ok=True)
        (root / wav.parent.name / wav.name).write_bytes(wav.read_bytes())
    first, _ = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    (first.folder / SKIPPED_FILE).unlink()
    del first
    mapped, alive = [], []
    from_index = PackedStore._from_index.__func__

    def tracked(cls, folder, index, rebuilt):
        store = from_index(cls, folder, index, rebuilt)
        mapped.append(weakref.ref(store.features))
        return store

    source = open_source(root)
    load = source.load

    def load_and_look(utterance):
        alive.append(any(ref() is not None for ref in mapped))
        return load(utterance)

    monkeypatch.setattr(PackedStore, "_from_index", classmethod(tracked))
    monkeypatch.setattr(source, "load", load_and_look)
    store, skipped = open_dataset_store(source, tmp_path / "cache", progress=False, workers=0)
    assert store.rebuilt and skipped == [] and (store.folder / SKIPPED_FILE).is_file()
    assert len(mapped) == 2 and alive and not any(alive)


def _read_only(monkeypatch, folder, function_owner, name):
    """``function_owner.name`` (os.open, Path.unlink) fails as on a read-only file system for files in ``folder``."""
    import errno
    from pathlib import Path

    real = getattr(function_owner, name)

    def refused(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(function_owner, name, refused)


@pytest.mark.parametrize("cache_state", ["no lock file", "out of date"])
def test_a_cache_on_a_read_only_file_system_is_one_error_saying_it_is_the_feature_cache(tmp_path, monkeypatch,
                                                                                        cache_state):
    """A valid cache lacking its .lock, or an out-of-date one, on a read-only file system failed as ``…/.lock:
    Read-only file system``, which does not say that the folder is the feature cache nor how to use another."""
    from pathlib import Path

    root = make_hw4(tmp_path / "d")
    folder = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).folder
    if cache_state == "no lock file":
        (folder / ".lock").unlink()
        _read_only(monkeypatch, folder, os, "open")
        refused = folder / ".lock"
    else:
        (folder / "index.json").write_text("{}")
        _read_only(monkeypatch, folder, Path, "unlink")
        refused = folder / "index.json"
    with pytest.raises(VoxaugError) as error:
        PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert str(error.value) == (f"{refused}: Read-only file system (in the feature cache folder; pass --cache-dir or "
                                "set VOXAUG_CACHE to use another)")


@pytest.mark.parametrize("refused_at", ["cache folder", "index of a store without its skipped list"])
def test_a_read_only_cache_says_how_to_use_another_when_its_folder_or_index_cannot_be_written(
        tiny_synth, tmp_path, monkeypatch, refused_at):
    """A cache folder that could not be created said only ``cannot create the feature cache folder (Read-only file
    system)``, and removing the index of an audio store missing its skipped list raised a bare OSError: neither
    said to pass --cache-dir or set VOXAUG_CACHE, as every other write to the cache does."""
    from pathlib import Path

    from voxaug.data.audio_store import SKIPPED_FILE, open_dataset_store
    from voxaug.data.sources import open_source
    from voxaug.data.store import store_folder

    root = tmp_path / "audio"
    for wav in (tiny_synth / "unseen" / "test").rglob("*.wav"):
        (root / wav.parent.name).mkdir(parents=True, exist_ok=True)
        (root / wav.parent.name / wav.name).write_bytes(wav.read_bytes())
    if refused_at == "cache folder":
        refused = store_folder(open_source(root), tmp_path / "cache")
        _read_only(monkeypatch, refused.parent, Path, "mkdir")
    else:
        first, _ = open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
        refused = first.folder / "index.json"
        (first.folder / SKIPPED_FILE).unlink()
        del first
        _read_only(monkeypatch, refused.parent, Path, "unlink")
    with pytest.raises(VoxaugError) as error:
        open_dataset_store(open_source(root), tmp_path / "cache", progress=False, workers=0)
    assert str(error.value) == (f"{refused}: Read-only file system (in the feature cache folder; pass --cache-dir or "
                                "set VOXAUG_CACHE to use another)")


@pytest.mark.parametrize("field", ["lengths", "labels", "n_mels"])
def test_a_store_index_with_a_number_too_large_for_int64_is_rebuilt(tmp_path, field):
    """A damaged index.json is rebuilt from the source; a number past int64 in it (or an n_mels of Infinity) raised
    OverflowError, which is no ValueError: every command reading the dataset ended 'unexpected OverflowError', exit 3."""
    root = make_hw4(tmp_path / "d")
    first = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    index_path = first.folder / "index.json"
    index = json.loads(index_path.read_text())
    if field == "n_mels":
        index[field] = float("inf")
    else:
        index[field][0] = 10**30
    index_path.write_text(json.dumps(index))
    del first
    again = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert again.rebuilt and json.loads(index_path.read_text())[field] != index[field]


@pytest.fixture(scope="module")
def cache_of_a_module_fixture():
    from voxaug.data.store import default_cache_dir

    return default_cache_dir()


def test_module_fixtures_pack_into_the_session_s_private_cache(cache_of_a_module_fixture, tmp_path_factory):
    """conftest set VOXAUG_CACHE for each test only, after module and session fixtures had run: those (a Trainer,
    `voxaug embed`) packed into ~/.cache/voxaug, or the developer's own cache, a new store on every run."""
    assert cache_of_a_module_fixture == tmp_path_factory.getbasetemp() / "cache"


def test_a_store_packed_while_another_front_end_repacks_the_cache_reports_its_own_skipped_files(
        tiny_synth, tmp_path, monkeypatch):
    """Two runs on one audio folder with different front ends share one cache folder. The skipped list was read
    after the store's lock was released, so the other run's build, waiting for that lock, could replace it first:
    this run then rebuilt its store for nothing and, raced again, reported none of its skipped files. The other run
    is forced in each time this one releases the lock."""
    from contextlib import contextmanager

    import voxaug.data.store as store_module
    from voxaug.data import audio_store
    from voxaug.data.sources import open_source
    from voxaug.features import FrontendConfig

    root = tmp_path / "audio"
    for wav in (tiny_synth / "unseen" / "test").rglob("*.wav"):
        (root / wav.parent.name).mkdir(parents=True, exist_ok=True)
        (root / wav.parent.name / wav.name).write_bytes(wav.read_bytes())
    bad = next(root.iterdir()) / "bad.wav"
    bad.write_bytes(b"not audio")
    cache = tmp_path / "cache"
    real_lock, real_build = store_module.cache_lock, audio_store.build_audio_store
    other_runs, builds, in_other_run = [3], [], []

    def other_run() -> None:
        in_other_run.append(True)
        other_source = open_source(root, FrontendConfig(n_mels=32), warn=False)
        other, other_skipped = audio_store.open_dataset_store(other_source, cache, progress=False, workers=0,
                                                              warn=False)
        assert other.n_mels == 32 and len(other_skipped) == 1
        in_other_run.pop()

    @contextmanager
    def lock_then_other_run(folder, *data):
        with real_lock(folder, *data):
            yield
        if other_runs[0] > 0 and not in_other_run:  # the other run, waiting for the lock, takes it once it is free
            other_runs[0] -= 1
            other_run()

    def counted_build(source, *args, **kwargs):
        builds.append(source.n_mels)
        return real_build(source, *args, **kwargs)

    other_run()  # the cache holds the other front end's store
    monkeypatch.setattr(store_module, "cache_lock", lock_then_other_run)
    monkeypatch.setattr(audio_store, "build_audio_store", counted_build)
    store, skipped = audio_store.open_dataset_store(open_source(root, warn=False), cache, progress=False, workers=0,
                                                    warn=False)
    assert store.n_mels == 40 and len(store) + len(skipped) == len(list(root.rglob("*.wav")))
    assert [entry["key"] for entry in skipped] == [f"{bad.parent.name}/bad.wav"]
    assert builds.count(40) == 1


def test_a_cache_on_nfs_where_flock_needs_a_file_open_for_writing_is_locked_and_opened(tmp_path, nfs_flock):
    """NFS (a cluster's shared cache) emulates flock with fcntl locks, which refuse an exclusive lock on a file
    opened read-only (EBADF, as util-linux's flock(1) notes): the lock file was opened read-only, so every command
    reading a dataset through a cache on NFS ended in a bare 'Bad file descriptor'."""
    root = make_hw4(tmp_path / "d")
    first = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    again = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert first.rebuilt and not again.rebuilt and again.keys == first.keys


def test_a_valid_cache_whose_lock_file_cannot_be_opened_for_writing_is_still_read(tmp_path, monkeypatch):
    """The lock file is opened for writing (for NFS), and read-only where that is refused: a read-only file system
    or another user's lock file still serves a valid store, as it did before."""
    import errno

    root = make_hw4(tmp_path / "d")
    folder = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).folder
    real_open, refused = os.open, []

    def read_only(path, flags, *args, **kwargs):
        if os.path.dirname(path) == str(folder) and flags & os.O_ACCMODE != os.O_RDONLY:
            refused.append(path)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    store = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert not store.rebuilt and len(store) > 0 and refused == [folder / ".lock"]


def test_a_process_forked_while_a_store_is_packed_does_not_keep_the_cache_locked(tmp_path):
    """Packing audio forks data-loader workers while the cache lock is held; they shared its descriptor, and with it
    the flock, so a worker outliving the pack (its run killed, or a failed pack's loader not yet collected) kept
    every other command on that dataset waiting. The lock is dropped in a forked child, as a run folder's is."""
    import fcntl
    import signal

    from voxaug.data.store import LOCK_FILE, cache_lock

    folder = tmp_path / "cache" / "store"
    started, ready = os.pipe()
    with cache_lock(folder):
        child = os.fork()
        if child == 0:  # a worker that outlives the pack
            os.write(ready, b"x")
            time.sleep(60)
            os._exit(0)
    try:
        os.read(started, 1)  # the child runs (what a fork does to the lock is done by then)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the child holds it
        finally:
            os.close(fd)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(started)
        os.close(ready)


def test_a_wait_for_the_cache_lock_cut_short_leaves_no_descriptor_open(tmp_path, monkeypatch):
    """Ctrl-C while another process packs the dataset: the lock file's descriptor stayed open in a process that went
    on (a notebook), where an interrupt landing as the lock was granted would hold the cache locked for good."""
    import voxaug.data.store as store_module

    def interrupted(fd, wait):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "lock_descriptor", interrupted)
    folder = tmp_path / "cache" / "store"
    with pytest.raises(KeyboardInterrupt):
        with store_module.cache_lock(folder):
            pass
    assert descriptors_open_on(folder / store_module.LOCK_FILE) == []


def test_a_wait_for_another_process_packing_the_dataset_is_said_in_one_line(tmp_path, capsys, monkeypatch):
    """Two commands sharing a dataset's cache: the second blocked on the lock for as long as the first packed (minutes
    on a large set) without a word. One stderr line says what it waits for; none when the lock is free at once, or
    taken only for a moment (another command checking its ready store). The other holder lets go at a step of the
    waiter's, not after a time: with a 0.5 s timer, a loaded machine reaching the lock late found it free, unsaid."""
    import fcntl

    from voxaug.data import store as store_module
    from voxaug.data.store import LOCK_FILE, store_folder

    root = make_hw4(tmp_path / "d")
    PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == ""
    lock = store_folder(HW4Source(root), tmp_path / "cache") / LOCK_FILE
    take_lock, say = store_module.lock_descriptor, store_module.print_warning

    def open_while_another_holds_the_lock(released_once: str, dataset: object = root) -> str:
        """PackedStore.open of ``dataset`` while another process's pack holds the lock, let go once the waiter was
        first refused it (``refused``) or once it said that it waits (``said``)."""
        held = [os.open(lock, os.O_RDWR)]
        fcntl.flock(held[0], fcntl.LOCK_EX)  # another process's pack (flock locks an open file, not a process)
        refusals = []

        def release() -> None:
            while held:
                os.close(held.pop())

        def try_lock(fd: int, wait: bool) -> None:
            try:
                take_lock(fd, wait)
            except BlockingIOError:
                refusals.append(wait)
                if released_once == "refused":
                    release()
                raise

        def said(line: str, bar: object = None) -> None:
            say(line, bar)
            if released_once == "said":
                release()

        monkeypatch.setattr(store_module, "lock_descriptor", try_lock)
        monkeypatch.setattr(store_module, "print_warning", said)
        try:
            store = PackedStore.open(HW4Source(dataset), tmp_path / "cache", progress=False)
        finally:
            release()
        assert refusals and not store.rebuilt  # it found the lock taken, and waited for it
        return capsys.readouterr().err

    assert open_while_another_holds_the_lock("refused") == ""  # a moment: another command's check
    monkeypatch.setattr(store_module, "LOCK_WAIT_SAID_AFTER_S", 0.1)
    assert open_while_another_holds_the_lock("said") == (
        f"waiting for another voxaug process packing {root}'s features (lock {lock})\n")
    monkeypatch.chdir(root)  # the dataset given as `.` shares its real folder's cache: the line names that folder
    assert open_while_another_holds_the_lock("said", ".") == (
        f"waiting for another voxaug process packing {root.resolve()}'s features (lock {lock})\n")
