"""Batch engine with an injected ``achat`` (a plain async function): order, errors, retries,
rate-limit storms on a fake clock, interrupts and resume, the progress line it prints.

End-to-end runs against the sandbox are in ``test_runner_sandbox.py``, in a real kernel in
``test_runner_kernel.py``; the accessors in ``test_accessors.py``.
"""

from __future__ import annotations

import _thread
import asyncio
import io
import random
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import cencori_nb
from cencori_nb import batch, transport
from cencori_nb.batch.progress import TextProgress
from cencori_nb.batch.ratelimit import AdaptiveLimiter
from cencori_nb.errors import (
    AuthenticationError,
    ConfigurationError,
    CreditsExhaustedError,
    ProviderUnavailableError,
    RateLimitError,
)
from cencori_nb.types import Completion
from tests.batch.fakes import FakeAchat, FakeClock, completion


def test_order_preserved_with_shuffled_latencies() -> None:
    """Rows come back in input order although they finish in a random order."""
    rng = random.Random(7)
    delays = {f"p{i}": rng.uniform(0, 0.02) for i in range(60)}
    fake = FakeAchat(delay=lambda p: delays[p])
    out = cencori_nb.map(list(delays), achat=fake, concurrency=16, progress=False)
    assert list(out["prompt"]) == list(delays)
    assert list(out["text"]) == [f"echo: {p}" for p in delays]
    assert list(out.columns[:8]) == [
        "prompt",
        "text",
        "error",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "route",
        "cached",
    ]
    assert out["error"].isna().all()
    assert sorted(fake.calls) == sorted(delays)
    assert 1 < fake.max_in_flight <= 16
    assert out.attrs["cencori"]["sent_requests"] == 60


def test_each_call_gets_the_batch_options_and_no_client_retries() -> None:
    """achat sees model/route/system/temperature/max_tokens/project/cache and retries=0."""
    fake = FakeAchat()
    cencori_nb.map(
        ["a"],
        achat=fake,
        model="gpt-4o-mini",
        route="byok",
        system="Be brief",
        temperature=0.3,
        max_tokens=20,
        project="p1",
        cache=False,
        progress=False,
    )
    assert fake.kwargs == [
        {
            "model": "gpt-4o-mini",
            "provider": None,
            "route": "byok",
            "system": "Be brief",
            "temperature": 0.3,
            "max_tokens": 20,
            "project": "p1",
            "cache": False,
            "retries": 0,
        }
    ]


def test_series_input_keeps_its_index() -> None:
    """A Series of prompts gives a result indexed like the Series."""
    s = pd.Series(["x", "y", "z"], index=[30, 10, 20])
    out = cencori_nb.map(s, achat=FakeAchat(), progress=False)
    assert list(out.index) == [30, 10, 20]
    assert list(out["text"]) == ["echo: x", "echo: y", "echo: z"]


def test_failing_rows_get_their_error_and_the_batch_goes_on() -> None:
    """A non-retryable error fills `error` for that row only; others succeed."""
    bad = AuthenticationError(
        "The openai key was rejected (401).",
        provider="openai",
        status_code=401,
        hint="Store a new key.",
    )
    fake = FakeAchat(fail={"p3": bad, "p7": ValueError("weird")})
    out = cencori_nb.map([f"p{i}" for i in range(10)], achat=fake, progress=False)
    errors = out["error"].tolist()
    assert errors[3] == (
        "AuthenticationError (401): The openai key was rejected (401). Store a new key."
    )
    assert errors[7] == "ValueError: weird"
    assert out["text"].isna().tolist() == [i in (3, 7) for i in range(10)]
    assert out.loc[3, "cost_usd"] == Decimal(0)
    assert fake.calls.count("p3") == 1  # not retried
    assert len(fake.calls) == 10


def test_transient_errors_are_retried_a_bounded_number_of_times() -> None:
    """5xx is retried `retries` times with backoff on the injected sleep, then reported."""
    clock = FakeClock()
    down = ProviderUnavailableError("openai answered 503.", provider="openai", status_code=503)
    fake = FakeAchat(fail={"b": down})
    lim = AdaptiveLimiter(4, clock=clock, sleep=clock.sleep)
    out = cencori_nb.map(["a", "b"], achat=fake, retries=2, limiter=lim, progress=False)
    assert fake.calls.count("b") == 3
    assert out["error"].tolist()[1].startswith("ProviderUnavailableError (503)")
    # two backoffs of the one retry policy (transport.next_wait): full jitter under
    # 0.5 s, then under 1 s (the batch no longer has its own constants)
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.5 and 0 <= clock.sleeps[1] <= 1.0
    assert lim.limit == 4  # 5xx does not lower concurrency


def test_429_storm_pauses_everyone_halves_concurrency_and_recovers() -> None:
    """The first 24 calls get 429 (Retry-After 3 s): all rows still succeed, the workers
    wait out the pause on the injected clock, concurrency halves once per overload."""
    clock = FakeClock()
    state = {"n": 0}
    inner = FakeAchat(delay=0.002)

    async def achat(prompt: str, **kw: Any) -> Completion:
        state["n"] += 1
        if state["n"] <= 24:
            await asyncio.sleep(0)
            raise RateLimitError(
                "Rate limited.", provider="openai", status_code=429, retry_after=3.0
            )
        return await inner(prompt, **kw)

    lim = AdaptiveLimiter(8, clock=clock, sleep=clock.sleep)
    out = cencori_nb.map(
        [f"p{i}" for i in range(40)], achat=achat, concurrency=8, limiter=lim, progress=False
    )
    assert out["error"].isna().all()
    assert lim.rate_limited == 24
    kinds = [(e.kind, e.limit) for e in lim.events]
    decreases = [limit for kind, limit in kinds if kind == "decrease"]
    assert decreases[0] == 4  # the first burst halves once, not 8 times
    assert decreases == sorted(decreases, reverse=True)
    assert all(e.pause_s == 3.0 for e in lim.events if e.kind == "pause")
    assert set(clock.sleeps) == {3.0}  # only waits: the Retry-After
    assert clock.now == 3.0 * len([e for e in lim.events if e.kind == "pause"])
    assert inner.max_in_flight <= decreases[-1] + len(
        [e for e in lim.events if e.kind == "increase"]
    )
    assert out.attrs["cencori"]["rate_limited"] == 24


def test_progress_says_when_the_batch_waits_for_a_rate_limit() -> None:
    """A 429 with Retry-After 30 s shows the wait and the new concurrency on the progress
    line at once (not throttled away)."""
    clock = FakeClock()
    buf = io.StringIO()
    calls = {"n": 0}

    async def achat(prompt: str, **kw: Any) -> Completion:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RateLimitError("Rate limited.", status_code=429, retry_after=30.0)
        return completion(prompt)

    lim = AdaptiveLimiter(4, clock=clock, sleep=clock.sleep)
    cencori_nb.map(
        ["a"],
        achat=achat,
        limiter=lim,
        progress=TextProgress(1, stream=buf, min_interval_s=60, clock=clock),
    )
    out = buf.getvalue()
    assert "0/1 rows · 0 errors · $0.0000 · rate limited: waiting 30 s, concurrency 2" in out
    last = out.rsplit("\r", 1)[-1]  # padded with blanks over the longer line before
    assert last.endswith("\n") and last.rstrip() == "cencori: 1/1 rows · 0 errors · $0.0010"
    assert clock.sleeps == [30.0]


def test_rate_limit_retries_are_bounded() -> None:
    """A row that is rate-limited forever fails after PACED_RATE_LIMIT_RETRIES + 1 tries."""
    clock = FakeClock()
    fake = FakeAchat(fail={"x": RateLimitError("Rate limited.", status_code=429, retry_after=1.0)})
    lim = AdaptiveLimiter(2, clock=clock, sleep=clock.sleep)
    out = cencori_nb.map(["x"], achat=fake, limiter=lim, progress=False)
    assert fake.calls.count("x") == transport.PACED_RATE_LIMIT_RETRIES + 1
    assert out["error"][0].startswith("RateLimitError (429)")


def test_credit_exhaustion_stops_starting_rows() -> None:
    """After a credits error the remaining rows are not sent and say why."""
    fake = FakeAchat(
        fail={"p2": CreditsExhaustedError("Credit balance exhausted.", hint="Top up.")}
    )
    out = cencori_nb.map([f"p{i}" for i in range(6)], achat=fake, concurrency=1, progress=False)
    assert fake.calls == ["p0", "p1", "p2"]
    assert (
        out["error"].tolist()[3:]
        == ["not sent: CreditsExhaustedError: Credit balance exhausted. Top up."] * 3
    )
    assert out.attrs["cencori"]["stopped"].startswith("CreditsExhaustedError")


def test_empty_prompts_are_not_sent() -> None:
    """None / NaN / blank rows are reported, not sent."""
    fake = FakeAchat()
    out = cencori_nb.map(["ok", None, float("nan"), "  "], achat=fake, progress=False)
    assert fake.calls == ["ok"]
    assert out["error"].tolist()[1:] == ["not sent: empty prompt"] * 3


def test_cost_column_is_credits_for_managed_and_provider_cost_for_byok() -> None:
    """cost_usd is the completion's settled cost: managed → credits charged, BYOK →
    provider cost (+ fee), cache hit → 0."""
    managed = cencori_nb.map(["a"], achat=FakeAchat(route="managed"), progress=False)
    assert managed["cost_usd"][0] == Decimal("0.002")
    assert managed["provider_cost_usd"][0] == Decimal("0.001")
    byok = cencori_nb.map(["a"], achat=FakeAchat(route="byok"), progress=False)
    assert byok["cost_usd"][0] == Decimal("0.001")

    async def hit(prompt: str, **kw: Any) -> Completion:
        return completion(prompt, cached=True)

    cached = cencori_nb.map(["a"], achat=hit, progress=False)
    assert cached["cost_usd"][0] == Decimal(0) and bool(cached["cached"][0]) is True


def test_duplicate_prompts_in_a_deterministic_batch_are_sent_one_after_the_other() -> None:
    """Copies wait for the first send (so they can hit the cache) instead of racing it."""
    events: list[str] = []

    async def achat(prompt: str, **kw: Any) -> Completion:
        events.append(f"start {prompt}")
        await asyncio.sleep(0.01)
        events.append(f"end {prompt}")
        return completion(prompt)

    cencori_nb.map(["a", "a", "b"], achat=achat, concurrency=4, progress=False)
    assert events.index("end a") < events.index("start a", events.index("start a") + 1)
    events.clear()
    cencori_nb.map(["a", "a"], achat=achat, concurrency=4, temperature=0.7, progress=False)
    assert events[:2] == ["start a", "start a"]  # sampling: both sent at once


def test_checkpoint_resume_sends_only_missing_rows_and_is_removed_when_done(
    private_home: Path,
) -> None:
    """Failed rows are retried by the next identical run; finished rows are not resent."""
    prompts = [f"q{i}" for i in range(8)]
    first = FakeAchat(
        fail={
            "q2": ProviderUnavailableError("503", status_code=503),
            "q5": AuthenticationError("401", status_code=401),
        }
    )
    out1 = cencori_nb.map(prompts, achat=first, retries=0, temperature=0.9, progress=False)
    assert out1["error"].notna().sum() == 2
    files = list((private_home / "batches").glob("*.jsonl"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"

    second = FakeAchat()
    out2 = cencori_nb.map(prompts, achat=second, temperature=0.9, progress=False)
    assert sorted(second.calls) == ["q2", "q5"]
    assert out2["error"].isna().all()
    assert out2["text"].tolist() == [f"echo: {p}" for p in prompts]
    # resumed rows cost nothing now (like cache hits); the resent two are paid
    assert out2["cost_usd"].tolist() == [
        Decimal("0.001") if p in ("q2", "q5") else Decimal(0) for p in prompts
    ]
    assert out2["cached"].tolist() == [p not in ("q2", "q5") for p in prompts]
    assert out2["request_id"].tolist() == [f"req-{p}" for p in prompts]
    assert out2.attrs["cencori"]["resumed_rows"] == 6
    assert out2.attrs["cencori"]["spent_usd_this_run"] == "0.002"
    assert not list((private_home / "batches").glob("*.jsonl"))  # done: checkpoint gone

    third = FakeAchat()
    cencori_nb.map(prompts, achat=third, temperature=0.9, progress=False)
    assert len(third.calls) == 8  # a finished batch runs afresh


def test_no_checkpoint_for_cached_requests_and_none_kept_for_empty_rows(private_home: Path) -> None:
    """Deterministic + cache: the response cache resumes, no checkpoint file is written. A
    sampled batch whose only failures are empty prompts is complete: checkpoint removed."""
    cencori_nb.map(["a", "b"], achat=FakeAchat(fail={"b": ValueError("x")}), progress=False)
    assert not (private_home / "batches").exists() or not list(
        (private_home / "batches").glob("*.jsonl")
    )
    out = cencori_nb.map(["a", None], achat=FakeAchat(), temperature=0.7, progress=False)
    assert out["error"].tolist()[1] == "not sent: empty prompt"
    assert not list((private_home / "batches").glob("*.jsonl"))


def test_resume_false_sends_every_row() -> None:
    """resume=False ignores the checkpoint of an earlier partial run."""
    prompts = ["a", "b"]
    cencori_nb.map(
        prompts, achat=FakeAchat(fail={"b": ValueError("x")}), temperature=0.5, progress=False
    )
    again = FakeAchat()
    cencori_nb.map(prompts, achat=again, resume=False, temperature=0.5, progress=False)
    assert sorted(again.calls) == ["a", "b"]


@pytest.mark.usefixtures("ctrl_c")
def test_interrupt_returns_partial_and_resume_sends_only_missing_rows() -> None:
    """Ctrl-C during map(): BatchInterrupted with .partial; the re-run sends the rest."""
    prompts = [f"r{i}" for i in range(20)]
    gate = threading.Event()

    async def achat(prompt: str, **kw: Any) -> Completion:
        if int(prompt[1:]) >= 5:
            while not gate.is_set():
                await asyncio.sleep(0.005)
        return completion(prompt)

    def interrupt_when_five_done() -> None:
        import time

        from cencori_nb.home import home_dir

        def finished() -> int:  # lines in the batch's checkpoint = rows finished
            return sum(
                len(p.read_text().splitlines()) for p in (home_dir() / "batches").glob("*.jsonl")
            )

        while finished() < 5:
            time.sleep(0.005)
        _thread.interrupt_main()

    t = threading.Thread(target=interrupt_when_five_done)
    t.start()
    with pytest.raises(batch.BatchInterrupted) as info:
        cencori_nb.map(prompts, achat=achat, concurrency=4, temperature=0.5, progress=False)
    t.join()
    gate.set()
    err = info.value
    assert isinstance(err, KeyboardInterrupt)
    part = err.partial
    assert part["text"].tolist()[:5] == [f"echo: r{i}" for i in range(5)]
    assert part["error"].tolist()[5:] == ["interrupted"] * 15
    assert "run the same call again to send only the 15 missing rows" in str(err)
    assert part.attrs["cencori"]["interrupted"] is True

    again = FakeAchat()
    out = cencori_nb.map(prompts, achat=again, concurrency=4, temperature=0.5, progress=False)
    assert sorted(again.calls) == sorted(prompts[5:])
    assert out["error"].isna().all()
    assert out["text"].tolist() == [f"echo: {p}" for p in prompts]


@pytest.mark.asyncio
async def test_amap_cancel_reraises_and_keeps_finished_rows_for_resume() -> None:
    """Cancelling amap re-raises CancelledError; a re-run sends only the unfinished rows."""
    prompts = [f"s{i}" for i in range(10)]
    done = asyncio.Event()
    finished: list[str] = []

    async def achat(prompt: str, **kw: Any) -> Completion:
        if int(prompt[1:]) >= 3:
            await asyncio.sleep(3600)
        finished.append(prompt)
        if len(finished) == 3:
            done.set()
        return completion(prompt)

    task = asyncio.create_task(
        cencori_nb.amap(prompts, achat=achat, concurrency=5, temperature=1, progress=False)
    )
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    again = FakeAchat()
    out = await cencori_nb.amap(prompts, achat=again, concurrency=5, temperature=1, progress=False)
    assert sorted(again.calls) == sorted(prompts[3:])
    assert out["error"].isna().all()


def test_map_works_inside_a_running_event_loop() -> None:
    """As in a Jupyter cell: map() called while the thread's loop is running."""

    async def cell() -> pd.DataFrame:
        return cencori_nb.map(["a", "b"], achat=FakeAchat(), progress=False)

    out = asyncio.run(cell())
    assert out["text"].tolist() == ["echo: a", "echo: b"]


def test_empty_batch_gives_an_empty_frame_with_the_columns() -> None:
    """No prompts: nothing sent, an empty frame with every column."""
    fake = FakeAchat()
    out = cencori_nb.map([], achat=fake, progress=False)
    assert fake.calls == [] and len(out) == 0
    assert list(out.columns) == list(batch.COLUMNS)


def test_concurrency_below_one_is_a_configuration_error() -> None:
    """concurrency=0 fails before anything is sent."""
    fake = FakeAchat()
    with pytest.raises(ConfigurationError, match="concurrency must be at least 1"):
        cencori_nb.map(["a"], achat=fake, concurrency=0, progress=False)
    assert fake.calls == []


@pytest.mark.parametrize("limit", ["abc", "-1", float("nan"), float("inf"), "1e-20", [1]])
def test_a_bad_max_cost_is_a_configuration_error_before_sending(limit: Any) -> None:
    """max_cost_usd is read by the wallet's one rule for amounts: a clear error, not a
    decimal.InvalidOperation traceback, and a negative or NaN limit never means "no limit"."""
    fake = FakeAchat()
    with pytest.raises(ConfigurationError, match="max_cost_usd"):
        cencori_nb.map(["a", "b"], achat=fake, max_cost_usd=limit, progress=False)
    assert fake.calls == []


def test_each_row_accepts_the_batch_limit() -> None:
    """Under max_cost_usd each row's call carries the limit (the batch was estimated as a
    whole), parsed once, as a Decimal."""
    fake = FakeAchat()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cencori_nb.batch.runner.estimate_rows", _cheap_estimate)
        cencori_nb.map(["a"], achat=fake, max_cost_usd="0.50", progress=False)
    assert fake.kwargs[0]["max_cost_usd"] == Decimal("0.50")
    assert fake.kwargs[0]["retries"] == 0


def _cheap_estimate(todo: list[Any], params: Any, skipped: int = 0) -> Any:
    from cencori_nb.batch.cost import BatchEstimate

    return BatchEstimate(len(todo), 1, 1, Decimal("0.01"), "m", "openai", "byok", False, skipped)


def test_map_refuses_a_single_string() -> None:
    """A bare string is one prompt, not a batch: a clear error instead of 1-char rows."""
    with pytest.raises(ConfigurationError, match="not one string"):
        cencori_nb.map("hello", achat=FakeAchat(), progress=False)


def test_map_prints_progress_to_stderr_in_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """progress=True outside a notebook writes the summary line to stderr."""
    cencori_nb.map(["a", "b", "c"], achat=FakeAchat(), progress=True)
    err = capsys.readouterr().err
    assert err.endswith("cencori: 3/3 rows · 0 errors · $0.0030\n")


def test_a_checkpoint_line_cut_short_costs_only_its_own_row(private_home: Path) -> None:
    """A run killed mid-append leaves half a line in the checkpoint: the next run's first
    record starts on a line of its own, so a later resume skips both finished rows (only
    the cut one would be sent again)."""
    from cencori_nb.batch.checkpoint import Checkpoint

    first = Checkpoint("cut-batch")
    first.append(0, "k0", {"text": "zero", "error": None})
    first.close()
    with first.path.open("ab") as fh:
        fh.write(b'{"pos":1,"key":"k1","te')  # the process died here
    second = Checkpoint("cut-batch")
    second.append(2, "k2", {"text": "two", "error": None})
    second.close()
    assert sorted(Checkpoint("cut-batch").load()) == [0, 2]
