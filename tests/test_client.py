"""chat / stream / achat / astream end to end against the offline sandbox (a real server)."""

from __future__ import annotations

import asyncio
import logging
import os
from decimal import Decimal
from pathlib import Path

import pytest

import cencori_nb
from cencori_nb import errors, keys, state
from cencori_nb.egress import DEMO_KEYS
from cencori_nb.keystore.secret import Secret
from cencori_nb.ledger import default_ledger
from cencori_nb.sandbox.server import SandboxServer
from tests.conftest import all_bytes_under

OPENAI_KEY = "sk-test-client-" + "A" * 20 + "q1w2"
CENCORI_KEY = "csk_live_client_" + "B" * 20 + "e3r4"


@pytest.fixture
def sbx(sandbox_env: SandboxServer) -> SandboxServer:
    """The shared sandbox (reset, CENCORI_NB_SANDBOX set) with both keys stored."""
    keys.set("openai", OPENAI_KEY)
    keys.set_cencori_key(CENCORI_KEY)
    return sandbox_env


def _rows(status: str | None = None) -> list[object]:
    led = default_ledger()
    led.flush()
    return led.rows(status=status)


def _hint(provider: str) -> str:
    return Secret(DEMO_KEYS[provider]).hint


def test_chat_byok_sends_the_key_and_records_a_row(sbx: SandboxServer) -> None:
    """BYOK chat: the sandbox got the openai demo key (never the stored one: issue 10), one
    ledger row with tokens and cost."""
    c = cencori_nb.chat("Hello sandbox, tell me something", model="gpt-4o-mini")
    assert "sandbox" in c.text and "Hello sandbox" in c.text
    assert (c.provider, c.route, c.cached) == ("openai", "byok", False)
    assert c.input_tokens > 0 and c.output_tokens > 0
    assert c.provider_cost_usd is not None and c.provider_cost_usd > 0
    assert c.credits_charged_usd == Decimal(0)  # byok_policy "zero"
    assert c.credential_source == "sandbox-demo:byok:openai"
    assert c.request_id and c.latency_ms > 0 and c.model_requested == "gpt-4o-mini"
    stats = sbx.stats
    assert stats["requests"] == 1
    recent = stats["recent"][-1]
    assert recent["path"] == "/openai/v1/chat/completions"
    assert recent["headers"]["authorization"] == f"Bearer {_hint('openai')}"
    assert recent["json"]["model"] == "gpt-4o-mini"
    rows = _rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row.status, row.route, row.provider, row.request_id) == (
        "ok",
        "byok",
        "openai",
        c.request_id,
    )
    assert row.credential_source == "sandbox-demo:byok:openai"
    assert (row.input_tokens, row.output_tokens) == (c.input_tokens, c.output_tokens)
    assert row.provider_cost_usd == c.provider_cost_usd


def test_chat_managed_charges_credits(sbx: SandboxServer) -> None:
    """Managed: Cencori's native door with the csk_ key; charge = gateway cost_usd."""
    c = cencori_nb.chat("Managed please", model="claude-haiku-4-5", route="managed")
    assert c.route == "managed" and c.provider == "anthropic"
    assert c.gateway_cost_usd is not None and c.gateway_cost_usd > 0
    assert c.credits_charged_usd == c.gateway_cost_usd
    recent = sbx.stats["recent"][-1]
    assert recent["path"] == "/api/ai/chat"
    assert recent["key"] == _hint("cencori")
    row = _rows()[0]
    assert row.route == "managed" and row.credential_source == "sandbox-demo:managed:cencori"
    assert row.credits_charged_usd == c.credits_charged_usd


def test_cache_hit_is_free_and_sends_nothing(sbx: SandboxServer) -> None:
    """Second identical deterministic call: cached=True, zero cost, no request at the sandbox,
    a 'cached' ledger row."""
    first = cencori_nb.chat("Cache me", model="gpt-4o-mini")
    assert sbx.stats["requests"] == 1
    hit = cencori_nb.chat("Cache me", model="gpt-4o-mini")
    assert sbx.stats["requests"] == 1
    assert hit.cached is True and hit.text == first.text
    assert hit.provider_cost_usd == 0 and hit.credits_charged_usd == 0
    assert hit.request_id != first.request_id
    assert [r.status for r in _rows()] == ["ok", "cached"]
    assert _rows("cached")[0].credits_charged_usd == 0


def test_no_cache_for_temperature_or_cache_false(sbx: SandboxServer) -> None:
    """temperature > 0 or cache=False always sends."""
    cencori_nb.chat("Again", model="gpt-4o-mini", temperature=0.7)
    cencori_nb.chat("Again", model="gpt-4o-mini", temperature=0.7)
    cencori_nb.chat("Again", model="gpt-4o-mini", cache=False)
    cencori_nb.chat("Again", model="gpt-4o-mini", cache=False)
    assert sbx.stats["requests"] == 4
    assert cencori_nb.chat("Again", model="gpt-4o-mini", temperature=0).cached is False
    assert cencori_nb.chat("Again", model="gpt-4o-mini", temperature=0).cached is True


def test_stream_yields_deltas_then_completion(sbx: SandboxServer) -> None:
    """stream(): deltas join to the completion's text; usage from the final chunk; ttft set."""
    s = cencori_nb.stream("Stream a little story", model="gpt-4o-mini")
    deltas = list(s)
    assert len(deltas) > 3
    c = s.completion
    assert c is not None and c.text == "".join(deltas)
    assert c.estimated is False and c.output_tokens > 0
    assert c.ttft_ms is not None and 0 < c.ttft_ms <= c.latency_ms
    assert sbx.stats["streams"] == 1
    assert sbx.stats["recent"][-1]["json"]["stream_options"] == {"include_usage": True}
    assert _rows()[0].output_tokens == c.output_tokens


def test_stream_context_manager_and_cache(sbx: SandboxServer) -> None:
    """A completed stream is cached; the next identical stream yields it without a request."""
    with cencori_nb.stream("Stream and cache", model="gpt-4o-mini") as s:
        text = "".join(s)
    with cencori_nb.stream("Stream and cache", model="gpt-4o-mini") as s2:
        again = "".join(s2)
    assert again == text and s2.completion is not None and s2.completion.cached
    assert sbx.stats["requests"] == 1


def test_stream_closed_early_is_settled_as_estimated(sbx: SandboxServer) -> None:
    """Stopping after two deltas: the connection closes and the partial spend is recorded."""
    s = cencori_nb.stream("Stop me early please", model="gpt-4o-mini", cache=False)
    next(s), next(s)
    s.close()
    assert s.completion is not None and s.completion.estimated
    rows = _rows()
    assert len(rows) == 1 and rows[0].estimated and rows[0].status == "interrupted"


def test_stream_read_with_next_then_a_loop_yields_every_delta_once(sbx: SandboxServer) -> None:
    """A for loop reads the deltas themselves (iter() of a stream is its generator): mixed
    with next(), every delta comes once, in order, and the stream settles as completed."""
    whole = "".join(cencori_nb.stream("Mix next and for", model="gpt-4o-mini", cache=False))
    s = cencori_nb.stream("Mix next and for", model="gpt-4o-mini", cache=False)
    first = next(s)
    rest = [delta for delta in s]
    assert first + "".join(rest) == whole and rest
    assert list(s) == [] and next(iter(s), None) is None  # exhausted, like any iterator
    c = s.completion
    assert c is not None and c.text == whole and not c.estimated
    assert [r.status for r in _rows()] == ["ok", "ok"]


def test_stream_managed(sbx: SandboxServer) -> None:
    """Managed streams carry the gateway's terminal usage/cost chunk."""
    s = cencori_nb.stream("Managed stream", model="gemini-2.5-flash", route="managed", cache=False)
    text = "".join(s)
    c = s.completion
    assert c is not None and c.text == text and c.route == "managed"
    assert c.gateway_cost_usd is not None and c.credits_charged_usd == c.gateway_cost_usd


def test_achat_and_astream(sbx: SandboxServer) -> None:
    """The async API on one loop, concurrently."""

    async def run() -> tuple[list[cencori_nb.Completion], str, object]:
        results = await asyncio.gather(
            *(cencori_nb.achat(f"async {i}", model="gpt-4o-mini") for i in range(5))
        )
        s = cencori_nb.astream("async stream", model="gpt-4o-mini")
        text = "".join([d async for d in s])
        return list(results), text, s.completion

    results, text, completion = asyncio.run(run())
    assert [f"async {i}" in r.text for i, r in enumerate(results)] == [True] * 5
    assert completion is not None and completion.text == text  # type: ignore[attr-defined]
    assert sbx.stats["requests"] == 6
    assert len(_rows("ok")) == 6


def test_revoked_key_is_401_not_retried_and_recorded(sbx: SandboxServer) -> None:
    """A revoked BYOK key (the sandbox's revoked demo key): AuthenticationError after one
    request; a failure row."""
    keys.set("openai", DEMO_KEYS["openai"] + "-revoked")
    with pytest.raises(errors.AuthenticationError):
        cencori_nb.chat("hi", model="gpt-4o-mini")
    assert sbx.stats["requests"] == 1
    rows = _rows("error")
    assert len(rows) == 1 and rows[0].route == "byok"


def test_invalid_byok_key_does_not_fall_back(sbx: SandboxServer) -> None:
    """Even with fallback allowed, a 401 from the BYOK key does not spend credits."""
    keys.set("openai", DEMO_KEYS["openai"] + "-revoked")
    cencori_nb.settings.update_project("default", allow_fallback=True)
    with pytest.raises(errors.AuthenticationError):
        cencori_nb.chat("hi", model="gpt-4o-mini")
    assert sbx.stats["routes"] == {"/openai/v1/chat/completions": 1}


def test_credits_exhausted_is_clear_and_not_retried(sbx: SandboxServer) -> None:
    """Gateway 403 credit_balance_exhausted → CreditsExhaustedError, one request."""
    sbx.set_balance(0)
    with pytest.raises(errors.CreditsExhaustedError):
        cencori_nb.chat("hi", model="gpt-4o-mini", route="managed")
    assert sbx.stats["requests"] == 1
    assert _rows("error")[0].error_code == "credit_balance_exhausted"


def test_cut_stream_settles_then_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox that truncates every stream: text arrived → spend recorded (estimated) and
    BadResponseError('stream was cut') with the partial completion."""
    srv = SandboxServer(faults="truncate=1", seed=1)
    url = srv.start_in_thread()
    try:
        monkeypatch.setenv("CENCORI_NB_SANDBOX", url)
        keys.set("openai", OPENAI_KEY)
        s = cencori_nb.stream("A long story that will be cut short", model="gpt-4o-mini")
        got: list[str] = []
        with pytest.raises(errors.BadResponseError, match="cut") as info:
            for delta in s:
                got.append(delta)
        partial = info.value.completion
        assert partial.estimated and partial.text == "".join(got)
        assert partial.output_tokens > 0
        rows = _rows()
        assert len(rows) == 1 and rows[0].estimated and rows[0].status == "interrupted"
        # a cut stream is not cached
        assert cencori_nb.cache.stats()["entries"] == 0
    finally:
        srv.stop()


def test_canary_key_never_leaks(
    sbx: SandboxServer, canary: str, private_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The canary as BYOK key: absent from DEBUG logs, results, reprs, errors and the home."""
    caplog.set_level(logging.DEBUG)
    keys.set("openai", canary)
    c = cencori_nb.chat("leak test", model="gpt-4o-mini")
    s = cencori_nb.stream("leak test stream", model="gpt-4o-mini", cache=False)
    "".join(s)
    decision = cencori_nb.explain_route("gpt-4o-mini")
    keys.set("openai", canary + "-revoked")
    # The canary never reaches a sandbox (issue 10); a sandbox answering 401 to everything
    # drives the error path with it stored.
    with SandboxServer(faults="401=1") as url:
        os.environ["CENCORI_NB_SANDBOX"] = url
        try:
            with pytest.raises(errors.AuthenticationError) as info:
                cencori_nb.chat("leak test 401", model="gpt-4o-mini")
        finally:
            os.environ["CENCORI_NB_SANDBOX"] = sbx.url
    texts = [
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        str(c),
        repr(c),
        str(c.to_dict()),
        repr(decision),
        str(decision),
        decision._repr_markdown_(),
        str(info.value),
        repr(info.value),
        repr(s),
        str(s.completion),
    ]
    for text in texts:
        assert canary not in text
    assert any(r.name == "httpx2" for r in caplog.records)
    default_ledger().flush()
    state.reset("cache")
    assert canary.encode() not in all_bytes_under(private_home)


def test_astream_closed_early(sbx: SandboxServer) -> None:
    """Leaving an async stream after one delta closes it and settles the partial answer."""

    async def run() -> object:
        s = cencori_nb.astream("Async early stop", model="gpt-4o-mini", cache=False)
        async for _delta in s:
            break
        await s.aclose()
        return s.completion

    completion = asyncio.run(run())
    assert completion is not None and completion.estimated  # type: ignore[attr-defined]
    rows = _rows()
    assert len(rows) == 1 and rows[0].estimated


PROVIDER_KEYS = {
    "anthropic": "sk-ant-test-" + "E" * 20,
    "google": "AIzaTest" + "F" * 24,
    "mistral": "mistral-test-" + "G" * 16,
    "groq": "gsk_test_" + "H" * 20,
    "xai": "xai-test-" + "I" * 20,
    "deepseek": "sk-ds-test-" + "J" * 16,
    "together": "together-test-" + "K" * 16,
    "openrouter": "sk-or-test-" + "L" * 16,
}


@pytest.mark.parametrize("provider", sorted(PROVIDER_KEYS))
def test_every_provider_through_the_client(sandbox_env: SandboxServer, provider: str) -> None:
    """Each adapter, BYOK, non-stream and stream, against its sandbox door: text, usage,
    a priced-or-unknown row, and the sandbox saw that provider's demo key, never ours."""
    from cencori_nb.catalog import provider_info

    key = PROVIDER_KEYS[provider]
    keys.set(provider, key)
    model = provider_info(provider).default_model
    c = cencori_nb.chat(f"Hello {provider}", model=model, provider=provider)
    assert c.provider == provider and c.route == "byok"
    assert f"Hello {provider}" in c.text
    assert c.input_tokens > 0 and c.output_tokens > 0 and not c.estimated
    s = cencori_nb.stream(f"Stream {provider}", model=model, provider=provider)
    deltas = list(s)
    assert s.completion is not None and s.completion.text == "".join(deltas)
    assert s.completion.output_tokens > 0 and not s.completion.estimated
    stats = sandbox_env.stats
    assert stats["requests"] == 2
    assert list(stats["keys"]) == [_hint(provider)]
    assert Secret(key).hint not in stats["keys"]
    assert [r.status for r in _rows()] == ["ok", "ok"]


def test_stream_dropped_after_break_is_settled(sbx: SandboxServer) -> None:
    """`break` out of a stream and drop it: garbage collection closes the connection and
    the partial answer is recorded (estimated)."""
    import gc

    s = cencori_nb.stream("Dropped after one delta", model="gpt-4o-mini", cache=False)
    for _delta in s:
        break
    del s
    gc.collect()
    rows = _rows()
    assert len(rows) == 1 and rows[0].estimated and rows[0].status == "interrupted"


def test_a_name_checked_clean_is_refused_once_it_becomes_a_stored_key(
    sbx: SandboxServer,
) -> None:
    """The key-as-name check remembers clean names only for the keys registered when it
    checked them: a project name that later turns out to be a stored key is refused
    before anything is sent or recorded."""
    from cencori_nb import redact

    name = "team-notes-4f7a9c2b"
    keys.set("openai", OPENAI_KEY, project=name)
    cencori_nb.chat("first", model="gpt-4o-mini", project=name, cache=False)
    cencori_nb.chat("second", model="gpt-4o-mini", project=name, cache=False)  # remembered
    assert sbx.stats["requests"] == 2
    redact.register_secret(name)  # what opening a store holding this value does
    with pytest.raises(errors.KeyAsNameError, match="project name is one of your API keys"):
        cencori_nb.chat("third", model="gpt-4o-mini", project=name, cache=False)
    assert sbx.stats["requests"] == 2
    assert len(_rows()) == 2


def test_each_request_gets_its_own_prompt_estimate() -> None:
    """The prompt-token estimate is computed once per request and never reused for
    another request's messages, even ones equal in length."""
    from types import SimpleNamespace

    from cencori_nb import client
    from cencori_nb.tokens import estimate_messages_tokens
    from cencori_nb.types import ChatRequest

    short = ChatRequest.from_prompt("one two")
    long = ChatRequest.from_prompt("word " * 500)
    same_text = ChatRequest.from_prompt("one two")
    routed = SimpleNamespace(provider="openai", model="gpt-4o")  # images are counted by it
    for request in (short, long, short, same_text, long):
        expected = estimate_messages_tokens(m.content for m in request.messages)
        assert client._prompt_tokens(request, routed) == expected
    assert client._prompt_tokens(long, routed) > 500 > client._prompt_tokens(short, routed)
