"""A run folder is a record: claimed by one process at a time, never replaced silently.

``claim`` locks the folder (``g2d.locks``: ``<run>/.lock``, which names the holder) and
decides, before anything is written, whether the command may use it: a new or empty folder
is used; one that holds a finished or interrupted run is refused unless ``trainer.resume=true``
(continue it; a larger ``trainer.epochs`` extends a finished run) or ``trainer.overwrite=true``
(replace it); a folder holding another kind of g2d output (a report, a sweep, a dataset:
``g2d.folders``) is refused either way, and a run's first write marks its folder as a run.
A refused command leaves the folder byte for byte as it was. Whether a resumed
run's config matches is ``g2d.training.checkpoint.check_resume``'s to say.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from g2d.training import checkpoint
from g2d.training.checkpoint import check_resume
from g2d.config import ExperimentConfig, to_record
from g2d.errors import G2DError
from g2d.folders import KINDS, kind_of, mark
from g2d.io import atomic_write
from g2d.locks import FolderLock, make_folder

logger = logging.getLogger("g2d")

# wandb/ is kept: a replaced run's offline W&B files can still be sent with wandb sync.
RUN_FILES = ("metrics.json", "history.json", "config.yaml", checkpoint.LINK, checkpoint.STORE, "tb", "tracking.json",
             "tracking.csv")


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
        mark(self.folder, "run")
        atomic_write(self.folder / "config.yaml", lambda tmp: tmp.write_text(OmegaConf.to_yaml(to_record(config))))


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
    held = kind_of(folder)
    if held not in (None, "run"):
        raise G2DError(f"out: {folder} holds {KINDS[held]}, not a training run; choose another out= "
                       "(trainer.overwrite=true replaces only a run)")
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
