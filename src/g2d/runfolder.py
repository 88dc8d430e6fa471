"""A run folder is a record: claimed by one process at a time, never replaced silently.

``claim`` locks the folder (``fcntl.flock`` on ``<run>/.lock``, which names the holder) and
decides, before anything is written, whether the command may use it: a new or empty folder
is used; one that holds a finished or interrupted run is refused unless ``trainer.resume=true``
(continue it; a larger ``trainer.epochs`` extends a finished run) or ``trainer.overwrite=true``
(replace it). A refused command leaves the folder byte for byte as it was. ``folder_lock``
serves the teachers folder too, where a second run waits instead of being refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from g2d import checkpoint
from g2d.config import ExperimentConfig, to_dict
from g2d.errors import G2DError
from g2d.io import atomic_write

logger = logging.getLogger("g2d")

LOCK = ".lock"
RUN_FILES = ("metrics.json", "history.json", "config.yaml", checkpoint.LINK, checkpoint.STORE, "tb")
# Keys a resumed run may spell or set differently: how it is watched, and where the folders are
# (a moved run folder, or a relative instead of an absolute path; teachers are checked by their metadata).
RESUME_IGNORED_KEYS = ("trainer.resume", "trainer.progress", "trainer.overwrite", "out", "teachers.root")


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.lock``, holding the pid, host, start time and command of its owner."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self.descriptor: int | None = None
        self.created = False

    def acquire(self, wait: bool, what: str, advice: str) -> None:
        """Take the lock; if another process holds it, wait (logging who) or refuse naming it."""
        while True:
            self.created = not self.path.exists()
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise G2DError(f"{what} {self.path.parent}: cannot be locked ({exc.strerror})") from exc
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = describe_holder(self.path)
                if not wait:
                    os.close(descriptor)
                    raise G2DError(f"{what} {self.path.parent} is in use by {holder}; {advice}") from None
                logger.info("waiting for %s %s, in use by %s", what, self.path.parent, holder)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            # The previous holder deletes the file as it lets go; a lock on a deleted file guards nothing.
            try:
                same = os.fstat(descriptor).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.descriptor = descriptor
                return
            os.close(descriptor)

    def announce(self) -> None:
        """Write who holds the lock, for the refusal line another process prints."""
        assert self.descriptor is not None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": " ".join(sys.argv)}
        os.ftruncate(self.descriptor, 0)
        os.pwrite(self.descriptor, json.dumps(holder).encode(), 0)

    def release(self, remove: bool) -> None:
        """Let go; ``remove`` deletes the lock file first (while still holding it)."""
        if self.descriptor is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.descriptor)
        self.descriptor = None


def describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['started']} ({holder['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, wait: bool = True, advice: str = "") -> Iterator[FolderLock]:
    """Hold ``folder``'s lock for the block (creating the folder), waiting for another holder if ``wait``."""
    make_folder(folder, what)
    lock = FolderLock(folder)
    lock.acquire(wait, what, advice)
    try:
        lock.announce()
        yield lock
    finally:
        lock.release(remove=True)


def make_folder(folder: Path, what: str) -> bool:
    """Create ``folder`` if needed; True when it was created. A file in the way is named."""
    if folder.exists() and not folder.is_dir():
        raise G2DError(f"{what} {folder}: is a file, not a folder")
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise G2DError(f"{what} {folder}: a file is in the way of this folder") from None
        return False
    except OSError as exc:
        raise G2DError(f"{what} {folder}: cannot be created ({exc.strerror})") from exc
    return True


@dataclass
class Claim:
    """What a locked run folder holds, and what this command will do with it."""

    folder: Path
    lock: FolderLock
    overwrite: bool = False
    finished: bool = False  # resumed with nothing left to train: the run's results are kept as they are

    def begin(self, config: ExperimentConfig) -> None:
        """The first write: clear a replaced run's files, then record this run's config."""
        if self.overwrite:
            for name in RUN_FILES:
                remove(self.folder / name)
        atomic_write(self.folder / "config.yaml", lambda tmp: tmp.write_text(OmegaConf.to_yaml(to_dict(config))))


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def claim(config: ExperimentConfig) -> Iterator[Claim]:
    """Lock ``config``'s run folder for the block, or refuse (exit 2) with what to do instead."""
    folder = config.run_dir()
    created = make_folder(folder, "out:")
    lock = FolderLock(folder)
    try:
        lock.acquire(False, "out:", "wait for it to finish or choose another out=")
        try:
            result = inspect(folder, config, lock)
        except BaseException:
            lock.release(remove=lock.created)
            raise
        lock.announce()
        checkpoint.clean(folder)
        for leftover in folder.glob("*.tmp"):
            leftover.unlink()
        try:
            yield result
        finally:
            lock.release(remove=True)
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when the refused or failed command left it empty


def inspect(folder: Path, config: ExperimentConfig, lock: FolderLock) -> Claim:
    """Refuse a folder that holds a run unless told to resume or overwrite it; check a resume's config."""
    trainer = config.trainer
    if trainer.resume and trainer.overwrite:
        raise G2DError("config keys trainer.resume and trainer.overwrite: both are true; choose one")
    present = [name for name in RUN_FILES if (folder / name).exists() or (folder / name).is_symlink()]
    if not present:
        return Claim(folder, lock)
    if trainer.overwrite:
        return Claim(folder, lock, overwrite=True)
    saved = checkpoint.committed(folder)
    finished = (folder / "metrics.json").is_file()
    if not trainer.resume:
        if finished:
            held = f"a finished run ({read_epochs(folder)} epochs, metrics.json)"
            how = "continue it with trainer.resume=true and a larger trainer.epochs"
        elif saved is not None:
            state = checkpoint.read_state(saved)["state"]
            held = f"an interrupted run (checkpoint after epoch {state['epoch']})"
            how = "continue it with trainer.resume=true"
        else:
            held = f"files of an earlier run ({', '.join(present)})"
            how = "start it again with trainer.resume=true"
        raise G2DError(f"out: {folder} already holds {held}; {how}, choose another out=, "
                       "or replace it with trainer.overwrite=true")
    if saved is None:
        if finished:
            raise G2DError(f"out: {folder} holds a finished run but no checkpoint to resume from; choose another "
                           "out= or replace it with trainer.overwrite=true")
        return Claim(folder, lock)  # interrupted before its first checkpoint: nothing to continue from
    payload = checkpoint.read_state(saved)
    check_resume(json.loads(payload["config"]), config, saved / checkpoint.STATE)
    done = payload["state"]["epoch"] >= trainer.epochs
    return Claim(folder, lock, finished=finished and done)


def read_epochs(folder: Path) -> Any:
    try:
        return json.loads((folder / "metrics.json").read_text())["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def check_resume(saved: dict, config: ExperimentConfig, path: Path) -> None:
    """A resumed run continues the same experiment: only a larger ``trainer.epochs`` and the spelling of
    paths may differ (``RESUME_IGNORED_KEYS``; ``dataset.root`` must resolve to the same folder)."""
    old_values, new_values = flatten(saved), flatten(to_dict(config))
    for key in sorted(set(old_values) | set(new_values)):
        old, new = old_values.get(key), new_values.get(key)
        if key in RESUME_IGNORED_KEYS or old == new:
            continue
        if key == "trainer.epochs" and isinstance(old, int) and isinstance(new, int):
            if new > old:
                continue
            raise G2DError(f"config key trainer.epochs: {new} is fewer than the {old} the run in {path.parent.parent} "
                           "was started with; resuming can only extend a run")
        if key == "dataset.root" and old and new and Path(old).resolve() == Path(new).resolve():
            continue
        raise G2DError(
            f"config key {key}: {new!r} differs from the interrupted run's {old!r} in {path}; "
            "use a new out= folder or the same config (only a larger trainer.epochs may change)"
        )


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``, for naming the key where two configs differ."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    items: dict[str, Any] = {}
    for key, value in tree.items():
        items.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return items
