"""``onestep-sr app``: the web app (``onestep_sr.app``; needs the ``app`` extra)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..app import INSTALL, add_arguments   # gradio-free: importing it never needs the extra

    parser = sub.add_parser("app", help=f"start the web app on 127.0.0.1 (needs the app extra: {INSTALL})")
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app import launch

    launch(args)
    return 0
