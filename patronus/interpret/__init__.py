"""Interpretability: what prototypes encode, where they fire, when they emerge; analyses; report."""

from patronus.interpret.analyses import (
    Consistency,
    consistency,
    extrapolation,
    interpolation,
    reconstruction,
    slerp,
    variations,
)
from patronus.interpret.comoving import comoving_directions
from patronus.interpret.fidelity import EditFidelity, edit_fidelity
from patronus.interpret.prototype_guidance import PrototypeGuidance
from patronus.interpret.region import decode_in_region, region_masks
from patronus.interpret.what import (
    Inversion,
    NearestPatches,
    PrototypeVisualization,
    activation_bounds,
    edited_activations,
    invert_images,
    nearest_patches,
    visualize_prototypes,
)
from patronus.interpret.when import Emergence, emergence_steps, trace_emergence
from patronus.interpret.where import Localization, box_iou, crop, localize, upsample_cells

__all__ = [
    "Consistency",
    "EditFidelity",
    "Emergence",
    "Inversion",
    "Localization",
    "NearestPatches",
    "PrototypeGuidance",
    "PrototypeVisualization",
    "activation_bounds",
    "box_iou",
    "comoving_directions",
    "consistency",
    "crop",
    "decode_in_region",
    "edit_fidelity",
    "edited_activations",
    "emergence_steps",
    "extrapolation",
    "interpolation",
    "invert_images",
    "localize",
    "nearest_patches",
    "reconstruction",
    "region_masks",
    "slerp",
    "trace_emergence",
    "upsample_cells",
    "variations",
    "visualize_prototypes",
]
