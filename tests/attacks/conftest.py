"""Fixtures the attack suites share (fixtures live here, helpers in ``support.py``)."""

from __future__ import annotations

import http.server
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.attacks.support import RecordingSandbox

_Handler = TypeVar("_Handler", bound=http.server.BaseHTTPRequestHandler)


@pytest.fixture(scope="module")
def _server() -> Iterator[RecordingSandbox]:
    """One recording sandbox on loopback per test module (started once: a start costs)."""
    server = RecordingSandbox()
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def srv(_server: RecordingSandbox) -> RecordingSandbox:
    """The module's recording sandbox with nothing received yet and its counters reset."""
    _server.reset()
    _server.received.clear()
    return _server


@pytest.fixture
def loopback_openai() -> Iterator[Callable[[type[_Handler], str], type[_Handler]]]:
    """``start(handler, key)``: a real HTTP server on 127.0.0.1 answering with (a fresh
    subclass of) ``handler``, set as the openai ``base_url``, with ``key`` stored as the
    openai key (a loopback endpoint receives the stored key, as a local proxy would).
    Returns the subclass, whose class attributes a test may set; stopped after the test."""
    import http.server
    import threading

    from cencori_nb import keys, settings

    running: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def start(handler: type[_Handler], key: str) -> type[_Handler]:
        fresh = type("Handler", (handler,), {})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fresh)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        keys.set("openai", key, default_model="gpt-4o-mini", make_default=True)
        settings.update_settings(base_urls={"openai": f"http://127.0.0.1:{server.server_port}/v1"})
        return fresh

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
