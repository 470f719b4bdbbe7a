"""Utilities several packages share: image grids and PNGs, figures, safe unpickling."""

from patronus.utils.images import make_grid, save_grid, save_image, to_uint8

__all__ = ["make_grid", "save_grid", "save_image", "to_uint8"]
