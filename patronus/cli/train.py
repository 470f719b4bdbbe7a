"""``patronus train``: train a model into a run folder (or resume one)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch

from patronus.cli import arguments as a
from patronus.cli.outputs import CommandError, say
from patronus.cli.resume_flags import check_resume_flags
from patronus.data.errors import DataLayoutError

DEFAULT_PRESET = "fmnist-cpu"


def add_command(sub: argparse._SubParsersAction) -> None:
    from patronus.data.registry import DATASETS
    from patronus.models.config import PROTOTYPE_CONDITIONINGS
    from patronus.models.presets import PRESETS

    parser = sub.add_parser(
        "train",
        help="train a Patronus model (torchrun for several processes)",
        description="Train a Patronus model into a run folder: checkpoints, metrics, loss curve "
        "and sample grids. Flags left out take the preset's values.",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"model and training settings (default {DEFAULT_PRESET}; with --resume: the run's)",
    )
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its checkpoints, metrics, "
        "samples; other files stay)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="RUN",
        help="start from the weights of a trained model (its EMA weights when it has them) and "
        "its model configuration, e.g. to fine-tune it with --edit-consistency; a new run",
    )
    parser.add_argument("--dataset", choices=DATASETS, help="default: the preset's")
    parser.add_argument("--data-dir", type=Path, help="dataset folder (Fashion-MNIST: found)")
    parser.add_argument("--limit", type=a.positive_int, help="use the first N training images")
    parser.add_argument(
        "--fallback-synthetic",
        action="store_true",
        help="use the synthetic dataset when the dataset's files are missing",
    )
    parser.add_argument(
        "--steps", type=a.positive_int, help="optimizer steps (default: the preset's epochs)"
    )
    parser.add_argument("--epochs", type=a.positive_float, help="epochs, converted to steps")
    parser.add_argument("--batch-size", type=a.positive_int, help="global batch size")
    parser.add_argument("--lr", type=a.positive_float, help="AdamW learning rate")
    a.number(parser, "--warmup", a.nonnegative_int, 0, "linear learning-rate warm-up steps")
    parser.add_argument(
        "--activation", choices=("log", "linear"), help="prototype activation (default: preset's)"
    )
    parser.add_argument(
        "--prototype-conditioning",
        choices=PROTOTYPE_CONDITIONINGS,
        help="how the UNet takes s: the paper's per-channel bias, a scale and shift of the "
        "normalised features, or cross-attention to one token per prototype (default: the "
        "preset's)",
    )
    parser.add_argument(
        "--condition-dropout",
        type=a.nonnegative_float,
        help="probability of training on the learned null activations instead of the image's "
        "(enables prototype guidance; default: the preset's, 0)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=a.finite_float,
        help="the guidance scale this model recommends, stored with it (default 1: none)",
    )
    parser.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision (auto: bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, else off)",
    )
    parser.add_argument("--ema", type=a.decay, help="EMA decay, e.g. 0.999 (default: none)")
    a.number(parser, "--grad-clip", a.nonnegative_float, 1.0, "gradient norm clipping (0: off)")
    a.number(parser, "--distinct-weight", a.nonnegative_float, 0.0, "weight of the distinct loss")
    a.number(
        parser,
        "--timestep-bias",
        a.nonnegative_float,
        0.0,
        "tilt of training timesteps towards high noise: density ~ (t/T)^b",
        note="uniform",
    )
    a.number(
        parser,
        "--edit-consistency",
        a.nonnegative_float,
        0.0,
        "weight of the edit-consistency term: predictions with one activation raised must "
        "re-encode to the raised value (makes edits show)",
        note="off",
    )
    a.number(
        parser,
        "--edit-consistency-max-t",
        a.nonnegative_int,
        500,
        "the largest training timestep the edit-consistency term is applied at",
    )
    a.number(
        parser,
        "--activation-decorrelation",
        a.nonnegative_float,
        0.0,
        "weight of the activation-decorrelation term: the batch correlation of the prototype "
        "activations, squared (each activation must say something the others do not)",
        note="off",
    )
    parser.add_argument(
        "--freeze-prototypes",
        action="store_true",
        help="train the denoiser alone: the encoder and the prototypes keep their weights (with "
        "--init-from, the activations keep their meaning)",
    )
    a.number(parser, "--log-every", a.positive_int, 10, "steps between metric rows")
    a.number(parser, "--checkpoint-every", a.positive_int, 500, "steps between checkpoints")
    a.number(
        parser,
        "--sample-every",
        a.nonnegative_int,
        0,
        "steps between sample grids",
        note="at checkpoints only",
    )
    a.add_seed(parser)
    parser.add_argument(
        "--num-workers",
        type=a.nonnegative_int,
        help="data loading processes (default 0; with --resume: the run's)",
    )
    a.add_device(parser, default=None)
    a.add_progress(parser)
    parser.set_defaults(handler=run)


def _dataset(spec: dict, image_shape: tuple[int, int, int]):
    from patronus.data.registry import build_dataset

    channels, size, _ = image_shape
    return build_dataset(
        spec["name"], spec.get("data_dir"), "train", size, channels, spec.get("limit"), spec["seed"]
    )


def _model_config(config, args: argparse.Namespace):
    """The preset's model with the flags that change it."""
    changes = {
        name: value
        for name, value in (
            ("activation", args.activation),
            ("condition_dropout", args.condition_dropout),
            ("guidance_scale", args.guidance_scale),
        )
        if value is not None
    }
    if args.prototype_conditioning is not None:
        changes["unet"] = dataclasses.replace(
            config.unet, prototype_conditioning=args.prototype_conditioning
        )
    try:
        return config.replace(**changes)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _new_run(args: argparse.Namespace, preset, steps_of):
    from patronus.train import TrainConfig

    batch = args.batch_size if args.batch_size is not None else preset.batch_size
    try:
        return TrainConfig(
            max_steps=steps_of(batch),
            batch_size=batch,
            learning_rate=args.lr if args.lr is not None else preset.learning_rate,
            warmup_steps=args.warmup,
            amp=args.amp,
            ema_decay=args.ema,
            grad_clip=args.grad_clip if args.grad_clip > 0 else None,
            distinct_loss_weight=args.distinct_weight,
            timestep_bias=args.timestep_bias,
            edit_consistency_weight=args.edit_consistency,
            edit_consistency_max_timestep=args.edit_consistency_max_t,
            activation_decorrelation_weight=args.activation_decorrelation,
            freeze_prototypes=args.freeze_prototypes,
            seed=args.seed,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            sample_every=args.sample_every,
            num_workers=args.num_workers if args.num_workers is not None else 0,
            progress=not args.no_progress,
        )
    except ValueError as error:  # flags that contradict each other
        raise CommandError(str(error)) from error


MODEL_FLAGS = ("activation", "prototype_conditioning", "condition_dropout", "guidance_scale")


def _check_init_from(args: argparse.Namespace) -> None:
    """--init-from takes the source's model as it is: refuse what contradicts that."""
    if args.resume:
        raise CommandError("--init-from starts a new run; --resume continues one: pick one")
    given = [name for name in MODEL_FLAGS if getattr(args, name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CommandError(f"--init-from keeps the source's model; {flags} would change it")
    if args.out.resolve() == args.init_from.resolve():
        raise CommandError("--init-from and --out must be different folders")
    from patronus.checkpoint import resolve_checkpoint

    resolve_checkpoint(args.init_from)  # a missing model fails here, before --out is touched


def run(args: argparse.Namespace) -> int:
    from patronus.train.run_folder import RunLock, clear_run, holds_a_run

    if args.resume and args.overwrite:
        raise CommandError("--resume continues the run in --out, --overwrite replaces it: pick one")
    if args.init_from is not None:
        _check_init_from(args)
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} is a file, not a run folder")
    if not args.resume and not args.overwrite and holds_a_run(args.out):
        raise CommandError(
            f"{args.out} already holds a run: --resume continues it, --overwrite replaces it"
        )
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: process 0 owns the folder
        return _train(args)
    with RunLock(args.out):
        if args.overwrite:
            say(f"clearing the run in {args.out} (--overwrite)")
            clear_run(args.out)
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from patronus.checkpoint import CheckpointError, load_model, read_config, resolve_checkpoint
    from patronus.models import Patronus, PatronusConfig
    from patronus.models.presets import get_preset
    from patronus.train import TrainConfig, Trainer

    preset_name = args.preset or DEFAULT_PRESET
    preset = get_preset(preset_name)
    source = None  # the trained model --init-from starts from
    if args.resume:
        folder = resolve_checkpoint(args.out)
        saved = read_config(folder)
        check_resume_flags(args, saved)
        preset_name = saved.get("preset", preset_name)
        try:
            model_config = PatronusConfig.from_dict(saved["model"])
            data_spec = saved["data"]
            train_config = TrainConfig.from_dict(saved["train"])
            init_from = saved.get("init_from")
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{folder} cannot be resumed: {error!r}") from error
        # how far it goes and how it runs follow this call
        train_config = train_config.replace(
            max_steps=args.steps if args.steps is not None else train_config.max_steps,
            num_workers=(
                args.num_workers if args.num_workers is not None else train_config.num_workers
            ),
            progress=not args.no_progress,
        )
        if args.data_dir is not None:  # the data moved
            data_spec = {**data_spec, "data_dir": str(args.data_dir)}
    else:
        init_from = str(args.init_from) if args.init_from is not None else None
        if init_from is None:
            model_config = _model_config(preset.model, args)
        else:  # fine-tuning: the trained model as it is (EMA weights when it has them)
            source = load_model(init_from)
            model_config = source.config
        data_spec = {
            "name": args.dataset or preset.dataset,
            "data_dir": str(args.data_dir) if args.data_dir else None,
            "limit": args.limit,
            "seed": args.seed,
        }
    say(f"reading the {data_spec['name']} training images")
    try:
        dataset = _dataset(data_spec, model_config.image_shape)
    except DataLayoutError as error:
        if not args.fallback_synthetic or args.resume:
            raise
        print(f"{error}\n-> falling back to the synthetic shapes dataset (--fallback-synthetic)")
        data_spec = {**data_spec, "name": "synthetic", "data_dir": None}
        dataset = _dataset(data_spec, model_config.image_shape)
    if not args.resume:

        def steps_of(batch: int) -> int:
            if args.steps is not None:
                return args.steps
            epochs = args.epochs if args.epochs is not None else preset.epochs
            return max(1, round(epochs * len(dataset) / batch))

        train_config = _new_run(args, preset, steps_of)
    torch.manual_seed(args.seed)
    try:  # the checks of what the user asked for (batch vs dataset, image shapes)
        metadata = {"preset": preset_name, "data": data_spec}
        if init_from is not None:
            metadata["init_from"] = init_from
        trainer = Trainer(
            source if source is not None else Patronus(model_config),
            dataset,
            train_config,
            args.out,
            args.device,
            metadata=metadata,
        )
    except ValueError as error:
        raise CommandError(str(error)) from error
    if args.resume:
        print(f"resuming {args.out} at step {trainer.resume()}")
    say(
        f"training {train_config.max_steps} steps, batch {train_config.batch_size}, on "
        f"{trainer.device}; checkpoints in {args.out / 'checkpoints'}"
    )
    summary = trainer.fit()
    if trainer.dist.is_main:
        print(json.dumps(summary, indent=2))
    return 0
