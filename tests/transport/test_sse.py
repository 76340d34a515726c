"""iter_sse / aiter_sse: the events of a streamed response, and a stream that breaks midway
raised as our error from httpx2's (the sync and async readers alike)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from cencori_nb import errors, transport

EVENTS = [b'data: {"n": 1}\n\n', b"event: delta\ndata: two\n\n", b"data: [DONE]\n\n"]


class _Body(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """The three events, then (when ``fail``) the connection drops with httpx2's ReadError."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def _chunks(self) -> list[bytes]:
        return EVENTS[:2] if self.fail else EVENTS

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks()
        if self.fail:
            raise httpx2.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks():
            yield chunk
        if self.fail:
            raise httpx2.ReadError("connection reset by peer")


def _handler(request: httpx2.Request) -> httpx2.Response:
    fail = request.url.path == "/broken"
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=_Body(fail))


def _sync(path: str) -> list[tuple[str, str]]:
    with httpx2.Client(transport=httpx2.MockTransport(_handler)) as client:
        with client.stream("POST", f"http://127.0.0.1:9{path}") as response:
            return [(e.event, e.data) for e in transport.iter_sse(response, provider="openai")]


def _async(path: str) -> list[tuple[str, str]]:
    async def run() -> list[tuple[str, str]]:
        mock = httpx2.MockTransport(_handler)
        async with httpx2.AsyncClient(transport=mock) as client:
            async with client.stream("POST", f"http://127.0.0.1:9{path}") as response:
                return [
                    (e.event, e.data)
                    async for e in transport.aiter_sse(response, provider="openai")
                ]

    return asyncio.run(run())


@pytest.mark.parametrize("read", [_sync, _async], ids=["iter_sse", "aiter_sse"])
def test_every_event_arrives_in_order(read: object) -> None:
    assert read("/ok") == [  # type: ignore[operator]
        ("message", '{"n": 1}'),
        ("delta", "two"),
        ("message", "[DONE]"),
    ]


@pytest.mark.parametrize("read", [_sync, _async], ids=["iter_sse", "aiter_sse"])
def test_a_stream_cut_midway_is_our_error_from_httpx2s(read: object) -> None:
    with pytest.raises(errors.ProviderUnavailableError) as caught:
        read("/broken")  # type: ignore[operator]
    err = caught.value
    assert isinstance(err.__cause__, httpx2.ReadError)
    assert err.provider == "openai" and err.retryable
    assert "failed while reading the answer" in str(err)


def test_an_abandoned_async_stream_closes_without_an_error() -> None:
    """Leaving the loop early closes the generator: GeneratorExit is not mapped to an error."""

    async def first() -> str:
        mock = httpx2.MockTransport(_handler)
        async with httpx2.AsyncClient(transport=mock) as client:
            async with client.stream("POST", "http://127.0.0.1:9/ok") as response:
                events = transport.aiter_sse(response)
                async for event in events:
                    await events.aclose()  # type: ignore[attr-defined]
                    return event.data
        return ""

    assert asyncio.run(first()) == '{"n": 1}'
