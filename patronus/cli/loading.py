"""What the commands load: checkpoints, images (files or the checkpoint's dataset) and activation
files, each failing with a one-line message that names the file."""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from patronus.cli.outputs import CommandError, say
from patronus.data.size import dataset_size


def load_checkpoint(args: argparse.Namespace):
    """The model of ``args.checkpoint`` (EMA weights unless ``--no-ema``) on ``args.device``."""
    from patronus.checkpoint import load_model

    say(f"loading {args.checkpoint}")
    model = load_model(args.checkpoint, ema=not args.no_ema, map_location=args.device).eval()
    model.set_precision(getattr(args, "precision", "fp32"))
    requested = getattr(args, "guidance_scale", None)
    try:  # a scale this model cannot guide with is the user's to fix, before any work
        scale = model.guidance_scale(requested)
    except ValueError as error:
        raise CommandError(str(error)) from error
    if getattr(args, "edit_guidance", 1.0) != 1.0 and scale != 1.0:
        raise CommandError(
            f"--edit-guidance needs inversions without prototype guidance, but the guidance "
            f"scale is {scale}: add --guidance-scale 1"
        )
    return model


def dataset_spec(checkpoint: Path) -> dict:
    """The dataset a run was trained on, as its checkpoint records it."""
    from patronus.checkpoint import read_config, resolve_checkpoint

    spec = read_config(resolve_checkpoint(checkpoint)).get("data")
    if spec is None:
        raise CommandError(
            f"{checkpoint} names no dataset (it was not trained by `patronus train`): give images "
            "with --images or a dataset with --dataset"
        )
    return spec


def dataset_builder(
    checkpoint: Path, model, data_dir: Path | None = None
) -> tuple[dict, Callable[[str], Dataset]]:
    """(the checkpoint's dataset spec, split -> that dataset at the model's image shape)."""
    from patronus.data.registry import build_dataset

    spec = dataset_spec(checkpoint)
    channels, size, _ = model.config.image_shape

    def build(split: str) -> Dataset:
        return build_dataset(
            spec["name"],
            data_dir or spec.get("data_dir"),
            split,
            size,
            channels,
            seed=spec.get("seed", 0),
        )

    return spec, build


def image_files(paths: list[Path]) -> list[Path]:
    from patronus.data.image_folder import find_images

    files = []
    for path in paths:
        if path.is_dir():
            files += find_images(path)
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"no such image file or folder: {path}")
    if not files:
        raise CommandError(f"no images found in {[str(p) for p in paths]}")
    return files


def load_images(args: argparse.Namespace, model) -> torch.Tensor:
    """(B, C, H, W) images from ``--images`` files, or ``--num`` from a dataset from ``--offset``
    (default: the checkpoint's own dataset)."""
    from patronus.data.images import load_image
    from patronus.data.registry import DATASETS, build_dataset, dataset_splits

    channels, size, _ = model.config.image_shape
    if args.images:
        files = image_files(args.images)
        say(f"reading {len(files)} image(s)")
        images = [load_image(f, channels, size) for f in files]
    else:
        if args.dataset:
            name, data_dir, seed = args.dataset, args.data_dir, 0
        else:
            spec = dataset_spec(args.checkpoint)
            name, data_dir, seed = (
                spec["name"],
                args.data_dir or spec.get("data_dir"),
                spec.get("seed", 0),
            )
        if name in DATASETS and args.split not in dataset_splits(name):
            raise CommandError(
                f"--split {args.split}: {name} has the splits {', '.join(dataset_splits(name))}"
            )
        dataset = build_dataset(name, data_dir, args.split, size, channels, seed=seed)
        available = dataset_size(dataset)
        if args.offset >= available:
            raise CommandError(
                f"--offset {args.offset} is past the last of the {available} {args.split} images "
                f"of {name}"
            )
        stop = min(args.offset + args.num, available)
        say(f"taking {name} {args.split} images {args.offset} .. {stop - 1}")
        images = [dataset[i][0] for i in range(args.offset, stop)]
        shape = tuple(images[0].shape)
        if shape != tuple(model.config.image_shape):  # CIFAR-10 and CheXpert keep their own
            raise CommandError(
                f"{name} images are {shape} but the model takes {tuple(model.config.image_shape)}"
            )
    return torch.stack(images).to(args.device)


def read_activations(path: Path) -> torch.Tensor:
    """Activations (B, P) from .pt, .npy or .safetensors (key "activations" or the only key)."""
    if not path.is_file():
        raise CommandError(f"no activation file {path}")
    try:
        value = _read_tensor_file(path)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise CommandError(f"{path} is not a readable activation file: {error}") from error
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise CommandError(f"{path} must hold a floating-point (B, P) tensor")
    return value.float()


def _read_tensor_file(path: Path):
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False))
    if path.suffix == ".safetensors":
        from patronus.checkpoint import load_tensors

        tensors = load_tensors(path)
        if "activations" in tensors:
            return tensors["activations"]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise CommandError(f"{path} holds {sorted(tensors)}; name the tensor 'activations'")
    if path.suffix == ".pt":
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for unreadable files
            raise CommandError(f"{path} is not a readable activation file: {error}") from error
        return value.get("activations") if isinstance(value, dict) else value
    raise CommandError(f"activation files must be .pt, .npy or .safetensors, got {path.name}")


def check_prior_flag(args: argparse.Namespace) -> None:
    """``--prior`` names the prior of ``--unconditional``: alone it would be ignored."""
    if args.prior is not None and not args.unconditional:
        raise CommandError(
            "--prior is the activation prior of --unconditional: add --unconditional, or drop "
            "--prior"
        )


def load_matching_prior(args: argparse.Namespace, model):
    """The activation prior of ``--prior`` (default: the ``prior/`` folder beside the
    checkpoint) on ``args.device``, refused unless it draws the model's P activations."""
    from patronus.checkpoint import resolve_checkpoint
    from patronus.models.prior import load_prior

    folder = args.prior if args.prior is not None else resolve_checkpoint(args.checkpoint) / "prior"
    prior = load_prior(folder).to(args.device)
    drawn, expected = prior.config.num_prototypes, model.config.num_prototypes
    if drawn != expected:
        raise CommandError(
            f"the activation prior in {folder} draws {drawn} activations, but the model has "
            f"{expected} prototypes: it was trained for another model (train one for this "
            "model with `patronus train-prior`)"
        )
    return prior


def check_finite(images: torch.Tensor, what: str) -> None:
    """Refuse to write NaN or Inf images (they would be saved as black PNGs)."""
    bad = ~torch.isfinite(images.flatten(1)).all(1)
    if bool(bad.any()):
        raise CommandError(
            f"{int(bad.sum())} of {len(images)} {what} hold NaN or Inf, and nothing was written: "
            "the activations are probably far outside the range the model was trained on"
        )
