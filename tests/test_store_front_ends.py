"""The packed store says why it is packed again, and keeps one store per front end of a dataset (bounded), so
alternating front ends do not repack it at each switch."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hw4_factory import make_hw4
from voxaug.audio import write_audio
from voxaug.data.sources import ClipFolderSource, HW4Source
from voxaug.data.store import INDEX_FILE, PackedStore, store_folder
from voxaug.features import FrontendConfig

NARROW = FrontendConfig(sample_rate=8000, f_max=4000.0)


@pytest.fixture
def audio_folder(tmp_path):
    """Two speakers of three 0.3 s noise clips at 16 kHz."""
    generator = torch.Generator().manual_seed(0)
    for speaker in ("a", "b"):
        for clip in range(3):
            noise = 0.1 * torch.randn(4800, generator=generator)
            write_audio(tmp_path / "audio" / speaker / f"{clip}.wav", noise, 16000)
    return tmp_path / "audio"


def _open(folder, cache, frontend=FrontendConfig()):
    return PackedStore.open(ClipFolderSource(folder, frontend), cache, progress=False)


def _touch_later(path):
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_stale_store_says_what_changed_when_it_is_packed_again(tmp_path, capfd):
    """A store rebuilt because clips changed was packed again without a word: a long silent pause, and no hint
    that the features are new."""
    root = make_hw4(tmp_path / "d", speakers=3, per_speaker=4)
    assert PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).rebuilt
    assert not PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).rebuilt
    assert capfd.readouterr().err == ""  # nothing on a first build, nor when nothing changed
    torch.save(torch.ones(7, 40), root / "uttr-0001.pt")
    _touch_later(root / "uttr-0001.pt")
    assert PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).rebuilt
    assert capfd.readouterr().err == f"{root}: feature cache packed again: 1 clip changed since it was packed\n"


def test_a_clip_folder_store_counts_the_clips_added_and_removed(audio_folder, tmp_path, capfd):
    _open(audio_folder, tmp_path / "cache")
    (audio_folder / "a" / "0.wav").rename(audio_folder / "a" / "9.wav")
    assert _open(audio_folder, tmp_path / "cache").rebuilt
    assert capfd.readouterr().err.endswith(": feature cache packed again: 1 clip added and 1 removed since it was "
                                           "packed\n")


def test_a_store_of_another_format_version_says_so(tmp_path, capfd):
    root = make_hw4(tmp_path / "d", speakers=2, per_speaker=3)
    folder = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).folder
    index = json.loads((folder / INDEX_FILE).read_text())
    (folder / INDEX_FILE).write_text(json.dumps({**index, "version": 0}))
    capfd.readouterr()
    assert PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False).rebuilt
    assert capfd.readouterr().err == f"{root}: feature cache packed again: its format version changed (from 0 to 1)\n"


def test_a_store_of_the_front_end_changed_in_place_says_so(audio_folder, tmp_path, capfd):
    """A store in a folder whose recorded front end is not the one asked for (as a store packed before stores were
    kept per front end could hold) names the front end as what changed."""
    folder = _open(audio_folder, tmp_path / "cache").folder
    index = json.loads((folder / INDEX_FILE).read_text())
    (folder / INDEX_FILE).write_text(json.dumps({**index, "fingerprint": "other",
                                                 "frontend": NARROW.to_dict()}))
    assert _open(audio_folder, tmp_path / "cache").rebuilt
    assert capfd.readouterr().err.endswith(": feature cache packed again: the front end changed\n")


def test_alternating_front_ends_reuse_their_stores(audio_folder, tmp_path):
    """Training at 16 kHz and at 8 kHz in turn repacked the whole dataset at every switch: both front ends kept
    one cache folder, whose fingerprint each one's build replaced."""
    from voxaug.data.store import FRONTENDS_FOLDER

    assert _open(audio_folder, tmp_path / "cache").rebuilt and _open(audio_folder, tmp_path / "cache", NARROW).rebuilt
    for _ in range(2):
        assert not _open(audio_folder, tmp_path / "cache").rebuilt
        narrow = _open(audio_folder, tmp_path / "cache", NARROW)
        assert not narrow.rebuilt
    assert narrow.features.shape[1] == NARROW.n_mels and narrow.folder.parent.name == FRONTENDS_FOLDER


def test_stores_of_other_front_ends_are_bounded_and_the_default_one_is_kept(audio_folder, tmp_path):
    """Each front end's store is kept, but no more than OTHER_FRONTEND_STORES besides the default's: a sweep over
    front ends would otherwise fill the disk with stores no one opens again."""
    from voxaug.data.store import FRONTENDS_FOLDER, OTHER_FRONTEND_STORES

    cache = tmp_path / "cache"
    default = _open(audio_folder, cache)
    front_ends = [FrontendConfig(n_mels=n_mels) for n_mels in (24, 32, 48, 64)]
    for frontend in front_ends:
        _open(audio_folder, cache, frontend)
    others = sorted(path.name for path in (default.folder / FRONTENDS_FOLDER).iterdir())
    latest = [store_folder(ClipFolderSource(audio_folder, frontend), cache).name
              for frontend in front_ends[-OTHER_FRONTEND_STORES:]]
    assert others == sorted(latest)
    assert not _open(audio_folder, cache).rebuilt and not _open(audio_folder, cache, front_ends[-1]).rebuilt


def test_a_default_front_end_store_packed_before_the_upgrade_is_still_valid(audio_folder, tmp_path):
    """An index written before stores recorded their front end and clip stamps is reused, from the same folder."""
    folder = _open(audio_folder, tmp_path / "cache").folder
    index = json.loads((folder / INDEX_FILE).read_text())
    for added in ("frontend", "stamps"):
        del index[added]
    (folder / INDEX_FILE).write_text(json.dumps(index))
    again = _open(audio_folder, tmp_path / "cache")
    assert not again.rebuilt and again.folder == folder


def test_a_cache_folder_named_frontends_keeps_two_stores_of_other_front_ends(audio_folder, tmp_path):
    """The default front end's store in a cache folder named ``frontends`` was taken for another front end's: its
    build kept one other store, not OTHER_FRONTEND_STORES."""
    cache = tmp_path / "frontends"
    front_ends = [FrontendConfig(n_mels=n_mels) for n_mels in (24, 32)]
    for frontend in front_ends:
        _open(audio_folder, cache, frontend)
    assert _open(audio_folder, cache).rebuilt
    assert not any(_open(audio_folder, cache, frontend).rebuilt for frontend in front_ends)


def test_a_front_end_store_left_without_its_index_is_discarded(audio_folder, tmp_path):
    """A store whose index is gone (a pack killed midway, or a removal that failed on a file still mapped, as on
    Windows) was never counted, and its features stayed on disk for good."""
    from voxaug.data.store import FEATURES_FILE, FRONTENDS_FOLDER

    cache = tmp_path / "cache"
    left = _open(audio_folder, cache).folder / FRONTENDS_FOLDER / "0000000000000000"
    left.mkdir(parents=True)
    (left / FEATURES_FILE).write_bytes(bytes(4096))
    for n_mels in (24, 32):
        _open(audio_folder, cache, FrontendConfig(n_mels=n_mels))
    assert not left.exists()
