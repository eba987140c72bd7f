"""The training loop: random segments from the packed store, batch augmentations, AdamW with
warm-up and cosine decay, periodic clean evaluation, atomic checkpoints and exact resume.

Under torchrun the same loop runs on every rank with DistributedDataParallel: each rank draws its
own share of the utterances and its own augmentation masks, evaluation is sharded and reduced,
and only rank 0 writes the run folder."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from voxaug.augment import TrainBatch, build_pipeline, total_loss
from voxaug.augment.pipeline import resolve_names
from voxaug.checkpoint import class_speakers, load_checkpoint, save_checkpoint, weight_mismatch
from voxaug.config import PRESETS, TrainConfig, absolute_folders, check_values
from voxaug.data.audio_store import default_workers, is_audio, open_dataset_store, require_audio
from voxaug.data.batching import SegmentSampler
from voxaug.data.sources import (
    DatasetSource, HW4Source, open_source, speakers_without_utterances, untrained_classes_warning,
)
from voxaug.data.store import PackedStore
from voxaug.data.split import (
    speakers_without_validation, split_record, stratified_split, unvalidated_speakers_warning,
)
from voxaug.data.wave_batches import WaveBatchSource
from voxaug.device import resolve_device
from voxaug.distributed import DistContext, main_first, main_only, rank_seed
from voxaug.errors import VoxaugError, abridged, file_error
from voxaug.features import FrontendConfig
from voxaug.inference import accuracy, autocast_for, run_model
from voxaug.interrupt import stop_if_terminated
from voxaug.model import build_model
from voxaug.plot import plot_runs, read_log_text, read_metrics
from voxaug.progress import print_warning, progress_bar
from voxaug.safeio import append_text, atomic_write_json, atomic_write_text, exclusive_lock, read_json

TRACE_ENV = "VOXAUG_TRACE_BATCHES"
TRACE_FILE = "batch_trace.jsonl"
RUN_LOCK = ".train.lock"
"""Held by the training that writes a run folder (rank 0), from its start to its end."""
RESUMABLE_CHANGES = ("steps", "device", "frontend")
"""The settings a resume may give otherwise than the run's (the front end is compared as the features it makes)."""


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    best_val_acc: float | None
    best_step: int
    train_acc: float
    val_acc: float | None
    elapsed_s: float
    skipped_steps: int

    @property
    def gap(self) -> float | None:
        return None if self.val_acc is None else self.train_acc - self.val_acc


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to zero at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def margin_at(step: int, config: TrainConfig) -> float:
    """The AM-Softmax margin: from 0 up to the configured one over the first ``margin_warmup`` steps.

    A full margin from step 0 asks random embeddings to clear a bar they cannot see yet; growing it
    lets the classes separate first and tighten after (as WeSpeaker's margin scheduler does).
    """
    if step >= config.margin_warmup:
        return config.model.margin
    return config.model.margin * step / config.margin_warmup


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`; CUDA states of GPUs this machine does not have (a run saved where more were
    visible) are left out, since torch indexes its generators by GPU and would fail on them."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


Method = TypeVar("Method", bound=Callable)


def keeps_callers_rng(method: Method) -> Method:
    """Run ``method`` with torch's global random stream put back as the caller left it, after a failure too: training
    seeds and draws from it (initial weights, dropout), and the draws of a notebook, a service or a test suite that
    trained must be those it would make without training. The run's own stream is kept in ``start_rng`` and last.pt."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        callers = rng_state()
        try:
            return method(*args, **kwargs)
        finally:
            set_rng_state(callers)

    return wrapper  # type: ignore[return-value]


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a saved optimizer state but keep this optimizer's choice of the fused kernel. A state saved on the
    CPU says ``fused=False``; loaded as is into a CUDA optimizer built fused, the GradScaler would still hand
    its inf flags to the step, and the unfused kernel refuses them (found on an H200)."""
    fused = optimizer.param_groups[0].get("fused")
    optimizer.load_state_dict({**saved, "param_groups": [{**group, "fused": fused} for group in saved["param_groups"]]})


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """A loaded optimizer state that would fail only at the first step: torch takes moment tensors of another
    shape or type, and hyperparameters of any type, as they come."""
    for group in optimizer.param_groups:
        numbers = [group.get(key) for key in ("lr", "eps", "weight_decay")] + list(group.get("betas") or ())
        if len(numbers) != 5 or not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
            raise TypeError("lr, betas, eps and weight_decay must be numbers")
        for weight in group["params"]:
            for key, value in optimizer.state.get(weight, {}).items():
                expected = () if key == "step" else weight.shape  # torch's step count is one number, shape ()
                if not isinstance(value, torch.Tensor) or value.shape != expected:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f"{key} is {shape} for a weight of shape {tuple(weight.shape)}")


@contextlib.contextmanager
def damaged_state(path: Path, part: str) -> Iterator[None]:
    """What torch or the sampler raise on a saved ``part`` of the wrong type or shape, as one line naming ``path``:
    a damaged file, not a bug."""
    try:
        yield
    except torch.OutOfMemoryError:  # a device that is full, not a file that is damaged
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise file_error(path, f"its {part} is damaged ({type(exc).__name__}: {detail}), so the run cannot continue "
                               "from it: put back the last.pt that training wrote, or start a new run with another "
                               "--out") from exc  # kept for --debug: a bug read as damage can still be found


def refuse_fewer_than_two_speakers(source: DatasetSource) -> None:
    """A classifier of one speaker has nothing to tell apart: its loss is 0 from the first step, nothing is learned,
    and the run would still end reporting accuracy 1.0."""
    with_clips = sorted({u.speaker for u in source.utterances if u.speaker is not None})
    if len(with_clips) < 2:
        where = source.root / "metadata.json" if isinstance(source, HW4Source) else source.root
        named = f" ({with_clips[0]!r})" if with_clips else ""
        raise file_error(where, f"holds utterances of {len(with_clips)} speaker{named}; training a speaker classifier "
                                "needs at least 2")


class Trainer:
    """Owns one run: its data, model, optimizer, sampler, augmentations and run folder.

    ``model`` is the plain module (what checkpoints hold); ``forward_model`` is what a training
    step calls: the same module, or under torchrun, during :meth:`fit`, its DistributedDataParallel wrapper.
    """

    @keeps_callers_rng
    def __init__(
        self,
        config: TrainConfig,
        data: str | Path,
        run_dir: str | Path,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        frontend: FrontendConfig | None = None,
        workers: int | None = None,
        strict: bool = False,
        context: DistContext | None = None,
        resume: bool | None = None,
    ) -> None:
        """``workers``: featurising/augmenting processes for audio (default from the CPU count);
        ``strict``: a bad audio file stops the run instead of being skipped and counted;
        ``context``: this process's rank under torchrun (``voxaug.distributed.init_distributed``);
        ``resume``: whether :meth:`fit` continues the run in ``run_dir``; given here, the run folder and the
        front-end settings are checked before any data is read (None: decided by :meth:`fit`, checked there)."""
        config.validate()
        config.augment = {**config.augment, "names": resolve_names(config.augment)}  # the default when none named
        self.pipeline = build_pipeline(config.augment["names"], config.augment)
        self.dist = context or DistContext(device=resolve_device(config.device))
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress and self.dist.is_main
        self.data = Path(data)
        self.device = self.dist.device
        self.trace_steps = _trace_steps()
        torch.manual_seed(config.seed)  # the same on every rank: the same initial weights

        self.resuming = resume
        frontend = frontend or (FrontendConfig.from_dict(config.frontend) if config.frontend else None)
        wave = next((a for a in self.pipeline.augmentations if a.name == "wave"), None)
        source = open_source(self.data, frontend, prefer_audio=wave is not None,  # `wave` augments the audio twins
                             warn=self.dist.is_main)
        features = frontend is not None and not all(map(is_audio, source.utterances))  # a .pt without an audio twin
        self.audio_settings_on_features = audio_settings(frontend, source.n_mels) if features else []
        main_only(self.dist, lambda: self._refuse_before_reading(source.n_mels, resume))  # rank 0 says why
        self.frontend = frontend or getattr(source, "frontend", None) or FrontendConfig(n_mels=source.n_mels)
        if wave is not None:
            require_audio(source)  # before any featurising: `wave` needs waveforms
        refuse_fewer_than_two_speakers(source)  # before any featurising too
        silent = speakers_without_utterances(source.speakers, source.utterances)
        if silent and self.dist.is_main:
            print_warning(untrained_classes_warning(source.root / "metadata.json", silent, len(source.speakers),
                                                    self.pipeline.label_copies))
        self.store, self.skipped_files = main_first(  # rank 0 packs the store; the others then open it
            self.dist, lambda: self._open_store(source, cache_dir, workers, strict))
        self.speakers = self.store.speakers
        self.clips = self.store.clip_identity()
        self.train_indices, self.val_indices = stratified_split(
            self.store.labels, config.val_fraction, config.seed, self.store.groups, config.split_version
        )
        self.split_clips = split_record(self.store.keys, self.train_indices, self.val_indices)  # for embed, evaluate
        self._warn_of_unvalidated_speakers()
        eval_rng = np.random.default_rng(config.seed + 1)
        count = min(config.train_eval_utterances, len(self.train_indices))
        self.train_eval_indices = np.sort(eval_rng.choice(self.train_indices, size=count, replace=False))

        config.model.n_mels = self.store.n_mels
        self.pipeline.bind(len(self.speakers))
        self.pipeline.bind_hop(self.frontend.hop_ms)
        self.pipeline.bind_mel_range(self.frontend.f_min, self.frontend.f_max)
        config.model.num_classes = len(self.speakers) * self.pipeline.label_copies
        config.model.num_speakers = len(self.speakers) if self.pipeline.label_copies > 1 else 0
        self.model = build_model(config.model).to(self.device)
        if self.dist.active and self.dist.world_size > 1:
            torch.manual_seed(rank_seed(config.seed, self.dist.rank))  # dropout differs between ranks
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp and self.device.type == "cuda")
        rank, world = self.dist.rank, self.dist.world_size
        if wave is not None:
            if workers is None and self.dist.active:  # the machine's cores are shared by its ranks
                workers = default_workers() // self.dist.local_world_size
            resampled_noise = wave.resampled_noise_warning(self.frontend.sample_rate)
            if resampled_noise and self.dist.is_main:
                print_warning(resampled_noise)
            self.sampler = WaveBatchSource(self.store, source.root, self.train_indices, config.batch, config.segment,
                                           config.seed, self.frontend, wave, workers, rank=rank, world=world)
        else:
            self.sampler = SegmentSampler(self.store, self.train_indices, config.batch, config.segment, config.seed,
                                          rank=rank, world=world)
        self.augment_generator = torch.Generator(device=self.device).manual_seed(rank_seed(config.seed, rank) + 2)
        self.step = 0
        self.best_val_acc: float | None = None
        self.best_step = 0
        self.best_missing = False  # resumed in a folder without best.pt
        self.elapsed_before = 0.0
        self.bad_in_row = 0
        self.bad_gradients_in_row = 0  # of those, steps whose loss was finite but its gradient norm was not
        self.skipped_steps = 0
        self.forward_model: nn.Module = self.model  # its DDP wrapper during fit
        # the dropout stream a new run starts from: fit restores it, so that random draws made between construction
        # and fit (another Trainer built, any torch.rand) do not change this run's weights
        self.start_rng = rng_state()

    def _open_store(self, source: DatasetSource, cache_dir: str | Path | None, workers: int | None,
                    strict: bool) -> tuple[PackedStore, list[dict]]:
        """The packed store and the files skipped; ranks other than 0 open what rank 0 built and
        stay quiet about skipped files (rank 0 has said it)."""
        return open_dataset_store(source, cache_dir, self.progress and self.dist.is_main, workers, strict,
                                  warn=self.dist.is_main)

    def _warn_of_unvalidated_speakers(self) -> None:
        """Rank 0 says which speakers the validation split left without an utterance, which --val-fraction alone
        does not show (with --val-fraction 0 none is asked for)."""
        if self.config.val_fraction == 0 or not self.dist.is_main:
            return
        unvalidated = speakers_without_validation(self.store.labels, self.val_indices)
        if unvalidated:
            names = [self.speakers[label] for label in unvalidated]
            print_warning(unvalidated_speakers_warning(names, len(set(self.store.labels.tolist()))))

    # ---- state -------------------------------------------------------------------------------
    def rank_state(self) -> dict:
        """What differs between ranks: the sampler's share and position, augmentation and RNG streams."""
        return {"sampler": self.sampler.state_dict(), "augment_generator": self.augment_generator.get_state(),
                "rng": rng_state()}

    def state(self, include_optimizer: bool = True, ranks: list | None = None) -> dict:
        """The checkpoint; ``ranks`` (every rank's :meth:`rank_state`, gathered) is stored under DDP."""
        state = {
            "config": self.config.to_dict(),
            "frontend": self.frontend.to_dict(),
            "speakers": list(self.speakers),
            "class_speakers": class_speakers(self.config.model.num_classes, len(self.speakers)),
            "model": self.model.state_dict(),
            "step": self.step,
            "best_val_acc": self.best_val_acc,
            "best_step": self.best_step,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.started),
            "skipped_steps": self.skipped_steps,
            "bad_in_row": self.bad_in_row,  # a resume counts towards max_bad_steps as the uninterrupted run would
            "bad_gradients_in_row": self.bad_gradients_in_row,  # and names their cause as it would
            "data": str(self.data),
            "clips": self.clips,
            "split_clips": {part: torch.from_numpy(digests) for part, digests in self.split_clips.items()},
        }
        if include_optimizer:
            state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), **self.rank_state())
            if self.dist.active:
                state.update(world_size=self.dist.world_size, ranks=ranks)
        return state

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        if "optimizer" not in state:
            raise file_error(path, "holds no optimizer state (a copy of best.pt, which keeps only the model?), so the "
                                   "run cannot continue from it: put back the last.pt that training wrote, or start "
                                   "a new run with another --out")
        self._refuse_other_data(state, path)
        saved = TrainConfig.from_saved(state["config"])
        # a run made before folders were recorded absolute, as the CLI reads it; and the config given here (the Python
        # API, Trainer.config_from_run) may hold the same relative folder: both are read against the working directory
        given = copy.copy(self.config)
        given.augment = copy.deepcopy(self.config.augment)
        for config in (saved, given):
            absolute_folders(config.augment, Path.cwd())
        mismatched = [key.name for key in fields(TrainConfig) if key.name not in RESUMABLE_CHANGES
                      and getattr(saved, key.name) != getattr(given, key.name)]
        if "frontend" in state and FrontendConfig.from_dict(state["frontend"]) != self.frontend:
            mismatched.append("front end")  # the same clips would become other features
        if mismatched:
            raise file_error(path, f"cannot resume with a different {', '.join(mismatched)}; use the run's config.json")
        refuse_steps_below(path, int(state["step"]), self.config.steps)  # the step's type: _refuse_before_reading
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise file_error(path, f"was written by a run on {saved_world} process(es), this one has "
                                   f"{self.dist.world_size}; each rank's data share and random streams are saved "
                                   f"per rank, so resume with the same count ({train_command(saved_world)} ... --resume)")
        mismatch = weight_mismatch(self.model.state_dict(), state["model"])
        if mismatch:  # a damaged file: load_state_dict would fail with its own multi-line RuntimeError
            raise file_error(path, f"checkpoint weights do not match its own configuration ({mismatch})")
        self.model.load_state_dict(state["model"])
        with damaged_state(path, "training state"):
            self._restore_training_state(state)

    def _restore_training_state(self, state: dict) -> None:
        """Optimizer, scaler, sampler, random streams and progress from a checkpoint: this rank's share of them."""
        mine = state["ranks"][self.dist.rank] if self.dist.active and "ranks" in state else state  # world 1: same
        load_optimizer_state(self.optimizer, state["optimizer"])
        check_optimizer_state(self.optimizer)
        if state["scaler"] and self.scaler.is_enabled():  # empty when saved without AMP (on the CPU, or --no-amp)
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(mine["sampler"])
        self._restore_augment_generator(mine["augment_generator"], int(state["step"]))
        set_rng_state(mine["rng"])
        self.step = int(state["step"])
        self.best_missing = not (self.run_dir / "best.pt").is_file()  # a folder copied without it: written again
        if not self.best_missing:
            self.best_val_acc, self.best_step = state["best_val_acc"], int(state["best_step"])
        self.elapsed_before = float(state["elapsed_s"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.bad_in_row = int(state.get("bad_in_row", 0))  # absent from checkpoints before it was saved
        self.bad_gradients_in_row = int(state.get("bad_gradients_in_row", 0))

    def _refuse_other_data(self, state: dict, path: Path) -> None:
        """The split and the saved sampler order are by store position, so resuming on another clip list would
        leak validation clips into training or index past the store. A checkpoint from before ``clips`` can
        only be compared by its speakers."""
        if "clips" in state:
            saved, mine, noun = state["clips"], self.clips, "clips"
            before, now = saved.get("count") if isinstance(saved, dict) else "?", mine["count"]
        else:
            saved, mine, noun = list(state["speakers"]), list(self.speakers), "speakers"
            before, now = len(saved), len(mine)
        if saved == mine:
            return
        other = ", other ones or in another order" if before == now else ""
        raise file_error(path, f"the run was trained on other data: {before} {noun} from {state.get('data')}, "
                               f"{self.data} has {now}{other}; resume with the dataset it was trained on")

    def _restore_augment_generator(self, saved: torch.Tensor, step: int) -> None:
        """Continue the saved augmentation stream; a run saved on another kind of device (a CPU generator's
        state is not a CUDA one's) continues with a fresh stream seeded by the run's seed, rank and step."""
        if saved.numel() == self.augment_generator.get_state().numel():
            self.augment_generator.set_state(saved)
        else:
            self.augment_generator.manual_seed(rank_seed(self.config.seed, self.dist.rank) + 2 + step)

    # ---- one step ----------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float] | None:
        """One optimizer step; returns (loss, batch accuracy) or None when the loss or its gradients were not finite."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.config)
        if hasattr(self.model.head, "margin"):
            self.model.head.margin = margin_at(self.step, self.config)
        batch = self.sampler.next_batch().to(self.device)
        self._trace(batch.indices)
        augmented = self.pipeline(TrainBatch.from_labels(batch.features, batch.lengths, batch.labels), self.augment_generator)
        buffers = [buffer.clone() for buffer in self.model.buffers()]  # the forward updates BatchNorm's running statistics
        with autocast_for(self.device, self.config.amp):
            _, logits = self.forward_model(augmented.features, augmented.lengths)
            loss = total_loss(self.model, logits, augmented)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # a NaN/Inf loss's too: every rank takes part in DDP's all-reduce
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)  # before clipping
        loss_finite, norm_finite = torch.isfinite(torch.stack([loss.detach().float(), norm.float()])).tolist()  # 1 sync
        loss_unusable = not self.dist.all_true(loss_finite)  # every rank skips, or none
        if loss_unusable or (not norm_finite and self._gradient_unusable()):  # the norm is alike on every rank
            if self.scaler.is_enabled():
                self.scaler.update()  # ends this step's unscale_, which the next step's would otherwise refuse
            return self._skip_step(buffers, gradient=not loss_unusable)
        self.bad_in_row = self.bad_gradients_in_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        batch_acc = float((logits.argmax(dim=1) == augmented.dominant_labels()).float().mean())
        return float(loss.detach()), batch_acc

    def _gradient_unusable(self) -> bool:
        """For a NaN/Inf gradient norm: true unless the GradScaler skips the step itself, its gradients holding an
        Inf/NaN (float16 overflow, routine under AMP, so not counted). Finite gradients too large for a float32 norm
        (--scale 1e20) were otherwise all clipped to zero, and the run said done."""
        if not self.scaler.is_enabled():
            return True
        grads = [weight.grad for weight in self.model.parameters() if weight.grad is not None]
        return bool(torch.stack([torch.isfinite(grad).all() for grad in grads]).all())  # one sync, not one per tensor

    def _skip_step(self, buffers: list[torch.Tensor], gradient: bool) -> None:
        """Leave the model as it was before the step (the forward updated BatchNorm's running statistics) and count
        the step, its ``gradient`` norm or its loss NaN/Inf; ``max_bad_steps`` in a row stop the run."""
        with torch.no_grad():
            for buffer, before in zip(self.model.buffers(), buffers):
                buffer.copy_(before)
        self.bad_in_row += 1
        self.bad_gradients_in_row += int(gradient)
        self.skipped_steps += 1
        if self.bad_in_row >= self.config.max_bad_steps:
            raise VoxaugError(
                f"training stopped at step {self.step}: {self._bad_steps_cause()} for {self.bad_in_row} steps in a "
                f"row (lower --lr or --scale, check the data for extreme values; limit: "
                f"max_bad_steps={self.config.max_bad_steps})"
            )

    def _bad_steps_cause(self) -> str:
        """What made the last ``bad_in_row`` steps skip, as the errors that stop the run say it."""
        if not self.bad_gradients_in_row:
            return "the loss was NaN/Inf"
        if self.bad_gradients_in_row == self.bad_in_row:
            return "the gradient norm was NaN/Inf"
        return "the loss or its gradient norm was NaN/Inf"

    # ---- evaluation and saving -----------------------------------------------------------------
    def _trace(self, indices: torch.Tensor) -> None:
        """With ``VOXAUG_TRACE_BATCHES=N``, rank 0 appends the utterances every rank drew in each of
        the first N steps to ``RUN/batch_trace.jsonl`` (one line per rank and step): a check that
        ranks see different utterances."""
        if self.step >= self.trace_steps:
            return
        gathered = self.dist.gather_to_main([self.store.keys[i] for i in indices.tolist()])
        if self.dist.is_main:
            append_text(self.run_dir / TRACE_FILE, "".join(
                json.dumps({"step": self.step + 1, "rank": rank, "keys": keys}) + "\n" for rank, keys in enumerate(gathered)))

    def _accuracy(self, indices: np.ndarray) -> float | None:
        """Clean top-1 accuracy on ``indices``; under DDP each rank scores every world-th one and
        the counts are summed, so every rank gets the same number."""
        if not self.dist.active:
            return accuracy(self.model, self.store, indices, self.device, self.config.amp)
        if len(indices) == 0:
            return None
        share = np.asarray(indices)[self.dist.rank :: self.dist.world_size]
        correct = 0
        if len(share):
            _, logits = run_model(self.model, self.store, share, self.device, amp=self.config.amp)
            correct = int((logits.argmax(dim=1) == torch.as_tensor(self.store.labels[share])).sum())
        correct_all, count = self.dist.sums([correct, len(share)])
        return correct_all / count

    def evaluate(self, mean_loss: float | None) -> dict:
        """Clean accuracies, the loss averaged over ranks; rank 0 saves checkpoints, metrics and curves."""
        self.dist.sync_buffers(self.model)  # every rank scores with rank 0's batch-norm statistics
        train_acc = self._accuracy(self.train_eval_indices)
        val_acc = self._accuracy(self.val_indices)
        row = {
            "step": self.step,
            "loss": None if mean_loss is None else self.dist.mean(mean_loss),
            "train_acc": train_acc,
            "val_acc": val_acc,
            "lr": lr_at(max(0, self.step - 1), self.config),
            "elapsed_s": round(self.elapsed_before + time.perf_counter() - self.started, 3),
        }
        improved = val_acc is not None and (self.best_val_acc is None or val_acc > self.best_val_acc)
        # without a validation split, best.pt follows the latest model; never one whose weights a step left NaN/Inf
        save_best = (improved or val_acc is None) and self._weights_finite()
        if save_best:
            self.best_val_acc, self.best_step = val_acc, self.step
        ranks = self.dist.gather_to_main(self.rank_state()) if self.dist.active else None

        def save() -> None:
            if save_best:
                save_checkpoint(self.run_dir / "best.pt", self.state(include_optimizer=False))
            # before last.pt: a resume from an older last.pt drops the row and logs it again
            append_text(self.run_dir / "metrics.jsonl", json.dumps(row) + "\n")
            save_checkpoint(self.run_dir / "last.pt", self.state(ranks=ranks))
            plot_runs([self.run_dir], self.run_dir / "curves.png")

        main_only(self.dist, save)  # the other ranks wait for it: none runs ahead of what is saved
        return row

    def write_config(self) -> None:
        """The resolved config, plus (under ``run``) what this run derived from it."""
        run = {"data": str(self.data), "frontend": self.frontend.to_dict(), "augmentations": repr(self.pipeline),
               "device": str(self.device), "world_size": self.dist.world_size,
               "batch_per_step": self.config.batch * self.dist.world_size, "train_utterances": len(self.train_indices),
               "val_utterances": len(self.val_indices), "speakers": len(self.speakers),
               "skipped_files": len(self.skipped_files)}
        atomic_write_json(self.run_dir / "config.json", {**self.config.to_dict(), "run": run})

    @staticmethod
    def config_from_run(run_dir: Path, steps: int | None = None, device: str | None = None) -> TrainConfig:
        """The config a run was started with, for --resume: its config.json, or, when that was not copied with
        it, the one last.pt records. Only steps and device may change."""
        run_dir = Path(run_dir)
        source = run_dir / "config.json"
        if source.exists() or not (run_dir / "last.pt").exists():
            values = read_json(source, "run config")
            if not isinstance(values, dict):
                raise file_error(source, "expected a JSON object")
        else:
            source = run_dir / "last.pt"
            values = dict(load_checkpoint(source)["config"])
        values.pop("run", None)
        try:  # the run's own settings: what is wrong with them is the file's, not an option the user gave
            config = TrainConfig.from_saved(values)
            if config.preset not in PRESETS:
                raise VoxaugError(f"preset {abridged(config.preset)} is not known; accepted: {', '.join(PRESETS)}")
            check_values(config)  # the augmentations' strengths too, else checked only once the pipeline is built
        except VoxaugError as exc:
            raise file_error(source, str(exc)) from None
        config.steps = steps or config.steps
        config.device = device or config.device
        return config

    def _truncate_metrics(self) -> None:
        """After a resume, drop log lines written after the checkpoint (a crash between the two).

        A last line that is not a JSON row is dropped too rather than refused: rows are appended, so a crash
        while writing one leaves exactly that, and the resume should go on. A bad line before it is refused."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        lines = [(number, line) for number, line in enumerate(read_log_text(path).splitlines(), 1)
                 if line.strip()]
        rows = []
        for number, line in lines:
            step = _metrics_step(line)
            if step is None and number != lines[-1][0]:
                raise file_error(path, f"line {number}: not a metrics row (a JSON object with a step)")
            if step is not None and step <= self.step:
                rows.append(line)
        atomic_write_json_lines(path, rows)

    # ---- the loop ----------------------------------------------------------------------------
    def _refuse_before_reading(self, n_mels: int, resume: bool | None) -> None:
        """What can be refused from the options, the run folder and the dataset's layout, before minutes of
        featurising: the run folder (when ``resume`` is known), noise of other bands, front-end settings on features."""
        if resume is not None:
            check_run_folder(self.run_dir, resume)
        if resume:
            last = self.run_dir / "last.pt"
            with damaged_state(last, "step count"):
                refuse_steps_below(last, int(load_checkpoint(last)["step"]), self.config.steps)
        self.pipeline.check_bands(n_mels)
        if resume is False:
            self._refuse_audio_settings_on_features()

    def _refuse_audio_settings_on_features(self) -> None:
        """Front-end settings on a dataset of features change nothing in training, yet would be recorded as the
        model's (a resumed run may have recorded them before they were refused: it goes on)."""
        if self.audio_settings_on_features:
            raise file_error(self.data, f"holds log-mel features, which front-end settings "
                                        f"({', '.join(self.audio_settings_on_features)}) do not change; they are for "
                                        "datasets of audio")

    def _open_run(self, resume: bool, held: contextlib.ExitStack) -> None:
        """Check the run folder again (it may have changed while the data was read); rank 0 creates it and holds
        its lock in ``held`` until training ends, so that a second training cannot write the same folder. For
        ``resume``, load last.pt."""
        if not resume:
            self._refuse_audio_settings_on_features()
        check_run_folder(self.run_dir, resume)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            busy = f"another training is writing this run folder (lock file {RUN_LOCK}); wait for it or choose another --out"
            held.enter_context(exclusive_lock(self.run_dir / RUN_LOCK, 0.0, lambda: file_error(self.run_dir, busy)))
            check_run_folder(self.run_dir, resume)  # a training that held the lock until now may have written last.pt
        if resume:
            self.resume(self.run_dir / "last.pt")

    def _start_log(self, resume: bool) -> None:
        if resume:
            self._truncate_metrics()
        else:  # rows of a start that crashed before its first last.pt, which this run would append to
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        self.write_config()

    @keeps_callers_rng
    def fit(self, resume: bool | None = None) -> TrainSummary:
        """Train to ``config.steps``; ``resume`` (default: as given to the constructor) continues from last.pt.
        Under torchrun the model is wrapped in DDP for this call only, failed or not: the wrapper must go before
        the process group does (see ``voxaug.distributed.shutdown``), and a traceback would keep it alive. Gradients
        are on for the call whatever the caller's ``torch.set_grad_enabled`` (a notebook that ran inference before)."""
        if self.dist.active:
            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        try:
            with contextlib.ExitStack() as held, torch.enable_grad():  # held: the run folder's lock, opened to the end
                return self._train(bool(self.resuming) if resume is None else resume, held)
        finally:
            self.forward_model = self.model

    def _train(self, resume: bool, held: contextlib.ExitStack) -> TrainSummary:
        self.started = time.perf_counter()
        main_first(self.dist, lambda: self._open_run(resume, held))  # every rank loads the same last.pt
        if not resume:
            set_rng_state(self.start_rng)
        main_only(self.dist, lambda: self._start_log(resume))
        losses: list[float] = []
        row: dict = {}
        bar = progress_bar(enabled=self.progress, total=self.config.steps, initial=self.step, desc="train", unit="step")
        with bar, self._data_workers_stopped():  # bar closed on an error too, so the error's line does not share it
            while self.step < self.config.steps:
                stop_if_terminated()
                result = self.train_step()
                self.step += 1
                bar.update(1)
                if result is not None:
                    losses.append(result[0])
                    bar.set_postfix(loss=f"{result[0]:.3f}", batch_acc=f"{result[1]:.2f}", refresh=False)
                if self.step % self.config.eval_every == 0 or self.step == self.config.steps:
                    row = self.evaluate(float(np.mean(losses)) if losses else None)
                    losses = []
                    bar.set_postfix(train_acc=f"{row['train_acc']:.3f}", val_acc=_fmt(row["val_acc"]), refresh=False)
        self._refuse_untrained_end()
        if not row:
            row = self._evaluation_at_the_end()
        return TrainSummary(
            run_dir=self.run_dir, steps=self.step, best_val_acc=self.best_val_acc, best_step=self.best_step,
            train_acc=row["train_acc"], val_acc=row["val_acc"], skipped_steps=self.skipped_steps,
            elapsed_s=self.elapsed_before + time.perf_counter() - self.started,
        )

    def _evaluation_at_the_end(self) -> dict:
        """For a resume with no step left: the last evaluation logged, else (last.pt alone was copied) one now. A folder
        copied without best.pt gets it from this model, which that row scored, as the next evaluation would write it:
        the summary names best.pt for predict."""
        logged = read_metrics(self.run_dir) if (self.run_dir / "metrics.jsonl").is_file() else []
        if not logged:
            return self.evaluate(None)
        row = logged[-1]
        if self.best_missing:
            self.best_val_acc, self.best_step = row["val_acc"], self.step
            main_only(self.dist, lambda: save_checkpoint(self.run_dir / "best.pt", self.state(include_optimizer=False)))
        return row

    @contextlib.contextmanager
    def _data_workers_stopped(self) -> Iterator[None]:
        """Stop the data workers (audio with `wave`) when the training loop ends, failed or interrupted too: a
        trainer kept after a failed :meth:`fit` (a notebook, a service) would otherwise keep its worker processes."""
        try:
            yield
        finally:
            if hasattr(self.sampler, "close"):
                self.sampler.close()

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(weight).all()) for weight in self.model.parameters())

    def _refuse_untrained_end(self) -> None:
        """A run too short to reach ``max_bad_steps`` in a row can end with most of its steps skipped (--scale 1e308
        makes every loss Inf; a first step can leave weights too large for any later one): the model is not trained,
        so the run fails rather than says done. So do weights left NaN/Inf, by a step before a skipped one or by the
        last step (its loss was finite): best.pt never takes them, so "done" would name an older best.pt, or none."""
        which = f"all {self.step}" if self.bad_in_row >= self.step else f"the last {self.bad_in_row} of its {self.step}"
        skipped = f"{self._bad_steps_cause()} at {which} steps, each skipped"
        if 2 * self.bad_in_row > self.step:
            raise VoxaugError(f"training failed: {skipped}, so the model is not trained (lower --lr, --scale or "
                              "--weight-decay; check the data for extreme values)")
        if not self._weights_finite():
            cause = skipped if self.bad_in_row else "after its last step"
            raise VoxaugError(f"training failed: the model's weights are NaN/Inf ({cause}; lower --lr, --weight-decay "
                              "or --scale)")


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """A new run needs a folder without last.pt; a resumed one needs its last.pt (nothing is created here)."""
    last = run_dir / "last.pt"
    if resume and not last.exists():
        raise file_error(last, "nothing to resume: no last.pt in the run folder")
    if not resume and last.exists():
        raise file_error(run_dir, "already holds a run (last.pt); pass --resume to continue it or choose another --out")


def refuse_steps_below(path: Path, step: int, steps: int) -> None:
    """A resume trains up to ``steps``: refused when the run's checkpoint ``path`` is already at a later ``step``."""
    if steps < step:
        raise file_error(path, f"is at step {step}, past --steps {steps}; pass --steps above {step} to train further")


def train_command(world_size: int) -> str:
    """How a training on ``world_size`` processes is launched, for messages that say how to resume it."""
    return f"torchrun --nproc_per_node={world_size} -m voxaug train" if world_size > 1 else "voxaug train"


def audio_settings(frontend: FrontendConfig, n_mels: int) -> list[str]:
    """Front-end settings other than n_mels that differ from the defaults, and n_mels where it is not the features'
    own ``n_mels``: they shape audio into features, so on a set of features they would change nothing in training
    and still be recorded as the model's."""
    return sorted(frontend.audio_settings() + (["n_mels"] if frontend.n_mels != n_mels else []))


def _trace_steps() -> int:
    """``VOXAUG_TRACE_BATCHES``: how many first steps to trace (0 when unset)."""
    value = os.environ.get(TRACE_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise VoxaugError(f"{TRACE_ENV}={value!r}: expected a number of steps")
    return int(value)


def _metrics_step(line: str) -> int | None:
    """The step of one metrics.jsonl row, or None when the line is not a row."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # not JSON; a number of over 4300 digits; arrays nested thousands deep
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def atomic_write_json_lines(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
