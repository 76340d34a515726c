"""Fault injection and per-key rate limits for the sandbox.

Faults come from the ``X-Sandbox-Fault`` request header (one request) or from startup
probabilities such as ``429=0.2,500=0.1,timeout=0.05`` drawn with a seeded RNG, so a run
with the same seed and the same request order injects the same faults.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import SupportsFloat, SupportsIndex

__all__ = ["ANSWER_FAULTS", "ERROR_FAULTS", "FAULTS", "FaultPicker", "RateLimiter", "parse_faults"]

# Faults answered with an error status in the door's own error format ("529": the
# provider is overloaded; Anthropic's own status, the others' 503).
ERROR_FAULTS = frozenset({"401", "402", "403", "429", "500", "503", "529"})
# Faults that change how a successful answer is delivered ("stream-error": a 200 stream
# that stops half-way with the provider's own error event, as overloads arrive mid-stream).
DELIVERY_FAULTS = frozenset(
    {
        "timeout",
        "truncate",
        "malformed",
        "stream-error",
        "invalid-json",
        "refusal",
        "content-filter",
        "prompt-blocked",
    }
)
# Faults in what the model says, not in how it is delivered: answered (and charged) in full.
# "content-filter": the provider's filter stopped the answer (OpenAI-style finish_reason
# content_filter, empty content; doors without that finish answer their own refusal).
# "prompt-blocked": the provider's filter refused the prompt before the model ran, the
# prompt still billed (Gemini's 200 with promptFeedback.blockReason and no candidates;
# doors without that shape answer their own refusal).
ANSWER_FAULTS = frozenset({"invalid-json", "refusal", "content-filter", "prompt-blocked"})
FAULTS = ERROR_FAULTS | DELIVERY_FAULTS


def parse_faults(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """Parse ``"429=0.2,timeout=0.05"`` (or a mapping) into ``{fault: probability}``.

    Raises ``ValueError`` naming the bad part: an unknown fault, a probability outside
    [0, 1], or probabilities summing above 1.
    """
    if not spec:
        return {}
    items: list[tuple[str, object]]
    if isinstance(spec, str):
        items = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"fault {part!r} needs a probability, e.g. {part}=0.1")
            items.append((name.strip(), value.strip()))
    else:
        items = list(spec.items())
    out: dict[str, float] = {}
    for fault, given in items:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        try:
            if not isinstance(given, str | SupportsFloat | SupportsIndex):
                raise TypeError(type(given).__name__)  # a list, None…: not a number
            p = float(given)
        except (TypeError, ValueError):
            raise ValueError(f"fault {fault!r}: {given!r} is not a probability") from None
        if not 0 <= p <= 1 or math.isnan(p):
            raise ValueError(f"fault {fault!r}: probability {p} is outside 0..1")
        out[fault] = p
    if sum(out.values()) > 1 + 1e-9:
        raise ValueError("fault probabilities add up to more than 1")
    return out


class FaultPicker:
    """Draws at most one fault per request from the configured probabilities."""

    def __init__(self, probabilities: Mapping[str, float], seed: int) -> None:
        self.probabilities = dict(probabilities)
        self._seed = seed
        self._rng = random.Random(seed)  # noqa: S311 (reproducible test faults, not crypto)
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(self._seed)  # noqa: S311

    def draw(self) -> str | None:
        if not self.probabilities:
            return None
        with self._lock:
            r = self._rng.random()
        acc = 0.0
        for name, p in self.probabilities.items():
            acc += p
            if r < acc:
                return name
        return None


class RateLimiter:
    """Requests per minute per API key, over a sliding 60-second window.

    Keys are remembered by a digest only. ``hit`` records an allowed request and returns
    ``(allowed, remaining, retry_after_s)``; a refused request is not recorded.
    """

    WINDOW = 60.0

    def __init__(self, rpm: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        if rpm is not None and rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        self._clock = clock
        self._hits: dict[bytes, deque[float]] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()

    def hit(self, key: str) -> tuple[bool, int, int]:
        if self.rpm is None:
            return True, 0, 0
        digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=16).digest()
        now = self._clock()
        with self._lock:
            window = self._hits.setdefault(digest, deque())
            while window and window[0] <= now - self.WINDOW:
                window.popleft()
            if len(window) >= self.rpm:
                retry = max(1, math.ceil(window[0] + self.WINDOW - now))
                return False, 0, retry
            window.append(now)
            return True, self.rpm - len(window), 0

    def reset_seconds(self, key: str) -> int:
        """Seconds until the oldest request of ``key`` leaves the window (0 if none)."""
        if self.rpm is None:
            return 0
        digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=16).digest()
        with self._lock:
            window = self._hits.get(digest)
            if not window:
                return 0
            return max(0, math.ceil(window[0] + self.WINDOW - self._clock()))
