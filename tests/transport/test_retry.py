"""The retry hints: the server's requested wait read from a response."""

from __future__ import annotations

import json

import httpx2

from cencori_nb import transport


def test_retry_after_from_response_parsing() -> None:
    """Header forms and the body form, and garbage ignored."""
    parse = transport.retry_after_from_response
    assert parse(httpx2.Response(429, headers={"retry-after": "12"})) == 12.0
    assert parse(httpx2.Response(429, headers={"retry-after-ms": "40"})) == 0.04
    assert parse(httpx2.Response(429, content=json.dumps({"retry_after_ms": 900}).encode())) == 0.9
    assert parse(httpx2.Response(429, json={"error": {"retry_after_ms": 100}})) == 0.1
    assert parse(httpx2.Response(429, headers={"retry-after": "soon"}, text="no")) is None
    assert parse(httpx2.Response(429)) is None
