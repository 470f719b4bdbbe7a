"""The project's own errors: what a user can cause and fix (a missing file, a bad value, a
checkpoint that does not fit). The command line reports these in one line; anything else is a
bug and shows its traceback. Each also derives from the built-in error it refines."""


class PatronusError(Exception):
    """Base of every error a user can cause and fix.

    Raised in a DataLoader worker (a dataset's unreadable file), an error reaches the main
    process as the worker's formatted traceback, and torch rebuilds it as ``type(error)(message=
    text)`` when the class has a ``message`` attribute (otherwise as a bare RuntimeError, which the
    command line would show as a traceback). Every PatronusError has one (:attr:`message`) and
    takes that keyword, keeping the original message, so the error keeps its type and its one
    line.
    """

    def __init__(self, *args: object, message: str | None = None) -> None:
        if message is not None:
            args = (_original_message(message, type(self)),)
        super().__init__(*args)

    @property
    def message(self) -> str:
        """The error's message (what ``str(error)`` gives)."""
        return str(self)


def _original_message(worker_text: str, error_type: type) -> str:
    """The message of the error a DataLoader worker formatted into ``worker_text`` (its
    traceback ends in "module.Class: message"); the whole text if that line is not found."""
    marker = f"{error_type.__module__}.{error_type.__qualname__}: "
    start = worker_text.rfind(marker)
    if start < 0:
        return worker_text
    return worker_text[start + len(marker) :].rstrip("\n")


class CheckpointError(PatronusError, RuntimeError):
    """A checkpoint (or another saved model) is missing, incomplete, corrupt or does not fit."""


class MissingFileError(PatronusError, FileNotFoundError):
    """A file or folder the user named (or a command needs) does not exist."""


class InvalidFileError(PatronusError, ValueError):
    """A file exists but does not hold what it should."""


class MissingDependencyError(PatronusError, ImportError):
    """An optional package a feature needs is not installed (the message says how to)."""
