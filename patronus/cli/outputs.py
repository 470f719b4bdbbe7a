"""Where commands write: output folders that never overwrite results unasked, stage messages, and
the list of every file a command wrote."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from patronus.errors import PatronusError

RUNS = Path("runs")
_LISTED_PER_FOLDER = 20
_created: list[Path] = []  # folders output_folder created for the running command, deepest first


class CommandError(PatronusError):
    """A user error a command reports in one line (exit status 2)."""


def say(message: str) -> None:
    """A stage message on stderr (kept apart from the results printed on stdout)."""
    print(message, file=sys.stderr, flush=True)


def output_folder(out: Path | None, default_name: str, overwrite: bool) -> Path:
    """The folder a command writes to, created: ``out``, or a new ``runs/<default_name>[-N]``.

    Refuses a path that is a file, and a folder that already holds files unless ``overwrite``
    (checked before any work starts, so that nothing is computed only to be refused)."""
    if out is None:
        out = RUNS / default_name
        suffix = 2
        while out.exists():
            out = RUNS / f"{default_name}-{suffix}"
            suffix += 1
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CommandError(
            f"{out} already holds files: pass --overwrite to write into it, or choose another --out"
        )
    _created.extend(folder for folder in (out, *out.parents) if not folder.exists())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file on the way, no permission, a read-only disk
        raise CommandError(f"cannot create --out {out}: {error.strerror or error}") from error
    return out


@contextmanager
def removing_empty_outputs_on_failure() -> Iterator[None]:
    """``with`` this around a command: when it fails (an error, Ctrl-C), the folders
    :func:`output_folder` created for it that are still empty are removed again, so that a
    refused command leaves nothing behind (and the next default ``runs/<name>`` is not ``-2``)."""
    _created.clear()
    try:
        yield
    except BaseException:
        for folder in _created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    finally:
        _created.clear()


def report_written(folder: Path, since: float) -> None:
    """Print every file written below ``folder`` since ``since`` (time.time()); folders holding
    many new files are summarised in one line."""
    by_parent: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.stat().st_mtime >= since - 1:
            by_parent.setdefault(path.parent, []).append(path)
    for parent, files in by_parent.items():
        if len(files) > _LISTED_PER_FOLDER:
            print(f"wrote {len(files)} files in {parent}/ ({files[0].name} .. {files[-1].name})")
        else:
            for path in files:
                print(f"wrote {path}")


def now() -> float:
    return time.time()
