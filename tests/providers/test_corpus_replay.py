"""Replay every recording in tests/corpus through the public API, from a real loopback server.

Each recording (see tests/corpus/README.md) is served verbatim by a small ``http.server``
on 127.0.0.1; ``cencori_nb.chat`` / ``cencori_nb.stream`` talk to it exactly as they talk to
the provider (the router's sandbox URL points at it). The expected values in each file come
from the official SDKs and the providers' docs, never from this project, so a failure here
means the adapter reads the provider differently from the provider's own client.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import cencori_nb
from cencori_nb import errors, keys
from cencori_nb.router import UnknownModelWarning

CORPUS = Path(__file__).parents[1] / "corpus"
RECORDINGS = sorted(CORPUS.glob("*/*.json"))
# Each provider's key in its usual shape, so no key-shape check objects to it.
BYOK_KEYS = {
    "openai": "sk-proj-corpus" + "K" * 24 + "z9y8",
    "anthropic": "sk-ant-api03-corpus" + "K" * 24 + "z9y8",
    "google": "AIzaSyCorpus" + "K" * 24 + "z9y8",
    "mistral": "corpusMistral" + "K" * 20 + "z9y8",
    "groq": "gsk_corpus" + "K" * 24 + "z9y8",
    "xai": "xai-corpus" + "K" * 24 + "z9y8",
    "deepseek": "sk-corpusdeepseek" + "K" * 20 + "z9y8",
    "openrouter": "sk-or-v1-corpus" + "K" * 24 + "z9y8",
    "local": "local-corpus" + "K" * 20 + "z9y8",
}
CENCORI_KEY = "csk_corpus_replay_" + "C" * 24 + "x7w6"
PROVIDERS = {
    "openai",
    "anthropic",
    "google",
    "mistral",
    "groq",
    "xai",
    "deepseek",
    "openrouter",
    "cencori",
    "local",
}
# The transport sets these itself; a recorded value would contradict the body we send.
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def load(path: Path) -> dict[str, Any]:
    """One recording, checked for the fields every file must carry."""
    rec = json.loads(path.read_text(encoding="utf-8"))
    for field in ("_source", "provider", "kind", "status", "headers", "expect"):
        assert field in rec, f"{path.name}: no {field!r}"
    assert rec["provider"] in PROVIDERS, path.name
    assert rec["provider"] == path.parent.name, f"{path.name} is filed under the wrong provider"
    assert rec["kind"] in {"json", "sse", "error"}, path.name
    assert ("body" in rec) != ("body_text" in rec), f"{path.name}: exactly one of body/body_text"
    return rec


def body_bytes(rec: dict[str, Any]) -> bytes:
    if "body_text" in rec:
        return rec["body_text"].encode("utf-8")
    return json.dumps(rec["body"], ensure_ascii=False).encode("utf-8")


class ReplayServer:
    """A loopback HTTP server that answers every POST with the current recording."""

    def __init__(self) -> None:
        self.recording: dict[str, Any] | None = None
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "json": json.loads(raw) if raw else None,
                    }
                )
                rec = server.recording
                assert rec is not None
                payload = body_bytes(rec)
                self.send_response(rec["status"])
                for name, value in rec["headers"].items():
                    if name.lower() not in _HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, rec: dict[str, Any]) -> None:
        self.recording = rec
        self.requests.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def _server() -> Iterator[ReplayServer]:
    server = ReplayServer()
    yield server
    server.close()


@pytest.fixture
def replay(_server: ReplayServer, monkeypatch: pytest.MonkeyPatch) -> ReplayServer:
    """The replay server, with the router pointed at it and a key stored for every route."""
    monkeypatch.setenv("CENCORI_NB_SANDBOX", _server.url)
    for provider, key in BYOK_KEYS.items():
        keys.set(provider, key)
    keys.set_cencori_key(CENCORI_KEY)
    return _server


def call_kwargs(rec: dict[str, Any]) -> dict[str, Any]:
    """chat()/stream() arguments that route this recording to its provider's adapter."""
    req = rec.get("request", {})
    kwargs: dict[str, Any] = {"model": req.get("model"), "cache": False, "retries": 0}
    if rec["provider"] == "cencori":
        kwargs["route"] = "managed"
        if req.get("provider"):
            kwargs["provider"] = req["provider"]
    else:
        kwargs.update(route="byok", provider=rec["provider"])
    if req.get("max_tokens"):
        kwargs["max_tokens"] = req["max_tokens"]
    return kwargs


def is_stream(rec: dict[str, Any]) -> bool:
    return bool(rec.get("request", {}).get("stream")) or rec["kind"] == "sse"


def ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.stem}" for p in paths]


# --------------------------------------------------------------------------- the corpus itself


def test_the_corpus_covers_what_the_project_speaks() -> None:
    """At least 60 recordings; every provider; JSON, SSE and errors; the statuses that matter."""
    recs = [load(p) for p in RECORDINGS]
    assert len(recs) >= 60, len(recs)
    assert {r["provider"] for r in recs} == PROVIDERS
    assert {r["kind"] for r in recs} == {"json", "sse", "error"}
    statuses = {r["status"] for r in recs}
    assert {400, 401, 402, 403, 404, 429, 500, 503, 529} <= statuses, sorted(statuses)
    assert any(r["kind"] == "sse" and "error" in r["expect"] for r in recs)  # error in a 200
    expects = [r["expect"] for r in recs]
    assert any(e.get("cache_read_tokens") for e in expects)
    assert any(e.get("cache_write_tokens") for e in expects)
    assert any(e.get("thinking_tokens") for e in expects)


@pytest.mark.parametrize("path", RECORDINGS, ids=ids(RECORDINGS))
def test_recording_names_its_source(path: Path) -> None:
    """Every file says where it came from: a repository path at a commit, or a URL."""
    source = load(path)["_source"]
    assert "http" in source or (" @ " in source and "/" in source), source


# --------------------------------------------------------------------------- replay


SUCCESS = [p for p in RECORDINGS if "error" not in load(p)["expect"]]
FAILURE = [p for p in RECORDINGS if "error" in load(p)["expect"]]

_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "thinking_tokens",
    "image_tokens",
)


@pytest.mark.parametrize("path", SUCCESS, ids=ids(SUCCESS))
def test_replay_success(path: Path, replay: ReplayServer) -> None:
    """Text, model, finish reason, request id and every token count as the SDKs read them."""
    rec = load(path)
    replay.serve(rec)
    expect = rec["expect"]
    if is_stream(rec):
        with cencori_nb.stream("Replay", **call_kwargs(rec)) as s:
            deltas = list(s)
        completion = s.completion
        assert completion is not None
        assert "".join(deltas) == expect["text"]
    else:
        completion = cencori_nb.chat("Replay", **call_kwargs(rec))
    assert len(replay.requests) == 1
    assert completion.text == expect["text"]
    # usage was in the recording (nothing estimated) unless the recording says it has none
    assert completion.estimated is expect.get("estimated", False)
    for field in _USAGE:
        if field in expect:
            assert getattr(completion, field) == expect[field], field
    if "model" in expect:
        assert completion.model == expect["model"]
    if "finish_reason" in expect:
        assert completion.finish_reason == expect["finish_reason"]
    if "request_id" in expect:
        assert completion.request_id == expect["request_id"]
    if "gateway_cost_usd" in expect:
        assert completion.gateway_cost_usd == Decimal(expect["gateway_cost_usd"])
    if "provider_cost_usd" in expect:  # the list price, from the provider's own rates
        assert completion.provider_cost_usd == Decimal(expect["provider_cost_usd"])


STRUCTURED = [p for p in SUCCESS if "schema" in load(p).get("request", {})]


@pytest.mark.parametrize("path", STRUCTURED, ids=ids(STRUCTURED))
def test_replay_structured(path: Path, replay: ReplayServer) -> None:
    """The structured recordings asked for with schema=: the value the SDK parsed, the
    refusal as RefusalError, an answer the SDK rejects as SchemaMismatchError; one request
    each (a refusal and a cut answer are not retried), and the request carried the schema
    in the provider's native field."""
    rec = load(path)
    replay.serve(rec)
    expect = rec["expect"]
    kwargs = {**call_kwargs(rec), "schema": rec["request"]["schema"]}
    if is_stream(rec):

        def ask() -> Any:
            with cencori_nb.stream("Replay", **kwargs) as s:
                list(s)
            return s.completion
    else:

        def ask() -> Any:
            return cencori_nb.chat("Replay", **kwargs)

    if "refusal" in expect:
        with pytest.raises(errors.RefusalError) as refused:
            ask()
        assert refused.value.refusal == expect["refusal"]
    elif "schema_mismatch" in expect:
        with pytest.raises(errors.SchemaMismatchError, match=expect["schema_mismatch"]):
            ask()
    else:
        assert ask().parsed == expect["parsed"]
    assert len(replay.requests) == 1
    sent = replay.requests[0]["json"]
    native = {
        "openai": "response_format",
        "anthropic": "output_config",
        "google": "generationConfig",
    }
    assert native[rec["provider"]] in sent


FILTERED = [p for p in SUCCESS if load(p)["expect"].get("filtered")]


@pytest.mark.parametrize("path", FILTERED, ids=ids(FILTERED))
def test_replay_content_filter_is_a_refusal(path: Path, replay: ReplayServer) -> None:
    """An answer the provider's content filter stopped (``finish_reason: content_filter``),
    asked for with schema=: openai-python's ``parse()`` raises
    ContentFilterFinishReasonError rather than validating it, so it is a RefusalError,
    sent once (never retried as a schema mismatch: the retry would be paid and filtered
    again). Without schema= it is an ordinary answer (test_replay_success)."""
    rec = load(path)
    replay.serve(rec)
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}}
    with pytest.raises(errors.RefusalError) as refused:
        cencori_nb.chat("Replay", **call_kwargs(rec), schema=schema)
    assert len(replay.requests) == 1
    assert refused.value.completion is not None
    assert refused.value.completion.finish_reason == rec["expect"]["finish_reason"]
    assert "content filter" in str(refused.value)


@pytest.mark.parametrize("path", FAILURE, ids=ids(FAILURE))
def test_replay_error(path: Path, replay: ReplayServer) -> None:
    """The error class, code, retry hint and context the SDKs and docs give this response."""
    rec = load(path)
    replay.serve(rec)
    expect = rec["expect"]
    cls = getattr(errors, expect["error"])
    parts: list[str] = []
    with pytest.raises(errors.CencoriError) as info, warnings.catch_warnings():
        # Some recorded failures are about a model name the catalogue does not know (a
        # 404 for 'non-existent'); the "did you mean" warning before sending is expected.
        warnings.simplefilter("ignore", UnknownModelWarning)
        if is_stream(rec):
            with cencori_nb.stream("Replay", **call_kwargs(rec)) as s:
                for delta in s:
                    parts.append(delta)
        else:
            cencori_nb.chat("Replay", **call_kwargs(rec))
    err = info.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    assert len(replay.requests) == 1, "retries=0: sent once"
    if "code" in expect:
        assert err.code == expect["code"]
    if "retry_after" in expect:
        assert getattr(err, "retry_after", None) == expect["retry_after"]
    if "retryable" in expect:
        from cencori_nb.transport import is_retryable

        assert is_retryable(err) is expect["retryable"]
    if "request_id" in expect:
        assert err.request_id == expect["request_id"]
    if "top_up_url" in expect:
        assert err.top_up_url == expect["top_up_url"]
        assert expect["top_up_url"] in str(err)
    if "message_contains" in expect:
        assert expect["message_contains"] in str(err), str(err)
    if "partial_text" in expect:
        assert "".join(parts) == expect["partial_text"]
    if "billed" in expect:
        # a billed non-answer (a Gemini prompt blocked before the model ran): its usage is
        # recorded and priced like any answer, the completion rides on the error, one row
        billed = expect["billed"]
        done = err.completion
        assert done is not None, "the billed usage must reach the error"
        assert done.text == ""
        assert (done.input_tokens, done.output_tokens) == (
            billed["input_tokens"],
            billed["output_tokens"],
        )
        assert done.model == billed["model"]
        assert done.estimated is False
        assert done.provider_cost_usd is not None and done.provider_cost_usd > 0
        from cencori_nb.ledger import default_ledger

        led = default_ledger()
        led.flush()
        rows = [r for r in led.rows() if r.request_id == done.request_id]
        assert len(rows) == 1, rows
        assert rows[0].input_tokens == billed["input_tokens"]
        assert rows[0].provider_cost_usd == done.provider_cost_usd
    if "blames_user_key" in expect:
        names_our_key = "x7w6" in str(err) or "Cencori key" in err.message.split(".")[0]
        assert names_our_key is expect["blames_user_key"], str(err)
    for key in (*BYOK_KEYS.values(), CENCORI_KEY):
        assert key not in str(err)


# --------------------------------------------------------------------------- retry hints


class RecordingClock:
    """The transport's clock, recording waits instead of sleeping (jitter draws are 1.0)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.waits: list[float] = []
        self.now = now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def time(self) -> float:
        return self.now

    def random(self) -> float:
        return 1.0


def as_response(rec: dict[str, Any], **header_changes: str | None) -> Any:
    """The recording as an httpx2.Response (with a request, as the transport sees it)."""
    import httpx2

    headers = {k: v for k, v in rec["headers"].items() if k not in _HOP_HEADERS}
    for name, value in header_changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    request = httpx2.Request("POST", "https://provider.test/v1/chat")
    return httpx2.Response(rec["status"], headers=headers, content=body_bytes(rec), request=request)


def policy_wait(path: str, attempt: int = 0, **header_changes: str | None) -> float | None:
    """What the one retry policy says for this recording, as mapped by its adapter."""
    from cencori_nb import transport
    from cencori_nb.providers import get_provider

    rec = load(CORPUS / path)
    response = as_response(rec, **header_changes)
    adapter = get_provider("cencori" if rec["provider"] == "cencori" else rec["provider"])
    err = transport.sending._status_error(response, adapter.map_error, rec["provider"])
    return transport.next_wait(err, response, attempt, random=lambda: 1.0, now=1_800_000_000.0)


def test_hint_retry_after_seconds_beats_the_body() -> None:
    """Cencori's 429: Retry-After 12 (seconds) wins over the body's retry_after_ms 11873."""
    assert policy_wait("cencori/native_429_rate_limit_exceeded.json") == 12.0


def test_hint_retry_after_ms_in_the_body() -> None:
    """The same 429 without its header: the body's retry_after_ms (milliseconds)."""
    assert policy_wait("cencori/native_429_rate_limit_exceeded.json", retry_after=None) == 11.873


def test_hint_retry_after_seconds_in_the_engine_body() -> None:
    """Cencori's provider_rate_limited carries retry_after in seconds, no header."""
    assert policy_wait("cencori/native_429_provider_rate_limited.json") == 30.0


def test_hint_gemini_retry_info() -> None:
    """Gemini's 429 has no Retry-After header; RetryInfo.retryDelay '53s' is the wait."""
    assert policy_wait("google/error_429_retryinfo.json") == 53.0


def test_hint_retry_after_http_date_and_ms_header() -> None:
    """The header forms the OpenAI and Anthropic SDKs read, on Anthropic's 529 recording:
    an HTTP date (relative to now) and retry-after-ms (which wins over Retry-After)."""
    date = "Fri, 15 Jan 2027 08:00:20 GMT"  # 1_800_000_000 is 08:00:00 that day
    assert policy_wait("anthropic/error_529_overloaded.json", retry_after=date) == 20.0
    assert (
        policy_wait("anthropic/error_529_overloaded.json", retry_after="9", retry_after_ms="1500")
        == 1.5
    )
    # no hint at all: full-jitter backoff (draw 1.0), growing with the attempt
    assert policy_wait("anthropic/error_529_overloaded.json") == 0.5
    assert policy_wait("anthropic/error_529_overloaded.json", attempt=2) == 2.0


def test_hint_x_should_retry_false_stops_a_429() -> None:
    """Anthropic's spend-limit 429 says x-should-retry: false: not retried, whatever the status."""
    assert policy_wait("anthropic/error_429_spend_limit_should_retry_false.json") is None
    # the same 429 without the header is still not retried: billing_error is no rate limit
    assert (
        policy_wait("anthropic/error_429_spend_limit_should_retry_false.json", x_should_retry=None)
        is None
    )


def test_hint_x_should_retry_true_retries_a_400() -> None:
    """x-should-retry: true overrides the status (the SDKs' rule), here on OpenAI's 404."""
    assert policy_wait("openai/error_404_model_not_found.json") is None
    assert policy_wait("openai/error_404_model_not_found.json", x_should_retry="true") == 0.5


def test_no_retry_for_what_waiting_cannot_fix() -> None:
    """Out of quota, no price, a bad key, a daily quota: never retried."""
    for path in (
        "openai/error_429_insufficient_quota.json",
        "cencori/native_503_pricing_unavailable.json",
        "cencori/native_401_provider_auth_error.json",
        "google/error_400_api_key_invalid.json",
        "cencori/native_403_credit_balance_exhausted.json",
    ):
        assert policy_wait(path) is None, path


def test_policy_bounds_attempts_and_long_waits() -> None:
    """After `retries` retries: stop. A wait above MAX_RETRY_WAIT: stop (raise with the
    hint) for chat; the pacing form (batch) waits up to PACED_MAX_WAIT for a 429."""
    from cencori_nb import errors, transport

    assert policy_wait("google/error_429_retryinfo.json", attempt=3) is None
    err = errors.RateLimitError("slow down", status_code=429, retry_after=90.0)
    assert transport.next_wait(err, None, 0) is None
    assert transport.next_wait(err, None, 0, pacing=True) == 90.0
    assert transport.next_wait(err, None, 19, pacing=True) == 90.0
    assert transport.next_wait(err, None, transport.PACED_RATE_LIMIT_RETRIES, pacing=True) is None


class ScriptedServer(ReplayServer):
    """Answers each POST with the next recording of a list (the last one repeats)."""

    def __init__(self, recordings: list[dict[str, Any]]) -> None:
        self.script = list(recordings)
        super().__init__()
        self.recording = self.script[0]

    def next(self) -> None:
        if len(self.script) > 1:
            self.script.pop(0)
        self.recording = self.script[0]


def test_chat_waits_the_recorded_hint_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: Gemini's 429 (RetryInfo 53s) then its answer: chat waits exactly 53 s on
    the transport's clock, sends twice, and returns the answer."""
    from cencori_nb import transport

    first = load(CORPUS / "google/error_429_retryinfo.json")
    second = load(CORPUS / "google/generate_25pro_thinking.json")
    server = ScriptedServer([first, second])
    original = server.httpd.RequestHandlerClass.do_POST

    def advancing(handler: Any) -> None:
        original(handler)
        server.next()

    server.httpd.RequestHandlerClass.do_POST = advancing  # type: ignore[method-assign]
    clock = RecordingClock()
    previous = transport.set_clock(clock)  # type: ignore[arg-type]
    try:
        monkeypatch.setenv("CENCORI_NB_SANDBOX", server.url)
        keys.set("google", BYOK_KEYS["google"])
        c = cencori_nb.chat(
            "Replay",
            model="gemini-2.5-pro",
            provider="google",
            route="byok",
            cache=False,
            retries=2,
        )
    finally:
        transport.set_clock(previous)
        server.close()
    assert c.text == second["expect"]["text"]
    assert clock.waits == [53.0]
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("/billing", "https://cencori.com/billing"),  # what the gateway sends
        ("billing?tab=credits", "https://cencori.com/billing?tab=credits"),
        ("https://cencori.com/dashboard/billing", "https://cencori.com/dashboard/billing"),
        ("https://evil.example/pay", "https://cencori.com/billing"),  # another site
        ("//evil.example/pay", "https://cencori.com/billing"),  # protocol-relative
        ("javascript:alert(1)", "https://cencori.com/billing"),
        ("http://cencori.com/billing", "https://cencori.com/billing"),  # not https
        ("https://cencori.com.evil.example/", "https://cencori.com/billing"),
        ("https://user:pw@cencori.com/billing", "https://cencori.com/billing"),
        ("/bil ling\n", "https://cencori.com/billing"),
        ("", "https://cencori.com/billing"),
        (None, "https://cencori.com/billing"),
        (42, "https://cencori.com/billing"),
    ],
)
def test_top_up_url_is_made_absolute_and_stays_on_cencori(sent: object, shown: str) -> None:
    """The relative /billing resolves against Cencori's site; a link elsewhere never shows."""
    from cencori_nb.providers.cencori import top_up_url

    assert top_up_url(sent) == shown


def test_a_forged_top_up_link_is_not_shown(replay: ReplayServer) -> None:
    """The credit-exhaustion recording with its top_up_url swapped for another site: the
    message points to Cencori's billing page, not the forged one."""
    rec = load(CORPUS / "cencori/native_403_credit_balance_exhausted.json")
    rec = {**rec, "body": {**rec["body"], "top_up_url": "https://evil.example/pay"}}
    replay.serve(rec)
    with pytest.raises(errors.CreditsExhaustedError) as info:
        cencori_nb.chat("Replay", **call_kwargs(rec))
    assert "evil.example" not in str(info.value)
    assert info.value.top_up_url == "https://cencori.com/billing"


# --------------------------------------------------------------------------- no [DONE]

_DONE_FRAME = "data: [DONE]\n\n"
WITH_DONE = [
    p
    for p in SUCCESS
    if load(p)["kind"] == "sse"
    and _DONE_FRAME in load(p).get("body_text", "")
    and not load(p)["expect"].get("estimated")
    and "schema" not in load(p).get("request", {})
    and load(p)["provider"] != "cencori"  # the gateway's native stream: its own format
]


@pytest.mark.parametrize("path", WITH_DONE, ids=ids(WITH_DONE))
def test_a_whole_stream_closed_without_done_is_complete(path: Path, replay: ReplayServer) -> None:
    """The recording without its ``data: [DONE]`` frame, as compatible servers send it
    (ik_llama.cpp#467, NousResearch/hermes-agent#90848, tempoxyz/mpp#975: a finish chunk,
    the usage, then a clean close): openai-python ends the stream without error, so the
    answer is complete, with the recorded usage (not estimated, no "cut" error)."""
    rec = load(path)
    rec = {**rec, "body_text": rec["body_text"].replace(_DONE_FRAME, "")}
    replay.serve(rec)
    with cencori_nb.stream("Replay", **call_kwargs(rec)) as s:
        deltas = list(s)
    completion = s.completion
    assert completion is not None
    assert "".join(deltas) == completion.text == rec["expect"]["text"]
    assert completion.estimated is False
    assert completion.output_tokens == rec["expect"]["output_tokens"]


def test_a_stream_closed_after_the_finish_but_before_its_usage_is_cut(
    replay: ReplayServer,
) -> None:
    """Without ``[DONE]`` and without the usage chunk asked for, the close may have cut the
    usage: the stream counts as cut (estimated tokens, BadResponseError with the text)."""
    rec = load(CORPUS / "openai/stream_gpt4omini_include_usage.json")
    frames = rec["body_text"].split("\n\n")
    kept = [f for f in frames if f and '"choices":[]' not in f and f != "data: [DONE]"]
    replay.serve({**rec, "body_text": "\n\n".join(kept) + "\n\n"})
    with pytest.raises(errors.BadResponseError, match="cut") as info:
        with cencori_nb.stream("Replay", **call_kwargs(rec)) as s:
            list(s)
    assert info.value.completion is not None
    assert info.value.completion.text == rec["expect"]["text"]
    assert info.value.completion.estimated is True
