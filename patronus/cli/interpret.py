"""``patronus visualize``, ``trace`` and ``report``: what, where and when, over the checkpoint's
own dataset (test images edited, a seeded sample of training images for the bounds)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from patronus.cli import arguments as a
from patronus.cli.loading import dataset_builder, load_checkpoint
from patronus.cli.outputs import CommandError, now, output_folder, report_written, say
from patronus.data.size import dataset_size
from patronus.diffusion.samplers import DEFAULT_SAMPLER
from patronus.interpret.prototype_guidance import PrototypeGuidance
from patronus.interpret.what import repeated_indices

COMMANDS = {
    "visualize": "what + where: prototype visualisations and nearest patches (PNG, JSON, NPZ)",
    "trace": "when: emergence of prototypes during denoising (PNG, JSON, NPZ)",
    "report": "everything as one self-contained HTML page (+ figures and raw numbers)",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    for name, text in COMMANDS.items():
        parser = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        a.add_checkpoint(parser)
        parser.add_argument("--data-dir", type=Path, help="default: the checkpoint's dataset")
        a.number(
            parser,
            "--num-images",
            a.at_least_two if name == "report" else a.positive_int,
            8,
            "test images every prototype is edited into"
            + (" (the report interpolates between two)" if name == "report" else ""),
        )
        parser.add_argument(
            "--prototypes",
            type=a.nonnegative_int,
            nargs="+",
            help="prototype indices (default: all)",
        )
        a.number(
            parser, "--steps", a.positive_int, 50, "respaced DDIM steps of inversion and decoding"
        )
        a.number(
            parser,
            "--quantile",
            a.quantile,
            0.99,
            "each edit sets s_J to this quantile of J's activations over the reference images",
        )
        parser.add_argument(
            "--global-max",
            action="store_true",
            help="the original's bound instead: one global maximum for all",
        )
        a.number(
            parser,
            "--reference-size",
            a.positive_int,
            512,
            "training images drawn (seeded) for the bounds",
        )
        if name != "trace":
            a.number(
                parser,
                "--pool-size",
                a.positive_int,
                2048,
                "training images searched for the nearest patches",
            )
        if name == "report":
            a.add_sampler(
                parser, ("ddim", "dpmpp-2m", "dpmpp-3m"),
                "sampler of the variations (fresh noise; inversions and edits stay DDIM): ",
            )  # fmt: skip
        a.add_guidance(parser)
        a.add_precision(parser)
        parser.add_argument(
            "--edit-guidance",
            type=a.positive_float,
            default=1.0,
            help="decode edits as own + w (edit - own), w times the edit's effect on each step; "
            "unedited decodes stay the reconstructions (default 1: plain edits)",
        )
        if name != "trace":
            parser.add_argument(
                "--edit-region",
                action="store_true",
                help="decode the gallery's edits confined to the box where the prototype fires "
                "in the image (the rest follows the unedited decode): shows what the model draws "
                "there; the inside/outside ratio is then not judged",
            )
            parser.add_argument(
                "--prototype-guidance",
                type=a.guidance_strength,
                nargs="?",
                const=PrototypeGuidance.strength,
                metavar="STRENGTH",
                help="guide the gallery's edits by each prototype's own gradient: nudge the "
                "predicted clean image towards the bound after every late step (t <= T/2, one "
                "blur before the prototype layer), STRENGTH (L2) in all, shared over the steps; "
                "the edits then show the prototype layer's pattern as the denoiser draws it, and "
                "their fidelity is not judged (default: off, the model's conditioning alone; "
                f"given without a value: {PrototypeGuidance.strength}, the measured best)",
            )
        a.add_seed(parser)
        a.add_device(parser)
        a.add_progress(parser)
        a.add_output(parser, name)
        parser.set_defaults(handler=run)


def _inputs(args: argparse.Namespace, model):
    """Test images, a seeded reference sample and (except for trace) a search pool."""
    from patronus.interpret.report import ReportInputs

    spec, build = dataset_builder(args.checkpoint, model, args.data_dir)

    def take(split: str, count: int, shuffle: bool) -> torch.Tensor:
        dataset = build(split)
        size = dataset_size(dataset)
        count = min(count, size)
        if shuffle:
            generator = torch.Generator().manual_seed(args.seed)
            indices = torch.randperm(size, generator=generator)[:count].tolist()
        else:
            indices = list(range(count))
        return torch.stack([dataset[i][0] for i in indices])

    say(f"reading {spec['name']} images")
    pool_size = getattr(args, "pool_size", None)
    from patronus.data.registry import has_test_split

    images = take("test", args.num_images, False)
    held_out = "test" if has_test_split(spec["name"]) else "training (it has no test split)"
    info = {
        "checkpoint": str(args.checkpoint),
        "dataset": spec["name"],
        "prototypes": model.num_prototypes,
        "images": f"the first {len(images)} {held_out} images",
        "reference set": f"{args.reference_size} training images, seed {args.seed}",
    }
    return ReportInputs(
        images=images,
        reference=take("train", args.reference_size, True),
        pool=take("train", pool_size, False) if pool_size else torch.empty(0),
        info=info,
    )


def _prototype_guidance(strength: float | None) -> PrototypeGuidance | None:
    return None if strength is None else PrototypeGuidance(strength=strength)


def run(args: argparse.Namespace) -> int:
    from patronus.interpret import report as reporting

    started = now()
    out = output_folder(args.out, args.command, args.overwrite)
    model = load_checkpoint(args)
    if args.prototypes and max(args.prototypes) >= model.num_prototypes:
        raise CommandError(f"the model has prototypes 0 .. {model.num_prototypes - 1}")
    repeated = repeated_indices(args.prototypes or ())
    if repeated:
        raise CommandError(f"--prototypes lists {', '.join(map(str, repeated))} more than once")
    inputs = _inputs(args, model)
    if args.command == "report" and len(inputs.images) < 2:
        raise CommandError(
            f"the report interpolates between two test images; the dataset has {len(inputs.images)}"
        )
    options = reporting.ReportOptions(
        num_images=args.num_images,
        steps=args.steps,
        quantile=args.quantile,
        global_max=args.global_max,
        seed=args.seed,
        prototypes=tuple(args.prototypes) if args.prototypes else None,
        progress=not args.no_progress,
        guidance_scale=args.guidance_scale,
        edit_guidance=args.edit_guidance,
        edit_region=getattr(args, "edit_region", False),
        prototype_guidance=_prototype_guidance(getattr(args, "prototype_guidance", None)),
        sampler=getattr(args, "sampler", DEFAULT_SAMPLER),
    )
    write = {
        "visualize": reporting.write_visualization,
        "trace": reporting.write_emergence,
        "report": reporting.build_report,
    }[args.command]
    path = write(model.to(args.device), inputs, out, options, log=say)
    report_written(out, started)
    print(f"open {path}" if path.suffix == ".html" else f"main figure: {path}")
    return 0
