"""Matplotlib for figures written to files: imported lazily, non-interactive backend."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _add_note(figure, note: str, fontsize: int = 7) -> None:
    """``note`` below the figure's panels, wrapped to its width."""
    width = max(int(figure.get_figwidth() * 140 / fontsize), 40)  # characters per line
    figure.text(0.01, 0.0, textwrap.fill(note, width), ha="left", va="top", fontsize=fontsize)


def save_figure(figure, path: Path | None, dpi: int = 110, note: str | None = None) -> bytes:
    """PNG bytes of a figure (also written to ``path`` when given), and the figure closed;
    ``note`` (a figure's verdict) is printed below its panels and kept in the PNG's Description
    text chunk."""
    buffer = io.BytesIO()
    if note:
        _add_note(figure, note)
    metadata = {"Description": note} if note else None
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata=metadata)
    pyplot().close(figure)
    data = buffer.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data
