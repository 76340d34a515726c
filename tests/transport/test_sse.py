"""iter_sse / aiter_sse: the events of a streamed response, and a stream that breaks midway
raised as our error from httpx2's (the sync and async readers alike)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cencori_nb import errors, transport
from cencori_nb.transport.sse import EventParser

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


# --- our parser against httpx2.EventSource, the judge ----------------------------------------

_LINE = st.one_of(
    st.sampled_from(["", ":", ": keep-alive", "data", "data:", "data: ", "event:", "id", "retry"]),
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["data", "event", "id", "retry", "x", "dat", ""]),
        st.sampled_from([":", ": ", ":  ", ""]),
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12
        )
        | st.sampled_from(["12", "-3", "4x", "a\0b", "é☃", "[DONE]"]),
    ),
)


def _judge(chunks: list[bytes], max_size: int | None) -> list[Any]:
    """What httpx2.EventSource yields for these chunks: events, then its error if any."""

    class Body(httpx2.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield from chunks

    response = httpx2.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=Body(),
        request=httpx2.Request("GET", "http://127.0.0.1:9/"),
    )
    out: list[Any] = []
    try:
        out.extend(httpx2.EventSource(response, max_event_size=max_size))
    except httpx2.SSEError as exc:
        out.append(("error", str(exc)))
    return out


def _ours(chunks: list[bytes], max_size: int | None) -> list[Any]:
    parser = EventParser(max_event_bytes=max_size)
    out: list[Any] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
        if parser.error is not None:
            return [*out, ("error", str(parser.error))]
    out.extend(parser.close())
    if parser.error is not None:
        out.append(("error", str(parser.error)))
    return out


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=14),
    endings=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    junk=st.sampled_from([b"", b"\xff", b"\xe2\x98"]),
    max_size=st.sampled_from([None, 8, 40, 1024 * 1024]),
)
def test_our_events_are_httpx2_event_sources_for_any_stream_cut_anywhere(
    lines: list[str], endings: list[str], cuts: list[int], junk: bytes, max_size: int | None
) -> None:
    """Random fields, values (unicode, NUL, non-integers for retry), comments and blank lines,
    each line ended by LF, CRLF or CR, invalid UTF-8 mixed in, the bytes cut at random places
    (inside a character, between CR and LF): the same events as httpx2.EventSource, in the
    same order, and the same size-limit error after the same events."""
    text = "".join(line + endings[i % len(endings)] for i, line in enumerate(lines))
    body = text.encode("utf-8") + junk + (b"data: end\n\n" if junk else b"")
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert _ours(chunks, max_size) == _judge(chunks, max_size)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(
                ["data: ", "data:", "data:  ", "event: x\ndata: ", ": c\ndata: ", "id: 7\ndata: "]
            ),
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                max_size=30,
            ),
            st.sampled_from(["\n\n", "\n", "\r\n\r\n", "\n\n\n"]),
        ),
        max_size=10,
    ),
    max_size=st.sampled_from([None, 20, 1024 * 1024]),
)
def test_one_event_per_chunk_as_providers_send_them_parses_as_httpx2_does(
    events: list[tuple[str, str, str]], max_size: int | None
) -> None:
    """Each chunk one event (the shape a provider sends, and the parser's fast path), with
    neighbours that are not quite that shape (no space, two spaces, an event name, an id, a
    comment, an event left open, CRLF, an extra blank line): the events of
    httpx2.EventSource."""
    chunks = [(head + data + end).encode() for head, data, end in events]
    assert _ours(chunks, max_size) == _judge(chunks, max_size)


def test_real_recorded_streams_parse_as_httpx2_parses_them() -> None:
    """The recorded provider streams of the corpus (``kind: sse``; tests/corpus/README.md
    names each source), whole and cut into 7-byte chunks: the same events as
    httpx2.EventSource."""
    corpus = Path(__file__).resolve().parents[1] / "corpus"
    streams = []
    for path in sorted(corpus.rglob("*.json")):
        recording = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(recording, dict) and recording.get("kind") == "sse":
            streams.append((path, recording["body_text"].encode("utf-8")))
    assert len(streams) >= 8, [p.name for p, _ in streams]
    for path, body in streams:
        for chunks in ([body], [body[i : i + 7] for i in range(0, len(body), 7)]):
            got = _ours(chunks, 1024 * 1024)
            assert got == _judge(chunks, 1024 * 1024), path
            assert got, path


def test_a_body_that_is_not_an_event_stream_is_refused_like_httpx2() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=b"{}")

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as client:
        with client.stream("POST", "http://127.0.0.1:9/x") as response:
            with pytest.raises(errors.BadResponseError) as info:
                list(transport.iter_sse(response, provider="openai"))
    assert isinstance(info.value.__cause__, httpx2.SSEError)
    assert "application/json" in str(info.value.__cause__)


def test_an_event_over_the_size_limit_names_the_host_that_sent_it() -> None:
    """A server that never ends an event (past 1 MiB) is refused with our error, naming
    the host, as EventSource's SSEError names its request; nothing more is read."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = b"data: " + b"x" * (1024 * 1024 + 10) + b"\n\n" + b"data: never\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as client:
        with client.stream("POST", "http://hostile.example:9/x") as response:
            with pytest.raises(errors.BadResponseError) as info:
                list(transport.iter_sse(response, provider="openai"))
    cause = info.value.__cause__
    assert isinstance(cause, httpx2.SSEError) and "byte limit" in str(cause)
    assert cause.request.url.host == "hostile.example"
    assert "hostile.example" in str(info.value)
