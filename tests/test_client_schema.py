"""chat / achat / stream with ``schema=`` end to end against the sandbox (a real server).

Each provider's door answers in its own structured form; the client validates, retries once
with the validation error (a second paid request and ledger row), and turns refusals and
answers that never match into specific errors that carry the recorded answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Literal

import pydantic
import pytest
from typing_extensions import TypedDict

import cencori_nb
from cencori_nb import errors, keys
from cencori_nb.ledger import default_ledger
from cencori_nb.sandbox.server import SandboxServer

RECORD = "ACME Tools Ltd billed us 1,234.50 EUR on 2025-03-01 for 3 items."


class Invoice(pydantic.BaseModel):
    vendor: str
    total: float
    currency: Literal["EUR", "USD", "GBP"]
    issued: dt.date
    items: int
    note: str | None = None


@dataclasses.dataclass
class InvoiceDC:
    vendor: str
    total: float
    items: int


class InvoiceTD(TypedDict):
    vendor: str
    total: float


INVOICE_JSON = {
    "title": "invoice",
    "type": "object",
    "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
    "required": ["vendor", "total"],
}

PROVIDERS = {
    "openai": ("gpt-4o-mini", "sk-test-schema-" + "A" * 20),
    "anthropic": ("claude-sonnet-4-5", "sk-ant-test-schema-" + "B" * 20),
    "google": ("gemini-2.5-flash", "AIza-test-schema-" + "C" * 20),
}


@pytest.fixture
def sbx(sandbox_env: SandboxServer) -> SandboxServer:
    for provider, (_model, key) in PROVIDERS.items():
        keys.set(provider, key)
    keys.set_cencori_key("csk_live_schema_" + "D" * 20)
    return sandbox_env


def rows() -> list[object]:
    led = default_ledger()
    led.flush()
    return led.rows()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_chat_schema_each_provider_native_form(sbx: SandboxServer, provider: str) -> None:
    """BYOK to each provider: its native field reached the sandbox; parsed is an Invoice."""
    model = PROVIDERS[provider][0]
    c = cencori_nb.chat(RECORD, model=model, schema=Invoice)
    assert isinstance(c.parsed, Invoice)
    assert (c.parsed.total, c.parsed.items, c.parsed.currency) == (1234.5, 3, "EUR")
    assert c.parsed.issued == dt.date(2025, 3, 1)
    sent = sbx.stats["recent"][-1]["json"]
    native = {
        "openai": lambda b: b["response_format"]["json_schema"]["strict"] is True,
        "anthropic": lambda b: b["output_config"]["format"]["type"] == "json_schema",
        "google": lambda b: b["generationConfig"]["responseMimeType"] == "application/json",
    }[provider]
    assert native(sent)


def test_chat_schema_through_cencori_managed(sbx: SandboxServer) -> None:
    """Managed route: the native door's responseFormat; parsed, with the gateway's charge."""
    c = cencori_nb.chat(RECORD, model="gpt-4o-mini", route="managed", schema=InvoiceDC)
    assert isinstance(c.parsed, InvoiceDC) and c.parsed.items == 3
    assert c.route == "managed" and c.cost_usd is not None and c.cost_usd > 0
    sent = sbx.stats["recent"][-1]["json"]
    assert sent["responseFormat"]["json_schema"]["name"] == "InvoiceDC"


def test_anthropic_older_model_uses_a_forced_tool(sbx: SandboxServer) -> None:
    """claude-3-5-haiku: tools + tool_choice reached the sandbox; the tool input is parsed."""
    c = cencori_nb.chat(RECORD, model="claude-3-5-haiku-latest", schema=InvoiceTD)
    assert c.parsed == {"vendor": "ACME Tools Ltd", "total": 1234.5}
    sent = sbx.stats["recent"][-1]["json"]
    assert sent["tool_choice"] == {"type": "tool", "name": "InvoiceTD"}


def test_json_schema_dict_gives_a_dict(sbx: SandboxServer) -> None:
    c = cencori_nb.chat(RECORD, model="gpt-4o-mini", schema=INVOICE_JSON)
    assert c.parsed == {"vendor": "ACME Tools Ltd", "total": 1234.5}


def test_invalid_answer_is_retried_once_and_both_are_paid(sbx: SandboxServer) -> None:
    """Invalid JSON, then a valid retry: two requests, two ledger rows, the retry quoted the
    error, and earlier_cost_usd is the first attempt's cost."""
    c = cencori_nb.chat(
        "SANDBOX-INVALID-JSON " + RECORD, model="gpt-4o-mini", schema=Invoice, cache=False
    )
    assert isinstance(c.parsed, Invoice)
    recent = sbx.stats["recent"]
    assert sbx.stats["requests"] == 2
    retry_messages = recent[-1]["json"]["messages"]
    assert [m["role"] for m in retry_messages] == ["user", "assistant", "user"]
    assert "the answer is not JSON" in retry_messages[-1]["content"]
    ledger = rows()
    assert [r.status for r in ledger] == ["ok", "ok"]  # type: ignore[attr-defined]
    first_cost = ledger[0].cost_usd  # type: ignore[attr-defined]
    assert first_cost is not None and first_cost > 0
    assert c.earlier_cost_usd == first_cost
    assert "retried once" in c.footer()


def test_answer_that_never_matches_is_a_schema_mismatch(sbx: SandboxServer) -> None:
    """Wrong shape twice: SchemaMismatchError naming the missing fields, attempts 2, with the
    second (recorded) answer and the first one's cost."""
    with pytest.raises(errors.SchemaMismatchError) as info:
        cencori_nb.chat("SANDBOX-WRONG-SHAPE " + RECORD, model="gpt-4o-mini", schema=Invoice)
    err = info.value
    assert err.attempts == 2 and "vendor: Field required" in str(err)
    assert "retried once" in str(err)
    assert err.completion is not None and err.completion.earlier_cost_usd > 0
    assert sbx.stats["requests"] == 2
    assert len(rows()) == 2


def test_cut_answer_is_not_retried(sbx: SandboxServer) -> None:
    """Cut at max_tokens: retrying would cut it again; the error says to raise max_tokens."""
    with pytest.raises(errors.SchemaMismatchError, match="raise max_tokens"):
        cencori_nb.chat(RECORD, model="gpt-4o-mini", schema=Invoice, max_tokens=3)
    assert sbx.stats["requests"] == 1


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_refusal_is_a_refusal_error(sbx: SandboxServer, provider: str) -> None:
    """Each provider's refusal form: RefusalError, recorded and not retried."""
    model = PROVIDERS[provider][0]
    with pytest.raises(errors.RefusalError) as info:
        cencori_nb.chat("SANDBOX-REFUSE " + RECORD, model=model, schema=Invoice)
    assert "refused to answer with Invoice" in str(info.value)
    assert info.value.completion is not None
    assert sbx.stats["requests"] == 1
    assert [r.status for r in rows()] == ["ok"]  # type: ignore[attr-defined]


def test_cached_answer_is_parsed_again(sbx: SandboxServer) -> None:
    """A deterministic repeat is a cache hit, parsed into the type again, free."""
    first = cencori_nb.chat(RECORD, model="gpt-4o-mini", schema=Invoice)
    again = cencori_nb.chat(RECORD, model="gpt-4o-mini", schema=Invoice)
    assert again.cached and again.parsed == first.parsed
    assert sbx.stats["requests"] == 1
    other = cencori_nb.chat(RECORD, model="gpt-4o-mini", schema=InvoiceTD)
    assert not other.cached  # another schema is another answer


def test_achat_schema_and_retry(sbx: SandboxServer) -> None:
    """achat: parsed, and the same one retry as chat."""

    async def main() -> cencori_nb.Completion:
        return await cencori_nb.achat(
            "SANDBOX-INVALID-JSON " + RECORD, model="gpt-4o-mini", schema=Invoice
        )

    c = asyncio.run(main())
    assert isinstance(c.parsed, Invoice) and c.earlier_cost_usd > Decimal(0)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_stream_schema_sets_parsed_at_the_end(sbx: SandboxServer, provider: str) -> None:
    """stream: the JSON arrives in deltas; .completion.parsed once it ended."""
    model = PROVIDERS[provider][0]
    with cencori_nb.stream(RECORD, model=model, schema=Invoice) as s:
        text = "".join(s)
    assert s.completion is not None and s.completion.text == text
    assert isinstance(s.completion.parsed, Invoice)


def test_stream_mismatch_raises_at_the_end(sbx: SandboxServer) -> None:
    s = cencori_nb.stream("SANDBOX-INVALID-JSON " + RECORD, model="gpt-4o-mini", schema=Invoice)
    with pytest.raises(errors.SchemaMismatchError) as info:
        list(s)
    assert info.value.completion is not None
    assert sbx.stats["requests"] == 1


def test_a_bad_schema_is_refused_before_sending(sbx: SandboxServer) -> None:
    with pytest.raises(errors.SchemaError):
        cencori_nb.chat(RECORD, model="gpt-4o-mini", schema={"type": "string"})
    assert sbx.stats["requests"] == 0
