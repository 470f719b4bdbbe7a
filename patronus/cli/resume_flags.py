"""``patronus train --resume`` continues a run with the settings it was saved with: a flag that
would change one of them is refused (it was silently ignored), and so is another --preset."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from patronus.cli.outputs import CommandError

# flag (argparse dest) -> where the run's saved config.json keeps its value
SAVED_AT: dict[str, tuple[str, ...]] = {
    "preset": ("preset",),
    "dataset": ("data", "name"),
    "limit": ("data", "limit"),
    "activation": ("model", "activation"),
    "prototype_conditioning": ("model", "unet", "prototype_conditioning"),
    "condition_dropout": ("model", "condition_dropout"),
    "guidance_scale": ("model", "guidance_scale"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "learning_rate"),
    "warmup": ("train", "warmup_steps"),
    "amp": ("train", "amp"),
    "ema": ("train", "ema_decay"),
    "grad_clip": ("train", "grad_clip"),
    "distinct_weight": ("train", "distinct_loss_weight"),
    "timestep_bias": ("train", "timestep_bias"),
    "edit_consistency": ("train", "edit_consistency_weight"),
    "edit_consistency_max_t": ("train", "edit_consistency_max_timestep"),
    "activation_decorrelation": ("train", "activation_decorrelation_weight"),
    "freeze_prototypes": ("train", "freeze_prototypes"),
    "log_every": ("train", "log_every"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "sample_every": ("train", "sample_every"),
    "seed": ("train", "seed"),
}
# flags a resumed run takes from the command line: how far it goes and where and how it runs
RESUMABLE = "--steps, --data-dir, --device, --num-workers and --no-progress"


def given_options(build_parser: Callable[[], argparse.ArgumentParser], argv) -> set[str]:
    """The dests of the options on the command line ``argv`` (None: ``sys.argv``), whatever
    their values: a flag given at its default value counts too. The arguments are parsed again
    by a fresh parser whose options, in every subcommand, default to nothing."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings:
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _saved_value(saved: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = saved
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _as_saved(dest: str, value: Any) -> Any:
    """A flag's value as the run stores it (``--grad-clip 0`` means no clipping: None)."""
    if dest == "grad_clip" and value == 0:
        return None
    return value


def check_resume_flags(args: argparse.Namespace, saved: dict[str, Any]) -> None:
    """Refuse flags given with --resume (``args.given_options``, from :func:`given_options`)
    that differ from the run's saved settings, naming both values. ``saved`` is the
    checkpoint's config.json."""
    if args.epochs is not None:
        raise CommandError("--resume continues to --steps; --epochs applies to a new run only")
    conflicts = []
    for dest, path in SAVED_AT.items():
        if dest not in args.given_options:
            continue
        given = getattr(args, dest)
        kept = _saved_value(saved, path)
        if _as_saved(dest, given) != kept:
            conflicts.append(f"--{dest.replace('_', '-')} {given} (the run has {kept})")
    if conflicts:
        raise CommandError(
            "--resume continues the run with its saved settings, so "
            + ", ".join(conflicts)
            + f" cannot apply; only {RESUMABLE} may change (a new --out starts a new run)"
        )
