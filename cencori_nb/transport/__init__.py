"""The one shared HTTP transport: pooling, timeouts, bounded retries, error mapping, log redaction.

Everything that goes over the network to a provider or to the Cencori gateway passes through
:func:`send` / :func:`asend`. One concern per module:

- :mod:`.pool`: the sync sender (one per process), the pooled ``httpx2.Client`` and
  ``httpx2.AsyncClient`` (one per event loop), their timeouts and limits;
  :func:`set_transport` for tests.
- :mod:`.direct`: the sync sender, httpcore2's pool driven without ``httpx2.Client``.
- :mod:`.aio`: aiohttp's client under the pooled ``AsyncClient`` (an ``httpx2`` transport).
- :mod:`.errors`: the one translation of httpx2 exceptions (:func:`map_exception`) and HTTP
  statuses plus provider error codes (:func:`error_class`, :func:`error_for_status`) into
  :class:`~cencori_nb.errors.CencoriError` s.
- :mod:`.retry`: the one retry policy, sans-I/O (:func:`next_wait`), and the one parser of a
  server's requested wait (:func:`retry_after`).
- :mod:`.clock`: the :class:`Clock` every wait goes through (tests replace it).
- :mod:`.sending`: :func:`send` / :func:`asend`, the loop that puts the above together.
- :mod:`.sse`: server-sent events with errors mapped (:func:`iter_sse` / :func:`aiter_sse`),
  parsed by :class:`~.sse.EventParser`.
- :mod:`.logs`: the :class:`RedactingFilter` on every HTTP-stack and cencori_nb logger.

This package re-exports the public names, so ``from cencori_nb import transport`` and
``transport.send(...)`` keep working.
"""

from __future__ import annotations

from .clock import Clock, set_clock
from .errors import error_class, error_for_status, map_exception
from .logs import REDACTED, RedactingFilter, install_log_redaction, register_secret, scrub
from .pool import get_async_client, get_client, set_transport
from .retry import (
    DEFAULT_RETRIES,
    MAX_RETRY_WAIT,
    PACED_MAX_WAIT,
    PACED_RATE_LIMIT_RETRIES,
    backoff_wait,
    is_retryable,
    next_wait,
    retry_after,
    retry_after_from_response,
    retryable_code,
    should_retry_header,
)
from .sending import MapError, asend, send
from .sse import aiter_sse, iter_sse

__all__ = [
    "DEFAULT_RETRIES",
    "MAX_RETRY_WAIT",
    "PACED_MAX_WAIT",
    "PACED_RATE_LIMIT_RETRIES",
    "REDACTED",
    "Clock",
    "MapError",
    "RedactingFilter",
    "aiter_sse",
    "asend",
    "backoff_wait",
    "error_class",
    "error_for_status",
    "get_async_client",
    "get_client",
    "install_log_redaction",
    "is_retryable",
    "iter_sse",
    "map_exception",
    "next_wait",
    "register_secret",
    "retry_after",
    "retry_after_from_response",
    "retryable_code",
    "scrub",
    "send",
    "set_clock",
    "set_transport",
    "should_retry_header",
]


# Loggers that exist at import time get the filter now; later ones at the next request.
install_log_redaction()
