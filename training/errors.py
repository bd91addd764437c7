"""The one error boundary of ``python -m training`` / ``onestep-sr train``, as ``onestep-sr upscale``
has: every failure ends in one line on stderr, no traceback.

* a problem the user can fix (a missing or unreadable file, a bad option value, a damaged or
  foreign checkpoint, a folder that cannot be written, a missing optional package, a diverged
  loss, GPU memory): ``<prog>: error: <sentence>``, exit code 2;
* anything else is a bug: the same line names the exception and asks for ``--debug``, exit 1;
* Ctrl-C: one line, exit 130 (checkpoints are written atomically: the last one is intact).

``--debug`` (every subcommand) or the environment variable ``ONESTEP_SR_DEBUG=1`` lets the
exception through with its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from onestep_sr.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError

DEBUG_ENV = "ONESTEP_SR_DEBUG"
DEBUG_HELP = f"show the traceback of an error (also: {DEBUG_ENV}=1)"


def debugging(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "no", "false")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def user_message(exc: BaseException) -> str | None:
    """The sentence for an error the user can fix, or None for one that is a bug."""
    import torch

    from onestep_sr.download import DownloadError, WeightsUnavailableError
    from onestep_sr.registry import UnknownModelError

    if isinstance(exc, ImportError):
        return (f"a package this command needs is missing ({one_line(exc)}); install the training extras: "
                "python -m pip install -e \".[train]\" (osediff, guided, bake-guidance: \".[train,sd]\")")
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory; lower --batch-size or --gt-size, or use --mixed-precision bf16 "
                "(SD trainers: also --gradient-checkpointing)")
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
        return f"{names}: {exc.strerror}"
    if isinstance(exc, (UsageError, ValueError, OSError, FloatingPointError, UnknownModelError, DownloadError,
                        WeightsUnavailableError)):
        return one_line(exc)
    return None


def run_guarded(prog: str, work: Callable[[], int], debug: bool = False, interrupted: str = "") -> int:
    """``work()``'s exit code, or the exit code of its error after printing it as one line
    (``interrupted``: what a Ctrl-C line adds, e.g. how to resume)."""
    try:
        return work()
    except KeyboardInterrupt:
        if debugging(debug):
            raise
        print(f"\n{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debugging(debug):
            raise
        message = user_message(exc)
        if message is not None:
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
            return EXIT_USAGE
        print(f"{prog}: error: unexpected {type(exc).__name__}: {one_line(exc)[:500]} (probably a bug: run the "
              f"command again with --debug for the traceback and report it)", file=sys.stderr, flush=True)
        return EXIT_FAILED
