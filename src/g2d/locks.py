"""Folder locks that work on Linux, macOS and Windows: one process at a time holds a folder.

A lock is an exclusive OS lock on ``<folder>/.lock`` (``fcntl.flock`` on POSIX, ``msvcrt.locking``
of the file's first byte on Windows), released by the OS if its holder dies, so a killed run never
leaves a folder locked. The file also names its holder (pid, host, start time, command) for the
line another process prints when it is refused or waits. Run folders (``g2d.runs.runfolder``) and
the teachers folder use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from g2d.errors import G2DError

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

logger = logging.getLogger("g2d")

LOCK = ".lock"
# Windows locks a byte range, and a locked byte cannot be read by others: the holder's
# description starts after the locked first byte, so a refused process can still read it.
HOLDER_OFFSET = 1 if sys.platform == "win32" else 0
WAIT_POLL_SECONDS = 0.2


def try_lock(descriptor: int) -> bool:
    """Take the exclusive lock on an open file without waiting; False when another process holds it."""
    try:
        if sys.platform == "win32":
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def wait_for_lock(descriptor: int) -> None:
    """Take the exclusive lock, waiting as long as another process holds it."""
    if sys.platform != "win32":
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        return
    while not try_lock(descriptor):  # msvcrt's blocking mode gives up after ten seconds
        time.sleep(WAIT_POLL_SECONDS)


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
            if not try_lock(descriptor):
                holder = describe_holder(self.path)
                if not wait:
                    os.close(descriptor)
                    raise G2DError(f"{what} {self.path.parent} is in use by {holder}; {advice}") from None
                logger.info("waiting for %s %s, in use by %s", what, self.path.parent, holder)
                wait_for_lock(descriptor)
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
        os.ftruncate(self.descriptor, HOLDER_OFFSET)
        os.lseek(self.descriptor, HOLDER_OFFSET, os.SEEK_SET)
        os.write(self.descriptor, json.dumps(holder).encode())

    def release(self, remove: bool) -> None:
        """Let go; ``remove`` deletes the lock file first (while still holding it)."""
        if self.descriptor is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError, PermissionError):  # Windows keeps an open file
                self.path.unlink()
        os.close(self.descriptor)
        self.descriptor = None


def describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_bytes()[HOLDER_OFFSET:])
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
