"""How many CPU threads a run computes with (``trainer.threads``), within its process's budget.

``auto`` takes the budget: the cores this process may run on, or its share when a sweep runs
several workers (``set_budget``, called in each worker); on the CPU, a model whose training step
is small (its forward pass under ``SMALL_STEP_FLOPS`` for one batch) gets one thread instead, since
waking a second thread for such a step costs more than the work it takes over (docs/performance.md).
Both depend only on the config and the model, never on the machine's load:
the thread count changes conv results in their last bits (oneDNN splits the reductions by
thread), so a choice that followed the load would make a rerun or a resume depend on it. What
keeps a run from collapsing beside other processes is OpenMP's passive waiting, which ``g2d``
asks for before torch loads (``OMP_WAIT_POLICY``, see ``g2d/__init__.py`` and docs/performance.md).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch import nn

from g2d.data.base import Batches, MultimodalData, to_device
from g2d.errors import G2DError

# Forward FLOPs of one training batch below which ``auto`` takes one thread on the CPU. Measured on a
# 2-vCPU VM (docs/performance.md): the demo's MLP (about 1e6 per batch) and ResNet-18 at widths 4, 8 and 16
# on AV-MNIST shapes, batch 16 (8e7 to 1.1e9) ran 2-3x faster on one thread, width 32 (4e9) about as fast,
# width 64 (1.6e10) 1.4x faster on two. Set below that even point, leaving room for machines with more
# real cores, whose threads pay earlier (not measured).
SMALL_STEP_FLOPS = 2e9

_budget: int | None = None


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def set_budget(threads: int) -> None:
    """This process's share of the cores (a sweep worker's), the most ``auto`` takes."""
    global _budget
    _budget = max(1, threads)


def is_auto(setting: object) -> bool:
    """Whether ``trainer.threads`` leaves the count to g2d (``auto``, in any case and spacing)."""
    return str(setting).strip().lower() == "auto"


def choose_threads(setting: object) -> int:
    """The thread count for ``trainer.threads``: ``auto`` (the budget) or a positive integer."""
    if is_auto(setting):
        return budget()
    text = str(setting).strip()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise G2DError(f"config key trainer.threads: expected auto or a positive integer, got {setting!r}")


def use_threads(setting: object) -> int:
    """Set torch's intra-op thread count for this run; returns it (recorded in metrics.json)."""
    threads = choose_threads(setting)
    torch.set_num_threads(threads)
    return threads


def budget() -> int:
    """The most threads ``auto`` may take in this process: a sweep worker's share, else its cores."""
    return _budget if _budget is not None else available_cores()


# Layers whose FLOPs a forward hook counts exactly as torch's FlopCounterMode does (2 per multiply-add, bias
# not counted), and parameter-holding layers that cost next to nothing; a model with any other parameterized
# layer (attention, embeddings, a custom matmul) is counted by FlopCounterMode, whose first use takes ~1.3 s.
HOOKED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NEGLIGIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def forward_flops(model: nn.Module, data: MultimodalData, rows: int) -> int:
    """FLOPs of ``model``'s forward pass on ``rows`` training rows, counted (not timed) on one row, which leaves
    the model's mode, its weights, its gradients and every random generator as they were."""
    sample = to_device(next(iter(Batches(dict(data.splits["train"]), 1, shuffle=False))), data, torch.device("cpu"))
    holders = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    hooked = all(isinstance(m, HOOKED + NEGLIGIBLE) for m in holders)
    counted = [0]

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        per_output = module.in_features if isinstance(module, nn.Linear) else \
            module.in_channels // module.groups * math.prod(module.kernel_size)
        counted[0] += 2 * per_output * output.numel()

    if hooked:
        handles, counter = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, HOOKED)], None
    else:  # imported here: most runs never need it, and every command imports this module
        from torch.utils.flop_counter import FlopCounterMode

        handles, counter = [], FlopCounterMode(display=False)
    training = model.training
    try:
        # With gradients on, as in training: under no_grad, eval-mode attention takes a fused kernel that
        # FlopCounterMode does not count (a transformer would look free). The graph is one row's, then dropped.
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), \
                counter if counter is not None else contextlib.nullcontext():
            model.eval()
            model(sample)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return (counted[0] if counter is None else counter.get_total_flops()) * rows


def fit_threads_to_model(setting: object, model: nn.Module, data: MultimodalData, batch_size: int) -> int:
    """Under ``auto``, one thread when one batch's forward pass is under ``SMALL_STEP_FLOPS`` (``run`` asks on
    the CPU only); otherwise the count ``use_threads`` set stays. Returns the count the run computes with."""
    if is_auto(setting) and forward_flops(model, data, batch_size) < SMALL_STEP_FLOPS:
        torch.set_num_threads(1)
    return torch.get_num_threads()
