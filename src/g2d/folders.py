"""What a folder g2d writes holds, and replacing a command's output only once the new one is complete.

Every output folder carries ``.g2d.json`` (kind, command, g2d version), written first. Folders
written before the marker existed are recognised by their files (``KINDS``). ``check_target``
refuses, before anything is written, an output folder that holds another kind of output, lies
inside a training run's record, or holds files g2d did not write, ``--overwrite`` or not.
``building`` makes the new output in a hidden sibling and swaps it in when complete, so a
crash leaves either the old output or the new one, never a mix; what a killed command left
beside the folder is cleaned (or, for a previous output hidden mid-swap, put back) next time.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterator

from g2d import faults
from g2d.errors import G2DError

MARKER = ".g2d.json"
KINDS = {"run": "a training run", "sweep": "a sweep", "report": "a report", "analysis": "an analysis",
         "prepared": "a prepared dataset", "tune": "a tune", "demo": "a demo"}
# The files that tell a kind of folder written before the marker existed.
SIGNS = {"run": ("metrics.json", "config.yaml", "history.json", "checkpoints", ".checkpoints"),
         "sweep": ("sweep.json", "sweep.md"), "report": ("report.html", "report.md"), "analysis": ("analysis.json",),
         "prepared": ("prepare.json",), "demo": ("joint/config.yaml", "g2d/config.yaml")}
BUILDING, PREVIOUS = "tmp", "old"


def kind_of(folder: Path) -> str | None:
    """The kind of g2d output ``folder`` holds (its marker, else its files); None when it holds none."""
    try:
        kind = json.loads((folder / MARKER).read_text())["kind"]
        if kind in KINDS:
            return kind
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for kind, names in SIGNS.items():
        if any((folder / name).exists() or (folder / name).is_symlink() for name in names):
            return kind
    return None


def mark(folder: Path, kind: str) -> None:
    """Write ``folder``'s marker (atomically): its kind, the process's command line and g2d's version."""
    try:
        version = metadata.version("g2d")
    except metadata.PackageNotFoundError:
        version = "unknown"
    record = {"kind": kind, "command": " ".join(sys.argv), "version": version}
    tmp = folder / f"{MARKER}.{os.getpid()}.tmp"  # per process: two tunes joining one folder mark it at once
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / MARKER)


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a training run's record: its marker says so, or (written before the marker)
    it holds a run's config.yaml beside its metrics or checkpoints, not a lone file of that name."""
    marked = kind_of(folder)
    if (folder / MARKER).is_file() or marked != "run":
        return marked == "run"
    return (folder / "config.yaml").is_file() and any(
        (folder / name).exists() for name in ("metrics.json", "checkpoints", ".checkpoints"))


def enclosing_run(folder: Path) -> Path | None:
    """The training run folder that ``folder`` lies inside (itself excluded), if any."""
    for parent in Path(os.path.abspath(folder)).parents:
        if is_run(parent):
            return parent
    return None


def check_target(folder: Path, kind: str, flag: str, overwrite: bool, reuse: bool = False) -> None:
    """Refuse ``folder`` as the output of a ``kind`` command unless it is new, empty, or that command's own
    earlier output (replaced only with ``overwrite``; continued when ``reuse``). Writes nothing but a
    killed command's leftovers' clean-up (``recover``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise G2DError(f"{flag} {folder}: is a file, not a folder")
    run = enclosing_run(folder)
    if run is not None:
        raise G2DError(f"{flag} {folder}: lies inside {run}, which holds a training run; choose a folder outside it")
    recover(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    held = kind_of(folder)
    if held is None:
        raise G2DError(f"{flag} {folder}: holds files g2d did not write; choose another {flag}")
    if held != kind:
        raise G2DError(f"{flag} {folder}: holds {KINDS[held]}, not {KINDS[kind]}; choose another {flag} "
                       "(--overwrite replaces only this command's own output)")
    if not overwrite and not reuse:
        raise G2DError(f"{flag} {folder}: already holds {KINDS[kind]}; pass --overwrite to replace it")


def sibling(folder: Path, role: str) -> Path:
    """A fresh hidden name beside ``folder`` for a folder being built (``tmp``) or a replaced one (``old``)."""
    return folder.parent / f".{folder.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(folder: Path, role: str) -> list[Path]:
    """Hidden siblings of ``folder`` in ``role`` left by processes that no longer run."""
    prefix = f".{folder.name}.{role}-"
    if not folder.parent.is_dir():
        return []
    found = []
    for path in sorted(folder.parent.iterdir()):
        pid = path.name[len(prefix):].split("-")[0]
        if path.name.startswith(prefix) and pid.isdigit() and not alive(int(pid)):
            found.append(path)
    return found


def recover(folder: Path) -> None:
    """Undo what a killed command left beside ``folder``: half-built folders are deleted; a complete
    previous output hidden mid-swap is put back when ``folder`` is missing, else deleted."""
    for path in leftovers(folder, BUILDING):
        shutil.rmtree(path, ignore_errors=True)
    for path in leftovers(folder, PREVIOUS):
        if folder.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.rename(folder)


def publish(work: Path, out: Path) -> None:
    """Move the finished folder into place, so ``out`` is never left half-written."""
    faults.point("folders.built", work)
    if not out.exists():
        work.rename(out)
        return
    previous = sibling(out, PREVIOUS)
    out.rename(previous)
    faults.point("folders.swap", out)
    try:
        work.rename(out)
    except BaseException:
        previous.rename(out)
        raise
    shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def building(out: Path, kind: str) -> Iterator[Path]:
    """A hidden sibling of ``out``, marked as ``kind``, to write the new output into; swapped in over
    ``out`` when the block ends normally, deleted when it fails."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    work = sibling(out, BUILDING)
    work.mkdir()
    try:
        mark(work, kind)
        yield work
        publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
