"""Training configuration."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from patronus.models.config import check_field_types

AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``batch_size`` is the global batch (split across DDP processes).

    ``amp="auto"`` means bf16 autocast on CUDA and on CPUs that compute bf16 in hardware
    (AVX512-BF16 or AMX-BF16 among their flags), none on other CPUs. ``ema_decay=None`` disables
    EMA (the paper uses none). ``timestep_bias`` b > 0 draws training timesteps with density
    proportional to (t / T)^b instead of uniformly (0, the paper's). ``sample_every=0`` writes
    a sample grid only at checkpoints. ``edit_consistency_weight`` > 0 adds the edit-consistency
    term (:mod:`patronus.train.edit_consistency`) on the rows with t <=
    ``edit_consistency_max_timestep``. ``activation_decorrelation_weight`` > 0 adds the
    activation-decorrelation term (:mod:`patronus.train.activation_decorrelation`), computed over
    each process's batch. ``freeze_prototypes`` trains the denoiser alone: the encoder
    and the prototypes keep their weights, so the activations keep their meaning (for fine-tuning a
    trained model).
    """

    max_steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    amp: str = "auto"
    ema_decay: float | None = None
    grad_clip: float | None = 1.0
    distinct_loss_weight: float = 0.0
    distinct_margin: float = 0.2
    timestep_bias: float = 0.0
    edit_consistency_weight: float = 0.0
    edit_consistency_max_timestep: int = 500
    activation_decorrelation_weight: float = 0.0
    freeze_prototypes: bool = False
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0
    sample_steps: int = 20
    num_sample_images: int = 16
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("max_steps and batch_size must be >= 1")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if not self.edit_consistency_weight >= 0.0:
            raise ValueError(
                f"edit_consistency_weight must be >= 0, got {self.edit_consistency_weight}"
            )
        if self.edit_consistency_max_timestep < 0:
            raise ValueError(
                "edit_consistency_max_timestep must be >= 0, "
                f"got {self.edit_consistency_max_timestep}"
            )
        if not self.activation_decorrelation_weight >= 0.0:
            raise ValueError(
                "activation_decorrelation_weight must be >= 0, "
                f"got {self.activation_decorrelation_weight}"
            )
        if self.activation_decorrelation_weight and self.batch_size < 2:
            raise ValueError("activation decorrelation needs batch_size >= 2 (a batch correlation)")
        if self.activation_decorrelation_weight and self.freeze_prototypes:
            raise ValueError(
                "activation decorrelation trains the encoder and the prototypes, which "
                "freeze_prototypes keeps fixed: use one or the other"
            )
        if not self.timestep_bias >= 0.0:
            raise ValueError(f"timestep_bias must be >= 0, got {self.timestep_bias}")
        if min(self.log_every, self.checkpoint_every, self.keep_checkpoints) < 1:
            raise ValueError("log_every, checkpoint_every and keep_checkpoints must be >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate}")
        # a negative clip would scale the gradient by a negative factor (gradient ascent)
        at_least_zero = {
            "weight_decay": self.weight_decay,
            "grad_clip": 0.0 if self.grad_clip is None else self.grad_clip,
            "distinct_loss_weight": self.distinct_loss_weight,
            "distinct_margin": self.distinct_margin,
            "warmup_steps": self.warmup_steps,
            "sample_every": self.sample_every,
            "num_workers": self.num_workers,
        }
        for name, value in at_least_zero.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if min(self.sample_steps, self.num_sample_images) < 1:
            raise ValueError("sample_steps and num_sample_images must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise TypeError(f"TrainConfig must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        check_field_types(cls, data)
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
