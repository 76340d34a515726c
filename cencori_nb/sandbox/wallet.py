"""Money inside the sandbox: provider prices (genai-prices, offline) and the credit wallet.

The sandbox plays the Cencori gateway, so it charges like the gateway does: provider cost
from the public price catalogue times (1 + 50 % markup), debited from one USD wallet that
never goes below zero; a balance at or under zero answers ``403 credit_balance_exhausted``.
It deliberately does not use the client's pricing module: the two sides must agree
because they read the same catalogue, not because they share code.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from functools import lru_cache

__all__ = ["MARKUP", "PRICE_PROVIDER", "Wallet", "gateway_charge", "provider_cost"]

MARKUP = Decimal("0.5")  # Cencori's published catalogue: 50 % on every priced model

# sandbox provider name -> genai-prices provider id (None: a local server, always free)
PRICE_PROVIDER: dict[str, str | None] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "mistral": "mistral",
    "groq": "groq",
    "xai": "x-ai",
    "deepseek": "deepseek",
    "together": "together",
    "openrouter": "openrouter",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "local": None,
    "qwen": None,
}


def provider_cost(
    provider: str, model: str, input_tokens: int, output_tokens: int
) -> Decimal | None:
    """Provider cost in USD of one request, or ``None`` when the catalogue has no price.

    A local server costs ``Decimal(0)``. Cached per (provider, model, tokens) because the
    catalogue lookup is the most expensive step of a sandbox request.
    """
    if provider == "local":
        return Decimal(0)
    return _cost(PRICE_PROVIDER.get(provider, provider), model, input_tokens, output_tokens)


@lru_cache(maxsize=8192)
def _cost(
    price_provider: str | None, model: str, input_tokens: int, output_tokens: int
) -> Decimal | None:
    if price_provider is None:
        return None
    from genai_prices import Usage, calc_price

    try:
        calc = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model,
            provider_id=price_provider,
        )
    except LookupError:
        return None
    return Decimal(calc.total_price)


def gateway_charge(cost: Decimal) -> Decimal:
    """What the gateway charges for a provider cost: cost × (1 + markup)."""
    return cost * (1 + MARKUP)


def warm_up() -> None:
    """Import and load the price catalogue now, so the first request is not slow."""
    _cost("openai", "gpt-4o-mini", 1, 1)


class Wallet:
    """A thread-safe USD balance: debits never take it below zero."""

    def __init__(self, balance: Decimal | str | int = Decimal("25")) -> None:
        self._lock = threading.Lock()
        self._balance = Decimal(str(balance))
        self.spent = Decimal(0)

    @property
    def balance(self) -> Decimal:
        return self._balance

    def set(self, usd: Decimal | str | int | float) -> Decimal:
        """Set the balance (``float`` goes through ``str`` so 0.1 stays 0.1)."""
        with self._lock:
            self._balance = Decimal(str(usd))
            return self._balance

    def exhausted(self) -> bool:
        return self._balance <= 0

    def debit(self, amount: Decimal) -> Decimal:
        """Take ``amount`` (at most the whole balance); return what was actually taken."""
        with self._lock:
            taken = min(amount, max(self._balance, Decimal(0)))
            self._balance -= taken
            self.spent += taken
            return taken
