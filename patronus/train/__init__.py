"""Training: the Trainer loop, its configuration, EMA, metrics and distributed set-up."""

from patronus.train.config import TrainConfig
from patronus.train.trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
