"""Cencori's receipts (request id, cache state, model upgrade) and managed-route pacing.

The receipts are read from the gateway's headers into the Completion, shown in its footer
and stored in the ledger; the sandbox sends them as the gateway does. Pacing keeps the
managed route under the gateway's per-project rate (Cencori's 60/min, a sandbox's --rpm,
or the ``managed_rpm`` setting) with waits measured on an injected clock.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import cencori_nb
from cencori_nb import errors, keys, pacing, settings, transport
from cencori_nb.ledger import default_ledger
from cencori_nb.sandbox.faults import RateLimiter
from cencori_nb.sandbox.server import SandboxServer

CENCORI_KEY = "csk_live_receipts_" + "R" * 20 + "x7y8"  # a live key: test keys are free
OPENAI_KEY = "sk-test-receipts-" + "O" * 20 + "q1w2"


@pytest.fixture
def managed(sandbox_env: SandboxServer) -> SandboxServer:
    """The shared sandbox with only a Cencori key stored: every request is managed."""
    keys.set_cencori_key(CENCORI_KEY)
    return sandbox_env


def _rows() -> list[Any]:
    led = default_ledger()
    led.flush()
    return led.rows()


# --------------------------------------------------------------------------- receipts


def test_managed_chat_reads_request_id_and_cache_miss(managed: SandboxServer) -> None:
    """The gateway's X-Request-Id is the completion's id; MISS is recorded; footer shows id."""
    c = cencori_nb.chat("Receipts please", model="gpt-4o-mini", cache=False)
    seen = managed.stats["recent"][-1]
    assert c.route == "managed" and c.request_id == seen["request_id"]
    assert c.request_id.startswith("req_")
    assert c.gateway_cache == "MISS" and c.model_original is None
    assert f"request {c.request_id}" in c.footer()
    assert "cache HIT" not in c.footer()
    (row,) = _rows()
    assert (row.request_id, row.gateway_cache, row.model_original) == (c.request_id, "MISS", None)


def test_gateway_cache_hit_costs_nothing_and_is_recorded(managed: SandboxServer) -> None:
    """The same request again (local cache off): the gateway answers HIT for $0."""
    first = cencori_nb.chat("Same question twice", model="gpt-4o-mini", temperature=0, cache=False)
    assert first.credits_charged_usd > 0
    balance = managed.balance
    again = cencori_nb.chat("Same question twice", model="gpt-4o-mini", temperature=0, cache=False)
    assert again.gateway_cache == "HIT" and again.text == first.text
    assert again.credits_charged_usd == 0 and again.provider_cost_usd == 0
    assert again.request_id != first.request_id
    assert managed.balance == balance  # the gateway charged nothing
    assert "Cencori cache HIT" in again.footer()
    rows = {r.request_id: r for r in _rows()}
    assert rows[again.request_id].gateway_cache == "HIT"
    assert rows[again.request_id].credits_charged_usd == 0
    assert rows[first.request_id].gateway_cache == "MISS"


def test_stream_has_no_cache_receipt_and_byok_has_none(managed: SandboxServer) -> None:
    with cencori_nb.stream("Stream me", model="gpt-4o-mini", cache=False) as s:
        text = "".join(s)
    assert text and s.completion is not None
    assert s.completion.gateway_cache is None and s.completion.request_id.startswith("req_")
    keys.set("openai", OPENAI_KEY)
    c = cencori_nb.chat("BYOK now", model="gpt-4o-mini", cache=False)
    assert c.route == "byok" and c.gateway_cache is None and "request " not in c.footer()


class _Gateway(BaseHTTPRequestHandler):
    """A loopback stand-in for the gateway answering with chosen receipt headers."""

    receipt_headers: dict[str, str] = {}

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps(
            {
                "id": "x",
                "model": "gpt-4o-mini",
                "provider": "openai",
                "content": "a picture of a cat",
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                "cost_usd": 0.00001,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "req_loopback_1")
        for name, value in self.receipt_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (no /_sandbox/config here: no pacing known)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Gateway]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CENCORI_NB_SANDBOX", f"http://127.0.0.1:{server.server_port}")
    keys.set_cencori_key(CENCORI_KEY)
    try:
        yield _Gateway
    finally:
        server.shutdown()
        server.server_close()
        _Gateway.receipt_headers = {}


def test_model_upgrade_is_read_shown_and_stored(gateway: type[_Gateway]) -> None:
    gateway.receipt_headers = {
        "X-Model-Upgraded": "true",
        "X-Model-Original": "gpt-3.5-turbo",
        "X-Cencori-Cache": "MISS",
    }
    c = cencori_nb.chat("what is in the picture", model="gpt-4o-mini", cache=False)
    assert c.model_original == "gpt-3.5-turbo" and c.request_id == "req_loopback_1"
    assert "upgraded from gpt-3.5-turbo" in c.footer()
    (row,) = _rows()
    assert row.model_original == "gpt-3.5-turbo" and row.gateway_cache == "MISS"


@pytest.mark.parametrize(
    ("headers", "cache", "original"),
    [
        ({"X-Cencori-Cache": "semantic-hit"}, "SEMANTIC-HIT", None),  # case is not meaning
        ({"X-Cencori-Cache": "HIT; DROP TABLE requests"}, None, None),  # unknown value: dropped
        ({"X-Cencori-Cache": ""}, None, None),
        ({"X-Model-Original": "gpt-3.5-turbo"}, None, None),  # no X-Model-Upgraded
        ({"X-Model-Upgraded": "false", "X-Model-Original": "gpt-3.5-turbo"}, None, None),
        ({"X-Model-Upgraded": "true", "X-Model-Original": "<script>alert(1)</script>"}, None, None),
        ({"X-Model-Upgraded": "true", "X-Model-Original": "a" * 201}, None, None),
        (
            {"X-Model-Upgraded": "true", "X-Model-Original": "openai/gpt-4o:2024"},
            None,
            "openai/gpt-4o:2024",
        ),
    ],
)
def test_receipt_headers_are_untrusted(
    gateway: type[_Gateway], headers: dict[str, str], cache: str | None, original: str | None
) -> None:
    """Only the documented cache states and model-id-shaped originals are kept."""
    gateway.receipt_headers = headers
    c = cencori_nb.chat("hi", model="gpt-4o-mini", cache=False)
    assert (c.gateway_cache, c.model_original) == (cache, original)
    (row,) = _rows()
    assert (row.gateway_cache, row.model_original) == (cache, original)


# --------------------------------------------------------------------------- pacing


class _FakeClock(transport.Clock):
    """Records sleeps and advances its own monotonic time by them."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[_FakeClock]:
    fake = _FakeClock()
    previous = transport.set_clock(fake)
    try:
        yield fake
    finally:
        transport.set_clock(previous)


def test_pacer_window_arithmetic() -> None:
    pacer = pacing.Pacer(2)
    assert [pacer.reserve(0.0), pacer.reserve(0.0)] == [0.0, 0.0]
    assert pacer.reserve(10.0) == 50.0  # the first start leaves the window at 60
    assert pacer.reserve(10.0) == 50.0  # so does the second (both at 0)
    assert pacer.reserve(10.0) == 110.0  # then the bookings themselves fill it
    with pytest.raises(ValueError):
        pacing.Pacer(0)


def test_managed_route_paces_to_the_sandbox_rpm(
    monkeypatch: pytest.MonkeyPatch, clock: _FakeClock
) -> None:
    """A sandbox started with rpm=2: the third request waits for the window, no 429."""
    server = SandboxServer(rpm=2)
    # the server's window runs on the same fake clock, so the paced wait is really enough
    server.limiter = RateLimiter(2, clock=clock.monotonic)
    with server as url:
        monkeypatch.setenv("CENCORI_NB_SANDBOX", url)
        keys.set_cencori_key(CENCORI_KEY)
        for i in range(3):
            c = cencori_nb.chat(f"paced {i}", model="gpt-4o-mini", cache=False)
            assert c.route == "managed"
    assert clock.slept == [60.0]


def test_a_sandbox_without_rpm_is_not_paced(managed: SandboxServer, clock: _FakeClock) -> None:
    for i in range(3):
        cencori_nb.chat(f"free {i}", model="gpt-4o-mini", cache=False)
    assert clock.slept == []


def test_managed_rpm_setting_wins_and_zero_turns_pacing_off(
    managed: SandboxServer, clock: _FakeClock
) -> None:
    settings.update_settings(managed_rpm=1)
    cencori_nb.chat("one", model="gpt-4o-mini", cache=False)
    cencori_nb.chat("two", model="gpt-4o-mini", cache=False)
    assert clock.slept == [60.0]
    settings.update_settings(managed_rpm=0)
    cencori_nb.chat("three", model="gpt-4o-mini", cache=False)
    cencori_nb.chat("four", model="gpt-4o-mini", cache=False)
    assert clock.slept == [60.0]


def test_byok_is_never_paced(managed: SandboxServer, clock: _FakeClock) -> None:
    settings.update_settings(managed_rpm=1)
    keys.set("openai", OPENAI_KEY)
    for i in range(3):
        assert cencori_nb.chat(f"byok {i}", model="gpt-4o-mini", cache=False).route == "byok"
    assert clock.slept == []


def test_real_gateway_default_is_sixty_per_minute() -> None:
    assert pacing.managed_rpm(settings.Settings()) == 60
    assert pacing.managed_rpm(settings.Settings(managed_rpm=0)) is None
    assert pacing.managed_rpm(settings.Settings(managed_rpm=5)) == 5


def test_async_requests_share_the_pace(managed: SandboxServer, clock: _FakeClock) -> None:
    """Concurrent achat calls book starts in order: 3 at rpm 2 → one waits a window."""
    settings.update_settings(managed_rpm=2)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(cencori_nb.achat(f"async {i}", model="gpt-4o-mini", cache=False) for i in range(3))
        )

    results = asyncio.run(run())
    assert all(r.route == "managed" for r in results)
    assert clock.slept == [60.0]


@pytest.mark.parametrize("bad", [-1, "60", 1.5, True])
def test_bad_managed_rpm_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(errors.ConfigurationError) as info:
        settings.update_settings(managed_rpm=bad)
    assert "managed_rpm" in str(info.value)


def test_unreachable_sandbox_config_means_no_pacing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pacing.managed_rpm(settings.Settings(sandbox_url="http://127.0.0.1:9")) is None


def test_sandbox_config_endpoint_states_its_pace() -> None:
    import httpx2

    with SandboxServer(rpm=7, latency_ms=3) as url:
        config = httpx2.get(url + "/_sandbox/config").json()
    assert config == {"sandbox": True, "rpm": 7, "latency_ms": 3.0, "gateway_cache": True}


def test_pacing_does_not_debit_twice(managed: SandboxServer) -> None:
    """Sanity: the receipts path keeps one ledger row and one debit per request."""
    c = cencori_nb.chat("one row", model="gpt-4o-mini", cache=False)
    rows = _rows()
    assert len(rows) == 1 and rows[0].credits_charged_usd == c.credits_charged_usd > Decimal(0)
