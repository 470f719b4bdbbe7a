"""Errors of the dataset loaders: they name the expected layout (or the unreadable file)."""

from patronus.errors import PatronusError


class DataLayoutError(PatronusError, FileNotFoundError):
    """A dataset folder is missing, incomplete or malformed; the message shows the layout."""

    def __init__(self, dataset: str, problem: str, layout: str) -> None:
        super().__init__(f"{dataset}: {problem}\nExpected layout:\n{layout.strip()}")
        self.dataset = dataset


class ImageFileError(PatronusError, ValueError):
    """An image file cannot be read (empty, truncated, not an image, or too large)."""
