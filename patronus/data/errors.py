"""Errors of the dataset loaders: they name the expected layout."""


class DataLayoutError(FileNotFoundError):
    """A dataset folder is missing, incomplete or malformed; the message shows the layout."""

    def __init__(self, dataset: str, problem: str, layout: str) -> None:
        super().__init__(f"{dataset}: {problem}\nExpected layout:\n{layout.strip()}")
        self.dataset = dataset


class ImageFileError(ValueError):
    """An image file cannot be read (empty, truncated, not an image, or too large)."""
