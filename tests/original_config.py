"""The original implementation's config classes and how it writes ``config.pickle``.

A re-statement of nina-weng/patronus ``train/train_config.py`` (its field names, order, types and
per-dataset defaults) and of ``save_config_train_diffusion``: ``asdict`` of each dataclass, pickled
with the default protocol. ``BaseConfig.DEVICE`` holds a ``torch.device`` (``get_default_device``),
``P_VECTOR_SHAPE`` is ``(1, D)`` (the original model asserts the first entry is 1) and
``plb_channel_inputs`` lists the encoder's input channels first (1, whatever the dataset: the
model overwrites it with the image's channels).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass, field, make_dataclass

import torch

# ds_name -> (IMG_SHAPE, BATCH_SIZE, NUM_EPOCHS, NUM_PROTOS, encoder) as in train_config.py
_ENCODER_32_64 = ((1, 32, 64, 64, 128), (3, 3, 3, 3), (2, 1, 1, 1), (1, 0, 0, 0))
_ENCODER_224 = ((1, 32, 64, 64, 128, 128), (5, 5, 5, 5, 5), (2, 2, 1, 1, 1), (1, 1, 0, 0, 0))
DATASETS = {
    "FMNIST_clean": ((1, 32, 32), 128, 100, 30, _ENCODER_32_64),
    "cifar10": ((3, 32, 32), 128, 300, 100, _ENCODER_32_64),
    "CelebA": ((3, 64, 64), 64, 300, 100, _ENCODER_32_64),
    "CHEXPERT_CardioPM": ((1, 224, 224), 16, 300, 100, _ENCODER_224),
}


@dataclass
class ModelConfig:
    BASE_CH: int = 64
    BASE_CH_MULT: tuple[int] = (1, 2, 4, 4)
    APPLY_ATTENTION: tuple[bool] = (False, False, False, False)
    ATTENTION_TYPE: str = "ori_att"
    DROPOUT_RATE: float = 0.1
    TIME_EMB_MULT: int = 4


def _base_config(ds_name: str, device: torch.device):
    split = "train"
    record_dir = "./records/diffusion/patronus/"
    dataset = f"{ds_name}-{split}"
    fields = [
        ("repo_home_dir", str, "/home/user/patronus"),
        ("DEVICE", str, device),
        ("exp_type", str, "patronus"),
        ("ds_name", str, ds_name),
        ("split", str, split),
        ("record_dir", str, record_dir),
        ("DATASET", str, dataset),
        ("root_log_dir", str, os.path.join(record_dir, dataset, "Logs_Checkpoints", "Inference")),
        (
            "root_checkpoint_dir",
            str,
            os.path.join(record_dir, dataset, "Logs_Checkpoints", "checkpoints"),
        ),
        ("log_dir", str, "version_0"),
        ("checkpoint_dir", str, "version_0"),
    ]
    return make_dataclass("BaseConfig", [(n, t, field(default=d)) for n, t, d in fields])()


def _training_config(ds_name: str, dataset: str):
    image_shape, batch, epochs, protos, (channels, kernels, strides, paddings) = DATASETS[ds_name]
    fields = [
        ("TIMESTEPS", int, 1000),
        ("IMG_SHAPE", tuple, image_shape),
        ("BATCH_SIZE", int, batch),
        ("SAMPLE_NUM", int, min(batch * 4, 32)),
        ("NUM_EPOCHS", int, epochs),
        ("NUM_PROTOS", int, protos),
        ("P_VECTOR_SHAPE", tuple, (1, 128)),
        ("dataset", str, dataset),
        ("encoder_type", str, "basic_conv"),
        ("new_training", bool, False),
        ("training_from_version", int, 1),
        ("loss_fn", tuple, ("denoiser", "distinct")),
        ("loss_lambda", tuple, (1.0, 0.0)),
        ("distinct_margin", float, 0.2),
        ("plb_channel_inputs", tuple, channels),
        ("plb_layer_filter_sizes", tuple, kernels),
        ("plb_layer_strides", tuple, strides),
        ("plb_layer_paddings", tuple, paddings),
        ("LR", float, 1e-5),
        ("NUM_WORKERS", int, 2),
    ]
    return make_dataclass("TrainingConfig", [(n, t, field(default=d)) for n, t, d in fields])()


def original_config(
    ds_name: str = "FMNIST_clean", device: str = "cuda", **training_changes
) -> dict[str, dict]:
    """The dict ``save_config_train_diffusion`` pickles (with ``training_changes``)."""
    base = _base_config(ds_name, torch.device(device))
    training = _training_config(ds_name, base.DATASET)
    config = {
        "BaseConfig": asdict(base),
        "ModelConfig": asdict(ModelConfig()),
        "TrainingConfig": asdict(training),
    }
    config["TrainingConfig"].update(training_changes)
    return config


def write_original_config(folder, config: dict, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    with open(os.path.join(folder, "config.pickle"), "wb") as handle:
        pickle.dump(config, handle, protocol=protocol)
