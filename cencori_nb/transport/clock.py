"""Time as the retry loop sees it: one replaceable :class:`Clock` for every wait.

``send``/``asend`` sleep through it, the backoff draws its jitter from it and managed-route
pacing (:mod:`cencori_nb.pacing`) reads its monotonic time, so a test that installs a fake
clock (:func:`set_clock`, or a ``clock=`` argument) runs retries instantly and asserts the
exact waits.
"""

from __future__ import annotations

import asyncio
import random
import time

from .. import state

__all__ = ["Clock", "current_clock", "set_clock"]


class Clock:
    """Time as the retry loop sees it. Replace it in tests (see :func:`set_clock`)."""

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for ``Retry-After`` HTTP dates)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (managed-route pacing, :mod:`.pacing`)."""
        return time.monotonic()

    def random(self) -> float:
        """A uniform number in [0, 1) for the backoff jitter."""
        return random.random()  # noqa: S311 (jitter, not cryptography)


_clock: Clock = Clock()


def set_clock(clock: Clock | None) -> Clock:
    """Use ``clock`` for every retry wait from now on (None restores the real one).

    Returns the previous clock so a test can put it back.
    """
    global _clock
    previous = _clock
    _clock = clock if clock is not None else Clock()
    return previous


def _real_clock() -> None:
    set_clock(None)


state.on_reset("transport.clock", _real_clock, env=())  # a test's fake clock goes


def current_clock() -> Clock:
    """The clock in use now (the real one unless a test set another)."""
    return _clock
