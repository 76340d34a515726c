"""Keys never reach the logs of the HTTP stack or our own, at any level."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator

import pytest

from cencori_nb import transport
from cencori_nb.keystore.secret import Secret
from cencori_nb.redact import MARKER


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("Authorization: Bearer sk-proj-abcdefghijklmnop", "sk-proj-abcdefghijklmnop"),
        ("headers {'x-api-key': 'sk-ant-api03-ABCDEFGHIJ'}", "sk-ant-api03-ABCDEFGHIJ"),
        ("GET /v1beta/models/x:generateContent?key=AIzaSyA1234567890abcdef", "AIzaSyA1234567890"),
        ("CENCORI_API_KEY: csk_live_0123456789abcdef", "csk_live_0123456789"),
        ("bearer opaque.token.value-123", "opaque.token.value-123"),
        ("url ?api_key=plainvalue123&x=1", "plainvalue123"),
        ("{'x-goog-api-key': 'weird-but-secret-999'}", "weird-but-secret-999"),
        ("gsk_abcdefghijkl and xai-abcdefghijkl", "abcdefghijkl"),
    ],
)
def test_scrub_patterns(text: str, leaked: str) -> None:
    """Each key shape is replaced by the one marker and the surrounding text kept."""
    out = transport.scrub(text)
    assert leaked not in out
    assert MARKER in out


def test_scrub_keeps_ordinary_text() -> None:
    """Plain text with no key shapes is unchanged."""
    text = 'HTTP Request: POST http://127.0.0.1:1/v1/chat "HTTP/1.1 200 OK" task-runner skipped'
    assert transport.scrub(text) == text


def test_registered_secret_is_scrubbed_even_when_not_key_shaped() -> None:
    """A credential registered by the router is scrubbed wherever it appears."""
    transport.register_secret(Secret("local-ollama-token-42"))
    assert transport.scrub("token=local-ollama-token-42!") == f"token={MARKER}!"
    assert "local-ollama-token-42" not in transport.scrub("x local-ollama-token-42 y")


def test_no_key_in_debug_logs_of_a_real_request(
    loopback: str, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A real request with the canary in headers and URL logs at DEBUG without the canary."""
    import httpx2

    caplog.set_level(logging.DEBUG)
    for name in ("httpx2", "httpcore2", "cencori_nb"):
        caplog.set_level(logging.DEBUG, logger=name)
    request = httpx2.Request(
        "POST",
        f"{loopback}/v1beta/models/m:generateContent?key={canary}",
        headers={
            "authorization": f"Bearer {canary}",
            "x-api-key": canary,
            "x-goog-api-key": canary,
        },
        json={"prompt": "hi"},
    )
    response = transport.send(request)
    assert response.status_code == 200
    names = {r.name for r in caplog.records}
    assert "httpx2" in names, names  # the INFO request line was logged
    assert any(n.startswith("httpcore2.") for n in names), names  # and httpcore2 DEBUG traces
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert canary not in text
    assert "HTTP Request: POST" in text


def test_exception_traceback_in_logs_is_scrubbed(
    canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """log.exception with a key in the exception text: the formatted traceback is scrubbed."""
    transport.install_log_redaction()
    log = logging.getLogger("cencori_nb.transport")
    caplog.set_level(logging.DEBUG, logger="cencori_nb")
    try:
        raise ValueError(f"bad header Bearer {canary}")
    except ValueError:
        log.exception("failed with %s", canary)
    assert canary not in caplog.text
    assert "ValueError" in caplog.text


def test_filter_is_on_child_loggers() -> None:
    """Records logged by httpcore2's children are filtered at their own logger."""
    transport.install_log_redaction()
    for name in (
        "httpx2",
        "httpcore2.http11",
        "httpcore2.connection",
        "httpx",
        "httpcore.http11",
        "cencori_nb",
        "cencori_nb.client",
    ):
        assert any(
            isinstance(f, transport.RedactingFilter) for f in logging.getLogger(name).filters
        ), name


def test_keys_in_an_unlocked_store_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    """A stored key that is not key-shaped is scrubbed once the store is open in-process."""
    from cencori_nb import keys

    token = "plainlocaltoken0987"
    transport.install_log_redaction()  # installed before the key exists
    keys.set("local", token)
    caplog.set_level(logging.DEBUG, logger="httpx2")
    logging.getLogger("httpx2").debug("sending with %s", token)
    assert token not in caplog.text
    assert f"sending with {MARKER}" in caplog.text


def test_loggers_created_later_are_covered(
    loopback: str, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A cencori_nb.* logger created after import gets the filter at the next request."""
    import httpx2

    late = logging.getLogger("cencori_nb.some_module_loaded_late")
    transport.send(httpx2.Request("POST", f"{loopback}/x", json={}))
    caplog.set_level(logging.DEBUG, logger="cencori_nb")
    late.warning("key was %s", canary)
    assert canary not in caplog.text and f"key was {MARKER}" in caplog.text
