"""How many CPU threads a run computes with (``trainer.threads``), within its process's budget.

``auto`` takes the budget: the cores this process may run on, or its share when a sweep runs
several workers (``set_budget``, called in each worker). It does not follow the machine's load:
the thread count changes conv results in their last bits (oneDNN splits the reductions by
thread), so a choice that followed the load would make a rerun or a resume depend on it. What
keeps a run from collapsing beside other processes is OpenMP's passive waiting, which ``g2d``
asks for before torch loads (``OMP_WAIT_POLICY``, see ``g2d/__init__.py`` and docs/performance.md).
"""

from __future__ import annotations

import os

import torch

from g2d.errors import G2DError

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


def choose_threads(setting: object) -> int:
    """The thread count for ``trainer.threads``: ``auto`` (the budget) or a positive integer."""
    text = str(setting).strip().lower()
    if text == "auto":
        return _budget if _budget is not None else available_cores()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise G2DError(f"config key trainer.threads: expected auto or a positive integer, got {setting!r}")


def use_threads(setting: object) -> int:
    """Set torch's intra-op thread count for this run; returns it (recorded in metrics.json)."""
    threads = choose_threads(setting)
    torch.set_num_threads(threads)
    return threads
