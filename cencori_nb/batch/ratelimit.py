"""An adaptive concurrency limiter for batches: AIMD on 429s, a shared pause on Retry-After.

A batch starts with the concurrency the caller asked for. When a provider answers 429:

- every worker pauses until the ``Retry-After`` the provider gave (or a short default
  backoff when it gave none) — sending more during that window only earns more 429s;
- the concurrency limit is halved (multiplicative decrease), at most once per "epoch": the
  burst of 429s that one overload produces (all requests already in flight) lowers it once,
  not once per request, which would collapse it to 1.

Each success counts towards raising the limit by one; it rises by one after ``limit``
successes in a row (additive increase, one step per window, as TCP does), up to the
requested concurrency. A server that says how many requests remain
(``x-ratelimit-remaining-requests: 0`` with a reset time) can pause everyone *before* the
429 through :meth:`AdaptiveLimiter.observe_headers`.

Time is injected (``clock`` and ``sleep``), so tests drive a 429 storm with a fake clock and
assert the exact waits and limit changes without sleeping.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

__all__ = ["AdaptiveLimiter", "LimiterEvent", "parse_reset"]

DEFAULT_BACKOFF_S = 1.0  # pause after a 429 that carried no Retry-After
MAX_PAUSE_S = 120.0  # never trust a Retry-After longer than this (clock skew, bugs)


@dataclass(frozen=True, slots=True)
class LimiterEvent:
    """One change of the limiter: ``kind`` is ``decrease``, ``increase`` or ``pause``."""

    at: float
    kind: str
    limit: int
    pause_s: float = 0.0


class AdaptiveLimiter:
    """Bounds how many requests are in flight, adapting to the provider's rate limits.

    Use :meth:`acquire` before a request (it returns an *epoch* ticket), :meth:`release`
    after it, then report the outcome with :meth:`on_success` or :meth:`on_rate_limited`.
    All methods run on one event loop; nothing here is thread-safe, nothing needs to be.
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        min_concurrency: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        default_backoff_s: float = DEFAULT_BACKOFF_S,
        max_pause_s: float = MAX_PAUSE_S,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.min_concurrency = max(1, min(min_concurrency, max_concurrency))
        self.limit = max_concurrency
        self.in_flight = 0
        self.pause_until = float("-inf")
        self.clock = clock
        self.sleep = sleep
        self.default_backoff_s = default_backoff_s
        self.max_pause_s = max_pause_s
        self.events: list[LimiterEvent] = []
        self.rate_limited = 0  # 429s seen
        self._epoch = 0
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    # -- slots -------------------------------------------------------------------------
    async def acquire(self) -> int:
        """Wait for any pause to end and for a free slot; return the current epoch."""
        woken = False
        while True:
            wait = self.pause_until - self.clock()
            if wait > 0:
                await self.sleep(wait)
                continue
            # First come, first served: a newcomer queues behind earlier waiters.
            if self.in_flight < self.limit and (woken or not self._waiters):
                self.in_flight += 1
                return self._epoch
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._wake()  # we were woken: pass the turn on
                raise
            woken = True  # loop: re-check the pause and the limit (it may have dropped)

    def release(self) -> None:
        """Give a slot back (call exactly once per :meth:`acquire`)."""
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    # -- outcomes ----------------------------------------------------------------------
    def on_success(self) -> None:
        """Count a success; after ``limit`` of them, raise the limit by one."""
        if self.limit >= self.max_concurrency:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            self.events.append(LimiterEvent(self.clock(), "increase", self.limit))
            self._wake()

    def on_rate_limited(self, epoch: int, retry_after: float | None) -> float:
        """A request acquired at ``epoch`` got a 429: pause everyone, halve the limit once.

        Returns the pause in seconds that was applied (the Retry-After, or the default
        backoff when the provider gave none).
        """
        self.rate_limited += 1
        pause = self.default_backoff_s if retry_after is None else max(0.0, retry_after)
        pause = min(pause, self.max_pause_s)
        now = self.clock()
        if now + pause > self.pause_until:
            self.pause_until = now + pause
            self.events.append(LimiterEvent(now, "pause", self.limit, pause))
        if epoch == self._epoch:
            # The first 429 of this overload: later ones from requests sent before this
            # decrease are echoes of the same burst and must not halve again.
            self._epoch += 1
            self._successes = 0
            new_limit = max(self.min_concurrency, self.limit // 2)
            if new_limit != self.limit:
                self.limit = new_limit
                self.events.append(LimiterEvent(now, "decrease", self.limit))
        return pause

    def observe_headers(self, headers: Mapping[str, str] | None) -> None:
        """Pause early when ``x-ratelimit-remaining-requests`` says none are left.

        Understands OpenAI's ``x-ratelimit-reset-requests`` durations (``6s``, ``1m2s``,
        ``250ms``), Anthropic's ``anthropic-ratelimit-requests-*`` (RFC 3339 reset) and
        Cencori's ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` (Unix ms).
        """
        if not headers:
            return
        lower = {k.lower(): v for k, v in headers.items()}
        for remaining_key, reset_key in (
            ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
            ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
            ("x-ratelimit-remaining", "x-ratelimit-reset"),
        ):
            remaining = lower.get(remaining_key)
            if remaining is None:
                continue
            try:
                left = int(float(remaining))
            except ValueError:
                return
            if left > 0:
                return
            reset = parse_reset(lower.get(reset_key))
            if reset is not None and reset > 0:
                now = self.clock()
                reset = min(reset, self.max_pause_s)
                if now + reset > self.pause_until:
                    self.pause_until = now + reset
                    self.events.append(LimiterEvent(now, "pause", self.limit, reset))
            return

    @property
    def paused(self) -> bool:
        return self.pause_until > self.clock()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_reset(value: str | None, *, now_epoch_s: float | None = None) -> float | None:
    """Seconds until a rate-limit window resets, from the formats providers use.

    ``"6s"``/``"1m30s"``/``"250ms"`` (OpenAI), a Unix time in ms (Cencori), an RFC 3339
    timestamp (Anthropic), or plain seconds. None when it cannot be read.
    """
    if not value:
        return None
    value = value.strip()
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(n) * scale[u] for n, u in parts)
    now = time.time() if now_epoch_s is None else now_epoch_s
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if number > 1e11:  # Unix milliseconds
            return max(0.0, number / 1000.0 - now)
        if number > 1e9:  # Unix seconds
            return max(0.0, number - now)
        return number
    from datetime import datetime

    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, when.timestamp() - now)
