"""cencori_nb.ipython_hygiene: what a failed call leaves in its frames."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from cencori_nb import redact
from cencori_nb.ipython_hygiene import forget_keys_in_frames

STORED = "sk-proj-hygieneStored" + "Qx7Lm2Vr9Tz4Wn1Bh"


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    """401 unless the request carries ``Bearer users-own-token-2``."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ok = self.headers.get("authorization") == "Bearer users-own-token-2"
        self.send_response(200 if ok else 401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _failed(url: str, token: str) -> httpx2.HTTPStatusError:
    with httpx2.Client() as client:
        response = client.get(url, headers={"authorization": f"Bearer {token}"})
        try:
            response.raise_for_status()  # raised in httpx2's own frame
        except httpx2.HTTPStatusError as exc:
            return exc
    raise AssertionError("no 401")


def test_the_users_own_request_keeps_its_token_and_can_be_sent_again(endpoint: str) -> None:
    """The user's own httpx2 call failing in raise_for_status() (a library frame) keeps its
    own token: exc.request is re-sent as it was. A stored key in the same place is
    masked."""
    redact.register_secret(STORED)
    own = _failed(endpoint, "users-own-token")
    forget_keys_in_frames(own)
    assert own.request.headers["authorization"] == "Bearer users-own-token"
    own.request.headers["authorization"] = "Bearer users-own-token-2"
    with httpx2.Client() as client:
        assert client.send(own.request).status_code == 200

    stored = _failed(endpoint, STORED)
    forget_keys_in_frames(stored)
    assert stored.request.headers["authorization"] == "[redacted]"
    assert stored.response.request.headers["authorization"] == "[redacted]"
