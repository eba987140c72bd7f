"""Training batches read from audio on the fly: each example's waveform is read, cropped, augmented
(``wave``) and featurised in DataLoader workers, so the training step does not wait for it.

The main process plans batches (an epoch-wise permutation from one seeded ``torch.Generator``,
as :class:`~voxaug.data.batching.SegmentSampler`); an example's crop and augmentation come from a
seed derived from (run seed, epoch, position), so batches are identical for any number of workers,
and the state after the last batch the trainer consumed is what a checkpoint stores.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from voxaug.audio import read_audio
from voxaug.augment.wave import WaveAugmentation, example_seed
from voxaug.data.audio_store import default_workers, single_thread_worker
from voxaug.data.batching import Batch, check_sampler, rank_share
from voxaug.data.store import PackedStore
from voxaug.errors import VoxaugError
from voxaug.features import FrontendConfig, log_mel

Item = tuple[int, int, int]  # (store index, epoch, position in the epoch)


class WaveExamples(Dataset):
    """One training example: read the clip, crop ``segment`` frames' worth of samples at a seeded
    offset, apply the ``wave`` chain (when given), featurise with the run's front end."""

    def __init__(self, paths: list[Path], frontend: FrontendConfig, segment: int, seed: int,
                 wave: WaveAugmentation | None) -> None:
        self.paths, self.frontend, self.segment, self.seed, self.wave = paths, frontend, segment, seed, wave
        # log_mel gives exactly `segment` frames; its centred STFT needs more than n_fft // 2 samples (--segment 1 or 2,
        # or 3 at 44.1 kHz, would crash it), so a shorter crop is widened to that and its frames cut to `segment`
        self.samples = max((segment - 1) * frontend.hop_length, frontend.n_fft // 2 + 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: Item) -> tuple[int, torch.Tensor | None, str | None]:
        index, epoch, position = item
        seed = example_seed(self.seed, epoch, position)
        try:
            waveform = read_audio(self.paths[index], self.frontend.sample_rate).numpy()
        except VoxaugError as exc:
            return index, None, str(exc)
        if len(waveform) > self.samples:
            start = int(np.random.default_rng(seed).integers(0, len(waveform) - self.samples + 1))
            waveform = waveform[start : start + self.samples]
        if self.wave is not None:
            waveform = self.wave.apply(waveform, self.frontend.sample_rate, seed)
        features = log_mel(torch.from_numpy(np.ascontiguousarray(waveform)), self.frontend)[: self.segment]
        return index, features, None


def _as_list(items: list) -> list:
    return items


class WaveBatchSource:
    """The trainer's batch source for audio with ``wave`` on: ``next_batch``, ``state_dict`` and
    ``load_state_dict`` like :class:`~voxaug.data.batching.SegmentSampler`."""

    def __init__(
        self,
        store: PackedStore,
        root: Path,
        indices: np.ndarray,
        batch_size: int,
        segment: int,
        seed: int,
        frontend: FrontendConfig,
        wave: WaveAugmentation | None,
        workers: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        check_sampler(len(indices), batch_size, segment, rank, world)
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise VoxaugError(f"--workers must be >= 0, got {self.workers}")
        self.store, self.indices = store, torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.segment = batch_size, segment
        self.rank, self.world = rank, world
        paths = [Path(root) / key for key in store.keys]
        self.examples = WaveExamples(paths, frontend, segment, seed, wave)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.cursor = 0, 0
        self.order = self._new_order()
        self._consumed = self._planner_state()
        self._pending: deque[dict] = deque()
        self._iterator: Iterator | None = None

    # ---- planning (main process) ----------------------------------------------------------------
    def _new_order(self) -> torch.Tensor:
        """This epoch's permutation; under DDP each rank takes every ``world``-th item of the shared one
        (shares of equal length, see :func:`~voxaug.data.batching.rank_share`)."""
        permuted = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
        return rank_share(permuted, self.rank, self.world)

    def _planner_state(self) -> dict:
        # `order` is replaced each epoch, never changed in place, so sharing it is safe (and cheap)
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "cursor": self.cursor, "order": self.order}

    def _plans(self) -> Iterator[list[Item]]:
        while True:
            plan: list[Item] = []
            while len(plan) < self.batch_size:
                if self.cursor >= len(self.order):
                    self.epoch, self.cursor = self.epoch + 1, 0
                    self.order = self._new_order()
                position = self.cursor * self.world + self.rank  # unique across ranks
                plan.append((int(self.order[self.cursor]), self.epoch, position))
                self.cursor += 1
            self._pending.append(self._planner_state())
            yield plan

    def _loader(self) -> Iterator:
        loader = DataLoader(self.examples, batch_sampler=self._plans(), collate_fn=_as_list,
                            num_workers=self.workers, persistent_workers=False,
                            worker_init_fn=single_thread_worker if self.workers else None,
                            generator=torch.Generator())  # leaves the global RNG (dropout) untouched
        return iter(loader)

    # ---- the trainer's interface -----------------------------------------------------------------
    def next_batch(self) -> Batch:
        if self._iterator is None:
            self._iterator = self._loader()
        results = next(self._iterator)
        self._consumed = self._pending.popleft()
        features = torch.zeros(len(results), self.segment, self.store.n_mels)
        lengths, picked = [], []
        for row, (index, example, problem) in enumerate(results):
            if problem is not None:
                raise VoxaugError(f"{problem} (it was readable when the packed store was built; has it changed?)")
            features[row, : example.shape[0]] = example
            lengths.append(example.shape[0])
            picked.append(index)
        picked_tensor = torch.as_tensor(picked, dtype=torch.long)
        labels = torch.as_tensor(self.store.labels[picked_tensor.numpy()])
        return Batch(features, torch.as_tensor(lengths, dtype=torch.long), labels, picked_tensor)

    def state_dict(self) -> dict:
        """The planner state after the last batch handed out (batches prefetched since are not counted)."""
        return dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.generator.set_state(state["generator"])
        self.epoch, self.cursor, self.order = int(state["epoch"]), int(state["cursor"]), state["order"]
        self._consumed = self._planner_state()

    def close(self) -> None:
        """Stop the workers; the next batch starts fresh ones from the current state."""
        self._iterator = None  # the last reference: the DataLoader iterator shuts its workers down
        self._pending.clear()
        self.generator.set_state(self._consumed["generator"])
        self.epoch, self.cursor = int(self._consumed["epoch"]), int(self._consumed["cursor"])
        self.order = self._consumed["order"]
