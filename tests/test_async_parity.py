"""Every public sync function and its async twin, over the same scenarios, observed alike.

The idea (from simonw/llm's tests/test_async_parity.py): a rule written twice drifts, and a
drift is invisible to tests that exercise one face. Here each scenario runs once through the
sync face and once through its async twin, each in a fresh home against the same (reset)
sandbox, a real HTTP server on 127.0.0.1, and what can be observed is compared:

- the outcome: text, route, provider, cached, the error's class and message;
- the ledger rows (status, route, provider, credential, error code, tokens, money);
- what the sandbox received (path, key hint, status it answered, fault, model, body).

Equality alone would pass if both faces broke the same way, so each scenario also states
what it must look like (``expect``). Faults reach the sandbox as its ``X-Sandbox-Fault``
header, added by a pass-through httpx2 transport only to requests for one door (the BYOK
provider), so the managed fallback on the gateway's door is answered normally.

Twins (cencori_nb/__init__.py): chat/achat, stream/astream, map/amap. ``map`` and ``amap``
both send through ``achat``; their pair checks the batch layer's sync wrapper.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest

import cencori_nb
from cencori_nb import errors, keys, settings, state, transport
from cencori_nb.ledger import default_ledger
from cencori_nb.sandbox.server import SandboxServer

OPENAI_KEY = "sk-test-parity-" + "P" * 20 + "w9x8"
CENCORI_KEY = "csk_live_parity_" + "Q" * 20 + "v7u6"
MODEL = "gpt-4o-mini"
BYOK_DOOR = "/openai/"
MANAGED_DOOR = "/api/ai/chat"


# --------------------------------------------------------------------------- plumbing


class _FaultTransports:
    """Adds ``X-Sandbox-Fault: <fault>`` to requests whose path starts with a planned prefix;
    everything else goes over the network to the sandbox unchanged (sync and async alike)."""

    def __init__(self) -> None:
        self.plan: dict[str, str] = {}
        outer = self

        class Sync(httpx2.HTTPTransport):
            def handle_request(self, request: httpx2.Request) -> httpx2.Response:
                outer.mark(request)
                return super().handle_request(request)

        class Async(httpx2.AsyncHTTPTransport):
            async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
                outer.mark(request)
                return await super().handle_async_request(request)

        self.sync, self.async_ = Sync(), Async()

    def mark(self, request: httpx2.Request) -> None:
        for prefix, fault in self.plan.items():
            if request.url.path.startswith(prefix):
                request.headers["X-Sandbox-Fault"] = fault


class _NoSleep(transport.Clock):
    """Retry waits are computed, not slept (a 429's Retry-After would stall the suite)."""

    def sleep(self, seconds: float) -> None:
        pass

    async def asleep(self, seconds: float) -> None:
        pass


_IDS = re.compile(r"\b(req|gen|chatcmpl|msg|resp)[_-][A-Za-z0-9_-]+|\b[0-9a-f]{32}\b")


def _error(err: BaseException) -> dict[str, Any]:
    """An error as a person sees it (request ids masked: they differ per attempt)."""
    return {
        "type": type(err).__name__,
        "message": _IDS.sub("<id>", str(err)),
        "completion_text": getattr(getattr(err, "completion", None), "text", None),
    }


def _completion(c: Any) -> dict[str, Any]:
    return {
        "text": c.text,
        "route": c.route,
        "provider": c.provider,
        "cached": c.cached,
        "estimated": c.estimated,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "cost_usd": c.cost_usd,
        "credits_charged_usd": c.credits_charged_usd,
        "credential_source": c.credential_source,
    }


# --------------------------------------------------------------------------- the twins
# Each face sends one prompt and returns what its caller can see.


def _sync_chat(prompt: str, **kw: Any) -> dict[str, Any]:
    try:
        return _completion(cencori_nb.chat(prompt, **kw))
    except errors.CencoriError as err:
        return {"error": _error(err)}


def _async_chat(prompt: str, **kw: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        try:
            return _completion(await cencori_nb.achat(prompt, **kw))
        except errors.CencoriError as err:
            return {"error": _error(err)}

    return asyncio.run(go())


def _sync_stream(prompt: str, **kw: Any) -> dict[str, Any]:
    deltas: list[str] = []
    try:
        with cencori_nb.stream(prompt, **kw) as s:
            deltas.extend(s)
    except errors.CencoriError as err:
        return {"deltas": deltas, "error": _error(err)}
    return {"deltas": deltas, **_completion(s.completion)}


def _async_stream(prompt: str, **kw: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        deltas: list[str] = []
        try:
            async with cencori_nb.astream(prompt, **kw) as s:
                async for delta in s:
                    deltas.append(delta)
        except errors.CencoriError as err:
            return {"deltas": deltas, "error": _error(err)}
        return {"deltas": deltas, **_completion(s.completion)}

    return asyncio.run(go())


def _frame(df: Any) -> dict[str, Any]:
    row = df.drop(columns=["request_id"]).iloc[0].to_dict()
    if isinstance(row.get("error"), str):
        row["error"] = _IDS.sub("<id>", row["error"])
    return {k: (None if v != v else v) for k, v in row.items()}  # NaN → None (NaN != NaN)


def _sync_map(prompt: str, **kw: Any) -> dict[str, Any]:
    try:
        return _frame(cencori_nb.map([prompt], progress=False, resume=False, **kw))
    except errors.CencoriError as err:
        return {"error": _error(err)}


def _async_map(prompt: str, **kw: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        try:
            return _frame(await cencori_nb.amap([prompt], progress=False, resume=False, **kw))
        except errors.CencoriError as err:
            return {"error": _error(err)}

    return asyncio.run(go())


TWINS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[..., dict[str, Any]]]] = {
    "chat/achat": (_sync_chat, _async_chat),
    "stream/astream": (_sync_stream, _async_stream),
    "map/amap": (_sync_map, _async_map),
}


def test_every_public_async_function_has_its_twin_here() -> None:
    """A new public async function in cencori_nb/__init__.py must join TWINS (or this fails)."""
    public_async = {
        name
        for name in cencori_nb.__all__
        if name.startswith("a") and name[1:] in cencori_nb.__all__
    }
    assert public_async == {"achat", "astream", "amap"}
    assert {pair.split("/")[1] for pair in TWINS} == public_async


# --------------------------------------------------------------------------- scenarios


@dataclass
class Observed:
    outcomes: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    received: list[dict[str, Any]]


@dataclass
class Scenario:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)  # door prefix → X-Sandbox-Fault
    project: dict[str, Any] = field(default_factory=dict)  # settings.update_project(...)
    cencori_key: bool = True
    calls: int = 1
    expect: Callable[[str, Observed], None] | None = None


def _statuses(obs: Observed) -> list[tuple[str, str]]:
    return [(r["status"], r["route"]) for r in obs.rows]


def _doors(obs: Observed) -> list[tuple[str, str]]:
    return [(r["path"], r["status"]) for r in obs.received]


def _is_map(face: str) -> bool:
    return face.startswith("map")


def _expect_byok_ok(face: str, obs: Observed) -> None:
    (out,) = obs.outcomes
    assert out["route"] == "byok" and not out.get("error"), out
    assert out["text"] and _statuses(obs) == [("ok", "byok")]
    assert _doors(obs) == [("/openai/v1/chat/completions", "200")]
    assert obs.rows[0]["credential_source"].endswith("byok:openai")


def _expect_managed_ok(face: str, obs: Observed) -> None:
    (out,) = obs.outcomes
    assert out["route"] == "managed" and out["text"], out
    assert _statuses(obs) == [("ok", "managed")]
    assert _doors(obs) == [(MANAGED_DOOR, "200")]
    assert obs.rows[0]["credential_source"].endswith("managed:cencori")
    assert obs.rows[0]["credits_charged_usd"] > 0


def _expect_no_fallback_after_401(face: str, obs: Observed) -> None:
    (out,) = obs.outcomes
    if _is_map(face):
        assert out["text"] is None and out["error"], out
    else:
        assert out["error"]["type"] == "AuthenticationError", out
    assert _doors(obs) == [("/openai/v1/chat/completions", "401")]  # never the gateway
    assert _statuses(obs) == [("error", "byok")]


def _expect_fallback(status: str) -> Callable[[str, Observed], None]:
    def check(face: str, obs: Observed) -> None:
        (out,) = obs.outcomes
        assert out["route"] == "managed" and out["text"], out
        # retries=1: chat and stream retry the BYOK door once, then fall back; a batch
        # sends each row with no transport retry (it retries rows itself), so the
        # fallback comes after the first answer
        tries = 1 if _is_map(face) else 2
        assert _doors(obs) == [("/openai/v1/chat/completions", status)] * tries + [
            (MANAGED_DOOR, "200")
        ]
        hints = [r["key"] for r in obs.received]  # the BYOK key, then the project key
        assert len(set(hints[:tries])) == 1 and hints[-1] not in hints[:tries], hints
        assert [r["credential_source"].split(":", 1)[1] for r in obs.rows] == [
            "byok:openai",
            "managed:cencori",
        ]
        assert [r["fault"] for r in obs.received] == [status] * tries + [None]
        assert _statuses(obs) == [("error", "byok"), ("ok", "managed")]
        assert obs.rows[0]["error_code"] and obs.rows[0]["credits_charged_usd"] == 0
        assert obs.rows[1]["credits_charged_usd"] > 0

    return check


def _expect_raised_503(face: str, obs: Observed) -> None:
    (out,) = obs.outcomes
    if _is_map(face):
        assert out["text"] is None and out["error"], out
    else:
        assert out["error"]["type"] == "ProviderUnavailableError", out
    assert _doors(obs) == [("/openai/v1/chat/completions", "503")] * 2  # never the gateway
    # chat and stream: one attempt with one transport retry, one row; a batch retries the
    # row itself (each try its own attempt and row)
    assert _statuses(obs) == [("error", "byok")] * (2 if _is_map(face) else 1)


def _expect_cache_hit(face: str, obs: Observed) -> None:
    first, second = obs.outcomes
    assert first["cached"] is False and second["cached"] is True, obs.outcomes
    assert second["text"] == first["text"]
    assert len(obs.received) == 1
    assert [r["status"] for r in obs.rows] == ["ok", "cached"]
    assert obs.rows[1]["cost_usd"] == 0


def _expect_refused(error_type: str, words: str) -> Callable[[str, Observed], None]:
    def check(face: str, obs: Observed) -> None:
        (out,) = obs.outcomes
        message = out["error"] if isinstance(out["error"], str) else out["error"]["message"]
        if not _is_map(face):
            assert out["error"]["type"] == error_type, out
        assert words in message.lower(), message
        assert obs.received == [] and obs.rows == []  # refused before anything was sent

    return check


def _expect_cut(face: str, obs: Observed) -> None:
    (out,) = obs.outcomes
    if _is_map(face) or face.startswith("chat"):
        # a truncated JSON body is a bad answer, retried by the transport (default 3)
        assert out.get("error") and out.get("text") is None, out
        assert [r["fault"] for r in obs.received] == ["truncate"] * 4
        assert {r["status"] for r in obs.rows} == {"error"}
        return
    assert [r["fault"] for r in obs.received] == ["truncate"]
    assert out["error"]["type"] == "BadResponseError" and "cut" in out["error"]["message"]
    assert out["deltas"] and out["error"]["completion_text"] == "".join(out["deltas"])
    assert [(r["status"], r["estimated"]) for r in obs.rows] == [("interrupted", True)]


def _expect_stream_error(face: str, obs: Observed) -> None:
    (out,) = obs.outcomes
    assert [r["fault"] for r in obs.received] == ["stream-error"]
    if not face.startswith("stream"):
        # the fault ends a 200 *stream*; a non-streamed answer is unaffected
        assert out["text"] and not out.get("error") and _statuses(obs) == [("ok", "byok")]
        return
    # the provider's own error (OpenAI's server_error), not our "cut", carrying the text
    # that had arrived, which was settled as interrupted (estimated)
    assert out["error"]["type"] == "ProviderUnavailableError", out
    assert out["deltas"] and out["error"]["completion_text"] == "".join(out["deltas"])
    assert [(r["status"], r["route"], r["estimated"]) for r in obs.rows] == [
        ("interrupted", "byok", True)
    ]


SCENARIOS = [
    Scenario("byok", {"model": MODEL}, expect=_expect_byok_ok),
    Scenario("managed", {"model": MODEL, "route": "managed"}, expect=_expect_managed_ok),
    Scenario(
        "401-no-fallback",
        {"model": MODEL},
        faults={BYOK_DOOR: "401"},
        project={"allow_fallback": True},
        expect=_expect_no_fallback_after_401,
    ),
    Scenario(
        "503-fallback",
        {"model": MODEL, "retries": 1},
        faults={BYOK_DOOR: "503"},
        project={"allow_fallback": True},
        expect=_expect_fallback("503"),
    ),
    Scenario(
        "429-fallback",
        {"model": MODEL, "retries": 1},
        faults={BYOK_DOOR: "429"},
        project={"allow_fallback": True},
        expect=_expect_fallback("429"),
    ),
    Scenario(
        "503-fallback-off",
        {"model": MODEL, "retries": 1},
        faults={BYOK_DOOR: "503"},
        expect=_expect_raised_503,
    ),
    Scenario("cache-hit", {"model": MODEL}, calls=2, expect=_expect_cache_hit),
    Scenario(
        "hard-cap",
        {"model": MODEL},
        project={"hard_cap_usd": Decimal("0.000001")},
        expect=_expect_refused("BudgetExceededError", "hard cap"),
    ),
    Scenario(
        "cost-confirmation",
        {"model": MODEL, "max_cost_usd": Decimal("0.0000001")},
        expect=_expect_refused("CostConfirmationError", "nothing was sent"),
    ),
    Scenario("cut", {"model": MODEL}, faults={BYOK_DOOR: "truncate"}, expect=_expect_cut),
    Scenario(
        "stream-error",
        {"model": MODEL},
        faults={BYOK_DOOR: "stream-error"},
        expect=_expect_stream_error,
    ),
]


# --------------------------------------------------------------------------- the runner


def _observe(
    face: Callable[..., dict[str, Any]],
    scenario: Scenario,
    sbx: SandboxServer,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Observed:
    """Run one face of one scenario in a fresh home against the reset sandbox."""
    monkeypatch.setenv("CENCORI_NB_HOME", str(home))
    state.reset()
    sbx.reset()
    faults = _FaultTransports()
    transport.set_transport(faults.sync, async_transport=faults.async_)
    keys.set("openai", OPENAI_KEY)
    if scenario.cencori_key:
        keys.set_cencori_key(CENCORI_KEY)
    if scenario.project:
        settings.update_project("default", **scenario.project)
    faults.plan = dict(scenario.faults)
    outcomes = [
        face(f"Parity scenario {scenario.name}: say something", **scenario.kwargs)
        for _ in range(scenario.calls)
    ]
    led = default_ledger()
    led.flush()
    rows = [
        {
            k: getattr(r, k)
            for k in (
                "status",
                "route",
                "provider",
                "model",
                "model_requested",
                "credential_source",
                "error_code",
                "input_tokens",
                "output_tokens",
                "provider_cost_usd",
                "credits_charged_usd",
                "cost_usd",
                "estimated",
                "test_mode",
                "project",
            )
        }
        for r in led.rows()
    ]
    received = [
        {k: v for k, v in r.items() if k not in ("request_id", "headers")}
        | {"headers": {k: v for k, v in r["headers"].items() if k not in ("content-length",)}}
        for r in sbx.stats["recent"]
    ]
    return Observed(outcomes, rows, received)


@pytest.fixture
def no_sleep() -> Any:
    previous = transport.set_clock(_NoSleep())
    yield
    transport.set_clock(previous)


@pytest.mark.parametrize("pair", list(TWINS))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_sync_and_async_twins_agree(
    pair: str,
    scenario: Scenario,
    sandbox_env: SandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_sleep: None,
) -> None:
    sync_face, async_face = TWINS[pair]
    sync = _observe(sync_face, scenario, sandbox_env, tmp_path / "sync-home", monkeypatch)
    asyn = _observe(async_face, scenario, sandbox_env, tmp_path / "async-home", monkeypatch)
    assert scenario.expect is not None
    scenario.expect(pair, sync)  # the sync face does what the scenario says…
    scenario.expect(pair, asyn)  # …and so does its twin,
    assert asyn.outcomes == sync.outcomes  # with the same result,
    assert asyn.rows == sync.rows  # the same ledger rows,
    assert asyn.received == sync.received  # and the same requests at the server.
