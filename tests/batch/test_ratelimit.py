"""The adaptive limiter: shared pauses on Retry-After, AIMD concurrency, header hints."""

from __future__ import annotations

import asyncio

import pytest

from cencori_nb.batch.ratelimit import AdaptiveLimiter, parse_reset


class FakeClock:
    """A clock that only moves when someone sleeps; records every requested sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        target = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, target)


def make(max_c: int = 8, **kw: object) -> tuple[AdaptiveLimiter, FakeClock]:
    clock = FakeClock()
    return AdaptiveLimiter(max_c, clock=clock, sleep=clock.sleep, **kw), clock  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_burst_of_429s_halves_once_and_pauses_everyone_for_retry_after() -> None:
    """Eight requests of one epoch get 429: the limit halves once (8→4), all wait 2 s."""
    lim, clock = make(8)
    epochs = [await lim.acquire() for _ in range(8)]
    for e in epochs:
        lim.release()
        lim.on_rate_limited(e, 2.0)
    assert lim.limit == 4
    assert [ev.kind for ev in lim.events] == ["pause", "decrease"]
    assert lim.pause_until == 1002.0
    assert lim.rate_limited == 8
    await lim.acquire()
    assert clock.sleeps == [2.0]
    assert clock.now == 1002.0


@pytest.mark.asyncio
async def test_a_429_from_a_later_epoch_halves_again_down_to_the_floor() -> None:
    """Each new overload halves again; the limit never drops below min_concurrency."""
    lim, clock = make(8, min_concurrency=2)
    for expected in (4, 2, 2):
        e = await lim.acquire()
        lim.release()
        lim.on_rate_limited(e, 0.5)
        assert lim.limit == expected
    assert clock.sleeps == [0.5, 0.5]


@pytest.mark.asyncio
async def test_missing_retry_after_uses_default_backoff_and_long_ones_are_capped() -> None:
    """No Retry-After → the default backoff; an absurd one is capped at max_pause_s."""
    lim, clock = make(4, default_backoff_s=1.5, max_pause_s=30)
    e = await lim.acquire()
    lim.release()
    assert lim.on_rate_limited(e, None) == 1.5
    e = await lim.acquire()
    lim.release()
    assert lim.on_rate_limited(e, 3600) == 30
    await lim.acquire()
    assert clock.sleeps == [1.5, 30.0]


@pytest.mark.asyncio
async def test_successes_raise_the_limit_by_one_per_window_up_to_the_maximum() -> None:
    """Additive increase: +1 after `limit` successes in a row, never above the request."""
    lim, _ = make(4)
    e = await lim.acquire()
    lim.release()
    lim.on_rate_limited(e, 0)
    assert lim.limit == 2
    lim.on_success()
    assert lim.limit == 2
    lim.on_success()
    assert lim.limit == 3
    for _ in range(3):
        lim.on_success()
    assert lim.limit == 4
    for _ in range(20):
        lim.on_success()
    assert lim.limit == 4
    assert [ev.kind for ev in lim.events] == ["pause", "decrease", "increase", "increase"]


@pytest.mark.asyncio
async def test_acquire_waits_for_a_free_slot_in_order() -> None:
    """With the limit reached, waiters get slots first come, first served, on release."""
    lim, _ = make(2)
    await lim.acquire()
    await lim.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await lim.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert order == [] and lim.in_flight == 2
    lim.release()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == [0]
    lim.release()
    lim.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert lim.in_flight == 2


@pytest.mark.asyncio
async def test_a_lowered_limit_holds_back_new_requests_until_in_flight_drains() -> None:
    """After halving to 2 with 4 in flight, a new request waits until in-flight < 2."""
    lim, _ = make(4)
    epochs = [await lim.acquire() for _ in range(4)]
    lim.release()
    lim.on_rate_limited(epochs[0], 0)
    assert lim.limit == 2 and lim.in_flight == 3
    got = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    lim.release()  # 2 in flight: still at the limit
    await asyncio.sleep(0)
    assert not got.done()
    lim.release()  # 1 in flight: room
    await asyncio.wait_for(got, 1)
    assert lim.in_flight == 2


@pytest.mark.asyncio
async def test_cancelled_waiter_leaves_the_queue() -> None:
    """A waiter cancelled while queued does not keep a place or a slot."""
    lim, _ = make(1)
    await lim.acquire()
    t = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    lim.release()
    assert lim.in_flight == 0
    await asyncio.wait_for(lim.acquire(), 1)
    assert lim.in_flight == 1


@pytest.mark.asyncio
async def test_remaining_zero_header_pauses_before_the_429() -> None:
    """x-ratelimit-remaining-requests: 0 with a reset of 6s pauses the next acquire 6 s."""
    lim, clock = make(4)
    lim.observe_headers({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6s"})
    assert not lim.paused
    lim.observe_headers({"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": "6s"})
    assert lim.paused
    await lim.acquire()
    assert clock.sleeps == [6.0]


def test_parse_reset_formats() -> None:
    """OpenAI durations, Unix ms (Cencori), RFC 3339 (Anthropic), plain seconds."""
    assert parse_reset("6s") == 6.0
    assert parse_reset("1m30s") == 90.0
    assert parse_reset("250ms") == 0.25
    assert parse_reset("2.5") == 2.5
    assert parse_reset("1700000005000", now_epoch_s=1_700_000_000.0) == 5.0
    assert parse_reset("2023-11-14T22:13:25Z", now_epoch_s=1_700_000_000.0) == 5.0
    assert parse_reset("soon") is None
    assert parse_reset(None) is None
