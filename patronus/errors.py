"""The project's own errors: what a user can cause and fix (a missing file, a bad value, a
checkpoint that does not fit). The command line reports these in one line; anything else is a
bug and shows its traceback. Each also derives from the built-in error it refines."""


class PatronusError(Exception):
    """Base of every error a user can cause and fix."""


class CheckpointError(PatronusError, RuntimeError):
    """A checkpoint (or another saved model) is missing, incomplete, corrupt or does not fit."""


class MissingFileError(PatronusError, FileNotFoundError):
    """A file or folder the user named (or a command needs) does not exist."""


class InvalidFileError(PatronusError, ValueError):
    """A file exists but does not hold what it should."""
