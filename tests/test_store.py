"""The packed store: built once, reused while sources are unchanged, rebuilt when they change."""

from __future__ import annotations

import os

import numpy as np
import torch

from hw4_factory import make_hw4
from voxaug.data.batching import SegmentSampler, whole_batches
from voxaug.data.sources import HW4Source
from voxaug.data.store import PackedStore


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
