"""Test doubles for the batch runner: a settled Completion, a recording ``achat``, a fake clock."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from cencori_nb.accounting import cost_of
from cencori_nb.types import Completion


def completion(
    prompt: str,
    *,
    route: str = "byok",
    cached: bool = False,
    cost: str = "0.001",
    credits: str = "0",
) -> Completion:
    provider_cost = Decimal(0) if cached else Decimal(cost)
    # a settled completion, as achat returns it: cost_usd by the one rule
    return Completion(
        text=f"echo: {prompt}",
        model="gpt-4o-mini",
        provider="openai",
        route=route,
        input_tokens=len(prompt),
        output_tokens=3,
        provider_cost_usd=provider_cost,
        credits_charged_usd=Decimal(credits),
        cached=cached,
        request_id=f"req-{prompt}",
        cost_usd=cost_of(route, provider_cost, Decimal(credits), cached=cached),
    )


class FakeAchat:
    """Records every call; answers after an optional delay; fails rows on request."""

    def __init__(
        self,
        *,
        delay: Any = None,
        fail: dict[str, BaseException] | None = None,
        route: str = "byok",
    ) -> None:
        self.calls: list[str] = []
        self.kwargs: list[dict[str, Any]] = []
        self.delay = delay
        self.fail = fail or {}
        self.route = route
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, prompt: str, **kwargs: Any) -> Completion:
        self.calls.append(prompt)
        self.kwargs.append(kwargs)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay is not None:
                await asyncio.sleep(self.delay(prompt) if callable(self.delay) else self.delay)
            exc = self.fail.get(prompt)
            if exc is not None:
                raise exc
            return completion(
                prompt, route=self.route, credits="0.002" if self.route == "managed" else "0"
            )
        finally:
            self.in_flight -= 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        target = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, target)
