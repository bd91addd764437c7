"""``onestep-sr train ...``: the ``training`` package's command line (``python -m training``)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", add_help=False, help="train a teacher, distil a one-step student, evaluate "
                                                          "(see onestep-sr train --help)")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return run_training(args.rest)


def run_training(argv: list[str]) -> int:
    try:
        from training.cli import main
    except ImportError as exc:  # installed without the training extra
        raise SystemExit("onestep-sr train needs the train extra: in the OneStep SR folder run "
                         f"python3 -m pip install -c constraints.txt -e \".[train]\" (GPU users: without "
                         f"-c constraints.txt) ({exc})")
    return main(argv, prog="onestep-sr train")
