"""Atomic file writes and safetensors weights: a crash never leaves a torn checkpoint or JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save_file
from torch import nn

from g2d import faults
from g2d.errors import G2DError


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so a crash never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        faults.point("atomic_write", tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an error leaves no half-written file behind
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def save_weights(path: Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a safetensors state dict; a missing file or mismatched keys name the file."""
    if not path.is_file():
        raise G2DError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
        model.load_state_dict(state)
    except Exception as exc:
        raise G2DError(f"{path}: cannot load weights into this model ({str(exc).splitlines()[0]})") from exc


def read_metrics(run_dir: Path) -> dict:
    """A run folder's metrics.json; a missing or unreadable file names it."""
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise G2DError(f"metrics file not found: {path}") from exc
    except ValueError as exc:
        raise G2DError(f"{path}: not valid JSON ({exc})") from exc
