"""Argument types and flags shared by the commands: every number is checked where it is parsed,
so that no value silently falls back to a default (0 is never "the default")."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def _number(
    kind: type, low: float | None, high: float | None, closed: tuple[bool, bool], what: str
):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        too_low = low is not None and (value < low if closed[0] else value <= low)
        too_high = high is not None and (value > high if closed[1] else value >= high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, 1, None, (True, True), "an integer >= 1")
nonnegative_int = _number(int, 0, None, (True, True), "an integer >= 0")
at_least_two = _number(int, 2, None, (True, True), "an integer >= 2")
positive_float = _number(float, 0, None, (False, True), "a number > 0")
nonnegative_float = _number(float, 0, None, (True, True), "a number >= 0")
quantile = _number(float, 0, 1, (False, True), "a number in (0, 1]")
decay = _number(float, 0, 1, (False, False), "a number in (0, 1)")
# an optional value: written just before the checkpoint, the flag would take the checkpoint
guidance_strength = _number(
    float, 0, None, (False, True),
    "a strength > 0 (the flag's value is optional: write it after the checkpoint)",
)  # fmt: skip


def device(text: str) -> str:
    """A torch device string that exists on this machine."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:1)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "no CUDA build" if torch.version.cuda is None else "no visible GPU"
            raise argparse.ArgumentTypeError(
                f"{text}: CUDA is not available here (torch {torch.__version__}: {build})"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: only cpu and cuda devices are supported")
    return text


def number(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: Callable[[str], float],
    default: float,
    help: str,
    note: str | None = None,
) -> None:
    """A checked numeric flag (``kind`` is one of the types above) whose help ends with its
    default, e.g. "steps between checkpoints (default 500)"; ``note`` says what it means."""
    shown = f"{default}: {note}" if note else f"{default}"
    parser.add_argument(flag, type=kind, default=default, help=f"{help} (default {shown})")


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder or run folder")
    parser.add_argument(
        "--no-ema", action="store_true", help="use the raw weights, not the EMA ones"
    )


def add_device(parser: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    parser.add_argument(
        "--device",
        type=device,
        default=default,
        help="cpu, cuda or cuda:N" + (f" (default {default})" if default else ""),
    )


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the denoiser's arithmetic: fp32, or bf16 autocast (fast on GPUs and on CPUs with "
        "AVX512-BF16 or AMX) (default fp32)",
    )


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_guidance(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guidance-scale",
        type=finite_float,
        help="prototype guidance w of null + w (conditioned - null) (default: the model's "
        "recommended scale; 1 is no guidance; needs a model trained with --condition-dropout)",
    )


SAMPLER_HELP = {
    "dpmpp-2m": "dpmpp-2m / dpmpp-3m (DPM-Solver++ multistep, --steps network calls)",
    "ddim": "ddim (--steps respaced steps)",
    "ddpm": "ddpm (all T ancestral steps)",
}


def add_sampler(
    parser: argparse.ArgumentParser,
    samplers: tuple[str, ...] | None = None,
    what: str = "",
) -> None:
    """--sampler (default: the library's) among ``samplers`` (default: every sampler); ``what`` it
    samples."""
    from patronus.diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS

    choices = samplers or SAMPLERS
    described = ", ".join(text for name, text in SAMPLER_HELP.items() if name in choices)
    parser.add_argument(
        "--sampler",
        choices=choices,
        default=DEFAULT_SAMPLER,
        help=f"{what}{described} (default {DEFAULT_SAMPLER})",
    )


def add_seed(parser: argparse.ArgumentParser) -> None:
    number(parser, "--seed", nonnegative_int, 0, "seed of every random choice")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (stage messages remain)"
    )


def add_output(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        help=f"output folder (default: a new folder {default} under runs/)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even when it already holds files",
    )


Handler = Callable[[argparse.Namespace], int]
