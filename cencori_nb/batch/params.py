"""What a batch sends: the prompts (normalised, with the reason a row is not sent) and the
request parameters every row shares."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["MAP_OPTIONS", "Params", "Prompt", "empty_reason", "normalise"]

Prompt = Any  # a string, or a list of {"role", "content"} messages


@dataclass(frozen=True)
class Params:
    model: str | None
    provider: str | None
    route: str
    system: str | None
    temperature: float | None
    max_tokens: int | None
    project: str | None
    cache: bool

    def call_kwargs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "route": self.route,
            "system": self.system,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "project": self.project,
            "cache": self.cache,
        }

    @property
    def deterministic(self) -> bool:
        return self.temperature is None or self.temperature == 0

    def fingerprint(self) -> str:
        data = {k: v for k, v in self.call_kwargs().items() if k != "cache"}
        return json.dumps(data, sort_keys=True, default=str)


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
