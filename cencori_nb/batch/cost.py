"""What a batch is expected to cost before anything is sent (:func:`estimate`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..options import ChatOptions
from .params import MAP_OPTIONS, Prompt, empty_reason, normalise

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFAULT_OUTPUT_TOKENS", "BatchEstimate", "estimate", "estimate_rows", "usd"]

DEFAULT_OUTPUT_TOKENS = 256  # the output guess per row when max_tokens is not given


@dataclass(frozen=True)
class BatchEstimate:
    """What a batch is expected to cost before it is sent (an estimate, not a quote)."""

    rows: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    model: str | None
    provider: str | None
    route: str | None
    output_assumed: bool  # True when max_tokens was not given (a guess per row)
    skipped_rows: int = 0  # already finished (checkpoint) or not sendable

    def detail(self) -> str:
        """Where the figure comes from: model, route, tokens, the output assumption."""
        out = f"~{self.output_tokens:,} output tokens " + (
            f"({DEFAULT_OUTPUT_TOKENS} a row assumed; pass max_tokens to bound it)"
            if self.output_assumed
            else "(max_tokens a row)"
        )
        return f"{self.model} via {self.route}: ~{self.input_tokens:,} input tokens, {out}"

    def __str__(self) -> str:
        cost = (
            "cost unknown (no price for this model)"
            if self.cost_usd is None
            else f"~{usd(self.cost_usd)}"
        )
        what = "in credits" if self.route == "managed" else "provider cost (your own key)"
        skipped = (
            f" ({self.skipped_rows} more not sendable or already done)" if self.skipped_rows else ""
        )
        return f"{self.rows} rows to send{skipped}: {cost} {what}; {self.detail()}"

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"BatchEstimate({self})"


def usd(amount: Decimal) -> str:
    """$0.0123, or six decimals for sub-cent figures (so they do not print as $0.0000)."""
    return f"${amount:.4f}" if abs(amount) >= Decimal("0.01") else f"${amount:.6f}"


def _resolve(params: ChatOptions) -> tuple[str, str, str]:
    """(provider, model, route) the batch will use, resolved once by the router."""
    from .. import router

    decision = router.explain_route(
        params.model, provider=params.provider, route=params.route, project=params.project
    )
    return decision.provider, decision.model, decision.route


def estimate_rows(
    prompts: Sequence[Prompt], params: ChatOptions, skipped: int = 0
) -> BatchEstimate:
    from ..tokens import estimate_messages_tokens

    provider, model, route = _resolve(params)
    input_tokens = 0
    for p in prompts:
        contents = [params.system] if params.system else []
        if isinstance(p, str):
            contents.append(p)
        else:
            contents.extend(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in p)
        input_tokens += estimate_messages_tokens(contents)
    per_row_out = params.max_tokens if params.max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    output_tokens = per_row_out * len(prompts)
    cost: Decimal | None = Decimal(0)
    if prompts:
        # What it would cost you, by the one estimate rule (list price, then cost_of); the
        # batch passes its whole output allowance, so no per-request default applies.
        from ..accounting import estimate_for

        cost, _, _ = estimate_for(provider, model, route, input_tokens, output_tokens)
    return BatchEstimate(
        rows=len(prompts),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        model=model,
        provider=provider,
        route=route,
        output_assumed=params.max_tokens is None,
        skipped_rows=skipped,
    )


def estimate(
    prompts: Iterable[Prompt] | pd.Series,
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "auto",
    system: str | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
    **map_options: Any,
) -> BatchEstimate:
    """Estimate what sending ``prompts`` would cost, without sending anything.

    Tokens are estimated from the text; output is ``max_tokens`` a row (or
    :data:`DEFAULT_OUTPUT_TOKENS`, a guess); prices are list prices (managed: with the
    markup). Rows a cache could answer are counted too, so this is an upper-side figure.
    Other :func:`map` options (``concurrency``, ``temperature``…) are accepted and ignored,
    so the same arguments work for both.
    """
    unknown = set(map_options) - MAP_OPTIONS
    if unknown:
        raise TypeError(f"estimate() got unexpected keyword arguments: {sorted(unknown)}")
    values, _ = normalise(prompts)
    params = ChatOptions(
        model=model,
        provider=provider,
        route=route,
        system=system,
        max_tokens=max_tokens,
        project=project,
    )
    sendable = [p for p in values if empty_reason(p) is None]
    return estimate_rows(sendable, params, skipped=len(values) - len(sendable))
