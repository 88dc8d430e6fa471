"""Atomic file writes and safetensors weights: a crash never leaves a torn checkpoint or JSON file."""

from __future__ import annotations

import hashlib
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


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in blocks so a large checkpoint is never held whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, recorded: str | None) -> None:
    """Refuse a file whose bytes are not those recorded when it was written (``recorded`` None: a file written
    before g2d recorded hashes, accepted unchecked). A flipped byte inside a weights file can leave its
    header readable and load silently as NaN or wrong weights, so the hash is checked, not the header."""
    if recorded is None:
        return
    found = file_sha256(path)
    if found != recorded:
        raise G2DError(f"{path}: its sha256 {found[:16]}... is not the {recorded[:16]}... recorded when it was "
                       "written; the file changed since (a copy or disk error, or an edit): restore it, or delete "
                       "the folder to train it anew")


def load_weights(path: Path, model: nn.Module, sha256: str | None = None) -> None:
    """Load a safetensors state dict; a missing file, bytes that differ from their recorded ``sha256`` or
    mismatched keys name the file."""
    if not path.is_file():
        raise G2DError(f"weights file not found: {path}")
    check_sha256(path, sha256)
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
