"""``onestep-sr`` command line: ``upscale`` (x4 SR of images), ``models``, ``download``, ``convert``,
``train`` (the training package) and ``app`` (the web app).

Every subcommand module has ``register(subparsers)`` which adds its parser and sets ``run``.
Errors the user can fix are one line on stderr and exit code 2; nothing partial is left behind.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..checkpoint import CheckpointError
from . import app, train, upscale, weights
from .common import EXIT_FAILED, EXIT_USAGE, UsageError

SUBCOMMANDS = [upscale, weights, train, app]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onestep-sr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own parser: options after "train" (even --help) are the training CLI's
        return train.run_training(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (UsageError, CheckpointError) as exc:
        print(f"onestep-sr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
