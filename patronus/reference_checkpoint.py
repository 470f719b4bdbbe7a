"""Import checkpoints of the original Patronus implementation.

The original saves ``torch.save({"model": state_dict, "opt": ..., "scaler": ...}, "ckpt.tar")``
beside a ``config.pickle`` of plain dicts (``BaseConfig``, ``ModelConfig``, ``TrainingConfig``).
Both are read without executing pickled code: the checkpoint with ``weights_only=True``, the
config with an unpickler that admits only plain data. The architecture (channels, multipliers,
residual blocks, attention, encoder kernels, prototype count) is read off the weights; the
config supplies what the weights cannot tell (encoder strides and paddings, image size, schedule
length) and is checked against them.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from patronus.checkpoint import CheckpointError
from patronus.models import Patronus
from patronus.models.config import DiffusionConfig, EncoderConfig, PatronusConfig, UNetConfig
from patronus.models.presets import ENCODER_32_64, ENCODER_224
from patronus.models.unet import PatronusUNet
from patronus.utils.safe_pickle import safe_load

_BLOCK_RENAMES = {
    "normlize_1": "norm1",
    "conv_1": "conv1",
    "dense_1": "time_bias",
    "dense_2": "prototype_bias",
    "normlize_2": "norm2",
    "conv_2": "conv2",
    "match_input": "skip",
    "attention.group_norm": "attention.norm",
    "attention.mhsa": "attention.attention",
    "downsample": "conv",
    "upsample.1": "conv",
}
_TOP_RENAMES = {
    "time_embeddings.time_blocks.1": "unet.time_embedding.mlp.0",
    "time_embeddings.time_blocks.3": "unet.time_embedding.mlp.2",
    "cond_embeddings.vector_fc.0": "unet.prototype_embedding.mlp.0",
    "cond_embeddings.vector_fc.2": "unet.prototype_embedding.mlp.2",
    "first": "unet.stem",
    "final": "unet.head",
    "proactBlock.encoder": "encoder",
}
_IGNORED = ("proactBlock.ones", "time_embeddings.time_blocks.0.weight")
_BLOCK_KEY = re.compile(r"^(encoder_blocks|bottleneck_blocks|decoder_blocks)\.(\d+)\.(.+)$")


def translate_key(key: str) -> str:
    """An original state-dict key -> this package's key."""
    if key == "proactBlock.prototype_vectors":
        return "prototype_layer.prototypes"
    match = _BLOCK_KEY.match(key)
    if match:
        group, index, rest = match.groups()
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        return f"unet.{group}.{index}.{rest}"
    for old, new in _TOP_RENAMES.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    raise CheckpointError(f"unexpected key {key!r} in the original checkpoint")


def original_key(key: str) -> str:
    """This package's state-dict key -> the original's (the inverse of :func:`translate_key`)."""
    if key == "prototype_layer.prototypes":
        return "proactBlock.prototype_vectors"
    match = re.match(r"^unet\.(encoder_blocks|bottleneck_blocks|decoder_blocks)\.(\d+)\.(.+)$", key)
    if match:
        group, index, rest = match.groups()
        resampling = {"encoder_blocks": "downsample", "decoder_blocks": "upsample.1"}
        for old, new in _BLOCK_RENAMES.items():
            if new == "conv" and old != resampling.get(group):
                continue
            if rest.startswith(new + "."):
                rest = old + rest[len(new) :]
                break
        return f"{group}.{index}.{rest}"
    for old, new in _TOP_RENAMES.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    return key


def read_reference_config(path: Path) -> dict[str, dict[str, Any]]:
    """config.pickle -> {"BaseConfig": {...}, "ModelConfig": {...}, "TrainingConfig": {...}}."""
    try:
        data = safe_load(path.read_bytes())
    except (pickle.UnpicklingError, OSError) as error:
        raise CheckpointError(f"{path}: not a plain-data config pickle ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("TrainingConfig"), dict):
        raise CheckpointError(f"{path}: expected a dict with a TrainingConfig dict")
    if not isinstance(data.get("ModelConfig", {}), dict):
        raise CheckpointError(f"{path}: ModelConfig must be a dict")
    return data


def _integers(section: dict[str, Any], name: str, length: int | None = None) -> tuple[int, ...]:
    """A config entry that must be a sequence of ints (bools only where they are flags)."""
    value = section[name]
    if not isinstance(value, (list, tuple)) or not all(type(v) is int for v in value):
        raise CheckpointError(f"config.pickle: {name} must be a sequence of ints, got {value!r}")
    if length is not None and len(value) != length:
        raise CheckpointError(
            f"config.pickle says {name}={tuple(value)}: {length} entries expected"
        )
    return tuple(value)


def _integer(section: dict[str, Any], name: str) -> int:
    value = section[name]
    if type(value) is not int:
        raise CheckpointError(f"config.pickle: {name} must be an int, got {value!r}")
    return value


_REQUIRED_KEYS = (
    "proactBlock.prototype_vectors",
    "proactBlock.encoder.features.0.weight",
    "time_embeddings.time_blocks.0.weight",
    "time_embeddings.time_blocks.1.weight",
    "first.weight",
    "encoder_blocks.0.conv_1.weight",
)


def _count_blocks(state: dict[str, torch.Tensor], group: str) -> list[str]:
    """Kinds of the blocks in a ModuleList: "res", "down" or "up", in order."""
    kinds: dict[int, str] = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match and match.group(1) == group:
            rest = match.group(3)
            kind = (
                "down"
                if rest.startswith("downsample")
                else "up"
                if rest.startswith("upsample")
                else "res"
            )
            kinds[int(match.group(2))] = kind
    return [kinds[i] for i in sorted(kinds)]


def _check_against_weights(
    training: dict[str, Any], model: dict[str, Any], found: dict[str, Any]
) -> None:
    """Every field of the original's config that the weights also tell must agree with them."""
    layers = len(found["kernels"])
    declared: dict[str, tuple[Any, Any]] = {}
    if "NUM_PROTOS" in training:
        declared["NUM_PROTOS"] = (_integer(training, "NUM_PROTOS"), found["num_prototypes"])
    if "TIMESTEPS" in training:
        declared["TIMESTEPS"] = (_integer(training, "TIMESTEPS"), found["timesteps"])
    if "P_VECTOR_SHAPE" in training:
        shape = _integers(training, "P_VECTOR_SHAPE")
        if not shape or shape[0] != 1:
            raise CheckpointError(
                f"config.pickle says P_VECTOR_SHAPE={shape}: its first entry must be 1 "
                "(the original model asserts it)"
            )
    if "plb_channel_inputs" in training:
        # entry 0 is replaced by the image's channels in the original model
        channels = _integers(training, "plb_channel_inputs", layers + 1)[1:]
        declared["plb_channel_inputs[1:]"] = (channels, found["channels"])
    if "plb_layer_filter_sizes" in training:
        kernels = _integers(training, "plb_layer_filter_sizes", layers)
        declared["plb_layer_filter_sizes"] = (kernels, found["kernels"])
    if "IMG_SHAPE" in training:
        shape = _integers(training, "IMG_SHAPE", 3)
        if shape[0] != found["image_channels"]:
            raise CheckpointError(
                f"config.pickle says IMG_SHAPE={shape}, the weights take "
                f"{found['image_channels']} channel(s)"
            )
    if "BASE_CH" in model:
        declared["BASE_CH"] = (_integer(model, "BASE_CH"), found["base"])
    if "BASE_CH_MULT" in model:
        declared["BASE_CH_MULT"] = (_integers(model, "BASE_CH_MULT"), found["mults"])
    if "APPLY_ATTENTION" in model:
        flags = model["APPLY_ATTENTION"]
        if not isinstance(flags, (list, tuple)) or not all(type(f) is bool for f in flags):
            raise CheckpointError(f"config.pickle: APPLY_ATTENTION must be bools, got {flags!r}")
        declared["APPLY_ATTENTION"] = (tuple(flags), found["attention"])
    if "TIME_EMB_MULT" in model:
        declared["TIME_EMB_MULT"] = (_integer(model, "TIME_EMB_MULT"), found["time_emb_mult"])
    for name, (value, weights) in declared.items():
        if value != weights:
            raise CheckpointError(f"config.pickle says {name}={value}, the weights say {weights}")


def infer_config(
    state: dict[str, torch.Tensor],
    reference: dict[str, dict[str, Any]] | None,
    image_size: int | None,
) -> PatronusConfig:
    """A PatronusConfig from the original weights, completed and checked by its config."""
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"the original state dict lacks {missing}")
    training = (reference or {}).get("TrainingConfig", {})
    model = (reference or {}).get("ModelConfig", {})
    prototypes = state["proactBlock.prototype_vectors"]
    num_prototypes = prototypes.shape[0]
    conv_keys = sorted(
        (k for k in state if re.match(r"proactBlock\.encoder\.features\.\d+\.weight$", k)),
        key=lambda k: int(k.split(".")[3]),
    )
    channels = tuple(state[k].shape[0] for k in conv_keys)
    kernels = tuple(state[k].shape[2] for k in conv_keys)
    if "plb_layer_strides" in training or "plb_layer_paddings" in training:
        strides = _integers(training, "plb_layer_strides", len(kernels))
        paddings = _integers(training, "plb_layer_paddings", len(kernels))
    else:
        default = ENCODER_224 if kernels == ENCODER_224.kernel_sizes else ENCODER_32_64
        strides, paddings = default.strides, default.paddings
    image_channels = state["first.weight"].shape[1]
    if image_size is None:
        if "IMG_SHAPE" not in training:
            raise CheckpointError("image size unknown: pass image_size= or the config.pickle")
        image_size = _integers(training, "IMG_SHAPE", 3)[-1]
    base = state["first.weight"].shape[0]
    encoder_kinds = _count_blocks(state, "encoder_blocks")
    num_res_blocks = encoder_kinds.index("down") if "down" in encoder_kinds else len(encoder_kinds)
    mults, attention, index = [], [], 0
    while index < len(encoder_kinds):
        out = state[f"encoder_blocks.{index}.conv_1.weight"].shape[0]
        mults.append(out // base)
        attention.append(f"encoder_blocks.{index}.attention.mhsa.in_proj_weight" in state)
        index += num_res_blocks + 1
    timesteps = state["time_embeddings.time_blocks.0.weight"].shape[0]
    emb_dim = state["time_embeddings.time_blocks.1.weight"].shape[0]
    found = {
        "num_prototypes": num_prototypes, "timesteps": timesteps, "channels": channels,
        "kernels": kernels, "image_channels": image_channels, "base": base,
        "mults": tuple(mults), "attention": tuple(attention), "time_emb_mult": emb_dim // base,
    }  # fmt: skip
    _check_against_weights(training, model, found)
    dropout = model.get("DROPOUT_RATE", 0.1)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool):
        raise CheckpointError(f"config.pickle: DROPOUT_RATE must be a number, got {dropout!r}")
    try:
        return PatronusConfig(
            image_channels=image_channels,
            image_size=image_size,
            num_prototypes=num_prototypes,
            encoder=EncoderConfig(channels, kernels, strides, paddings),
            unet=UNetConfig(
                base_channels=base,
                channel_mults=tuple(mults),
                num_res_blocks=num_res_blocks,
                attention=tuple(attention),
                bottleneck_attention="bottleneck_blocks.0.attention.mhsa.in_proj_weight" in state,
                dropout=float(dropout),
                time_emb_mult=emb_dim // base,
            ),
            diffusion=DiffusionConfig(timesteps=int(timesteps)),
        )
    except ValueError as error:
        raise CheckpointError(
            f"the original checkpoint describes no valid model: {error}"
        ) from error


def load_reference_checkpoint(
    ckpt: str | Path | dict[str, Any],
    config: str | Path | dict[str, Any] | None = None,
    image_size: int | None = None,
) -> Patronus:
    """Load an original ``ckpt.tar`` into a :class:`~patronus.Patronus`.

    Args:
        ckpt: path of ``ckpt.tar`` (or its loaded dict, or a bare state dict).
        config: path of ``config.pickle`` or its loaded dict; default: ``config.pickle`` beside
            ``ckpt`` when present. Without one, strides and paddings follow the paper's settings
            for the encoder's kernel size and ``image_size`` must be given.
        image_size: overrides the config's IMG_SHAPE.

    Returns:
        A Patronus in eval mode computing the original's activations and noise predictions.
    """
    if isinstance(ckpt, (str, Path)):
        path = Path(ckpt)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for bad archives
            raise CheckpointError(f"{path} is not a readable torch checkpoint: {error}") from error
        if config is None and (path.parent / "config.pickle").is_file():
            config = path.parent / "config.pickle"
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "proactBlock.prototype_vectors" not in state:
        raise CheckpointError("the checkpoint holds no original Patronus state dict under 'model'")
    reference = read_reference_config(Path(config)) if isinstance(config, (str, Path)) else config
    model = Patronus(infer_config(state, reference, image_size))
    unet = model.unet
    assert isinstance(unet, PatronusUNet)  # (for type checkers: the original's configs build ours)
    expected_table = unet.time_embedding.table
    if not torch.equal(state["time_embeddings.time_blocks.0.weight"].float(), expected_table):
        raise CheckpointError(
            "the checkpoint's time-embedding table differs from the sinusoidal one"
        )
    translated = {translate_key(k): v for k, v in state.items() if k not in _IGNORED}
    translated["prototype_layer.prototypes"] = translated["prototype_layer.prototypes"].flatten(1)
    missing, unexpected = model.load_state_dict(translated, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit: missing {[original_key(k) for k in missing[:5]]}, "
            f"unexpected {[original_key(k) for k in unexpected[:5]]}"
        )
    return model.eval()
