"""A run's checkpoint, committed as one unit: a crash at any instant leaves the old one or the new one.

Each epoch's checkpoint is a folder ``<run>/.checkpoints/epoch-NNNNNN/`` holding
``last.safetensors`` (weights), ``best.safetensors`` (the best validation epoch's weights,
a hard link to the previous checkpoint's when the best did not change), ``last_state.pt``
(loop state, optimizer, scheduler, method state, RNG states, config) and ``sha256.json`` (the
sha256 of each of those three, checked by ``verify`` before a resume reads them). Every file is fsynced,
then the commit is a single atomic ``rename`` of a fresh symlink over ``<run>/checkpoints``.
Readers only follow that link, so a folder that was being written when a crash hit is never
read; the next save (or the next claim of the run folder) deletes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from g2d import faults
from g2d.config import ExperimentConfig, check_new_keys, flatten, role_of, same_folder, to_dict
from g2d.errors import G2DError
from g2d.io import check_sha256, file_sha256

STORE = ".checkpoints"
LINK = "checkpoints"
STATE = "last_state.pt"
LEGACY = "legacy"
HASHES = "sha256.json"


def committed(run_dir: Path) -> Path | None:
    """The folder of the run's committed checkpoint, or None when it has none.

    ``checkpoints`` is normally a symlink; a real folder there (a run copied without its links,
    or written before checkpoints were committed as one unit) is read as it is.
    """
    for folder in (run_dir / LINK, run_dir / STORE / LEGACY):
        if (folder / STATE).is_file():
            return folder
    return None


def identity(run_dir: Path) -> dict | None:
    """Which committed checkpoint a reader of ``run_dir`` gets: its folder name, the epochs it trained and
    the sha256 of its best weights (what ``g2d analyze`` reads), or None when the run has none."""
    saved = committed(run_dir)
    if saved is None:
        return None
    digest = hashlib.sha256()
    with open(saved / "best.safetensors", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"name": saved.resolve().name, "epochs": read_state(saved)["state"]["epoch"],
            "best_sha256": digest.hexdigest()}


def fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save(run_dir: Path, epoch: int, weights: dict[str, torch.Tensor], best_changed: bool, payload: dict) -> Path:
    """Write and commit the checkpoint after ``epoch`` epochs; returns its folder.

    ``weights`` is the model's state on the CPU; it becomes ``best.safetensors`` too when
    ``best_changed``, else the previous checkpoint's best weights are linked in.
    """
    store = run_dir / STORE
    link = run_dir / LINK
    store.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():  # adopt a real folder as the committed one
        os.replace(link, store / LEGACY)
        fsync_dir(run_dir)
    previous = committed(run_dir)
    target = store / f"epoch-{epoch:06d}"
    if target.exists():  # written by a process that died before committing it
        shutil.rmtree(target)
    target.mkdir()
    faults.point("checkpoint.begin")
    try:
        save_file(weights, str(target / "last.safetensors"))
        faults.point("checkpoint.after_weights", target / "last.safetensors")
        fsync_file(target / "last.safetensors")
        if best_changed:
            link_or_copy(target / "last.safetensors", target / "best.safetensors")
        elif previous is not None and (previous / "best.safetensors").is_file():
            link_or_copy(previous / "best.safetensors", target / "best.safetensors")
        faults.point("checkpoint.after_best")
        torch.save(payload, target / STATE)
        faults.point("checkpoint.after_state", target / STATE)
        fsync_file(target / STATE)
        write_hashes(target, previous if not best_changed else None)
        fsync_dir(target)
        fsync_dir(store)
        pointer = run_dir / (LINK + ".new")
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        os.symlink(f"{STORE}/{target.name}", pointer)
        faults.point("checkpoint.before_commit")
        os.replace(pointer, link)
        fsync_dir(run_dir)
    except BaseException:
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            shutil.rmtree(target, ignore_errors=True)
        raise
    faults.point("checkpoint.after_commit")
    clean(run_dir)
    return target


def write_hashes(folder: Path, best_from: Path | None) -> None:
    """``sha256.json``: the sha256 of each file of the checkpoint ``folder``. Best weights linked from the
    previous checkpoint ``best_from`` keep the hash recorded there (they are the same bytes), so an epoch
    hashes only what it wrote."""
    hashes = {name: file_sha256(folder / name) for name in ("last.safetensors", STATE)}
    if (folder / "best.safetensors").is_file():
        previous = recorded_hashes(best_from).get("best.safetensors") if best_from is not None else None
        hashes["best.safetensors"] = previous or file_sha256(folder / "best.safetensors")
    (folder / HASHES).write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    fsync_file(folder / HASHES)


def recorded_hashes(folder: Path) -> dict[str, str]:
    """The hashes a checkpoint folder recorded; empty for one written before they were (checked by nothing)."""
    try:
        return json.loads((folder / HASHES).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise G2DError(f"{folder / HASHES}: not valid JSON ({exc})") from exc


def verify(folder: Path) -> None:
    """Refuse a checkpoint whose files are not the bytes it recorded, naming the file (``g2d.io.check_sha256``)."""
    recorded = recorded_hashes(folder)
    for name in sorted(recorded, key=lambda name: (name != "last.safetensors", name)):  # the resumed weights first
        check_sha256(folder / name, recorded[name])


def link_or_copy(source: Path, destination: Path) -> None:
    """A hard link (no second write of the same weights), or a copy where links are not allowed."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
        fsync_file(destination)


def clean(run_dir: Path) -> None:
    """Delete checkpoint folders and pointers that are not the committed checkpoint."""
    store = run_dir / STORE
    keep = (run_dir / LINK).resolve() if (run_dir / LINK).exists() else None
    pointer = run_dir / (LINK + ".new")
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    if not store.is_dir():
        return
    for entry in store.iterdir():
        if entry.resolve() != keep and not (keep is None and entry.name == LEGACY):
            shutil.rmtree(entry, ignore_errors=True)


def rng_states(device: torch.device) -> dict[str, Any]:
    """Every random generator the loop may draw from: torch (CPU and, when used, CUDA), Python, numpy."""
    _, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: Any) -> None:
    """Undo ``rng_states``; a checkpoint from before they were all saved holds the torch state alone."""
    if isinstance(states, torch.Tensor):
        torch.set_rng_state(states)
        return
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def read_state(folder: Path) -> dict:
    """The loop state file of a checkpoint folder (a torch file read with ``weights_only``)."""
    path = folder / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise G2DError(f"{path}: not a readable g2d checkpoint ({str(exc).splitlines()[0]})") from exc


def check_resume(saved: dict, config: ExperimentConfig, path: Path) -> None:
    """A resumed run continues the same experiment: keys whose role (``g2d.config.Role``) changes results must
    match, except that an ``extends`` key (``trainer.epochs``) may grow and a ``folder`` key (``dataset.root``)
    may be spelt otherwise; keys newer than the run are at their defaults (``check_new_keys``)."""
    old_values, new_values = flatten(saved), flatten(to_dict(config))
    new_keys = check_new_keys(old_values, new_values, f"the run in {path.parent.parent}",
                              lambda key: not role_of(key).result)
    for key in sorted(set(old_values) | set(new_values)):
        old, new, role = old_values.get(key), new_values.get(key), role_of(key)
        if not role.result or old == new or key in new_keys:
            continue
        if role.extends and isinstance(old, int) and isinstance(new, int):
            if new > old:
                continue
            raise G2DError(f"config key {key}: {new} is fewer than the {old} the run in {path.parent.parent} "
                           "was started with; resuming can only extend a run")
        if role.folder and same_folder(old, new):
            continue
        raise G2DError(
            f"config key {key}: {new!r} differs from the interrupted run's {old!r} in {path}; "
            "use a new out= folder or the same config (only a larger trainer.epochs may change)"
        )
