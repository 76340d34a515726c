"""Ledger rows the money tests build again and again: the estimate a request's in-flight
note holds, and the row of an answered request. Plain functions (not fixtures), so a
spawned child process and a test use the same rows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cencori_nb.ledger import DERIVE, LedgerRow


def noted_row(
    client_id: str,
    route: str = "byok",
    *,
    input_tokens: int = 1000,
    cost_usd: Any = DERIVE,
) -> LedgerRow:
    """The row a request's in-flight note holds (what :meth:`Ledger.begin` is given):
    ``interrupted``, ``process_ended``, estimated input tokens on gpt-4o-mini. A reclaim
    prices it again from its tokens, so ``cost_usd`` only shapes the note's line."""
    return LedgerRow(
        "",
        "default",
        "openai",
        route,
        status="interrupted",
        model="gpt-4o-mini",
        error_code="process_ended",
        input_tokens=input_tokens,
        estimated=True,
        cost_usd=cost_usd,
        client_id=client_id,
    )


def charged_row(
    client_id: str,
    request_id: str | None = None,
    *,
    model: str = "gpt-4o-mini",
    charged_usd: str = "0.25",
    **change: Any,
) -> LedgerRow:
    """An answered managed request (12 in, 34 out) that charged the wallet
    ``charged_usd``; ``change`` sets any other field after the row is built."""
    charged = Decimal(charged_usd)
    row = LedgerRow(
        "chatcmpl-" + client_id if request_id is None else request_id,
        "default",
        "openai",
        "managed",
        model=model,
        input_tokens=12,
        output_tokens=34,
        provider_cost_usd=charged * Decimal("0.8"),
        credits_charged_usd=charged,
        cost_usd=charged,
        client_id=client_id,
    )
    for name, value in change.items():
        setattr(row, name, value)
    return row
