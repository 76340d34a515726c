"""map / amap / the accessors with ``schema=`` against the sandbox: one typed column per
field, failed rows kept (never a batch crash), and the cost column adds up to the ledger,
retries included."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from decimal import Decimal

import pandas as pd
import pydantic
import pytest

import cencori_nb
from cencori_nb import keys
from cencori_nb.ledger import default_ledger
from cencori_nb.sandbox.server import SandboxServer


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"
    GBP = "GBP"


class Address(pydantic.BaseModel):
    city: str


class Invoice(pydantic.BaseModel):
    vendor: str
    total: float
    currency: Currency
    issued: dt.date
    items: int
    paid: bool
    address: Address | None = None


RECORDS = [
    "ACME Tools Ltd billed 1,234.50 EUR on 2025-03-01 for 3 items.",
    "Globex sent an invoice: 99.90 USD, 2025-04-15, 1 item.",
    "SANDBOX-INVALID-JSON Initech: 12.00 GBP on 2025-05-02, 4 items.",
    "SANDBOX-WRONG-SHAPE Hooli: total unknown.",
    "SANDBOX-REFUSE Umbrella: 5.00 EUR on 2025-06-01, 2 items.",
    "Soylent Corp, 450.75 USD, 2025-07-09, 12 items.",
]


@pytest.fixture
def sbx(sandbox_env: SandboxServer) -> SandboxServer:
    keys.set("openai", "sk-test-batch-schema-" + "A" * 20)
    return sandbox_env


def ledger_cost() -> Decimal:
    led = default_ledger()
    led.flush()
    return sum((r.cost_usd or Decimal(0) for r in led.rows()), Decimal(0))


def test_map_schema_columns_errors_and_cost(sbx: SandboxServer) -> None:
    """Six records: four parsed (one after a retry), one never matching, one refused."""
    df = cencori_nb.map(RECORDS, model="gpt-4o-mini", schema=Invoice, progress=False, concurrency=3)
    fields = ["vendor", "total", "currency", "issued", "items", "paid", "address.city"]
    assert list(df.columns[: len(fields) + 1]) == ["prompt", *fields]
    assert list(df.columns[len(fields) + 1 :]) == list(cencori_nb.batch.COLUMNS[1:])
    assert {c: str(df[c].dtype) for c in fields} == {
        "vendor": "string",
        "total": "Float64",
        "currency": "category",
        "issued": "datetime64[ns]",
        "items": "Int64",
        "paid": "boolean",
        "address.city": "string",
    }
    assert list(df["currency"].cat.categories) == ["EUR", "USD", "GBP"]
    ok = df["error"].isna()
    assert list(ok) == [True, True, True, False, False, True]
    assert df.loc[0, "total"] == 1234.5 and df.loc[0, "items"] == 3
    assert df.loc[1, "currency"] == "USD"
    assert df.loc[5, "issued"] == pd.Timestamp("2025-07-09")
    assert df.loc[2, "vendor"] == "Initech"  # after the retry
    # the failed rows: missing fields, the answer's text kept, what they cost kept
    assert df.loc[3, "error"].startswith("SchemaMismatchError")
    assert "vendor: Field required" in df.loc[3, "error"]
    assert df.loc[4, "error"].startswith("RefusalError")
    assert df.loc[[3, 4], fields].isna().all().all()
    assert df.loc[3, "text"] and df.loc[3, "cost_usd"] > 0
    # requests: 6 + one retry for the invalid JSON + one for the wrong shape
    assert sbx.stats["requests"] == 8
    assert df["cost_usd"].sum() == ledger_cost()
    assert df.loc[2, "cost_usd"] > df.loc[0, "cost_usd"] / 2  # both attempts counted


def test_frame_accessor_keeps_the_index(sbx: SandboxServer) -> None:
    frame = pd.DataFrame({"note": RECORDS[:2]}, index=["a", "b"])
    out = frame.cencori.prompt("Extract: {note}", model="gpt-4o-mini", schema=Invoice)
    assert list(out.index) == ["a", "b"]
    assert list(out["items"]) == [3, 1]


def test_series_accessor_and_json_schema_dict(sbx: SandboxServer) -> None:
    """A JSON Schema dict; a field called ``text`` becomes ``answer.text``."""
    shape = {
        "type": "object",
        "properties": {"text": {"type": "string"}, "amount": {"type": "number"}},
        "required": ["text", "amount"],
    }
    out = pd.Series(RECORDS[:2]).cencori.prompt(model="gpt-4o-mini", schema=shape)
    assert "answer.text" in out.columns and "text" in out.columns
    assert list(out["amount"]) == [1234.5, 99.9]
    assert out.loc[0, "text"].startswith("{")  # map's own text column: the raw JSON


def test_amap_schema(sbx: SandboxServer) -> None:
    async def main() -> pd.DataFrame:
        return await cencori_nb.amap(
            RECORDS[:2], model="gpt-4o-mini", schema=Invoice, progress=False
        )

    out = asyncio.run(main())
    assert list(out["vendor"]) == ["ACME Tools Ltd", "Globex"]


def test_resumed_rows_are_parsed_from_their_text(sbx: SandboxServer) -> None:
    """temperature > 0 uses the checkpoint: a re-run after a failure re-parses the rows it
    did not send again."""
    prompts = [RECORDS[0], "SANDBOX-WRONG-SHAPE x"]
    first = cencori_nb.map(
        prompts, model="gpt-4o-mini", schema=Invoice, temperature=0.5, progress=False
    )
    assert first["error"].notna().tolist() == [False, True]
    sent = sbx.stats["requests"]
    again = cencori_nb.map(
        prompts, model="gpt-4o-mini", schema=Invoice, temperature=0.5, progress=False
    )
    assert sbx.stats["requests"] == sent + 2  # only the failed row (and its retry)
    assert again.loc[0, "total"] == 1234.5 and bool(again.loc[0, "cached"])
