"""``patronus export-diffusers`` / ``import-diffusers``: a checkpoint as a diffusers
``PatronusPipeline`` folder, and back (weights bit for bit, config and metadata kept)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from patronus.cli import arguments as a
from patronus.cli.outputs import CommandError, now, output_folder, report_written, say


def add_commands(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export-diffusers",
        help="write a checkpoint as a diffusers PatronusPipeline folder",
        description="Write a checkpoint (EMA weights unless --no-ema) as a diffusers pipeline "
        "folder: unet (the whole Patronus model) and the fused DDIM scheduler with the model's "
        "noise schedule. Load it with PatronusPipeline.from_pretrained(OUT) after importing "
        "patronus.pipelines.diffusers_pipeline.",
    )
    a.add_checkpoint(export)
    _add_destination(export, "the pipeline folder to write")
    export.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    export.set_defaults(handler=export_pipeline)
    back = sub.add_parser(
        "import-diffusers",
        help="write a PatronusPipeline folder back as a patronus checkpoint",
        description="Write a PatronusPipeline folder (export-diffusers, or save_pretrained) "
        "back as a patronus checkpoint folder (its weights as model.safetensors).",
    )
    back.add_argument("pipeline", type=Path, help="the pipeline folder")
    _add_destination(back, "the checkpoint folder to write")
    back.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    back.set_defaults(handler=import_pipeline)


def _add_destination(parser: argparse.ArgumentParser, text: str) -> None:
    """OUT as the last positional argument, or as --out like every other command (default: a
    new folder under runs/)."""
    parser.add_argument("out", type=Path, nargs="?", help=f"{text} (or --out OUT)")
    parser.add_argument("--out", dest="out_flag", type=Path, metavar="OUT", help=text)


def _destination(args: argparse.Namespace) -> Path | None:
    if args.out is not None and args.out_flag is not None and args.out != args.out_flag:
        raise CommandError(f"two destinations: {args.out} and --out {args.out_flag}")
    return args.out if args.out is not None else args.out_flag


def _pipeline_module():
    try:
        from patronus.pipelines import diffusers_pipeline
    except ImportError as error:
        raise CommandError(str(error)) from error
    return diffusers_pipeline


def export_pipeline(args: argparse.Namespace) -> int:
    from patronus.checkpoint import load_model, read_config, resolve_checkpoint

    pipelines = _pipeline_module()
    started = now()
    out = output_folder(_destination(args), "pipeline", args.overwrite)
    folder = resolve_checkpoint(args.checkpoint)
    metadata = {k: v for k, v in read_config(folder).items() if k not in ("format", "model")}
    say(f"loading {folder} ({'raw' if args.no_ema else 'EMA where saved'} weights)")
    model = load_model(folder, ema=not args.no_ema)
    pipelines.PatronusPipeline.from_patronus(model, metadata=metadata).save_pretrained(out)
    report_written(out, started)
    return 0


def _check_pipeline_index(folder: Path) -> None:
    """Refuse, before loading anything, a folder that is not a PatronusPipeline."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise CommandError(f"{folder} is not a pipeline folder (no model_index.json)")
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (ValueError, AttributeError, OSError) as error:
        raise CommandError(f"{index} is not a readable pipeline index: {error}") from error
    if name != "PatronusPipeline":
        raise CommandError(
            f"{folder} holds a {name} pipeline, not a PatronusPipeline (the folders "
            "`patronus export-diffusers` writes)"
        )


def import_pipeline(args: argparse.Namespace) -> int:
    from patronus.checkpoint import save_model

    pipelines = _pipeline_module()
    started = now()
    _check_pipeline_index(args.pipeline)
    out = output_folder(_destination(args), "checkpoint", args.overwrite)
    try:  # a file missing, truncated or not what the index names: diffusers says which
        # our models are small: without accelerate, loading them whole is what diffusers does
        pipe = pipelines.PatronusPipeline.from_pretrained(args.pipeline, low_cpu_mem_usage=False)
    except (OSError, TypeError) as error:
        message = f"{args.pipeline} holds no readable PatronusPipeline: {error}"
        raise CommandError(message) from error
    metadata = pipe.unet.config.metadata or {}
    save_model(pipe.patronus, out, metadata=dict(metadata))
    report_written(out, started)
    return 0
