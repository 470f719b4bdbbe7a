"""``patronus sample`` and ``patronus invert`` / ``reconstruct``: images from activations (of
images, files or the prior), and images to their DDIM latents and back."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from patronus.cli import arguments as a
from patronus.cli.loading import (
    check_finite,
    check_prior_flag,
    load_checkpoint,
    load_images,
    load_matching_prior,
    read_activations,
)
from patronus.cli.outputs import CommandError, now, output_folder, report_written, say
from patronus.diffusion import SamplerOptions
from patronus.diffusion.samplers import DEFAULT_STEPS
from patronus.utils.json_files import finite_json

GRID_COLUMNS = 64  # images shown side by side in samples.png / reconstructions.png
WRAPPED_COLUMNS = 16  # per row when samples have no originals or variations to align with


def _add_inputs(parser: argparse.ArgumentParser, steps: int, steps_help: str) -> None:
    from patronus.data.registry import DATASETS

    a.add_checkpoint(parser)
    parser.add_argument("--images", nargs="+", type=Path, help="image files or folders")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="take images from a dataset (default without --images: the checkpoint's own)",
    )
    parser.add_argument("--data-dir", type=Path, help="the dataset's folder")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    a.number(parser, "--num", a.positive_int, 16, "images taken from the dataset")
    a.number(parser, "--offset", a.nonnegative_int, 0, "index of the first dataset image taken")
    a.number(parser, "--steps", a.positive_int, steps, steps_help)
    a.number(parser, "--batch-size", a.positive_int, 256, "images decoded at once")
    a.add_guidance(parser)
    a.add_precision(parser)
    a.add_seed(parser)
    a.add_device(parser)
    a.add_progress(parser)


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sample",
        help="sample images conditioned on activations",
        description="Sample images conditioned on prototype activations: of images (--images, "
        "--dataset, default the checkpoint's test images), of a file (--activations) or drawn "
        "from the activation prior (--unconditional).",
    )
    _add_inputs(parser, DEFAULT_STEPS, "network calls per image (ddpm: all T)")
    parser.add_argument("--activations", type=Path, help=".pt, .npy or .safetensors of (B, P)")
    a.add_sampler(parser)
    a.number(parser, "--eta", a.nonnegative_float, 0.0, "DDIM stochasticity", note="deterministic")
    a.number(parser, "--variations", a.positive_int, 1, "samples per activation vector")
    parser.add_argument("--clip", action="store_true", help="clip predicted x0 to [-1, 1]")
    parser.add_argument(
        "--unconditional",
        action="store_true",
        help="draw --num activation vectors from the activation prior",
    )
    parser.add_argument(
        "--prior",
        type=Path,
        help="the prior's folder (patronus train-prior; default CHECKPOINT/prior)",
    )
    a.add_output(parser, "sample")
    parser.set_defaults(handler=sample)
    for name, text in (
        ("invert", "DDIM-invert images into x_T, and decode them back"),
        ("reconstruct", "same as invert: originals above their reconstructions"),
    ):
        parser = sub.add_parser(name, help=text, description=text + ".")
        _add_inputs(parser, 50, "respaced DDIM steps")
        a.add_output(parser, name)
        parser.set_defaults(handler=invert)


def _activations(args: argparse.Namespace, model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(s (B, P), the images they come from or None)."""
    if args.unconditional:
        from patronus.models.prior import sample_prior

        prior = load_matching_prior(args, model)
        say(f"drawing {args.num} activation vectors from the prior")
        generator = torch.Generator(args.device).manual_seed(args.seed)
        return sample_prior(prior, args.num, generator=generator), None
    if args.activations:
        s = read_activations(args.activations).to(args.device)
        try:
            model.check_activations(s)
        except (TypeError, ValueError) as error:
            raise CommandError(f"{args.activations}: {error}") from error
        return s, None
    images = load_images(args, model)
    with torch.no_grad():
        return model.encode(images), images


def _check_sources(args: argparse.Namespace) -> None:
    """One source of activations: the prior, a file, or images (the default)."""
    check_prior_flag(args)
    images = [flag for flag, value in (("--images", args.images), ("--dataset", args.dataset))
              if value is not None]  # fmt: skip
    if args.unconditional and (args.activations or images):
        flags = " and ".join([*(["--activations"] if args.activations else []), *images])
        raise CommandError(f"--unconditional draws the activations from the prior: drop {flags}")
    if args.activations and images:
        raise CommandError(
            f"--activations gives the activations, {' and '.join(images)} the images to encode "
            "for them: pass one"
        )


def sample(args: argparse.Namespace) -> int:
    from patronus.checkpoint import save_tensors
    from patronus.utils.images import save_grid

    _check_sources(args)
    if args.sampler == "ddpm" and "steps" in args.given_options:
        raise CommandError(
            f"--steps {args.steps} does not apply to --sampler ddpm, which runs all T steps of "
            "the model's schedule: drop --steps, or take fewer steps with --sampler ddim "
            "(--eta 1 for a stochastic sampler)"
        )
    try:  # refused before anything is loaded or written
        options = SamplerOptions(
            args.sampler,
            args.steps,
            args.eta,
            clip_x0=args.clip,
            guidance_scale=args.guidance_scale,
        )
    except ValueError as error:
        raise CommandError(str(error)) from error
    started = now()
    out = output_folder(args.out, "sample", args.overwrite)
    model = load_checkpoint(args)
    s, originals = _activations(args, model)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    steps = options.network_calls(model.schedule)
    rows = []
    for index in range(args.variations):
        say(
            f"sampling {s.shape[0]} image(s), {steps} {args.sampler} network calls "
            f"(variation {index + 1} of {args.variations})"
        )
        x_T = model.initial_noise(s.shape[0], generator)  # as one batch would draw it
        rows.append(
            torch.cat(
                [
                    model.sample(s_part, options, generator=generator, x_T=x_part, progress=bar)
                    for s_part, x_part, bar in _batches(args, s, x_T)
                ]
            )
        )
    samples = torch.stack(rows, 1)  # (B, variations, C, H, W)
    check_finite(samples.flatten(0, 1), "samples")
    shown = min(s.shape[0], GRID_COLUMNS)
    more = f" (the first {shown} of {len(s)}; all in samples.safetensors)" if shown < len(s) else ""
    if originals is None and args.variations == 1:  # nothing to align: wrap the samples
        columns = min(shown, WRAPPED_COLUMNS)
        save_grid(rows[0][:shown], out / "samples.png", nrow=columns)
        layout = f"{shown} samples, {columns} per row{more}"
    else:  # a column per activation vector: its image, then its samples
        grid_rows = ([] if originals is None else [originals]) + rows
        save_grid(torch.cat([row[:shown] for row in grid_rows]), out / "samples.png", nrow=shown)
        first = "originals, then " if originals is not None else ""
        layout = f"{first}{args.variations} row(s) of samples{more}"
    save_tensors({"samples": samples, "activations": s}, out / "samples.safetensors")
    print(f"samples.png: {layout}")
    report_written(out, started)
    return 0


def _batches(args: argparse.Namespace, *tensors: torch.Tensor):
    """``--batch-size`` chunks of the tensors, each with whether the sampler shows its progress
    bar: one batch shows its steps, several show one bar over the batches instead."""
    from tqdm import tqdm

    chunks = list(zip(*(t.split(args.batch_size) for t in tensors), strict=True))
    several = len(chunks) > 1
    bar = tqdm(chunks, desc="batches", disable=args.no_progress or not several)
    for chunk in bar:
        yield (*chunk, not (args.no_progress or several))


def invert(args: argparse.Namespace) -> int:
    from patronus.checkpoint import save_tensors
    from patronus.interpret.trust import RECONSTRUCTION_BAR, reconstructs
    from patronus.interpret.what import per_image_mse
    from patronus.utils.images import save_grid

    started = now()
    out = output_folder(args.out, args.command, args.overwrite)
    model = load_checkpoint(args)
    images = load_images(args, model)
    with torch.no_grad():
        s = model.encode(images)
    say(f"inverting {images.shape[0]} image(s) and decoding them back, {args.steps} DDIM steps")
    latents, decoded = [], []
    scale = args.guidance_scale
    for images_part, s_part, bar in _batches(args, images, s):
        latents.append(model.invert(images_part, s_part, args.steps, progress=bar,
                                    guidance_scale=scale))  # fmt: skip
        decoded.append(model.sample(s_part, args.steps, x_T=latents[-1], progress=bar,
                                    guidance_scale=scale, sampler="ddim"))  # fmt: skip
    x_T, reconstructions = torch.cat(latents), torch.cat(decoded)
    check_finite(reconstructions, "reconstructions")
    save_tensors({"x_T": x_T, "activations": s}, out / "latents.safetensors")
    shown = min(images.shape[0], GRID_COLUMNS)
    grid = torch.cat([images[:shown], reconstructions[:shown]])
    save_grid(grid, out / "reconstructions.png", shown)
    per_image = per_image_mse(reconstructions, images)
    report = {
        "images": images.shape[0],
        "steps": args.steps,
        "reconstruction_mse": per_image.mean().item(),
        "per_image_mse": per_image.tolist(),
    }
    (out / "reconstruction.json").write_text(finite_json(report) + "\n")
    report_written(out, started)
    print(finite_json(report, indent=None))
    median = float(per_image.median())
    if not reconstructs(median):
        say(
            f"warning: the reconstructions do not reproduce the images (median MSE {median:.3g} "
            f"> {RECONSTRUCTION_BAR}, images in [-1, 1]): DDIM inversion with {args.steps} steps "
            "is too coarse for this model; try more --steps (e.g. 50)"
        )
    return 0
