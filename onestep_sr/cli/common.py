"""What every ``onestep-sr`` subcommand shares: the user-error type and the exit codes."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # some inputs failed, others were written (batch upscale)
EXIT_USAGE = 2   # bad input, nothing written
EXIT_INTERRUPTED = 130  # Ctrl-C: the shell's code for SIGINT


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""
