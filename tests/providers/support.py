"""Shared helpers of the provider adapter tests: a recording MockTransport, SSE frames, and a
leak assertion.

Requests go through ``httpx2.Client(transport=MockTransport(handler))`` so the assertions are
on what a server would have received, and responses come back as real ``httpx2.Response``s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2

from cencori_nb import errors
from cencori_nb.keystore.secret import Secret
from cencori_nb.providers.base import Provider, StreamParser
from cencori_nb.types import ChatRequest

BASE = "http://upstream.test"

# --- helpers ---------------------------------------------------------------------------------


class Recorder:
    """A MockTransport handler that records each request and answers with ``reply``."""

    def __init__(self, reply: Callable[[httpx2.Request], httpx2.Response]) -> None:
        self.reply = reply
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        return self.reply(request)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)

    @property
    def last(self) -> httpx2.Request:
        return self.requests[-1]


def exchange(
    request: httpx2.Request,
    *,
    status: int = 200,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[httpx2.Response, Recorder]:
    """Send ``request`` through a MockTransport that answers with the given response."""
    if content is None:
        content = b"" if body is None else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    rec = Recorder(lambda _r: httpx2.Response(status, headers=hdrs, content=content))
    with httpx2.Client(transport=httpx2.MockTransport(rec)) as client:
        response = client.send(request)
        response.read()
    return response, rec


def sse(*frames: str) -> bytes:
    """Server-sent events from raw frames (each frame already has its ``data:``/``event:``)."""
    return "".join(f + "\n\n" for f in frames).encode()


def data(obj: Any) -> str:
    return "data: " + (obj if isinstance(obj, str) else json.dumps(obj))


def named(kind: str, obj: Any) -> str:
    return f"event: {kind}\n" + data(obj)


def run_stream(
    provider: Provider, request: httpx2.Request, payload: bytes
) -> tuple[StreamParser, list[str], Recorder]:
    """Stream ``payload`` as a ``text/event-stream`` reply; feed every event to the parser."""
    rec = Recorder(
        lambda _r: httpx2.Response(
            200,
            headers={
                "content-type": "text/event-stream",
                "x-request-id": "req_stream_1",
                "request-id": "req_stream_1",
            },
            content=payload,
        )
    )
    deltas: list[str] = []
    with httpx2.Client(transport=httpx2.MockTransport(rec)) as client:
        response = client.send(request, stream=True)
        parser = provider.stream_parser(response)
        try:
            for event in httpx2.EventSource(response):
                delta = parser.feed(event)
                if delta:
                    deltas.append(delta)
        finally:
            response.close()
    return parser, deltas, rec


def chat(prompt: str = "Say hello", **kw: Any) -> ChatRequest:
    return ChatRequest.from_prompt(prompt, **kw)


def assert_no_leak(err: BaseException, *secrets: str) -> None:
    """No secret (nor its first 12 characters) in the message, the repr or any attribute."""
    texts = [str(err), repr(err), repr(err.args)]
    texts += [repr(v) for v in vars(err).values()]
    for secret in secrets:
        for text in texts:
            assert secret not in text
            assert secret[:12] not in text


def map_status(
    provider: Provider,
    status: int,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    key: str = "sk-test-key-0000aaaa",
    content: bytes | None = None,
) -> errors.CencoriError:
    """The error ``provider.map_error`` makes of a real error response to its own request."""
    request = provider.build_request(chat(), model="m-1", api_key=Secret(key), base_url=BASE)
    response, _ = exchange(request, status=status, body=body, headers=headers, content=content)
    return provider.map_error(response)


def openai_chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": usage,
    }
    if choices:
        delta = {} if content is None else {"content": content}
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return chunk
