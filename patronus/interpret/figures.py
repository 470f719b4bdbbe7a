"""Figures of the interpretability results (matplotlib, imported lazily; PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from patronus.interpret.what import NearestPatches, PrototypeVisualization
from patronus.interpret.when import Emergence
from patronus.utils.images import to_uint8
from patronus.utils.plotting import pyplot, save_figure

# the emergence curves' axis: a share of the requested change (1: all of it)
SHARE_LIMITS = (-0.5, 1.5)


def _show(axis, image: torch.Tensor, box=None, title: str | None = None) -> None:
    """Draw a (C, H, W) image in [-1, 1] on ``axis``, with an optional red pixel box."""
    pixels = to_uint8(image).permute(1, 2, 0).numpy()
    axis.imshow(pixels[..., 0] if pixels.shape[2] == 1 else pixels, cmap="gray", vmin=0, vmax=255)
    if box is not None:
        top, left, bottom, right = (int(v) for v in box)
        plt = pyplot()
        axis.add_patch(
            plt.Rectangle(
                (left - 0.5, top - 0.5),
                right - left,
                bottom - top,
                fill=False,
                edgecolor="red",
                linewidth=1.5,
            )
        )
    if title:
        axis.set_title(title, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])


def _map(figure, axis, values: torch.Tensor, title: str, cmap: str, vmin=None, vmax=None) -> None:
    """A (H, W) map with its own colour bar."""
    shown = axis.imshow(values.cpu().numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
    bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=5)
    axis.set_title(title, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])


def gallery_figure(
    vis: PrototypeVisualization,
    similarity: torch.Tensor | None = None,
    path: Path | None = None,
    note: str | None = None,
) -> bytes:
    """One row per prototype: the original image with s_J before the edit, the kept edit with the
    prototype's patch boxed and s_J after it (against the value it was set to; red when the edit
    fell short), the crop, what the edit changed (|edit - unedited decode|, one colour scale for
    all rows), and (given (J, H, W) maps of the edits) where the prototype responds. ``note``
    (the edits' fidelity verdict) is printed below the rows and kept in the PNG's Description."""
    plt = pyplot()
    columns = 5 if similarity is not None else 4
    rows = len(vis.prototypes)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.45 * rows), squeeze=False)
    edits, boxes = vis.best_edits().cpu(), vis.best_boxes()
    before, after, reached = vis.best_before(), vis.best_after(), vis.reached()
    change = vis.best_pixel_change().cpu()
    change_max = max(float(change.max()), 1e-6)
    for row, prototype in enumerate(vis.prototypes):
        best = int(vis.best[row])
        _show(
            axes[row, 0], vis.originals[best].cpu(),
            title=f"p{prototype}, image {best}\ns_J before {float(before[row]):.2f}",
        )  # fmt: skip
        _show(
            axes[row, 1], edits[row], boxes[row],
            title=f"edit: s_J {float(after[row]):.2f}\n(set to {float(vis.bounds[row]):.2f})",
        )  # fmt: skip
        if not bool(reached[row]):
            axes[row, 1].title.set_color("tab:red")
        top, left, bottom, right = (int(v) for v in boxes[row])
        _show(axes[row, 2], edits[row][:, top:bottom, left:right], title="patch")
        _map(figure, axes[row, 3], change[row], "|edit - unedited|", "viridis", 0.0, change_max)
        if similarity is not None:
            _map(figure, axes[row, 4], similarity[row], "similarity s_J", "magma")
    figure.tight_layout()
    return save_figure(figure, path, note=note)


def emergence_figure(
    emergence: Emergence, path: Path | None = None, columns: int = 5, note: str | None = None
) -> bytes:
    """Per prototype: the gap between edit and reference activation over the timesteps as a share
    of the requested change (one thin line per image, the median thick; the axis cut at
    ``SHARE_LIMITS``, which the blurry predictions of the first steps leave), the share an edit
    must end at to emerge dashed, emergence steps marked. ``note`` (what the curves conclude, with
    any caution) is printed below them and kept in the PNG's Description."""
    plt = pyplot()
    count = len(emergence.prototypes)
    columns = min(columns, count)  # no empty panels beside a single row
    rows = (count + columns - 1) // columns
    # tall enough for the y label (about 3.2 inches at its size) even with one row
    height = max(1.8 * rows, 3.2)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, height), squeeze=False)
    t = emergence.timesteps.numpy()
    share = emergence.share.numpy()
    for index, prototype in enumerate(emergence.prototypes):
        axis = axes[index // columns, index % columns]
        axis.plot(t, share[:, index, :], color="tab:blue", alpha=0.25, linewidth=0.8)
        if not np.isnan(share[:, index, :]).all():
            axis.plot(t, np.nanmedian(share[:, index, :], 1), color="tab:blue", linewidth=2)
        axis.axhline(emergence.min_share, color="grey", linestyle="--", linewidth=0.8)
        axis.set_ylim(*SHARE_LIMITS)
        emerged = emergence.emergence_t[index]
        for value in emerged[emerged >= 0].tolist():
            axis.axvline(value, color="tab:red", alpha=0.3, linewidth=0.8)
        axis.invert_xaxis()
        axis.set_title(
            f"p{prototype}: {int((emerged >= 0).sum())}/{emerged.numel()} emerge", fontsize=8
        )
        axis.tick_params(labelsize=6)
    for index in range(count, rows * columns):
        axes[index // columns, index % columns].axis("off")
    figure.supxlabel("timestep t (denoising runs left to right, from noise to image)", fontsize=8)
    figure.supylabel("s_J(edit) - s_J(reference), share of the requested change", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path, note=note)


def grid_figure(
    rows: Sequence[torch.Tensor],
    labels: Sequence[str],
    path: Path | None = None,
    boxes: Sequence[torch.Tensor | None] | None = None,
    titles: Sequence[Sequence[str] | None] | None = None,
    note: str | None = None,
) -> bytes:
    """Rows of images (each (K, C, H, W)), labelled, optional boxes per row ((K, 4) or None) and
    optional titles per image (a list of K strings, or None, per row); ``note`` (for edits, their
    fidelity verdict) below them and in the PNG's Description."""
    plt = pyplot()
    columns = max(row.shape[0] for row in rows)
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(1.1 * columns, 1.2 * len(rows)), squeeze=False
    )
    for r, row in enumerate(rows):
        row_boxes = boxes[r] if boxes is not None else None
        for c in range(columns):
            if c < row.shape[0]:
                box = row_boxes[c] if row_boxes is not None else None
                row_titles = titles[r] if titles is not None else None
                _show(axes[r, c], row[c].cpu(), box, row_titles[c] if row_titles else None)
            else:
                axes[r, c].axis("off")
        axes[r, 0].set_ylabel(labels[r], fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path, note=note)


def nearest_patches_figure(
    patches: NearestPatches,
    images: torch.Tensor,
    prototypes: Sequence[int],
    path: Path | None = None,
) -> bytes:
    """One row per prototype: its k nearest real patches (crops)."""
    plt = pyplot()
    k = patches.image_index.shape[1]
    figure, axes = plt.subplots(
        len(prototypes), k, figsize=(0.9 * k, 0.9 * len(prototypes)), squeeze=False
    )
    for row, prototype in enumerate(prototypes):
        for column in range(k):
            image = images[int(patches.image_index[prototype, column])]
            top, left, bottom, right = (int(v) for v in patches.boxes[prototype, column])
            title = f"p{prototype}" if column == 0 else None
            _show(axes[row, column], image[:, top:bottom, left:right], title=title)
    figure.tight_layout()
    return save_figure(figure, path)
