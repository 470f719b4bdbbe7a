"""The Patronus model, its UNet, configuration dataclasses and per-dataset presets."""

from patronus.models.config import DiffusionConfig, EncoderConfig, PatronusConfig, UNetConfig
from patronus.models.patronus import Patronus
from patronus.models.unet import PatronusUNet

__all__ = [
    "DiffusionConfig",
    "EncoderConfig",
    "Patronus",
    "PatronusConfig",
    "PatronusUNet",
    "UNetConfig",
]
