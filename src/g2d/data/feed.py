"""Batch feeds for the fast training path: the same batches as ``Batches``, plus their row indices.

Every batch a feed yields carries ``"index"``, the rows of the training split it holds, so
per-row caches (``g2d.training.teacher_cache``) can answer for it. Two placements:

- ``DeviceFeed``: the whole split is copied to the GPU once; a batch is only its index
  tensor, and ``materialize`` gathers the rows on the device, inside the (captured) step.
- ``HostFeed``: the split stays in host memory (or in memory-mapped arrays wrapped as
  tensors); worker threads gather the next batches ahead of the step, into pinned memory
  when the target is a GPU, and the copy to the device is asynchronous.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import torch

from g2d.data.base import Batches

INDEX_KEY = "index"


def split_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes the split's arrays occupy."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


class DeviceFeed:
    """The training split resident on the device; batches are index tensors gathered in the step."""

    def __init__(self, batches: Batches, device: torch.device) -> None:
        self.batches = batches
        self.device = device
        self.tensors = {key: value.to(device) for key, value in batches.tensors.items()}

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        self.batches.set_epoch(epoch)
        order = self.batches.order().to(self.device)
        size = self.batches.batch_size
        for start in range(0, min(len(self.batches) * size, self.batches.size), size):
            yield {INDEX_KEY: order[start : start + size]}

    def materialize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's rows of every array, gathered on the device."""
        index = batch[INDEX_KEY]
        rows = {key: value.index_select(0, index) for key, value in self.tensors.items()}
        rows[INDEX_KEY] = index
        return rows


class HostFeed:
    """The training split in host memory; ``workers`` threads gather batches ahead of the step.

    With ``workers == 0`` batches are gathered in the calling thread. Indexing a tensor
    releases the GIL, so threads overlap gathering (and reading memory-mapped files) with
    the step.
    """

    def __init__(self, batches: Batches, device: torch.device, workers: int = 0, pin: bool = False) -> None:
        self.batches = batches
        self.device = device
        self.workers = max(0, int(workers))
        self.pin = pin

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's rows, gathered straight into pinned buffers when the target is a GPU."""
        rows = {}
        for key, value in self.batches.tensors.items():
            rows[key] = torch.empty((len(index), *value.shape[1:]), dtype=value.dtype, pin_memory=self.pin)
            torch.index_select(value, 0, index, out=rows[key])
        rows[INDEX_KEY] = index.pin_memory() if self.pin else index
        return rows

    def to_device(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device, non_blocking=True) for key, value in rows.items()}

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        self.batches.set_epoch(epoch)
        if self.workers == 0:
            for index in self.batches.indices():
                yield self.to_device(self.gather(index))
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="g2d-feed") as pool:
            pending: deque[Future] = deque()
            for index in self.batches.indices():
                pending.append(pool.submit(self.gather, index))
                if len(pending) > 2 * self.workers:
                    yield self.to_device(pending.popleft().result())
            while pending:
                yield self.to_device(pending.popleft().result())

    def materialize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch
