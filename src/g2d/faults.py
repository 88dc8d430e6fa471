"""Test-only fault injection: named points where a process kills itself or fails as a full disk would.

The crash harness (tests/test_reliability.py, benchmarks/crash_trials.py) sets, in a child
process's environment, ``G2D_TEST_KILL_AT=<point>:<n>`` (SIGKILL on the n-th time the point is
reached) or ``G2D_TEST_FAIL_AT=<point>:<n>`` (an ENOSPC ``OSError`` there). Unset, a point costs
one environment lookup; points are reached a few times per epoch, never per step.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

_hits: dict[str, int] = {}


def _armed(variable: str, point: str) -> bool:
    spec = os.environ.get(variable)
    if not spec:
        return False
    name, _, count = spec.partition(":")
    if name != point:
        return False
    _hits[variable] = _hits.get(variable, 0) + 1
    return _hits[variable] == int(count or 1)


def point(name: str, path: Path | None = None) -> None:
    """Reach the fault point ``name``; ``path`` is the file a simulated disk-full error names."""
    if _armed("G2D_TEST_KILL_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _armed("G2D_TEST_FAIL_AT", name):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)


def run_outcome(folder: Path) -> dict:
    """What a finished run produced, without its wall-clock times: weights (bytes), metrics and history.
    Two runs with equal outcomes trained bit for bit alike; the crash harness compares a killed and
    resumed run with an uninterrupted one this way."""
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("wall_seconds")
    history = json.loads((folder / "history.json").read_text())
    for record in history:
        record.pop("seconds")
    weights = {n: (folder / "checkpoints" / n).read_bytes() for n in ("last.safetensors", "best.safetensors")}
    return {"metrics": metrics, "history": history, "weights": weights}
