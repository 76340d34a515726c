"""Client edge cases over httpx2.MockTransport: fallback, cut and odd streams, bad bodies,
budgets, retries. The adapters are the real ones; only the network is faked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal

import httpx2
import pytest

import cencori_nb
from cencori_nb import errors, keys, settings, transport
from cencori_nb.ledger import default_ledger

BASE = "http://127.0.0.1:9"  # a loopback "sandbox": MockTransport answers, nothing listens
OPENAI_KEY = "sk-test-edges-" + "A" * 20 + "z9z9"
CENCORI_KEY = "csk_live_edges_" + "B" * 20 + "y8y8"


class NoSleep(transport.Clock):
    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def random(self) -> float:
        return 1.0


Handler = Callable[[httpx2.Request], httpx2.Response]


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx2.Request]]:
    """Install a MockTransport handler (sync and async); returns the list of requests seen."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", BASE)
    keys.set("openai", OPENAI_KEY)
    transport.set_clock(NoSleep())

    def install(handler: Handler) -> list[httpx2.Request]:
        seen: list[httpx2.Request] = []

        def record(request: httpx2.Request) -> httpx2.Response:
            seen.append(request)
            return handler(request)

        mock = httpx2.MockTransport(record)
        transport.set_transport(mock, async_transport=mock)
        return seen

    return install


def _rows(status: str | None = None) -> list[object]:
    led = default_ledger()
    led.flush()
    return led.rows(status=status)


def _openai_body(text: str = "hi there", usage: bool = True) -> dict[str, object]:
    body: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return body


def _gateway_body() -> dict[str, object]:
    return {
        "id": "gw-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "via gateway"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "content": "via gateway",
        "provider": "openai",
        "cost_usd": 0.0011,
        "finish_reason": "stop",
    }


def _sse(*events: object, done: bool = True) -> httpx2.Response:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode()
    )


def _chunk(text: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {"content": text} if text is not None else {}
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


# --------------------------------------------------------------------------- fallback


def test_fallback_to_managed_on_outage_when_allowed(net: Callable[[Handler], list]) -> None:
    """BYOK 503 + allow_fallback + Cencori key → managed answer; both attempts in the ledger."""
    keys.set_cencori_key(CENCORI_KEY)
    settings.update_project("default", allow_fallback=True)

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.startswith("/openai/"):
            return httpx2.Response(503, json={"error": {"message": "down", "type": "server_error"}})
        assert request.url.path == "/api/ai/chat"
        return httpx2.Response(200, json=_gateway_body())

    seen = net(handler)
    c = cencori_nb.chat("hello", model="gpt-4o-mini", retries=0)
    assert c.text == "via gateway"
    assert (c.route, c.credential_source) == ("managed", "sandbox-demo:managed:cencori")
    assert [r.url.path for r in seen] == ["/openai/v1/chat/completions", "/api/ai/chat"]
    # in sandbox mode the fallback carries the Cencori demo key, never the stored one
    assert seen[1].headers.get("cencori_api_key") == "csk_sandbox_demo"
    assert CENCORI_KEY not in str(seen[1].headers)
    rows = _rows()
    assert [(r.status, r.route) for r in rows] == [("error", "byok"), ("ok", "managed")]
    assert rows[1].credits_charged_usd == Decimal("0.0011")


def test_no_fallback_by_default(net: Callable[[Handler], list]) -> None:
    """Without allow_fallback the outage is raised; nothing is sent to the gateway."""
    keys.set_cencori_key(CENCORI_KEY)
    seen = net(lambda r: httpx2.Response(503, json={"error": {"message": "down"}}))
    with pytest.raises(errors.ProviderUnavailableError):
        cencori_nb.chat("hello", model="gpt-4o-mini", retries=1)
    assert len(seen) == 2 and all(r.url.path.startswith("/openai/") for r in seen)
    assert [r.status for r in _rows()] == ["error"]


def test_no_fallback_after_401(net: Callable[[Handler], list]) -> None:
    keys.set_cencori_key(CENCORI_KEY)
    settings.update_project("default", allow_fallback=True)
    seen = net(
        lambda r: httpx2.Response(
            401, json={"error": {"message": "bad key", "code": "invalid_api_key"}}
        )
    )
    with pytest.raises(errors.AuthenticationError):
        cencori_nb.chat("hello", model="gpt-4o-mini")
    assert len(seen) == 1


def test_stream_falls_back_on_open(net: Callable[[Handler], list]) -> None:
    """A stream whose BYOK request fails before any byte falls back too."""
    keys.set_cencori_key(CENCORI_KEY)
    settings.update_project("default", allow_fallback=True)

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.startswith("/openai/"):
            return httpx2.Response(429, headers={"retry-after": "0"}, json={"error": {}})
        body = (
            b'data: {"delta":"via "}\n\ndata: {"delta":"gateway"}\n\n'
            b'data: {"delta":"","finish_reason":"stop"}\n\n'
            b'data: {"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6},'
            b'"cost_usd":0.0002}\n\ndata: [DONE]\n\n'
        )
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    net(handler)
    s = cencori_nb.stream("hi", model="gpt-4o-mini", retries=0)
    assert "".join(s) == "via gateway"
    assert s.completion is not None and s.completion.route == "managed"
    assert s.completion.credits_charged_usd == Decimal("0.0002")


# --------------------------------------------------------------------------- odd responses


def test_missing_usage_is_estimated(net: Callable[[Handler], list]) -> None:
    net(lambda r: httpx2.Response(200, json=_openai_body("four words of text", usage=False)))
    c = cencori_nb.chat("estimate me", model="gpt-4o-mini")
    assert c.estimated and c.input_tokens > 0 and c.output_tokens > 0
    assert _rows()[0].estimated


def test_malformed_json_is_bad_response_and_recorded(net: Callable[[Handler], list]) -> None:
    net(
        lambda r: httpx2.Response(
            200, headers={"content-type": "application/json"}, content=b'{"choices": [tru'
        )
    )
    with pytest.raises(errors.BadResponseError):
        cencori_nb.chat("x", model="gpt-4o-mini")
    rows = _rows()
    assert len(rows) == 1 and rows[0].status == "error" and rows[0].error_code == "bad_response"


def test_stream_without_usage_completes_estimated(net: Callable[[Handler], list]) -> None:
    """Terminal [DONE] seen but no usage: no error, estimated tokens, cached."""
    net(lambda r: _sse(_chunk("Hello"), _chunk(" world"), _chunk(finish="stop")))
    s = cencori_nb.stream("x", model="gpt-4o-mini")
    assert list(s) == ["Hello", " world"]
    assert s.completion is not None and s.completion.estimated
    assert s.completion.finish_reason == "stop"
    assert cencori_nb.cache.stats()["entries"] == 1


def test_stream_cut_before_any_text(net: Callable[[Handler], list]) -> None:
    """No [DONE] and no text: a failure row and BadResponseError, nothing settled."""
    net(lambda r: _sse(done=False))
    s = cencori_nb.stream("x", model="gpt-4o-mini")
    with pytest.raises(errors.BadResponseError, match="before any text"):
        list(s)
    assert [r.status for r in _rows()] == ["error"]


def test_stream_cut_after_text(net: Callable[[Handler], list]) -> None:
    """No [DONE] after some text: settled as interrupted and estimated (was: ok, issue 11.5),
    then BadResponseError('cut')."""
    net(lambda r: _sse(_chunk("partial "), _chunk("answer"), done=False))
    s = cencori_nb.stream("x", model="gpt-4o-mini")
    got = []
    with pytest.raises(errors.BadResponseError, match="cut") as info:
        for d in s:
            got.append(d)
    assert got == ["partial ", "answer"]
    assert info.value.completion.text == "partial answer"
    rows = _rows()
    assert [(r.status, r.estimated) for r in rows] == [("interrupted", True)]
    assert cencori_nb.cache.stats()["entries"] == 0


def test_error_event_inside_200_stream(net: Callable[[Handler], list]) -> None:
    """An error event after text: the provider's error is raised, the text settled."""
    net(
        lambda r: _sse(
            _chunk("some "),
            {"error": {"message": "overloaded", "type": "server_error"}},
            done=False,
        )
    )
    s = cencori_nb.stream("x", model="gpt-4o-mini")
    with pytest.raises(errors.ProviderUnavailableError) as info:
        list(s)
    assert info.value.completion.text == "some "
    assert [r.status for r in _rows()] == ["interrupted"]


def test_sse_comments_are_ignored(net: Callable[[Handler], list]) -> None:
    body = b": OPENROUTER PROCESSING\n\n" + _sse(_chunk("a"), _chunk("b")).content
    net(lambda r: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    assert "".join(cencori_nb.stream("x", model="gpt-4o-mini")) == "ab"


# --------------------------------------------------------------------------- retries, budgets


def test_retries_then_success_records_one_row(net: Callable[[Handler], list]) -> None:
    """Two 500s then 200: three requests, one ok row, the waits went through the clock."""
    answers = [
        httpx2.Response(500, json={"error": {"message": "x"}}),
        httpx2.Response(500, json={"error": {"message": "x"}}),
        httpx2.Response(200, json=_openai_body()),
    ]
    seen = net(lambda r: answers.pop(0))
    c = cencori_nb.chat("x", model="gpt-4o-mini", cache=False)
    assert c.text == "hi there" and len(seen) == 3
    assert [r.status for r in _rows()] == ["ok"]


def test_retries_argument_is_passed_through(net: Callable[[Handler], list]) -> None:
    seen = net(lambda r: httpx2.Response(503, json={"error": {"message": "x"}}))
    with pytest.raises(errors.ProviderUnavailableError):
        cencori_nb.chat("x", model="gpt-4o-mini", retries=2)
    assert len(seen) == 3


def test_hard_cap_refuses_before_sending(net: Callable[[Handler], list]) -> None:
    """A project at its hard cap: BudgetExceededError and no request."""
    settings.update_project("default", hard_cap_usd=Decimal("0"))
    seen = net(lambda r: httpx2.Response(200, json=_openai_body()))
    with pytest.raises(errors.BudgetExceededError):
        cencori_nb.chat("x", model="gpt-4o-mini")
    assert seen == []


def test_achat_error_path_records_failure(net: Callable[[Handler], list]) -> None:
    net(lambda r: httpx2.Response(400, json={"error": {"message": "bad model"}}))
    with pytest.raises(errors.InvalidRequestError):
        asyncio.run(cencori_nb.achat("x", model="gpt-4o-mini"))
    assert [r.status for r in _rows()] == ["error"]


def test_messages_and_parameters_reach_the_wire(net: Callable[[Handler], list]) -> None:
    """system, messages, temperature and max_tokens are in the JSON the provider got."""
    seen = net(lambda r: httpx2.Response(200, json=_openai_body()))
    cencori_nb.chat(
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ],
        model="gpt-4o-mini",
        system="terse",
        temperature=0.2,
        max_tokens=7,
    )
    body = json.loads(seen[0].content)
    assert body["messages"][0] == {"role": "system", "content": "terse"}
    assert [m["content"] for m in body["messages"][1:]] == ["q1", "a1", "q2"]
    assert body["temperature"] == 0.2 and body["max_completion_tokens"] == 7


def test_local_server_without_key_sends_no_authorization(net: Callable[[Handler], list]) -> None:
    """A local server with no stored key: the request carries no Authorization header."""
    seen = net(lambda r: httpx2.Response(200, json=_openai_body()))
    c = cencori_nb.chat("x", model="llama3.2", provider="local")
    assert c.credential_source == "none:local" and c.route == "byok"
    assert seen[0].url.path == "/local/v1/chat/completions"
    assert "authorization" not in seen[0].headers


def test_astream_cut_after_text(net: Callable[[Handler], list]) -> None:
    """The async stream follows the same cut rule: settle what arrived, then raise."""
    net(lambda r: _sse(_chunk("half "), _chunk("an answer"), done=False))

    async def run() -> tuple[list[str], BaseException | None]:
        got: list[str] = []
        try:
            async for delta in cencori_nb.astream("x", model="gpt-4o-mini"):
                got.append(delta)
        except errors.BadResponseError as err:
            return got, err
        return got, None

    got, err = asyncio.run(run())
    assert got == ["half ", "an answer"]
    assert isinstance(err, errors.BadResponseError) and "cut" in str(err)
    assert err.completion.text == "half an answer"  # type: ignore[attr-defined]
    assert [(r.status, r.estimated) for r in _rows()] == [("interrupted", True)]


def test_transport_error_mid_stream_is_a_cut(net: Callable[[Handler], list]) -> None:
    """The connection breaking after some events: BadResponseError('cut') from the
    mapped transport error, partial spend recorded."""

    class Broken(httpx2.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b'data: {"choices":[{"index":0,"delta":{"content":"so far"}}]}\n\n'
            raise httpx2.ReadError("connection reset")

    net(
        lambda r: httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Broken()
        )
    )
    s = cencori_nb.stream("x", model="gpt-4o-mini")
    with pytest.raises(errors.BadResponseError, match="cut") as info:
        list(s)
    assert isinstance(info.value.__cause__, errors.ProviderUnavailableError)
    assert info.value.cause_code == "provider_unavailable"
    assert info.value.completion.text == "so far"


def test_estimate_above_the_cap_is_refused(net: Callable[[Handler], list]) -> None:
    """Nothing spent yet, but the estimate (prompt + max_tokens) passes the cap: refused,
    with the estimate on the error; a cheap request under the same cap goes through."""
    settings.update_project("default", hard_cap_usd=Decimal("0.001"))
    seen = net(lambda r: httpx2.Response(200, json=_openai_body()))
    with pytest.raises(errors.BudgetExceededError) as info:
        cencori_nb.chat("long " * 2000, model="gpt-4o", max_tokens=100_000)
    assert info.value.estimated_usd > Decimal("0.001")
    assert seen == []
    cencori_nb.chat("short", model="gpt-4o-mini", max_tokens=10)
    assert len(seen) == 1
