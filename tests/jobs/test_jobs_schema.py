"""submit(..., schema=): each row asks for JSON of the shape in its provider's native form
(the live adapter's body), result() adds the fields as typed columns; another process,
without the user's type, reads them from the stored JSON Schema."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import pandas as pd
import pydantic
import pytest

import cencori_nb
from cencori_nb.jobs import load_job

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "google": "gemini-2.5-flash"}
RECORDS = [
    "ACME Tools Ltd billed us 1,234.50 EUR on 2025-03-01 for 3 items.",
    "Globex Corp billed us 99.00 USD on 2024-12-24 for 1 items.",
]


class Invoice(pydantic.BaseModel):
    vendor: str
    total: float
    currency: Literal["EUR", "USD", "GBP"]
    issued: dt.date
    items: int


@pytest.mark.parametrize("provider", sorted(MODELS))
def test_schema_rows_parse_into_typed_columns(sbx, provider):
    """The native schema field reached the sandbox in the batch rows; result() has the
    Invoice fields as columns, typed, in input order; the same from a fresh load."""
    df = pd.DataFrame({"record": RECORDS + ["SANDBOX-WRONG-SHAPE please"]})
    job = cencori_nb.submit(df, "{record}", model=MODELS[provider], schema=Invoice, max_tokens=300)
    out = job.result(timeout=30)
    assert list(out["total"][:2]) == [1234.5, 99.0]
    assert list(out["items"][:2]) == [3, 1]
    assert out.loc[0, "currency"] == "EUR" and out.loc[1, "vendor"].startswith("Globex")
    assert pd.isna(out.loc[2, "total"])
    assert "does not match" in out.loc[2, "error"] and out.loc[2, "text"]  # paid, shown
    assert out.loc[0, "error"] is None or pd.isna(out.loc[0, "error"])
    live = cencori_nb.map(
        df["record"], model=MODELS[provider], schema=Invoice, max_tokens=300, progress=False
    )
    assert list(out.columns) == list(live.columns)  # map's layout: prompt, fields, the rest
    fresh = load_job(job.id)  # as another process sees it: the stored JSON Schema, no Invoice
    assert fresh.schema is not None and fresh.schema.kind == "json_schema"
    assert list(fresh.result(wait=False)["total"][:2]) == [1234.5, 99.0]
    sent = sbx.batches.jobs[job.provider_job_ids[0]].rows[0][1]
    native = {
        "openai": lambda b: b["response_format"]["json_schema"]["strict"] is True,
        "anthropic": lambda b: b["output_config"]["format"]["type"] == "json_schema",
        "google": lambda b: b["generationConfig"]["responseMimeType"] == "application/json",
    }[provider]
    assert native(sent)
