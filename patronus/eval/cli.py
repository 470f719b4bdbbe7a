"""The evaluation commands of ``patronus``: evaluate probes / fid, diagnose, train-prior.
Registered by ``patronus.cli``; each reads the checkpoint's dataset from its config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_commands(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="prototype quality (probes, TAD) or FID/KID")
    kinds = evaluate.add_subparsers(dest="evaluation", required=True)

    probes = kinds.add_parser("probes", help="5-fold linear probes, TAD, captured attributes")
    _common(probes)
    probes.add_argument("--limit", type=int, default=10000, help="first N training images")
    probes.add_argument("--folds", type=int, default=5)
    probes.set_defaults(handler=_cmd_probes)

    fid = kinds.add_parser("fid", help="Fréchet distance and KID of generated images")
    _common(fid)
    fid.add_argument("--num", type=int, default=10000, help="generated images")
    fid.add_argument("--steps", type=int, default=50)
    fid.add_argument(
        "--unconditional",
        action="store_true",
        help="activations from the prior (train-prior) instead of training images",
    )
    fid.add_argument(
        "--classifier-steps",
        type=int,
        default=2000,
        help="training steps of the feature classifier when none is saved",
    )
    fid.add_argument(
        "--inception-weights",
        type=Path,
        help="pytorch-fid's pt_inception-2015-12-05 weights: the standard FID "
        "(default: the project's own classifier features)",
    )
    fid.set_defaults(handler=_cmd_fid)

    diagnose = sub.add_parser("diagnose", help="shortcut diagnosis for a target attribute")
    _common(diagnose)
    diagnose.add_argument("--target", required=True, help="attribute name, e.g. Smiling")
    diagnose.add_argument("--limit", type=int, default=5000)
    diagnose.add_argument("--num-images", type=int, default=64, help="images edited")
    diagnose.add_argument("--steps", type=int, default=50)
    diagnose.add_argument("--classifier-steps", type=int, default=1000)
    diagnose.set_defaults(handler=_cmd_diagnose)

    prior = sub.add_parser("train-prior", help="the activation prior for unconditional sampling")
    _common(prior)
    prior.add_argument("--epochs", type=int, default=200)
    prior.add_argument("--limit", type=int, help="first N training images")
    prior.set_defaults(handler=_cmd_train_prior)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint or run folder")
    parser.add_argument("--out", type=Path, help="output folder (default: inside the checkpoint)")
    parser.add_argument("--data-dir", type=Path, help="default: the checkpoint's dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-ema", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def _context(args: argparse.Namespace):
    """(model, dataset spec, folder of the checkpoint, dataset builder)."""
    from patronus.checkpoint import load_model, read_config, resolve_checkpoint
    from patronus.data.registry import build_dataset

    folder = resolve_checkpoint(args.checkpoint)
    spec = read_config(folder).get("data")
    if spec is None:
        raise ValueError("the checkpoint names no dataset; it was not trained by `patronus train`")
    model = load_model(folder, ema=not args.no_ema, map_location=args.device).eval()
    channels, size, _ = model.config.image_shape

    def dataset(split: str):
        return build_dataset(
            spec["name"],
            args.data_dir or spec.get("data_dir"),
            split,
            size,
            channels,
            seed=spec["seed"],
        )

    return model, spec, folder, dataset


def _write(out: Path, name: str, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


def _cmd_probes(args: argparse.Namespace) -> int:
    from patronus.eval.attributes import attribute_table
    from patronus.eval.encode import encode_dataset
    from patronus.eval.probes import linear_probes, tad

    model, spec, folder, dataset = _context(args)
    train = dataset("train")
    activations, labels = encode_dataset(model, train, args.limit, progress=not args.no_progress)
    table = attribute_table(spec["name"], labels, getattr(train, "attribute_names", None))
    result = {
        "dataset": spec["name"],
        "images": len(activations),
        "folds": args.folds,
        "probes": linear_probes(activations, table.values, table.names, args.folds, args.seed),
    }
    binary = table.binary_only()
    if len(binary.names) >= 1 and model.num_prototypes >= 2:
        complete = ~torch.isnan(binary.values).any(1)
        result["tad"] = tad(
            activations[complete],
            binary.values[complete],
            binary.names,
            args.folds,
            args.seed,
            groups=binary.groups,
        )
    _write(args.out or folder / "evaluation", "probes.json", result)
    return 0


def _classifier(folder: Path, model, dataset, steps: int, seed: int):
    """The dataset's feature classifier, trained (and saved beside the checkpoint) when missing."""
    from patronus.eval.classifier import (
        ClassifierConfig,
        load_classifier,
        save_classifier,
        train_classifier,
    )

    saved = folder / "classifier"
    if (saved / "classifier.json").is_file():
        return load_classifier(saved)
    train = dataset("train")
    labels = torch.stack([torch.as_tensor(train[i][1]) for i in range(min(len(train), 256))])
    classes = int(labels.max()) + 1 if labels.dim() == 1 else labels.shape[1]
    channels, size, _ = model.config.image_shape
    config = ClassifierConfig(channels, size, classes, multilabel=labels.dim() > 1)
    loader = torch.utils.data.DataLoader(
        train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    classifier = train_classifier(config, loader, steps, seed=seed)
    save_classifier(classifier, saved)
    return classifier


def _cmd_fid(args: argparse.Namespace) -> int:
    from patronus.eval.generation import distances, generate, write_pngs

    model, _, folder, dataset = _context(args)
    out = args.out or folder / "evaluation" / "fid"
    generator = torch.Generator(args.device).manual_seed(args.seed)
    if args.unconditional:
        from patronus.models.prior import sample_prior

        activations = sample_prior(_load_prior(folder), args.num, generator=generator)
    else:  # conditioned on training images, never on the reference (test) images
        from patronus.eval.encode import encode_dataset

        activations, _ = encode_dataset(model, dataset("train"), args.num)
    generated = generate(
        model, activations, args.steps, generator=generator, progress=not args.no_progress
    )
    write_pngs(generated, out / "samples")
    test = dataset("test")
    reference = torch.stack([test[i][0] for i in range(min(len(test), args.num))])
    if args.inception_weights:
        from patronus.eval.inception import load_fid_inception

        extractor, features = load_fid_inception(args.inception_weights), "Inception-v3 pool3"
    else:
        classifier = _classifier(folder, model, dataset, args.classifier_steps, args.seed)
        extractor, features = classifier.embed, "patronus classifier (penultimate layer)"
    result = distances(extractor, generated, reference, args.seed)
    result.update(
        features=features,
        steps=args.steps,
        conditioning="prior" if args.unconditional else "training images",
    )
    _write(out, "fid.json", result)
    return 0


def _load_prior(folder: Path):
    from patronus.checkpoint import load_tensors
    from patronus.models.prior import ActivationPrior, PriorConfig

    path = folder / "prior"
    if not (path / "prior.json").is_file():
        raise FileNotFoundError(f"no activation prior in {path}: run `patronus train-prior` first")
    prior = ActivationPrior(PriorConfig(**json.loads((path / "prior.json").read_text())))
    prior.load_state_dict(load_tensors(path / "prior.safetensors"))
    return prior.eval()


def _cmd_train_prior(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from patronus.checkpoint import save_tensors
    from patronus.eval.encode import encode_dataset
    from patronus.models.prior import ActivationPrior, PriorConfig
    from patronus.train.prior import train_prior

    model, _, folder, dataset = _context(args)
    activations, _ = encode_dataset(
        model, dataset("train"), args.limit, progress=not args.no_progress
    )
    prior = ActivationPrior(PriorConfig(model.num_prototypes))
    losses = train_prior(
        prior, activations, args.epochs, seed=args.seed, progress=not args.no_progress
    )
    out = args.out or folder / "prior"
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(prior.state_dict(), out / "prior.safetensors")
    (out / "prior.json").write_text(json.dumps(asdict(prior.config), indent=2) + "\n")
    _write(
        out,
        "training.json",
        {
            "epochs": args.epochs,
            "images": len(activations),
            "first_loss": losses[0],
            "final_loss": losses[-1],
        },
    )
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from patronus.eval.attributes import attribute_table
    from patronus.eval.diagnosis import confirm, diagnose, write_diagnosis
    from patronus.eval.encode import encode_dataset

    model, spec, folder, dataset = _context(args)
    train = dataset("train")
    activations, labels = encode_dataset(model, train, args.limit, progress=not args.no_progress)
    table = attribute_table(spec["name"], labels, getattr(train, "attribute_names", None))
    binary = table.binary_only()
    if args.target not in binary.names:
        raise ValueError(f"unknown binary attribute {args.target!r}; choose from {binary.names}")
    complete = ~torch.isnan(binary.values).any(1)
    values = binary.values[complete].long()
    result = diagnose(activations[complete], values, binary.names, args.target)
    if result.flagged:
        images = torch.stack([train[i][0] for i in complete.nonzero()[: args.num_images, 0]])
        classifier = _attribute_classifier(model, train, binary, args)
        result = confirm(
            result,
            model,
            images,
            activations[complete][: len(images)],
            values[: len(images)],
            classifier,
            args.steps,
        )
    path = write_diagnosis(result, args.out or folder / "evaluation" / "diagnosis")
    print(result.to_json())
    print(f"wrote {path}")
    return 0


def _attribute_classifier(model, train, binary, args):
    """A multi-label classifier of the binary attributes, trained on the training images."""
    from patronus.eval.classifier import ClassifierConfig, train_classifier

    channels, size, _ = model.config.image_shape
    config = ClassifierConfig(channels, size, len(binary.names), multilabel=True)
    images = torch.stack([train[i][0] for i in range(min(len(train), args.limit))])
    targets = binary.values[: len(images)].nan_to_num(0)
    batches = list(zip(images.split(128), targets.split(128), strict=True))
    return train_classifier(config, batches, args.classifier_steps, seed=args.seed)
