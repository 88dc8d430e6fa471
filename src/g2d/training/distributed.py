"""Data-parallel training over processes: torch.distributed and DistributedDataParallel, nothing home-made.

A run started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) joins a process group (NCCL on CUDA, gloo on the CPU)
and trains one model replica per process:

- each process takes its shard of every global batch (``ShardedBatches``): N processes with
  batch B see, step for step, the rows one process with batch N*B would see;
- DDP averages gradients, so the update is the one of the global batch; anything a step
  decides from its batch (SMP's per-batch teacher confidence) is averaged first
  (``mean_across_ranks``), so every process suppresses the same modality in the same step;
- validation and test run on a shard of the split per process and are gathered, so metrics
  cover the whole split; rank 0 alone writes metrics, TensorBoard logs and checkpoints.

Outside ``torchrun`` every function here is a no-op, so the one-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from g2d.data.base import Batches
from g2d.errors import G2DError

log = logging.getLogger("g2d.distributed")

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Words in the RuntimeErrors gloo and NCCL raise when a peer process is gone or stuck.
COMMUNICATION_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything setting its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_processes() -> int:
    """The processes torchrun started (its ``WORLD_SIZE``), known before the process group is up; 1 otherwise."""
    try:
        return int(os.environ["WORLD_SIZE"]) if launched() else 1
    except ValueError:
        return 1


def active() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun``; returns the device this process trains on.

    On CUDA each process takes GPU ``LOCAL_RANK`` and NCCL; on the CPU gloo. Called again
    (a sweep or the demo runs several experiments in one process), it keeps the group.
    """
    if not launched() or active():
        return local_device(device)
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise G2DError(f"distributed launch: environment variable {missing[0]} is not set (start with torchrun)")
    device = local_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    log.info("distributed: rank %d of %d, %s on %s", rank(), world_size(), backend, device)
    if not is_main():  # the other ranks' information lines would repeat rank 0's; their warnings still show
        logging.getLogger("g2d").setLevel(logging.WARNING)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stopped_by_launcher)
    return device


# How long a rank other than 0 holds back its refusal line: the launcher, seeing rank 0 fail, stops it sooner.
REFUSAL_GRACE_SECONDS = 5.0


def defer_to_rank_zero(error: BaseException) -> None:
    """Under torchrun, leave a refusal every rank shares to rank 0's one line: another rank waits
    (SIGTERM now ends it quietly) so the launcher stops it first; if nobody does (a refusal of
    its own), it returns and prints its line. ``StoppedByLauncher`` is printed at once."""
    if not launched() or os.environ.get("RANK") == "0" or isinstance(error, StoppedByLauncher):
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(REFUSAL_GRACE_SECONDS)


class StoppedByLauncher(G2DError):
    """torchrun stopped this process (SIGTERM), because another one failed."""


def stopped_by_launcher(signum: int, frame: Any) -> None:
    """torchrun sends SIGTERM to the surviving processes when one fails: end with one readable line."""
    raise StoppedByLauncher(f"rank {rank()}: stopped by torchrun because another process failed (its summary follows)")


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a CUDA device becomes GPU ``LOCAL_RANK`` (which is made current)."""
    if device.type != "cuda" or not launched():
        return device
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise G2DError(f"distributed launch: LOCAL_RANK {index} but only {torch.cuda.device_count()} GPUs are visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def teardown() -> None:
    """Leave the process group (at the end of a command), once every process has got there: a
    process that closed its connections while a peer was still talking to it would abort that peer."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def lost_contact_reported(run_dir: Path) -> Iterator[None]:
    """Turn a collective that failed because another process died or hung into one readable error line.

    torchrun then stops every process; the checkpoint rank 0 wrote last is complete (written
    atomically), so the run resumes from it with ``trainer.resume=true``.
    """
    try:
        yield
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        communication = isinstance(exc, dist.DistError) or any(w in message.lower() for w in COMMUNICATION_WORDS)
        if not active() or world_size() == 1 or not communication:
            raise
        raise G2DError(
            f"rank {rank()}: lost contact with another process ({message[:200]}); the last checkpoint in "
            f"{run_dir / 'checkpoints'} is kept: resume with trainer.resume=true on {world_size()} processes"
        ) from exc
    except StoppedByLauncher as exc:
        raise G2DError(f"{exc}; the last checkpoint in {run_dir / 'checkpoints'} is kept: resume with "
                       f"trainer.resume=true on {world_size()} processes") from exc


def barrier() -> None:
    if active():
        dist.barrier()


def mean_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over every process (a new tensor); ``tensor`` itself when alone.

    SMP's batch confidence goes through this, so every rank ranks modalities on the global batch.
    """
    if not active() or world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every process (a decision such as "this file exists" that all must share)."""
    if not active() or world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` copied into ``tensor`` on every process, which is returned."""
    if active() and world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


@torch.no_grad()
def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's parameters (unless ``buffers_only``) and buffers (BatchNorm statistics) on every process."""
    if not active() or world_size() == 1:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


class ShardedBatches(Batches):
    """This rank's part of each global batch of ``world * batch_size`` rows, in the one-process order.

    Global batch g holds rows ``order[g*W*B : (g+1)*W*B]`` of the epoch's permutation (the
    permutation ``Batches`` draws from the seed and the epoch); rank r takes its r-th slice of
    B rows. Incomplete global batches are dropped, so every rank runs the same number of steps.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, shuffle: bool, seed: int,
                 shard: int, shards: int) -> None:
        super().__init__(tensors, batch_size, shuffle, seed=seed, drop_last=True)
        self.shard = shard
        self.shards = shards

    def __len__(self) -> int:
        return self.size // (self.batch_size * self.shards)

    def order(self) -> torch.Tensor:
        """The epoch's permutation cut into global batches, keeping this rank's slice of each."""
        steps, size = len(self), self.batch_size
        full = super().order()[: steps * self.shards * size]
        return full.view(steps, self.shards, size)[:, self.shard, :].reshape(-1)


def shard_batches(batches: Batches) -> Batches:
    """``batches`` split across the processes (``ShardedBatches``), or unchanged when alone."""
    if world_size() == 1:
        return batches
    return ShardedBatches(batches.tensors, batches.batch_size, batches.shuffle, batches.seed, rank(), world_size())


class DataParallelModel(DistributedDataParallel):
    """DDP that still answers the wrapped model's attributes (``modalities``, ``encoder_parameters``, ...).

    A method calls ``ctx.model(inputs)``, which runs through DDP, so its backward averages
    gradients over the processes; everything else it reads comes from the model itself.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DDP for the training step when a process group is up; ``model`` itself otherwise."""
    if not active():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DataParallelModel(model, device_ids=device_ids)


def check_method(method: Any) -> None:
    """Refuse, with one line saying why, a method whose step DDP cannot keep consistent across processes."""
    check_data_parallel(type(method), method.params)


def check_data_parallel(method_class: Any, params: Any) -> None:
    """Under torchrun, refuse a method whose record (``Method.data_parallel_refusal``) says it cannot train so."""
    processes = max(world_size(), launched_processes())  # torchrun says how many before the group is up
    if processes == 1:
        return
    reason = method_class.data_parallel_refusal(params)
    if reason:
        raise G2DError(f"config key method.name: {method_class.name!r} cannot train on {processes} processes: "
                       f"{reason}; run it on one process")


def adjust_plan(plan: Any) -> None:
    """Switch off what the fast path cannot do under DDP (CUDA-graph capture), with the reason noted."""
    if active() and plan.cuda_graph:
        plan.cuda_graph = False
        plan.notes.append(f"training on {world_size()} processes (DDP): gradient all-reduce is not captured in a "
                          "CUDA graph, so steps run eagerly")


def shard_bounds(rows: int) -> tuple[int, int, int]:
    """``(start, stop, most)``: this rank's contiguous rows of a split for evaluation, and the largest shard.

    With fewer rows than processes every process takes the whole split (nothing to gather).
    """
    world = world_size()
    if world == 1 or rows < world:
        return 0, rows, rows
    return rank() * rows // world, (rank() + 1) * rows // world, -(-rows // world)


def shard_rows(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's evaluation shard of a split's tensors (``shard_bounds``)."""
    rows = len(next(iter(tensors.values())))
    start, stop, _ = shard_bounds(rows)
    return {key: value[start:stop] for key, value in tensors.items()}


def gather_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Every rank's ``shard_rows`` outputs concatenated in rank order: the whole split's ``[rows, ...]``."""
    start, stop, most = shard_bounds(rows)
    if world_size() == 1 or (start, stop) == (0, rows):
        return tensor
    padded = tensor.new_zeros((most, *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    world = world_size()
    sizes = [(r + 1) * rows // world - r * rows // world for r in range(world)]
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])
