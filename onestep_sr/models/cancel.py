"""Cancel points inside long network calls.

On a CPU one call of the full-size networks can take a minute (a 128-pixel VQ tile), so a host's
Cancel that is only looked at between tiles waits that long. The networks call
:func:`cancel_point` between their blocks (residual blocks, Swin blocks, resampling convolutions,
chunks of the VQ attention); it does nothing unless a caller has opened a :func:`cancel_scope`
in this thread (or context), and then it calls that scope's ``check``, at most once every
``interval`` seconds. ``check`` raises to stop, so the exception unwinds out of the network
before the call finishes. The computation itself is unchanged: results are bit-identical with or
without a scope.

The engine (``OneStepSR``) opens a scope whose check calls the host's ``progress(done, total)``
callback with an unchanged ``done``: every host's progress callback already raises its own
interrupt exception, so ComfyUI, A1111/Forge and the web app stop within one block.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

#: seconds between two calls of a scope's check from inside the networks (hosts' callbacks may
#: update a progress bar, so they are not called at every block of a fast GPU run)
CHECK_INTERVAL_S = 0.25


class _Scope:
    __slots__ = ("check", "interval", "last")

    def __init__(self, check: Callable[[], None], interval: float):
        self.check, self.interval, self.last = check, interval, time.perf_counter()

    def poll(self) -> None:
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.check()


_SCOPE: ContextVar[_Scope | None] = ContextVar("onestep_sr_cancel_scope", default=None)


def cancel_point() -> None:
    """A point where the computation may stop: calls the current scope's check (throttled)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.poll()


@contextmanager
def cancel_scope(check: Callable[[], None] | None, interval: float | None = None) -> Iterator[None]:
    """Within the block, :func:`cancel_point` calls ``check()`` at most every ``interval`` seconds
    (default :data:`CHECK_INTERVAL_S`, read when the block starts). ``check=None`` adds no check
    (an enclosing scope's still applies)."""
    if check is None:
        yield
        return
    token = _SCOPE.set(_Scope(check, CHECK_INTERVAL_S if interval is None else interval))
    try:
        yield
    finally:
        _SCOPE.reset(token)
