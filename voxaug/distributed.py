"""torchrun integration: read the launcher's environment, start the process group (gloo on CPU,
NCCL on CUDA), and the few collectives the trainer and exporter need. Under torchrun the group is
used at every world size, one process included, so a one-GPU machine runs the NCCL path too; a
plain process gets a context without a group and every call is a no-op."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from voxaug.device import resolve_device
from voxaug.errors import VoxaugError

T = TypeVar("T")
RANK_SEED_STRIDE = 1_000_003  # rank r's generators start at seed + r * stride: apart from the run's seed + 1, + 2
MAIN_ONLY_TIMEOUT = timedelta(days=7)
"""How long the other ranks wait for rank 0's work alone (:func:`main_only`): packing a large corpus takes hours, past
the default group's timeout (30 min with gloo, 10 with NCCL), which is for collectives every rank reaches together.
A rank 0 that dies closes its connections, so the others stop at once all the same."""


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random streams (augmentation, dropout); rank 0 keeps ``seed``."""
    return seed + rank * RANK_SEED_STRIDE


class RankFailed(VoxaugError):
    """Raised on the other ranks when rank 0 failed (and already said why)."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank, world size, its device; world size 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    local_world_size: int = 1
    active: bool = False
    """True under torchrun (any world size): the process group, DDP and collectives are used."""
    main_only_group: Any = None
    """A gloo group of every rank with :data:`MAIN_ONLY_TIMEOUT`, on which the others wait for rank 0 alone."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return dist.get_backend() if self.active else "none"

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on every rank: a decision all ranks then take together."""
        if not self.active:
            return flag
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def sums(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (e.g. correct answers and counts of a sharded evaluation)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def mean(self, value: float) -> float:
        """Average a number over ranks."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def gather_to_main(self, value: object) -> list[object] | None:
        """Every rank's ``value`` in rank order on rank 0 (None elsewhere): results only rank 0 writes."""
        if not self.active:
            return [value]
        gathered: list[object] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank: DDP only does so
        at the start of a forward, so after the last step each rank's statistics differ slightly."""
        if self.active:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    def broadcast_object(self, value: object, group: Any = None) -> object:
        """Rank 0's ``value`` on every rank (over ``group``, the default group if None)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=group)
        return box[0]

    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets TORCHELASTIC_RUN_ID besides RANK and WORLD_SIZE."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


LAUNCH_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")
"""What a process of a group needs besides WORLD_SIZE: torchrun sets them, a launcher of one's own must too."""


def refuse_incomplete_launch(world_size: int) -> None:
    """Refuse WORLD_SIZE without the rest of a launch (a variable left exported in the shell, a hand-made launcher):
    the group then failed as an unexpected KeyError or ValueError deep inside torch."""
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise VoxaugError(f"WORLD_SIZE={world_size} is set, but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not: start the processes with torchrun "
                          f"(torchrun --standalone --nproc_per_node={world_size} -m voxaug ...), or unset WORLD_SIZE")


def init_distributed(device_name: str = "auto") -> DistContext:
    """A context from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK), or a single-process one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1 and not launched_by_torchrun():
        return DistContext(device=device)
    refuse_incomplete_launch(world_size)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise VoxaugError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # DDP imports torch._dynamo; imported after the group starts, it keeps references to the group for the life
        # of the process, and destroy_process_group cannot free it (see shutdown)
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                       local_world_size=local_world_size, active=True,
                       main_only_group=dist.new_group(backend="gloo", timeout=MAIN_ONLY_TIMEOUT))


def main_only(context: DistContext, action: Callable[[], T]) -> T | None:
    """Run ``action`` (writing outputs) on rank 0 only; the other ranks wait until it is done and
    stop with :class:`RankFailed` if it failed, so none is left waiting in a later collective."""
    if not context.active:
        return action()
    if context.is_main:
        try:
            result = action()
        except BaseException as exc:
            context.broadcast_object(str(exc) or type(exc).__name__, context.main_only_group)
            raise
        context.broadcast_object(None, context.main_only_group)
        return result
    failure = context.broadcast_object(None, context.main_only_group)
    if failure is not None:
        raise RankFailed(f"rank {context.rank}: stopping because rank 0 failed: {failure}")
    return None


def main_first(context: DistContext, action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0, then on the other ranks, e.g. rank 0 builds the packed store that
    the others then find in the cache. A failure on rank 0 stops every rank (see :func:`main_only`)."""
    result = main_only(context, action)
    return result if context.is_main else action()


def shutdown(context: DistContext, clean: bool = True) -> None:
    """Leave the process group; after a clean run wait for every rank first (rank 0 may still be
    writing), after an error leave at once (the other ranks may be stuck in a collective).

    Drop DDP wrappers first, also after an error (a traceback's frames may hold them), so that the group is
    freed here. A gloo group left to interpreter exit can abort the finished process ('terminate called without an
    active exception', pytorch issue 190489), and torchrun then reports the whole run as failed. A group freed
    later by DDP's reducer is freed holding Python's lock, and a gloo thread that still has to release a
    finished collective's tensors waits for that lock: the process hangs."""
    if context.active and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
