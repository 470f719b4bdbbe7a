"""A run folder's life: one training at a time (a lock file), what a run writes, and clearing it.

The lock is an exclusive ``flock`` on ``<run>/.lock`` held by process 0 while it trains; a second
training of the same folder fails at once with the holder's pid. The lock is re-entrant within a
process (the command line clears a folder and then trains it under the same lock). A folder the
lock created is removed again when what ran under it failed before writing anything."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from patronus.errors import PatronusError

LOCK_FILE = ".lock"
RUN_ENTRIES = ("checkpoints", "samples", "metrics.jsonl", "metrics.csv", "loss_curve.png")

# resolved run folder -> (fd, depth, whether the lock created the folder)
_held: dict[Path, tuple[int, int, bool]] = {}


class RunInUseError(PatronusError, RuntimeError):
    """Another process is training this run folder."""


class RunFolderError(PatronusError, OSError):
    """The run folder cannot be created (a file on the way, no permission, a read-only disk)."""


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder's lock (the folder created if missing, and
    removed again if the block raises while the folder holds nothing but the lock)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def __enter__(self) -> RunLock:
        created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(
                f"cannot create the run folder {self.run_dir}: {error.strerror or error}"
            ) from error
        key = self.run_dir.resolve()
        if key in _held:
            fd, depth, created = _held[key]
            _held[key] = (fd, depth + 1, created)
            return self
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(
                f"{self.run_dir} is being trained by another process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = (fd, 1, created)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        key = self.run_dir.resolve()
        fd, depth, created = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1, created)
            return
        del _held[key]
        lock = self.run_dir / LOCK_FILE
        if created and exc_type is not None and list(self.run_dir.iterdir()) == [lock]:
            lock.unlink()  # while still holding it, so that no other training takes it
            self.run_dir.rmdir()
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holds_a_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds anything a training writes."""
    run_dir = Path(run_dir)
    return any((run_dir / entry).exists() for entry in RUN_ENTRIES)


def clear_run(run_dir: str | Path) -> None:
    """Remove what a training wrote into ``run_dir`` (other files stay). Call under RunLock."""
    for entry in RUN_ENTRIES:
        path = Path(run_dir) / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
