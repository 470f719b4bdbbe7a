"""``patronus evaluate probes | fid``, ``patronus diagnose`` and ``patronus train-prior``: each
reads the checkpoint's dataset from its config and writes into its own output folder (never into
the checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from patronus.cli import arguments as a
from patronus.cli.loading import (
    check_finite,
    check_prior_flag,
    dataset_builder,
    load_checkpoint,
    load_matching_prior,
)
from patronus.cli.outputs import CommandError, now, output_folder, report_written, say
from patronus.diffusion.samplers import DEFAULT_STEPS
from patronus.utils.json_files import finite_json


def _common(parser: argparse.ArgumentParser, default_out: str) -> None:
    a.add_checkpoint(parser)
    parser.add_argument("--data-dir", type=Path, help="default: the checkpoint's dataset")
    a.add_seed(parser)
    a.add_device(parser)
    a.add_progress(parser)
    a.add_output(parser, default_out)


def add_commands(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="prototype quality (probes, TAD) or generation quality (FID, KID)",
        description="Evaluate a trained model: `probes` (prototype quality) or `fid`.",
    )
    kinds = evaluate.add_subparsers(dest="evaluation", required=True)

    probes = kinds.add_parser(
        "probes",
        help="5-fold linear probes, TAD, captured attributes",
        description="Linear probes of the dataset's labels from the activations (cross-validated, "
        "standardised per fold), TAD and captured attributes on held-out folds.",
    )
    _common(probes, "probes")
    a.number(probes, "--limit", a.positive_int, 10000, "the first N training images")
    a.number(probes, "--folds", a.at_least_two, 5, "cross-validation folds")
    probes.set_defaults(handler=run_probes)

    fid = kinds.add_parser(
        "fid",
        help="Fréchet distance and KID of generated images",
        description="Generate images (conditioned on training images, or from the prior), write "
        "them as PNG, and compare them with the test images: FID and KID.",
    )
    _common(fid, "fid")
    a.number(fid, "--num", a.at_least_two, 10000, "generated images (FID needs covariances)")
    a.number(
        fid, "--steps", a.positive_int, DEFAULT_STEPS, "network calls per image (DDIM: respaced)"
    )
    a.add_sampler(fid, ("ddim", "dpmpp-2m", "dpmpp-3m"))
    a.add_precision(fid)
    fid.add_argument(
        "--unconditional",
        action="store_true",
        help="activations from the prior (train-prior) instead of training images",
    )
    fid.add_argument("--prior", type=Path, help="the prior's folder (default CHECKPOINT/prior)")
    fid.add_argument(
        "--classifier",
        type=Path,
        help="a saved feature classifier (default CHECKPOINT/classifier when "
        "present, else one is trained and saved in the output folder)",
    )
    a.number(
        fid,
        "--classifier-steps",
        a.positive_int,
        2000,
        "training steps of a new feature classifier",
    )
    fid.add_argument(
        "--inception-weights",
        type=Path,
        help="pytorch-fid's pt_inception-2015-12-05 weights: the standard FID "
        "(default: the project's own classifier features)",
    )
    fid.set_defaults(handler=run_fid)

    diagnose = sub.add_parser(
        "diagnose",
        help="shortcut diagnosis for a target attribute",
        description="Does the model encode the target attribute with the same prototypes as "
        "another attribute? AUROC matrix, shared prototypes, flag and intervention.",
    )
    _common(diagnose, "diagnosis")
    diagnose.add_argument("--target", required=True, help="a binary attribute, e.g. Smiling")
    a.number(diagnose, "--limit", a.positive_int, 5000, "training images encoded")
    a.number(diagnose, "--num-images", a.positive_int, 64, "images edited by the intervention")
    a.number(diagnose, "--steps", a.positive_int, 50, "respaced DDIM steps of the intervention")
    a.number(
        diagnose,
        "--classifier-steps",
        a.positive_int,
        1000,
        "training steps of the attribute classifier",
    )
    a.add_guidance(diagnose)
    a.add_precision(diagnose)
    diagnose.set_defaults(handler=run_diagnose)

    prior = sub.add_parser(
        "train-prior",
        help="the activation prior for unconditional sampling",
        description="Train the activation prior (a small diffusion model over activation "
        "vectors) on the training set's activations; `sample --unconditional --prior OUT` and "
        "`evaluate fid --unconditional --prior OUT` use it.",
    )
    _common(prior, "prior")
    a.number(prior, "--epochs", a.positive_int, 200, "training epochs")
    prior.add_argument("--limit", type=a.at_least_two, help="the first N training images")
    prior.set_defaults(handler=run_train_prior)


def _start(args: argparse.Namespace, name: str):
    """Every evaluation command begins alike: the time, its output folder (refused before any
    work if it holds files), the model, and its dataset's spec and split builder."""
    started = now()
    out = output_folder(args.out, name, args.overwrite)
    model = load_checkpoint(args)
    spec, build = dataset_builder(args.checkpoint, model, args.data_dir)
    return started, out, model, spec, build


def _finish(out: Path, name: str, data: dict, started: float) -> int:
    text = finite_json(data)
    (out / name).write_text(text + "\n")
    print(text)
    report_written(out, started)
    return 0


def run_probes(args: argparse.Namespace) -> int:
    from patronus.eval.attributes import attribute_table
    from patronus.eval.encode import encode_dataset
    from patronus.eval.probes import linear_probes, tad

    started, out, model, spec, build = _start(args, "probes")
    train = build("train")
    say(f"encoding up to {args.limit} {spec['name']} training images")
    activations, labels = encode_dataset(model, train, args.limit, progress=not args.no_progress)
    if len(activations) < args.folds:
        raise CommandError(
            f"{args.folds}-fold probes need {args.folds} or more images, got {len(activations)}"
        )
    table = attribute_table(spec["name"], labels, getattr(train, "attribute_names", None))
    if not table.varying():
        raise CommandError(
            f"the {len(activations)} {spec['name']} training images carry no label that varies "
            "(a folder without class folders, FFHQ): probes and TAD need labelled images"
        )
    say(f"{args.folds}-fold linear probes")
    result = {
        "dataset": spec["name"],
        "images": len(activations),
        "folds": args.folds,
        "probes": linear_probes(activations, table.values, table.names, args.folds, args.seed),
    }
    binary = table.binary_only()
    if len(binary.names) >= 1 and model.num_prototypes >= 2:
        result["tad"] = tad(  # a missing label leaves its image out of that attribute only
            activations, binary.values, binary.names, args.folds, args.seed, groups=binary.groups
        )
    return _finish(out, "probes.json", result, started)


def _classifier(args, model, spec: dict, train: Dataset, out: Path):
    """The feature classifier: --classifier, the checkpoint's, or a new one trained on the
    training set's labels and saved in ``out``."""
    from patronus.checkpoint import resolve_checkpoint
    from patronus.data.labels import dataset_labels
    from patronus.eval.classifier import (
        ClassifierConfig,
        load_classifier,
        save_classifier,
        train_classifier,
    )
    from patronus.eval.classifier_targets import NoLabelsError, WithTargets, classifier_targets

    saved = args.classifier or resolve_checkpoint(args.checkpoint) / "classifier"
    if (saved / "classifier.json").is_file():
        say(f"feature classifier: {saved}")
        return load_classifier(saved)
    if args.classifier is not None:
        raise CommandError(f"no feature classifier in {args.classifier}")
    names = getattr(train, "attribute_names", None)
    try:
        wanted = classifier_targets(spec["name"], dataset_labels(train), names)
    except NoLabelsError as error:
        raise CommandError(
            f"{error}: a feature classifier would learn nothing and FID would be measured in "
            "random features; give --inception-weights FILE (pytorch-fid's weights) or "
            "--classifier DIR"
        ) from error
    say(
        f"training a feature classifier on {', '.join(wanted.names[:3])}"
        f"{' ...' if len(wanted.names) > 3 else ''} ({args.classifier_steps} steps)"
    )
    channels, size, _ = model.config.image_shape
    config = ClassifierConfig(channels, size, wanted.outputs, multilabel=wanted.multilabel)
    loader = torch.utils.data.DataLoader(
        WithTargets(train, wanted.targets),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    classifier = train_classifier(
        config, loader, args.classifier_steps, seed=args.seed, device=args.device
    )
    save_classifier(classifier, out / "classifier")
    return classifier


def run_fid(args: argparse.Namespace) -> int:
    from patronus.data.registry import has_test_split
    from patronus.eval.generation import distances, generate, write_pngs
    from patronus.utils.images import as_8_bit

    check_prior_flag(args)
    started, out, model, spec, build = _start(args, "fid")
    prior = load_matching_prior(args, model) if args.unconditional else None
    train = build("train")
    if has_test_split(spec["name"]):
        conditioning, reference_set = train, build("test")
        reference_name = "test images"
    else:  # one collection: condition on its first half, compare with the second
        half = min(args.num, len(train) // 2)
        conditioning = Subset(train, range(half))
        reference_set = Subset(train, range(half, len(train)))
        reference_name = f"training images {half}.. ({spec['name']} has no test split)"
    if len(reference_set) < 2:
        raise CommandError(
            f"FID compares with 2 or more reference images; the dataset has {len(reference_set)}"
        )
    if not args.unconditional and len(conditioning) < 2:
        raise CommandError(
            f"FID needs 2 or more training images to condition on, got {len(conditioning)}"
        )
    # the features first: a dataset they cannot be learned from is refused before any sampling
    if args.inception_weights:
        from patronus.eval.inception import load_fid_inception

        extractor = load_fid_inception(args.inception_weights).to(args.device)
        features = "Inception-v3 pool3"
    else:
        classifier = _classifier(args, model, spec, train, out).to(args.device)
        extractor, features = classifier.embed, "patronus classifier (penultimate layer)"
    generator = torch.Generator(args.device).manual_seed(args.seed)
    if prior is not None:
        from patronus.models.prior import sample_prior

        say(f"drawing {args.num} activation vectors from the prior")
        activations = sample_prior(prior, args.num, generator=generator)
    else:  # conditioned on training images, never on the reference images
        from patronus.eval.encode import encode_dataset

        count = min(args.num, len(conditioning))
        say(f"encoding {count} training images to condition on")
        activations, _ = encode_dataset(model, conditioning, count)
    say(f"generating {len(activations)} images ({args.steps} {args.sampler} network calls)")
    generated = generate(
        model, activations, args.steps, generator=generator, progress=not args.no_progress,
        sampler=args.sampler,
    )  # fmt: skip
    check_finite(generated, "generated images")
    write_pngs(generated, out / "samples")
    # the distances of the PNGs just written, as pytorch-fid would read them: 8-bit, like the
    # reference images
    generated = as_8_bit(generated)
    count = min(len(reference_set), args.num)
    reference = torch.stack([reference_set[i][0] for i in range(count)])
    say(f"features and distances of {len(generated)} generated vs {count} {reference_name}")
    result: dict[str, Any] = distances(
        extractor, generated, reference, args.seed, args.device, progress=not args.no_progress
    )
    if min(result["generated"], result["reference"]) < result["feature_dim"]:
        say(
            f"note: FID from {result['generated']} generated and {result['reference']} reference "
            f"images, fewer than the {result['feature_dim']} feature dimensions: the covariances "
            "are singular and the FID is biased upwards; compare it only with FIDs of as many "
            "images (KID is unbiased)"
        )
    result.update(
        features=features,
        steps=args.steps,
        sampler=args.sampler,
        precision=args.precision,
        conditioning="prior" if args.unconditional else "training images",
        reference_from=reference_name,
    )
    return _finish(out, "fid.json", result, started)


def run_train_prior(args: argparse.Namespace) -> int:
    from patronus.eval.encode import encode_dataset
    from patronus.models.prior import ActivationPrior, PriorConfig, save_prior
    from patronus.train.prior import train_prior

    started, out, model, spec, build = _start(args, "prior")
    say(f"encoding the {spec['name']} training images")
    activations, _ = encode_dataset(
        model, build("train"), args.limit, progress=not args.no_progress
    )
    if len(activations) < 2:
        raise CommandError(f"the prior needs 2 or more training images, got {len(activations)}")
    if not bool(torch.isfinite(activations).all()):
        raise CommandError("the model's activations of the training images hold NaN or Inf")
    prior = ActivationPrior(PriorConfig(model.num_prototypes))
    say(f"training the prior for {args.epochs} epochs on {len(activations)} activation vectors")
    losses = train_prior(
        prior,
        activations,
        args.epochs,
        seed=args.seed,
        progress=not args.no_progress,
        device=args.device,
    )
    save_prior(prior, out)
    summary = {
        "epochs": args.epochs,
        "images": len(activations),
        "first_loss": losses[0],
        "final_loss": losses[-1],
    }
    return _finish(out, "training.json", summary, started)


def run_diagnose(args: argparse.Namespace) -> int:
    from patronus.eval.attributes import attribute_table
    from patronus.eval.diagnosis import diagnose
    from patronus.eval.diagnosis_page import write_diagnosis
    from patronus.eval.encode import encode_dataset
    from patronus.eval.intervention import confirm

    started, out, model, spec, build = _start(args, "diagnosis")
    train = build("train")
    names = getattr(train, "attribute_names", None)
    # check the target against the dataset's attributes before encoding anything
    first = torch.stack([torch.as_tensor(train[i][1]) for i in range(min(len(train), 4))])
    available = attribute_table(spec["name"], first, names).binary_only().names
    if not available:
        raise CommandError(f"{spec['name']} has no binary attributes to diagnose")
    if args.target not in available:
        raise CommandError(f"unknown binary attribute {args.target!r}; choose from {available}")
    say(f"encoding up to {args.limit} {spec['name']} training images")
    activations, labels = encode_dataset(model, train, args.limit, progress=not args.no_progress)
    binary = attribute_table(spec["name"], labels, names).binary_only()
    # a missing label (NaN) leaves its image out of that attribute's evidence only
    result = diagnose(activations, binary.values, binary.names, args.target, seed=args.seed)
    if result.flagged:
        say("a shortcut is flagged: confirming it by intervention")
        has_target = ~torch.isnan(binary.values[:, binary.names.index(args.target)])
        edited = has_target.nonzero()[: args.num_images, 0]
        images = torch.stack([train[i][0] for i in edited])
        classifier = _attribute_classifier(model, train, binary, args)
        try:
            result = confirm(
                result,
                model,
                images,
                binary.values[edited],
                classifier,
                args.steps,
                seed=args.seed,
                guidance_scale=args.guidance_scale,
            )
        except ValueError as error:
            raise CommandError(f"{error}: raise --num-images") from error
    write_diagnosis(result, out)
    print(result.to_json())
    report_written(out, started)
    return 0


def _attribute_classifier(model, train, binary, args):
    """A multi-label classifier of the binary attributes, trained on the training images."""
    from patronus.eval.classifier import ClassifierConfig, train_classifier

    say(f"training an attribute classifier ({args.classifier_steps} steps)")
    channels, size, _ = model.config.image_shape
    config = ClassifierConfig(channels, size, len(binary.names), multilabel=True)
    images = torch.stack([train[i][0] for i in range(min(len(train), args.limit))])
    targets = binary.values[: len(images)]  # NaN (missing) is left out of the loss
    batches = list(zip(images.split(128), targets.split(128), strict=True))
    return train_classifier(
        config, batches, args.classifier_steps, seed=args.seed, device=args.device
    )
