"""The ``patronus`` command: info, train, sample, invert / reconstruct."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from patronus._backend import BackendUnavailableError
from patronus.checkpoint import CheckpointError
from patronus.data.errors import DataLayoutError

USER_ERRORS = (
    BackendUnavailableError,
    CheckpointError,
    DataLayoutError,
    FileNotFoundError,
    ValueError,
)


def _cmd_info(args: argparse.Namespace) -> int:
    from patronus._info import info

    print(info())
    return 0


# ---------------------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    from patronus.data.registry import DATASETS
    from patronus.models.presets import PRESETS

    parser = sub.add_parser("train", help="train a Patronus model (torchrun for several processes)")
    parser.add_argument("--preset", default="fmnist-cpu", choices=sorted(PRESETS))
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--dataset", choices=DATASETS, help="default: the preset's")
    parser.add_argument("--data-dir", type=Path, help="dataset folder (Fashion-MNIST: auto)")
    parser.add_argument("--limit", type=int, help="use only the first N training images")
    parser.add_argument(
        "--fallback-synthetic",
        action="store_true",
        help="use the synthetic dataset when the dataset's files are missing",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the preset's epochs)")
    parser.add_argument("--epochs", type=float, help="epochs, converted to steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    parser.add_argument("--ema", type=float, help="EMA decay, e.g. 0.999 (default: none)")
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--distinct-weight", type=float, default=0.0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_cmd_train)


def _training_dataset(spec: dict, image_shape: tuple[int, int, int]):
    from patronus.data.registry import build_dataset

    channels, size, _ = image_shape
    return build_dataset(
        spec["name"], spec.get("data_dir"), "train", size, channels, spec.get("limit"), spec["seed"]
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from patronus.checkpoint import read_config, resolve_checkpoint
    from patronus.models import Patronus, PatronusConfig
    from patronus.models.presets import get_preset
    from patronus.train import TrainConfig, Trainer

    preset = get_preset(args.preset)
    if args.resume:
        saved = read_config(resolve_checkpoint(args.out))
        model_config = PatronusConfig.from_dict(saved["model"])
        data_spec = saved["data"]
        train_config = TrainConfig.from_dict(saved["train"])
        if args.steps:
            train_config = train_config.replace(max_steps=args.steps)
    else:
        model_config = preset.model
        data_spec = {
            "name": args.dataset or preset.dataset,
            "data_dir": str(args.data_dir) if args.data_dir else None,
            "limit": args.limit,
            "seed": args.seed,
        }
    try:
        dataset = _training_dataset(data_spec, model_config.image_shape)
    except DataLayoutError as error:
        if not args.fallback_synthetic or args.resume:
            raise
        print(f"{error}\n-> falling back to the synthetic shapes dataset (--fallback-synthetic)")
        data_spec = {**data_spec, "name": "synthetic", "data_dir": None}
        dataset = _training_dataset(data_spec, model_config.image_shape)
    if not args.resume:
        batch = args.batch_size or preset.batch_size
        if args.steps:
            steps = args.steps
        else:
            epochs = args.epochs if args.epochs is not None else preset.epochs
            steps = max(1, round(epochs * len(dataset) / batch))
        train_config = TrainConfig(
            max_steps=steps,
            batch_size=batch,
            learning_rate=args.lr or preset.learning_rate,
            warmup_steps=args.warmup,
            amp=args.amp,
            ema_decay=args.ema,
            grad_clip=args.grad_clip or None,
            distinct_loss_weight=args.distinct_weight,
            seed=args.seed,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            sample_every=args.sample_every,
            num_workers=args.num_workers,
            progress=not args.no_progress,
        )
    torch.manual_seed(args.seed)
    model = Patronus(model_config)
    trainer = Trainer(
        model,
        dataset,
        train_config,
        args.out,
        args.device,
        metadata={"preset": args.preset, "data": data_spec},
    )
    if args.resume:
        print(f"resuming {args.out} at step {trainer.resume()}")
    summary = trainer.fit()
    if trainer.dist.is_main:
        print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------ inputs of sample/invert
def _add_inputs(parser: argparse.ArgumentParser) -> None:
    from patronus.data.registry import DATASETS

    parser.add_argument("checkpoint", type=Path, help="checkpoint or run folder")
    parser.add_argument("--images", nargs="+", type=Path, help="image files or folders")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="take images from a dataset (default without --images: the checkpoint's training "
        "dataset, --split test)",
    )
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=16, help="images taken from --dataset")
    parser.add_argument("--offset", type=int, default=0, help="first index taken from --dataset")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights, not EMA ones")
    parser.add_argument("--out", required=True, type=Path)


def _load_images(args: argparse.Namespace, model) -> torch.Tensor:
    from patronus.checkpoint import read_config, resolve_checkpoint
    from patronus.data.image_folder import find_images
    from patronus.data.images import load_image
    from patronus.data.registry import build_dataset

    channels, size, _ = model.config.image_shape
    if args.images:
        files = []
        for path in args.images:
            if path.is_dir():
                files += find_images(path)
            elif path.is_file():
                files.append(path)
            else:
                raise FileNotFoundError(f"no such image file or folder: {path}")
        if not files:
            raise FileNotFoundError(f"no images found in {[str(p) for p in args.images]}")
        images = [load_image(f, channels, size) for f in files]
    else:
        if args.dataset:
            name, data_dir, seed = args.dataset, args.data_dir, 0
        else:
            spec = read_config(resolve_checkpoint(args.checkpoint)).get("data")
            if spec is None:
                raise ValueError("give --images or --dataset (the checkpoint names no dataset)")
            name, data_dir, seed = spec["name"], spec.get("data_dir"), spec.get("seed", 0)
        dataset = build_dataset(name, data_dir, args.split, size, channels, seed=seed)
        stop = min(args.offset + args.num, len(dataset))
        images = [dataset[i][0] for i in range(args.offset, stop)]
        if not images:
            raise ValueError(f"--offset {args.offset} is past the {len(dataset)} images")
    return torch.stack(images).to(args.device)


def _load_model(args: argparse.Namespace):
    from patronus.checkpoint import load_model

    return load_model(args.checkpoint, ema=not args.no_ema, map_location=args.device).eval()


def read_activations(path: Path) -> torch.Tensor:
    """Activations (B, P) from .pt, .npy or .safetensors (key "activations" or the only key)."""
    if not path.is_file():
        raise FileNotFoundError(f"no activation file {path}")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if path.suffix == ".safetensors":
        from patronus.checkpoint import load_tensors

        tensors = load_tensors(path)
        if "activations" in tensors:
            return tensors["activations"].float()
        if len(tensors) == 1:
            return next(iter(tensors.values())).float()
        raise ValueError(f"{path} holds {sorted(tensors)}; name the tensor 'activations'")
    if path.suffix == ".pt":
        value = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(value, dict):
            value = value.get("activations")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path} must hold a tensor or a dict with key 'activations'")
        return value.float()
    raise ValueError(f"activation files must be .pt, .npy or .safetensors, got {path.name}")


# --------------------------------------------------------------------------------------- sample
def _add_sample(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sample", help="sample images conditioned on activations")
    _add_inputs(parser)
    parser.add_argument("--activations", type=Path, help=".pt/.npy/.safetensors of (B, P)")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--variations", type=int, default=1, help="samples per conditioning")
    parser.add_argument("--clip", action="store_true", help="clip predicted x0 to [-1, 1]")
    parser.add_argument(
        "--unconditional",
        action="store_true",
        help="draw --num activation vectors from the prior (patronus train-prior)",
    )
    parser.set_defaults(handler=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from patronus.checkpoint import save_tensors
    from patronus.data.images import save_grid

    model = _load_model(args)
    originals = None
    if args.unconditional:
        from patronus.checkpoint import resolve_checkpoint
        from patronus.eval.cli import _load_prior
        from patronus.models.prior import sample_prior

        prior = _load_prior(resolve_checkpoint(args.checkpoint)).to(args.device)
        prior_generator = torch.Generator(args.device).manual_seed(args.seed)
        s = sample_prior(prior, args.num, generator=prior_generator)
    elif args.activations:
        s = read_activations(args.activations).to(args.device)
    else:
        originals = _load_images(args, model)
        with torch.no_grad():
            s = model.encode(originals)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    rows = [] if originals is None else [originals]
    for _ in range(args.variations):
        rows.append(
            model.sample(
                s,
                args.steps,
                args.sampler,
                args.eta,
                generator,
                clip_x0=args.clip,
                progress=sys.stderr.isatty(),
            )
        )
    args.out.mkdir(parents=True, exist_ok=True)
    grid = save_grid(torch.cat(rows), args.out / "samples.png", nrow=s.shape[0])
    save_tensors(
        {"samples": torch.stack(rows[-args.variations :], 1), "activations": s},
        args.out / "samples.safetensors",
    )
    print(
        f"wrote {grid} ({'originals, then ' if originals is not None else ''}"
        f"{args.variations} row(s) of samples) and {args.out / 'samples.safetensors'}"
    )
    return 0


# ---------------------------------------------------------------------------------------- invert
def _add_invert(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        ("invert", "DDIM-invert images into x_T, and decode them back"),
        ("reconstruct", "same as invert: originals above their reconstructions"),
    ):
        parser = sub.add_parser(name, help=text)
        _add_inputs(parser)
        parser.set_defaults(handler=_cmd_invert)


def _cmd_invert(args: argparse.Namespace) -> int:
    from patronus.checkpoint import save_tensors
    from patronus.data.images import save_grid

    model = _load_model(args)
    images = _load_images(args, model)
    with torch.no_grad():
        s = model.encode(images)
    x_T = model.invert(images, s, args.steps, progress=sys.stderr.isatty())
    reconstructions = model.sample(s, args.steps, x_T=x_T, progress=sys.stderr.isatty())
    args.out.mkdir(parents=True, exist_ok=True)
    save_tensors({"x_T": x_T, "activations": s}, args.out / "latents.safetensors")
    save_grid(
        torch.cat([images, reconstructions]), args.out / "reconstructions.png", images.shape[0]
    )
    mse = (reconstructions - images).square().mean().item()
    report = {"images": images.shape[0], "steps": args.steps, "reconstruction_mse": mse}
    (args.out / "reconstruction.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


# -------------------------------------------------------------------------------- interpretation
def _add_interpret(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        (
            "visualize",
            "what + where: prototype visualisations and nearest patches (PNG, JSON, NPZ)",
        ),
        ("trace", "when: emergence of prototypes during denoising (PNG, JSON, NPZ)"),
        ("report", "everything as one self-contained HTML page (+ figures and raw numbers)"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("checkpoint", type=Path, help="checkpoint or run folder")
        parser.add_argument("--out", type=Path, help=f"output folder (default CHECKPOINT/{name})")
        parser.add_argument("--data-dir", type=Path, help="default: the checkpoint's dataset")
        parser.add_argument("--num-images", type=int, default=8)
        parser.add_argument("--prototypes", type=int, nargs="+", help="default: all")
        parser.add_argument("--steps", type=int, default=50, help="respaced DDIM steps")
        parser.add_argument(
            "--quantile",
            type=float,
            default=0.99,
            help="per-prototype bound: quantile of the reference activations",
        )
        parser.add_argument(
            "--global-max",
            action="store_true",
            help="the original's bound: one global maximum for all prototypes",
        )
        parser.add_argument("--reference-size", type=int, default=512)
        parser.add_argument(
            "--pool-size",
            type=int,
            default=2048,
            help="training images searched for the nearest patches",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--no-ema", action="store_true")
        parser.set_defaults(handler=_cmd_interpret)


def _interpret_inputs(args: argparse.Namespace, model):
    """Test images, a seeded reference sample and a search pool from the checkpoint's dataset."""
    from patronus.checkpoint import read_config, resolve_checkpoint
    from patronus.data.registry import build_dataset
    from patronus.interpret.report import ReportInputs

    spec = read_config(resolve_checkpoint(args.checkpoint)).get("data")
    if spec is None:
        raise ValueError("the checkpoint names no dataset; it was not trained by `patronus train`")
    channels, size, _ = model.config.image_shape
    data_dir = args.data_dir or spec.get("data_dir")

    def take(split: str, count: int, shuffle: bool):
        dataset = build_dataset(spec["name"], data_dir, split, size, channels, seed=spec["seed"])
        count = min(count, len(dataset))
        if shuffle:
            generator = torch.Generator().manual_seed(args.seed)
            indices = torch.randperm(len(dataset), generator=generator)[:count].tolist()
        else:
            indices = range(count)
        return torch.stack([dataset[i][0] for i in indices])

    info = {
        "checkpoint": str(args.checkpoint),
        "dataset": spec["name"],
        "prototypes": model.num_prototypes,
        "reference set": f"{args.reference_size} training images, seed {args.seed}",
    }
    return ReportInputs(
        images=take("test", args.num_images, False),
        reference=take("train", args.reference_size, True),
        pool=take("train", args.pool_size, False),
        info=info,
    )


def _cmd_interpret(args: argparse.Namespace) -> int:
    from patronus.interpret import report as reporting

    model = _load_model(args)
    inputs = _interpret_inputs(args, model)
    options = reporting.ReportOptions(
        num_images=args.num_images,
        steps=args.steps,
        quantile=args.quantile,
        global_max=args.global_max,
        seed=args.seed,
        prototypes=tuple(args.prototypes) if args.prototypes else None,
    )
    if args.prototypes and max(args.prototypes) >= model.num_prototypes:
        raise ValueError(f"the model has prototypes 0 .. {model.num_prototypes - 1}")
    out = args.out or (args.checkpoint / args.command)
    run = {
        "visualize": reporting.write_visualization,
        "trace": reporting.write_emergence,
        "report": reporting.build_report,
    }[args.command]
    path = run(model.to(args.device), inputs, out, options)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patronus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and op backends").set_defaults(handler=_cmd_info)
    _add_train(sub)
    _add_sample(sub)
    _add_invert(sub)
    _add_interpret(sub)
    from patronus.eval.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"patronus {args.command}: error: {error}", file=sys.stderr)
        return 2
