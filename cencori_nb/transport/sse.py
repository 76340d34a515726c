"""Server-sent events of a streamed response, with httpx2's errors translated to ours."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from .errors import httpx_errors, map_exception

if TYPE_CHECKING:
    import httpx2

__all__ = ["aiter_sse", "iter_sse"]


def iter_sse(
    response: httpx2.Response, *, provider: str | None = None
) -> Iterator[httpx2.ServerSentEvent]:
    """Server-sent events of a streamed response, with httpx2 errors mapped to ours."""
    import httpx2

    errors = httpx_errors()
    try:
        # one generator frame per event, not a next() call and a try per event: nothing is
        # thrown into this generator, so only reading the stream can raise in here
        yield from httpx2.EventSource(response)
    except errors as exc:
        raise map_exception(exc, provider=provider) from exc


async def aiter_sse(
    response: httpx2.Response, *, provider: str | None = None
) -> AsyncIterator[httpx2.ServerSentEvent]:
    """The async twin of :func:`iter_sse`."""
    import httpx2

    errors = httpx_errors()
    try:
        # as in iter_sse: one try for the whole stream, not an __anext__ call and a try per
        # event (nothing is thrown into this generator; aclose's GeneratorExit passes through)
        async for event in httpx2.EventSource(response):
            yield event
    except errors as exc:
        raise map_exception(exc, provider=provider) from exc
