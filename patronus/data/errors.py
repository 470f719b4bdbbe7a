"""Errors of the dataset loaders: they name the expected layout (or the unreadable file)."""

from patronus.errors import PatronusError


class DataLayoutError(PatronusError, FileNotFoundError):
    """A dataset folder is missing, incomplete or malformed; the message shows the layout."""

    def __init__(
        self,
        dataset: str | None = None,
        problem: str | None = None,
        layout: str | None = None,
        *,
        message: str | None = None,
    ) -> None:
        if message is not None:  # rebuilt from a DataLoader worker's text (see PatronusError)
            super().__init__(message=message)
            self.dataset = str(self).split(":", 1)[0]
            return
        if dataset is None or problem is None or layout is None:
            raise TypeError("DataLayoutError needs the dataset, the problem and the layout")
        super().__init__(f"{dataset}: {problem}\nExpected layout:\n{layout.strip()}")
        self.dataset = dataset


class ImageFileError(PatronusError, ValueError):
    """An image file cannot be read (empty, truncated, not an image, or too large)."""
