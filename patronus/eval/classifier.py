"""A small image classifier the project trains itself: the feature extractor of the offline
Fréchet distance (its penultimate layer) and the attribute classifier of shortcut diagnosis."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

FEATURES_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifierConfig:
    channels: int
    image_size: int
    outputs: int  # classes (softmax) or attributes (sigmoid)
    multilabel: bool = False  # binary attributes instead of one class
    width: int = 32
    feature_dim: int = 128

    def __post_init__(self) -> None:
        counts = {
            "channels": self.channels,
            "outputs": self.outputs,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }
        small = {name: value for name, value in counts.items() if value < 1}
        if small:
            raise ValueError(f"classifier sizes must be >= 1, got {small}")
        if self.image_size < 8:  # three 2x poolings
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


class SmallClassifier(nn.Module):
    """Conv-BN-ReLU x 3 with pooling, global average pooling, a feature layer, a linear head."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(block(config.channels, w), block(w, 2 * w), block(2 * w, 4 * w))
        self.features = nn.Sequential(nn.Linear(4 * w, config.feature_dim), nn.ReLU())
        self.head = nn.Linear(config.feature_dim, config.outputs)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> features (B, feature_dim)."""
        return self.features(self.body(images).mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """-> logits (B, outputs)."""
        return self.head(self.embed(images))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        logits = self(images)
        return logits.sigmoid() if self.config.multilabel else logits.softmax(dim=1)


def train_classifier(
    config: ClassifierConfig,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    learning_rate: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SmallClassifier:
    """Train on (images, targets) batches (cycled) for ``steps`` Adam steps on ``device``;
    returns it there, in eval mode. Targets: class indices (B,), or (B, outputs) in {0, 1} when
    multilabel, where NaN marks a missing value that the loss leaves out."""
    torch.manual_seed(seed)
    model = SmallClassifier(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    step = 0
    while step < steps:
        for images, targets in batches:
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            if config.multilabel:
                loss = _observed_binary_cross_entropy(logits, targets.float())
            else:
                loss = nn.functional.cross_entropy(logits, targets.long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= steps:
                break
    return model.eval()


def _observed_binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the targets that are not NaN (0 when none is)."""
    observed = ~torch.isnan(targets)
    total = nn.functional.binary_cross_entropy_with_logits(
        logits, targets.nan_to_num(0.0), weight=observed.float(), reduction="sum"
    )
    return total / observed.sum().clamp(min=1)


def save_classifier(model: SmallClassifier, folder: Path) -> Path:
    from patronus.checkpoint import save_tensors

    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), folder / FEATURES_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    return folder


def load_classifier(folder: Path) -> SmallClassifier:
    from patronus.checkpoint import CheckpointError, load_tensors

    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no classifier in {folder} (missing {CONFIG_FILE})")
    model = SmallClassifier(ClassifierConfig(**json.loads(path.read_text())))
    model.load_state_dict(load_tensors(folder / FEATURES_FILE))
    return model.eval()
