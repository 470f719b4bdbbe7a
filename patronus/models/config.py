"""Frozen configuration dataclasses of a Patronus model, with JSON-friendly (de)serialisation."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EncoderConfig:
    """Conv2d + ReLU stack of the prototype block; the last channel count is D."""

    channels: tuple[int, ...] = (32, 64, 64, 128)
    kernel_sizes: tuple[int, ...] = (3, 3, 3, 3)
    strides: tuple[int, ...] = (2, 1, 1, 1)
    paddings: tuple[int, ...] = (1, 0, 0, 0)

    def __post_init__(self) -> None:
        lengths = {
            len(self.channels),
            len(self.kernel_sizes),
            len(self.strides),
            len(self.paddings),
        }
        if len(lengths) != 1 or not self.channels:
            raise ValueError("encoder channels, kernel_sizes, strides, paddings: one length, > 0")
        if min((*self.channels, *self.kernel_sizes, *self.strides)) < 1 or min(self.paddings) < 0:
            raise ValueError(
                "encoder channels, kernel_sizes and strides must be >= 1 and paddings >= 0, got "
                f"{self.channels}, {self.kernel_sizes}, {self.strides}, {self.paddings}"
            )


PROTOTYPE_CONDITIONINGS = ("bias", "scale_shift", "cross_attention")


@dataclass(frozen=True)
class UNetConfig:
    """The conditional UNet of the paper and the original implementation."""

    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention: tuple[bool, ...] = (False, False, False, False)
    bottleneck_attention: bool = True
    dropout: float = 0.1
    time_emb_mult: int = 4
    norm_groups: int = 8
    attention_heads: int = 4
    # how each residual block takes s: "bias" (the paper's: a per-channel bias from the prototype
    # embedding before the second GroupNorm), "scale_shift" (h = GN(h) * (1 + scale) + shift after
    # it) or "cross_attention" (every position attends to one token per prototype)
    prototype_conditioning: str = "bias"

    def __post_init__(self) -> None:
        if self.prototype_conditioning not in PROTOTYPE_CONDITIONINGS:
            raise ValueError(
                f"unet.prototype_conditioning must be one of {PROTOTYPE_CONDITIONINGS}, "
                f"got {self.prototype_conditioning!r}"
            )
        counts = {
            "base_channels": self.base_channels,
            "num_res_blocks": self.num_res_blocks,
            "time_emb_mult": self.time_emb_mult,
            "norm_groups": self.norm_groups,
            "attention_heads": self.attention_heads,
        }
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(
                f"unet.channel_mults needs a multiplier >= 1 per level, got {self.channel_mults}"
            )
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"unet.{name} must be >= 1, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"unet.dropout must be in [0, 1), got {self.dropout}")
        if len(self.attention) != len(self.channel_mults):
            raise ValueError("unet.attention needs one flag per entry of unet.channel_mults")
        for mult in self.channel_mults:
            channels = self.base_channels * mult
            if channels % self.norm_groups or channels % self.attention_heads:
                raise ValueError(
                    f"unet channels {channels} must divide by norm_groups={self.norm_groups} "
                    f"and attention_heads={self.attention_heads}"
                )


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {self.timesteps}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")


@dataclass(frozen=True)
class PatronusConfig:
    """A whole Patronus model: prototype block, UNet and noise schedule."""

    image_channels: int = 1
    image_size: int = 32
    num_prototypes: int = 30
    activation: str = "log"
    activation_eps: float = 1e-4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # guidance on the prototype conditioning: in training, each image's activations are replaced
    # by a learned null vector with this probability (0: no null vector, no guidance) ...
    condition_dropout: float = 0.0
    # ... and sampling uses null + w (conditioned - null) with this recommended scale w (1: none)
    guidance_scale: float = 1.0
    # a diffusers UNet as the denoiser instead of ``unet`` (patronus.models.diffusers_denoiser):
    # {"class": "UNet2DModel" | "UNet2DConditionModel", "config": {constructor arguments}}
    diffusers_unet: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {self.guidance_scale}")
        if self.guidance_scale != 1.0 and self.condition_dropout == 0.0:
            raise ValueError(
                "guidance_scale != 1 needs a null vector: train with condition_dropout > 0"
            )
        if min(self.image_channels, self.image_size, self.num_prototypes) < 1:
            raise ValueError("image_channels, image_size and num_prototypes must be >= 1")
        if self.activation not in ("log", "linear"):
            raise ValueError(f"activation must be 'log' or 'linear', got {self.activation!r}")
        if not self.activation_eps > 0:
            raise ValueError(f"activation_eps must be > 0, got {self.activation_eps}")
        if self.diffusers_unet is not None:
            unknown = set(self.diffusers_unet) - {"class", "config"}
            if "class" not in self.diffusers_unet or unknown:
                raise ValueError(
                    "diffusers_unet must be {'class': ..., 'config': {...}}, got "
                    f"{self.diffusers_unet!r}"
                )
            # its JSON form, so that a config read back from a checkpoint compares equal
            object.__setattr__(self, "diffusers_unet", json.loads(json.dumps(self.diffusers_unet)))

    @property
    def prototype_dim(self) -> int:
        return self.encoder.channels[-1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatronusConfig:
        return _from_dict(cls, data)

    def replace(self, **changes: Any) -> PatronusConfig:
        return dataclasses.replace(self, **changes)


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value has the annotated type (int is not bool; a float field takes ints)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if origin is dict:
        return isinstance(value, dict)
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return type(value) in (int, float)
    return type(value) is annotation


def check_field_types(cls: type, data: dict[str, Any]) -> None:
    """Raise ValueError naming the first entry of ``data`` whose type its field does not admit."""
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if name in hints and not _matches(value, hints[name]):
            hint = hints[name]
            expected = str(hint) if typing.get_origin(hint) else hint.__name__
            raise ValueError(f"{cls.__name__}.{name} must be {expected}, got {value!r}")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a (nested) frozen dataclass from plain data, turning lists into tuples."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} config must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        nested = fields[name].default_factory
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            value = _from_dict(nested, value)
        else:
            check_field_types(cls, {name: value})
            if isinstance(value, list):
                value = tuple(value)
        values[name] = value
    return cls(**values)
