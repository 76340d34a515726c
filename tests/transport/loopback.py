"""A loopback HTTP/1.1 server with one path per case (gzip, redirect, truncated body, slow
answer, not-HTTP reply, chunked SSE, error status), recording what it received: the
transports are compared against it (tests/transport/test_aio.py, test_direct.py)."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2

from cencori_nb.errors import ProviderTimeoutError, ProviderUnavailableError

BODY = b'{"ok":true}'


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        return None

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": [(k.lower(), v) for k, v in self.headers.items()],
                "body": body,
            }
        )
        return body

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self._record()
        kind = self.path.strip("/").split("?")[0]
        if kind == "gzip":
            data = gzip.compress(BODY)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"partial":')
            self.wfile.flush()
            self.close_connection = True
        elif kind == "slow":
            time.sleep(1.0)
            self._ok(BODY)
        elif kind == "garbage":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            self.close_connection = True
        elif kind == "sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"data: {i}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
                time.sleep(0.3 if i == 0 else 0)
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "status":
            self.send_response(429)
            self.send_header("Retry-After", "7")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        else:
            self._ok(BODY)

    def _ok(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # a client that hung up on a fault case is the point, not news


def serve() -> Iterator[str]:
    """Run a :class:`Server` in a thread; yield its base URL; shut it down."""
    srv = Server(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def request_to(url: str, **kw: Any) -> httpx2.Request:
    """A POST (or ``method=``) to ``url`` with the headers every comparison sends."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": "Bearer sk-test-loopback",
        "X-Twice": "1",
        **kw.pop("headers", {}),
    }
    return httpx2.Request(kw.pop("method", "POST"), url, headers=headers, **kw)


# The failures every transport must raise as httpx2's own does: (path, read timeout, the
# httpx2 exception, the CencoriError the one table names it).
FAILURES = [
    ("/truncate", 5.0, httpx2.RemoteProtocolError, ProviderUnavailableError),
    ("/slow", 0.3, httpx2.ReadTimeout, ProviderTimeoutError),
    ("/garbage", 5.0, httpx2.RemoteProtocolError, ProviderUnavailableError),
]
