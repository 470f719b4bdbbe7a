"""Per-dataset presets: the paper's settings (Weng et al., ICLR 2026) and small CPU presets.

A preset is a model configuration plus its training defaults and dataset. Paper presets use the
paper's batch size, epoch count and learning rate; the CPU presets shrink the UNet so a run
finishes in minutes on two cores (``fmnist-cpu`` is the demo's, ``synthetic-tiny`` the tests');
``fmnist-mid`` sits between ``fmnist-cpu`` and the paper's ``fmnist32``, for a short GPU run.

The CPU presets use the linear activation s = -d. With the paper's log((d + 1) / (d + 1e-4)),
patch-prototype distances of 5-30 early in training give activations of 0.03-0.2 that barely
vary between images: a short run learns to ignore them (edits then change nothing). -d carries
the same ordering at a scale the denoiser uses within minutes of training.
"""

from __future__ import annotations

from dataclasses import dataclass

from patronus.models.config import EncoderConfig, PatronusConfig, UNetConfig

ENCODER_32_64 = EncoderConfig()
ENCODER_224 = EncoderConfig(
    channels=(32, 64, 64, 128, 128),
    kernel_sizes=(5, 5, 5, 5, 5),
    strides=(2, 2, 1, 1, 1),
    paddings=(1, 1, 0, 0, 0),
)


@dataclass(frozen=True)
class Preset:
    name: str
    model: PatronusConfig
    dataset: str
    batch_size: int
    epochs: int
    learning_rate: float
    description: str


def _paper(name, dataset, channels, size, prototypes, batch, epochs, encoder=ENCODER_32_64):
    model = PatronusConfig(
        image_channels=channels, image_size=size, num_prototypes=prototypes, encoder=encoder
    )
    return Preset(name, model, dataset, batch, epochs, 1e-5, f"paper setting for {dataset}")


_SMALL_UNET = UNetConfig(
    base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention=(False,) * 3, dropout=0.0
)
# the paper's fmnist32 UNet (dropout, attention, two blocks per level) with widths 48, 96, 96, 96
# instead of 64, 128, 256, 256: 5.4 M parameters in all, about the most whose EMA weights (one
# 21.6 MB fp32 file) ship under 25 MB
_MID_UNET = UNetConfig(base_channels=48, channel_mults=(1, 2, 2, 2))
_TINY_UNET = UNetConfig(
    base_channels=16,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention=(False, False),
    dropout=0.0,
    time_emb_mult=2,
)
_TINY_ENCODER = EncoderConfig(channels=(8, 16, 16, 16))

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        _paper("fmnist32", "fashion-mnist", 1, 32, 30, 128, 100),
        _paper("cifar10-32", "cifar10", 3, 32, 100, 128, 300),
        _paper("celeba64", "celeba", 3, 64, 100, 64, 300),
        _paper("ffhq64", "ffhq", 3, 64, 100, 64, 300),
        _paper("chexpert224", "chexpert", 1, 224, 100, 16, 300, encoder=ENCODER_224),
        Preset(
            "fmnist-cpu",
            PatronusConfig(
                image_channels=1,
                image_size=32,
                num_prototypes=30,
                activation="linear",
                unet=_SMALL_UNET,
            ),
            "fashion-mnist",
            64,
            1,
            1e-3,
            "small Fashion-MNIST model for 2 CPU cores (the demo)",
        ),
        Preset(
            "fmnist-mid",
            PatronusConfig(
                image_channels=1,
                image_size=32,
                num_prototypes=30,
                activation="linear",
                unet=_MID_UNET,
            ),
            "fashion-mnist",
            128,
            20,
            1e-3,
            "Fashion-MNIST model for a GPU whose weights ship under 25 MB",
        ),
        Preset(
            "synthetic-tiny",
            PatronusConfig(
                image_channels=3,
                image_size=24,
                num_prototypes=8,
                activation="linear",
                encoder=_TINY_ENCODER,
                unet=_TINY_UNET,
                diffusion=PatronusConfig().diffusion,
            ),
            "synthetic",
            32,
            1,
            2e-3,
            "tiny model on the synthetic shapes, for tests and smoke runs",
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
