"""``onestep-sr train ...``: the ``training`` package's command line (``python -m training``).

The engine never imports ``training``: the command is found through the entry point ``train`` of
the group ``onestep_sr.commands``, which the ``training`` side declares in ``pyproject.toml``
(``train = "training.cli:main"``). So the dependency points one way, from ``training`` to the
engine, and a copy of the engine without ``training`` (a ComfyUI or A1111 install) has no
``onestep-sr train`` and loses nothing else.
"""
from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Callable

ENTRY_POINT_GROUP = "onestep_sr.commands"
INSTALL = 'python3 -m pip install -c constraints.txt -e ".[train]" (GPU users: without -c constraints.txt)'


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", add_help=False, help="train a teacher, distil a one-step student, evaluate "
                                                          "(see onestep-sr train --help)")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return run_training(args.rest)


def training_main() -> Callable[..., int]:
    """The ``main(argv, prog=...)`` of the installed ``train`` command."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "train"]
    if not found:
        raise SystemExit("onestep-sr train is the training package's command line, registered when OneStep SR is "
                         f"installed with pip: in the OneStep SR folder run {INSTALL}; or run python -m training")
    try:
        return found[0].load()
    except ImportError as exc:  # installed without the training extra
        raise SystemExit(f"onestep-sr train needs the train extra: in the OneStep SR folder run {INSTALL} "
                         f"({exc})") from None


def run_training(argv: list[str]) -> int:
    return training_main()(argv, prog="onestep-sr train")
