"""send / asend: retries with an injected clock, the server's waits, errors raised from httpx2."""

from __future__ import annotations

import asyncio
import email.utils

import httpx2
import pytest

from cencori_nb import errors, transport


class FakeClock(transport.Clock):
    """Records every wait instead of sleeping; jitter draws return ``rand``."""

    def __init__(self, rand: float = 1.0, now: float = 1_800_000_000.0) -> None:
        self.waits: list[float] = []
        self.rand = rand
        self.now = now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now

    def random(self) -> float:
        return self.rand


class Script:
    """A MockTransport handler answering from a list of responses/exceptions, counting calls."""

    def __init__(self, *steps: object) -> None:
        self.steps = list(steps)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, httpx2.Response)
        return httpx2.Response(step.status_code, headers=step.headers, content=step.content)


def _req() -> httpx2.Request:
    return httpx2.Request("POST", "http://127.0.0.1:9/v1/chat", json={"x": 1})


@pytest.fixture
def clock() -> FakeClock:
    c = FakeClock()
    transport.set_clock(c)
    return c


def _use(handler: Script) -> None:
    transport.set_transport(httpx2.MockTransport(handler))


def test_success_is_returned_without_waiting(clock: FakeClock) -> None:
    """A 200 comes back as is, after one request and no wait."""
    script = Script(httpx2.Response(200, json={"ok": True}))
    _use(script)
    response = transport.send(_req())
    assert response.json() == {"ok": True}
    assert len(script.requests) == 1 and clock.waits == []


def test_retry_after_seconds_is_honoured(clock: FakeClock) -> None:
    """A 429 with Retry-After: 2 waits exactly 2 s, then succeeds."""
    script = Script(
        httpx2.Response(429, headers={"Retry-After": "2"}), httpx2.Response(200, json={})
    )
    _use(script)
    assert transport.send(_req()).status_code == 200
    assert clock.waits == [2.0]
    assert len(script.requests) == 2


def test_retry_after_http_date(clock: FakeClock) -> None:
    """Retry-After as an HTTP date is converted with the injected wall clock."""
    date = email.utils.formatdate(clock.now + 7, usegmt=True)
    script = Script(
        httpx2.Response(503, headers={"Retry-After": date}), httpx2.Response(200, json={})
    )
    _use(script)
    transport.send(_req())
    assert clock.waits == [pytest.approx(7.0, abs=1.0)]


def test_retry_after_ms_header_and_cencori_body(clock: FakeClock) -> None:
    """retry-after-ms (OpenAI) and Cencori's retry_after_ms body field are honoured."""
    script = Script(
        httpx2.Response(429, headers={"retry-after-ms": "250"}),
        httpx2.Response(
            429,
            json={
                "error": "Rate limit exceeded",
                "code": "rate_limit_exceeded",
                "retry_after_ms": 1500,
            },
        ),
        httpx2.Response(200, json={}),
    )
    _use(script)
    transport.send(_req())
    assert clock.waits == [0.25, 1.5]


def test_adapter_retry_after_is_used_when_the_response_has_none(clock: FakeClock) -> None:
    """An adapter's retry_after counts when the response itself carries no hint."""
    script = Script(httpx2.Response(429), httpx2.Response(200, json={}))
    _use(script)

    def map_error(response: httpx2.Response) -> errors.CencoriError:
        return errors.RateLimitError(
            "slow down", provider="openai", status_code=429, retry_after=3.0
        )

    transport.send(_req(), map_error=map_error)
    assert clock.waits == [3.0]


def test_the_response_hint_is_read_on_the_transport_clock(clock: FakeClock) -> None:
    """The response's own hint wins over the adapter's (which had only the wall clock for an
    HTTP-date Retry-After): the one parser, read against the injected clock."""
    when = email.utils.formatdate(clock.now + 7, usegmt=True)
    script = Script(
        httpx2.Response(429, headers={"Retry-After": when}), httpx2.Response(200, json={})
    )
    _use(script)

    def map_error(response: httpx2.Response) -> errors.CencoriError:
        return errors.RateLimitError(
            "slow down", provider="openai", status_code=429, retry_after=3.0
        )

    transport.send(_req(), map_error=map_error)
    assert clock.waits == [7.0]


def test_attempts_are_bounded_with_exponential_backoff(clock: FakeClock) -> None:
    """500 forever: 1 + 3 attempts, full-jitter waits 0.5, 1, 2 (jitter draw 1.0), then raise."""
    script = Script(httpx2.Response(500, json={"error": "boom"}))
    _use(script)
    with pytest.raises(errors.ProviderUnavailableError) as info:
        transport.send(_req())
    assert len(script.requests) == 4
    assert clock.waits == [0.5, 1.0, 2.0]
    assert info.value.status_code == 500


def test_jitter_scales_the_backoff(clock: FakeClock) -> None:
    """With a jitter draw of 0.25 the waits are a quarter of the exponential ceiling."""
    clock.rand = 0.25
    _use(Script(httpx2.Response(502)))
    with pytest.raises(errors.ProviderUnavailableError):
        transport.send(_req(), retries=2)
    assert clock.waits == [0.125, 0.25]


def test_retries_argument_bounds_attempts(clock: FakeClock) -> None:
    """retries=0 sends once; retries=1 twice."""
    script = Script(httpx2.Response(503))
    _use(script)
    with pytest.raises(errors.ProviderUnavailableError):
        transport.send(_req(), retries=0)
    assert len(script.requests) == 1
    with pytest.raises(errors.ProviderUnavailableError):
        transport.send(_req(), retries=1)
    assert len(script.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 422])
def test_client_errors_are_not_retried(clock: FakeClock, status: int) -> None:
    """400/401/402/403/404/422 fail at once: one request, no wait."""
    script = Script(httpx2.Response(status, json={"error": "no"}))
    _use(script)
    with pytest.raises(errors.CencoriError) as info:
        transport.send(_req())
    assert len(script.requests) == 1 and clock.waits == []
    assert info.value.status_code == status


def test_401_maps_to_authentication_error(clock: FakeClock) -> None:
    """A 401 without an adapter mapper is an AuthenticationError saying how to fix the key."""
    _use(Script(httpx2.Response(401)))
    with pytest.raises(errors.AuthenticationError, match="keys set"):
        transport.send(_req(), provider="openai")


def test_credit_errors_are_not_retried(clock: FakeClock) -> None:
    """A mapper returning CreditsExhaustedError (gateway 403) is raised at once."""
    script = Script(httpx2.Response(403, json={"code": "credit_balance_exhausted"}))
    _use(script)

    def map_error(response: httpx2.Response) -> errors.CencoriError:
        return errors.CreditsExhaustedError("wallet empty")

    with pytest.raises(errors.CreditsExhaustedError):
        transport.send(_req(), map_error=map_error)
    assert len(script.requests) == 1


def test_retry_after_beyond_cap_raises_at_once(clock: FakeClock) -> None:
    """A server wait above MAX_RETRY_WAIT is not slept through: raised with retry_after."""
    script = Script(httpx2.Response(429, headers={"Retry-After": "3600"}))
    _use(script)
    with pytest.raises(errors.RateLimitError) as info:
        transport.send(_req())
    assert clock.waits == [] and len(script.requests) == 1
    assert info.value.retry_after == 3600.0


def test_timeouts_and_connection_errors_are_retried(clock: FakeClock) -> None:
    """ReadTimeout then ConnectError then 200: two backoff waits, success."""
    script = Script(
        httpx2.ReadTimeout("slow"), httpx2.ConnectError("refused"), httpx2.Response(200, json={})
    )
    _use(script)
    assert transport.send(_req()).status_code == 200
    assert clock.waits == [0.5, 1.0]


def test_transport_error_raised_from_httpx2(clock: FakeClock) -> None:
    """The final error is ours, chained from the httpx2 exception."""
    _use(Script(httpx2.ConnectError("[Errno 111] Connection refused")))
    with pytest.raises(errors.ProviderUnavailableError) as info:
        transport.send(_req(), provider="openai")
    assert isinstance(info.value.__cause__, httpx2.ConnectError)
    assert info.value.provider == "openai"
    assert "127.0.0.1:9" in str(info.value)
    assert "Connection refused" in str(info.value)


def test_stream_error_response_is_read_and_closed(clock: FakeClock) -> None:
    """With stream=True an error body is still available to the mapper."""
    seen: list[dict[str, str]] = []

    def map_error(response: httpx2.Response) -> errors.CencoriError:
        seen.append(response.json())
        return errors.InvalidRequestError("bad", status_code=response.status_code)

    _use(Script(httpx2.Response(400, json={"error": "bad model"})))
    with pytest.raises(errors.InvalidRequestError):
        transport.send(_req(), stream=True, map_error=map_error)
    assert seen == [{"error": "bad model"}]


def test_asend_retries_with_the_clock(clock: FakeClock) -> None:
    """The async path honours Retry-After and bounds attempts the same way."""
    script = Script(
        httpx2.Response(429, headers={"Retry-After": "1"}), httpx2.Response(200, json={"ok": 1})
    )
    transport.set_transport(async_transport=httpx2.MockTransport(script))

    async def run() -> httpx2.Response:
        return await transport.asend(_req())

    assert asyncio.run(run()).json() == {"ok": 1}
    assert clock.waits == [1.0]

    script2 = Script(httpx2.Response(401))
    transport.set_transport(async_transport=httpx2.MockTransport(script2))
    with pytest.raises(errors.AuthenticationError):
        asyncio.run(run())
    assert len(script2.requests) == 1
