"""Managed-route pacing: keep under Cencori's per-project request rate instead of earning 429s.

Cencori allows 60 requests per minute per project (a sliding window over all AI endpoints)
and answers the 61st with ``429 rate_limit_exceeded``. A notebook loop or a batch easily
goes faster, so the managed route paces itself: before each request it reserves a start
time such that no more than ``rpm`` requests start in any 60 seconds, and waits until then
(the transport's :class:`~cencori_nb.transport.Clock`, so tests assert the waits without
sleeping; the async path awaits and never blocks the loop).

The pace, from :func:`managed_rpm`:

- the ``managed_rpm`` setting when it is set (``0`` turns pacing off);
- else, against a sandbox (``CENCORI_NB_SANDBOX``), the sandbox's own ``--rpm`` as its
  ``/_sandbox/config`` states it (none by default: an unlimited sandbox is not paced);
- else Cencori's documented 60.

One pacer per (gateway URL, project key), shared by every thread and event loop of the
process; other processes sharing the project are not seen (the gateway's 429 and its
``Retry-After`` still cover them).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from . import state

if TYPE_CHECKING:
    from .router import Decision
    from .settings import Settings
    from .transport.clock import Clock

__all__ = ["GATEWAY_RPM", "WINDOW_S", "Pacer", "apace", "managed_rpm", "pace", "pacer_for"]

GATEWAY_RPM = 60  # Cencori's documented limit per project
WINDOW_S = 60.0  # the gateway's sliding window
_PROBE_TIMEOUT_S = 2.0


class Pacer:
    """At most ``rpm`` request starts in any :data:`WINDOW_S` seconds (thread-safe).

    :meth:`reserve` books the earliest allowed start and returns how long to wait for it;
    bookings are kept in start order, so concurrent callers queue up fairly.
    """

    def __init__(self, rpm: int) -> None:
        if rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()

    def reserve(self, now: float) -> float:
        """Book a start at or after ``now``; return the seconds to wait (0: go now)."""
        with self._lock:
            starts = self._starts
            while starts and starts[0] <= now - WINDOW_S:
                starts.popleft()
            start = now
            if len(starts) >= self.rpm:
                start = max(now, starts[-self.rpm] + WINDOW_S)
            starts.append(start)
            return start - now


_pacers: dict[tuple[str, str, int], Pacer] = {}
_sandbox_rpm: dict[str, int | None] = {}
_lock = threading.Lock()


def _sandbox_pace(url: str) -> int | None:
    """The sandbox's ``--rpm`` (None: unlimited, or not a sandbox that says)."""
    with _lock:
        if url in _sandbox_rpm:
            return _sandbox_rpm[url]
    rpm: int | None = None
    try:
        import httpx2

        response = httpx2.get(url.rstrip("/") + "/_sandbox/config", timeout=_PROBE_TIMEOUT_S)
        value = response.json().get("rpm") if response.status_code == 200 else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            rpm = value
    except Exception:  # noqa: BLE001 (any failure means "no pace known": do not pace)
        rpm = None
    with _lock:
        _sandbox_rpm[url] = rpm
    return rpm


def managed_rpm(settings: Settings) -> int | None:
    """The pace for the managed route (None: not paced); see the module docstring."""
    if settings.managed_rpm is not None:
        return settings.managed_rpm or None
    if settings.sandbox_url:
        return _sandbox_pace(settings.sandbox_url)
    return GATEWAY_RPM


def pacer_for(decision: Decision) -> Pacer | None:
    """The shared pacer for ``decision``'s gateway and project key (None: no pacing)."""
    if decision.route != "managed":
        return None
    from .settings import load_settings

    rpm = managed_rpm(load_settings())
    if rpm is None:
        return None
    # the key identifies the project; only a digest of it is kept
    who = hashlib.blake2b(decision.credential.reveal().encode(), digest_size=8).hexdigest()
    key = (decision.base_url, who, rpm)
    with _lock:
        pacer = _pacers.get(key)
        if pacer is None:
            pacer = _pacers[key] = Pacer(rpm)
        return pacer


def _clock(clock: Clock | None) -> Clock:
    if clock is not None:
        return clock
    from .transport.clock import current_clock

    return current_clock()


def pace(decision: Decision, clock: Clock | None = None) -> float:
    """Wait (sleeping) for ``decision``'s next allowed start; return the seconds waited."""
    pacer = pacer_for(decision)
    if pacer is None:
        return 0.0
    clk = _clock(clock)
    wait = pacer.reserve(getattr(clk, "monotonic", time.monotonic)())
    if wait > 0:
        clk.sleep(wait)
    return wait


async def apace(decision: Decision, clock: Clock | None = None) -> float:
    """The async twin of :func:`pace` (awaits; never blocks the event loop)."""
    pacer = pacer_for(decision)
    if pacer is None:
        return 0.0
    clk = _clock(clock)
    wait = pacer.reserve(getattr(clk, "monotonic", time.monotonic)())
    if wait > 0:
        await clk.asleep(wait)
    return wait


def _forget_pacers() -> None:
    with _lock:
        _pacers.clear()


def _forget_probes() -> None:
    with _lock:
        _sandbox_rpm.clear()


# A pacer follows a gateway and a project key, whatever the home; a sandbox's --rpm is
# asked again when CENCORI_NB_SANDBOX changes (another sandbox may answer on the same URL).
state.on_reset("pacing.pacers", _forget_pacers, env=())
state.on_reset("pacing.sandbox_rpm", _forget_probes, env=("CENCORI_NB_SANDBOX",))
