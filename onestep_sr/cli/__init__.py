"""``onestep-sr`` command line: ``upscale`` (x4 SR of images), ``models``, ``download``, ``convert``,
``train`` (the training package) and ``app`` (the web app).

Every subcommand module has ``register(subparsers)`` which adds its parser and sets ``run``.
Errors the user can fix are one line on stderr and exit code 2; nothing partial is left behind.
While a command runs, the engine's log (logger ``onestep_sr``: downloads, fallbacks) is printed on
stderr as ``onestep-sr: ...`` lines, whether or not stderr is a terminal. ``onestep-sr --help``
shows ``USAGE`` (user text), not this docstring.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..checkpoint import CheckpointError
from ..download import OFFLINE_ENVS
from ..registry import MIRROR_ENV, MODELS_ENV
from . import app, train, upscale, weights
from .common import EXIT_FAILED, EXIT_USAGE, UsageError

SUBCOMMANDS = [upscale, weights, train, app]
USAGE = """\
OneStep SR: x4 super-resolution of photos with a diffusion model in one network step.

Start here (the bundled model: no download, works offline):
  onestep-sr upscale photo.jpg -o photo_x4.png
  onestep-sr upscale photos/ -o upscaled/           a whole folder

The official SinSR / ResShift weights (non-commercial licences) are downloaded on first use:
  onestep-sr models                                 what is available, and where it is stored
  onestep-sr upscale photo.jpg -o photo_x4.png --model sinsr_v1

Each command has its own help: onestep-sr upscale --help
"""
EPILOG = f"""\
environment: {MODELS_ENV}=DIR (models folder), {OFFLINE_ENVS[0]}=1 (never download),
{MIRROR_ENV}=URL-or-folder (download the registry's files from a mirror or a local folder).
Exit codes: 0 done, 1 some images of a batch failed, 2 a usage or input error, 130 interrupted.
"""
HOST_PREFIX = "OneStep SR: "  # what the engine's host-facing log lines may start with


class _LogLine(logging.Formatter):
    """``onestep-sr: <message>``, without the prefix the engine adds for hosts' shared consoles."""

    def format(self, record: logging.LogRecord) -> str:
        return "onestep-sr: " + super().format(record).removeprefix(HOST_PREFIX)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onestep-sr", description=USAGE, epilog=EPILOG,
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
    logger, handler = logging.getLogger("onestep_sr"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLine())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # e.g. "downloading sinsr_v1: SinSR_v1.pth, about 455.6 MiB, from ... into ..."
    try:
        return args.run(args) or 0
    except (UsageError, CheckpointError) as exc:
        print(f"onestep-sr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
