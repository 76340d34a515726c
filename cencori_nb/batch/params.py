"""What a batch sends: the prompts (normalised, with the reason a row is not sent) and the
options of the call (:class:`BatchOptions`)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..options import ChatOptions

if TYPE_CHECKING:
    from .progress import Progress
    from .ratelimit import AdaptiveLimiter

__all__ = ["MAP_OPTIONS", "AChat", "BatchOptions", "Prompt", "empty_reason", "normalise"]

Prompt = Any  # a string, or a list of {"role", "content"} messages
AChat = Callable[..., Awaitable[Any]]  # sends one prompt: achat(prompt, **options)


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """The options of one ``map``/``amap`` call, built once by it and passed down.

    ``chat`` is what every row asks (:class:`~cencori_nb.options.ChatOptions`), with
    ``retries=0`` (the batch retries, so its limiter sees each 429) and ``max_cost_usd`` the
    batch's limit (estimated as a whole before sending, so each row may cost up to it;
    without one, each row meets the per-request confirmation). ``retries`` is the batch's
    own, for timeouts and 5xx.
    """

    chat: ChatOptions
    retries: int
    concurrency: int = 8
    progress: bool | Progress = True
    resume: bool = True
    achat: AChat | None = None
    limiter: AdaptiveLimiter | None = None
    sleep: Callable[[float], Awaitable[object]] | None = None

    @property
    def max_cost_usd(self) -> Decimal | None:
        """The batch's spending limit (None: none)."""
        return self.chat.max_cost_usd


# The map() options estimate() accepts and ignores (so the same arguments work for both).
MAP_OPTIONS = frozenset(
    {
        "concurrency",
        "max_cost_usd",
        "temperature",
        "cache",
        "progress",
        "retries",
        "resume",
        "achat",
        "limiter",
        "sleep",
        "schema",  # the schema's own tokens are not estimated (providers count them apart)
    }
)


def normalise(prompts: Any) -> tuple[list[Prompt], Any]:
    """(list of prompts, index or None) from a list, any iterable, or a pandas Series."""
    if isinstance(prompts, str):
        raise ConfigurationError(
            "map() takes many prompts (a list or a pandas Series), not one string.",
            hint="Wrap it in a list, or use cencori_nb.chat() for a single prompt.",
        )
    index = getattr(prompts, "index", None)
    if index is not None and hasattr(prompts, "tolist") and not isinstance(prompts, list):
        return list(prompts.tolist()), index
    return list(prompts), None


def empty_reason(prompt: Prompt) -> str | None:
    if prompt is None:
        return "not sent: empty prompt"
    if isinstance(prompt, float) and math.isnan(prompt):
        return "not sent: empty prompt"
    if isinstance(prompt, str):
        return None if prompt.strip() else "not sent: empty prompt"
    if isinstance(prompt, list | tuple) and prompt:
        return None
    try:
        import pandas as pd

        if pd.isna(prompt):
            return "not sent: empty prompt"
    except (TypeError, ValueError, ImportError):
        pass
    return f"not sent: a prompt must be a string, not {type(prompt).__name__}"
