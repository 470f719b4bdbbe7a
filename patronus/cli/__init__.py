"""The ``patronus`` command (also ``python -m patronus``).

Train models, sample and invert images, explain what prototypes encode, where and when they
appear (``visualize``, ``trace``, ``report``), evaluate (``evaluate probes | fid``, ``diagnose``,
``train-prior``) and report versions and backends (``info``). Every command takes ``--help``.
Commands write into their ``--out`` folder (by default a new folder under ``runs/``), never over
existing results unless ``--overwrite``, and print every file they write.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from patronus._version import __version__
from patronus.cli import diffusers_export, evaluate, generate, interpret, train
from patronus.cli.outputs import removing_empty_outputs_on_failure
from patronus.cli.resume_flags import given_options
from patronus.errors import PatronusError


def _info(args: argparse.Namespace) -> int:
    from patronus._info import info

    print(info())
    return 0


def build_parser() -> argparse.ArgumentParser:
    first_paragraph = __doc__.split("\n\n")[1].replace("``", "")
    parser = argparse.ArgumentParser(prog="patronus", description=first_paragraph)
    parser.add_argument("--version", action="version", version=f"patronus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "info",
        help="versions, devices and the backend of each op",
        description="Versions, devices, the extension, Triton, and the backend of each op.",
    ).set_defaults(handler=_info)
    train.add_command(sub)
    generate.add_commands(sub)
    interpret.add_commands(sub)
    evaluate.add_commands(sub)
    diffusers_export.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.given_options = given_options(build_parser, argv)  # which flags the user typed
    try:
        with removing_empty_outputs_on_failure():
            return args.handler(args)
    except PatronusError as error:  # the project's own: one line; anything else is a bug
        print(f"patronus {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        import signal

        number = getattr(interrupt, "signal_number", signal.SIGINT)
        print(f"\npatronus {args.command}: interrupted", file=sys.stderr)
        return 128 + int(number)
