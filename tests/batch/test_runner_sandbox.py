"""map / the accessor end to end: the real client, ledger, cache and the offline sandbox.

Requests are counted where they arrive (``sandbox.stats``), charges where they are kept
(the ledger and the wallet), so "sent only the missing rows" and "charged nothing twice"
are checked at the source.
"""

from __future__ import annotations

import _thread
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pandas as pd
import pytest

import cencori_nb
from cencori_nb import batch, keys, wallet
from cencori_nb.errors import CostLimitError
from cencori_nb.home import home_dir
from cencori_nb.ledger import default_ledger
from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.types import Completion

OPENAI_KEY = "sk-test-batch-" + "A" * 20 + "b4tc"
CENCORI_KEY = "csk_live_batch_" + "B" * 20 + "m4nd"


@pytest.fixture
def sbx(sandbox_env: SandboxServer) -> SandboxServer:
    """The shared sandbox (reset, CENCORI_NB_SANDBOX set) with a BYOK and a Cencori key."""
    keys.set("openai", OPENAI_KEY)
    keys.set_cencori_key(CENCORI_KEY)
    return sandbox_env


@pytest.fixture
def own_sandbox(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxServer]:
    """A private sandbox built from the test's ``sandbox_args`` marker-free param."""
    server = SandboxServer(**getattr(request, "param", {}))
    url = server.start_in_thread()
    monkeypatch.setenv("CENCORI_NB_SANDBOX", url)
    keys.set("openai", OPENAI_KEY)
    keys.set_cencori_key(CENCORI_KEY)
    yield server
    server.stop()


def _rows(status: str | None = None) -> list[Any]:
    led = default_ledger()
    led.flush()
    return led.rows(status=status)


def _usage_debits() -> Counter[str]:
    return Counter(t.request_id for t in wallet.transactions(as_frame=False) if t.kind == "usage")


def test_map_byok_in_order_one_request_and_one_ledger_row_each(sbx: SandboxServer) -> None:
    """12 prompts: input order kept, 12 requests at the sandbox, 12 ok ledger rows whose
    request ids and costs match the frame."""
    prompts = [f"Tell me fact number {i}" for i in range(12)]
    out = cencori_nb.map(prompts, model="gpt-4o-mini", concurrency=4, progress=False)
    assert out["prompt"].tolist() == prompts
    assert all(f"fact number {i}" in t for i, t in enumerate(out["text"]))
    assert out["error"].isna().all() and (out["route"] == "byok").all()
    assert sbx.stats["requests"] == 12
    rows = {r.request_id: r for r in _rows("ok")}
    assert set(rows) == set(out["request_id"])
    for _, r in out.iterrows():
        assert r["cost_usd"] == rows[r["request_id"]].provider_cost_usd > 0
        assert r["input_tokens"] == rows[r["request_id"]].input_tokens


def test_rerun_is_served_by_the_cache_at_zero_cost(sbx: SandboxServer) -> None:
    """Second identical deterministic run: no request, cached rows, zero cost in the ledger."""
    prompts = [f"Cache row {i}" for i in range(6)]
    first = cencori_nb.map(prompts, model="gpt-4o-mini", progress=False)
    assert sbx.stats["requests"] == 6
    t0 = time.perf_counter()
    second = cencori_nb.map(prompts, model="gpt-4o-mini", progress=False)
    assert time.perf_counter() - t0 < 30  # (sanity only; the benchmark measures speed)
    assert sbx.stats["requests"] == 6
    assert second["cached"].all() and (second["cost_usd"] == Decimal(0)).all()
    assert second["text"].tolist() == first["text"].tolist()
    cached = _rows("cached")
    assert len(cached) == 6
    assert all(r.credits_charged_usd == 0 for r in cached)


def test_duplicate_prompts_send_once_and_copies_hit_the_cache(sbx: SandboxServer) -> None:
    """The same prompt 5 times in one deterministic batch reaches the sandbox once."""
    out = cencori_nb.map(["Same question"] * 5, model="gpt-4o-mini", concurrency=5, progress=False)
    assert sbx.stats["requests"] == 1
    assert out["cached"].tolist() == [False, True, True, True, True]
    assert len(set(out["text"])) == 1


def test_revoked_key_fails_every_row_and_the_batch_returns(sbx: SandboxServer) -> None:
    """A revoked BYOK key: each row carries the 401 message; nothing raised, no retries."""
    keys.set("openai", "sk-sandbox-demo-openai-revoked")  # the sandbox's revoked demo key
    out = cencori_nb.map(["a", "b", "c"], model="gpt-4o-mini", progress=False)
    assert out["text"].isna().all()
    assert all(e.startswith("AuthenticationError (401)") for e in out["error"])
    assert "revoked" not in " ".join(out["error"])  # no key material in messages
    assert sbx.stats["requests"] == 3
    assert len(_rows("error")) == 3


@pytest.mark.parametrize("own_sandbox", [{"faults": "500=0.35", "seed": 11}], indirect=True)
def test_server_faults_fail_single_rows_others_succeed(own_sandbox: SandboxServer) -> None:
    """With 5xx injected and retries=0, the failing rows say so; the rest have text."""
    prompts = [f"fault row {i}" for i in range(20)]
    out = cencori_nb.map(prompts, model="gpt-4o-mini", retries=0, concurrency=4, progress=False)
    failed = out["error"].notna()
    assert 0 < failed.sum() < 20
    assert all(e.startswith("ProviderUnavailableError (500)") for e in out["error"][failed])
    assert out["text"][~failed].notna().all()
    assert own_sandbox.stats["requests"] == 20
    assert (
        own_sandbox.stats["statuses"].get("500", own_sandbox.stats["statuses"].get(500))
        == failed.sum()
    )


@pytest.mark.parametrize("own_sandbox", [{"faults": "429=0.2", "seed": 5}], indirect=True)
def test_429s_from_the_server_are_paced_and_retried_without_failures_or_double_charges(
    own_sandbox: SandboxServer,
) -> None:
    """Managed route with 429s injected: every row succeeds, each 429 was seen by the
    limiter, and each successful request was debited exactly once."""
    wallet.top_up(25)  # the local mirror starts tracking
    prompts = [f"limited row {i}" for i in range(16)]
    out = cencori_nb.map(
        prompts, model="gpt-4o-mini", route="managed", concurrency=4, progress=False
    )
    assert out["error"].isna().all()
    stats = own_sandbox.stats
    n429 = stats["statuses"].get("429", stats["statuses"].get(429, 0))
    assert n429 > 0
    assert out.attrs["cencori"]["rate_limited"] == n429
    assert stats["requests"] == 16 + n429
    debits = _usage_debits()
    assert set(debits) == set(out["request_id"]) and set(debits.values()) == {1}


def test_max_cost_refuses_before_sending_and_says_the_estimate(sbx: SandboxServer) -> None:
    """An estimate above max_cost_usd raises CostLimitError naming the estimate and rows."""
    with pytest.raises(CostLimitError) as info:
        cencori_nb.map(
            [f"Write an essay on topic {i}" for i in range(40)],
            model="gpt-4o",
            max_tokens=1000,
            max_cost_usd=0.05,
            progress=False,
        )
    err = info.value
    assert sbx.stats["requests"] == 0
    assert err.rows == 40 and err.estimate_usd > Decimal("0.05")
    assert f"Estimated cost ${err.estimate_usd:.4f} for 40 rows" in str(err)
    assert "max_cost_usd=$0.05" in str(err) and "Nothing was sent" in str(err)
    # the same estimate is available without sending
    est = batch.estimate(
        [f"Write an essay on topic {i}" for i in range(40)], model="gpt-4o", max_tokens=1000
    )
    assert est.cost_usd == err.estimate_usd and est.output_tokens == 40_000
    assert est.rows == 40 and est.route == "byok" and est.model == "gpt-4o"


def test_accessor_estimate_takes_the_same_arguments_as_prompt(sbx: SandboxServer) -> None:
    """df.cencori.estimate(template, **same kwargs as prompt) skips empty rows, sends nothing."""
    df = pd.DataFrame({"text": ["a b c", None, "d e f"]})
    est = df.cencori.estimate(
        "Summarise: {text}",
        model="gpt-4o-mini",
        max_tokens=10,
        concurrency=4,
        temperature=0,
        max_cost_usd=1,
    )
    assert est.rows == 2 and est.output_tokens == 20 and est.cost_usd is not None
    assert sbx.stats["requests"] == 0


def test_managed_estimate_includes_the_markup(sbx: SandboxServer) -> None:
    """Managed estimate = BYOK estimate × (1 + markup 50 %)."""
    prompts = ["one two three"] * 4
    byok = batch.estimate(prompts, model="gpt-4o-mini", route="byok", max_tokens=50)
    managed = batch.estimate(prompts, model="gpt-4o-mini", route="managed", max_tokens=50)
    assert byok.cost_usd is not None and managed.cost_usd == byok.cost_usd * Decimal("1.5")


def test_spend_reaching_max_cost_stops_new_rows(sbx: SandboxServer) -> None:
    """Actual spend (here from an injected achat charging $0.01 a row) reaching max_cost_usd
    stops starting rows; the rest say why."""

    async def pricey(prompt: str, **kw: Any) -> Completion:
        return Completion(
            text="ok",
            model="gpt-4o-mini",
            provider="openai",
            route="byok",
            provider_cost_usd=Decimal("0.01"),
            request_id=prompt,
            cost_usd=Decimal("0.01"),
        )  # settled: map reads cost_usd

    out = cencori_nb.map(
        [f"p{i}" for i in range(6)],
        model="gpt-4o-mini",
        max_tokens=5,
        max_cost_usd="0.025",
        concurrency=1,
        achat=pricey,
        progress=False,
    )
    assert out["error"].isna().tolist() == [True] * 3 + [False] * 3
    assert out["error"].tolist()[3:] == ["not sent: max_cost_usd reached"] * 3
    assert out.attrs["cencori"]["stopped"] == "max_cost_usd reached"


class InterruptAfter:
    """A progress display that presses Ctrl-C once ``n`` rows are done (the public
    ``progress=`` seam; it runs on the batch's loop thread, like a person's click)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.fired = False

    def update(
        self, done: int, errors: int, cost_usd: Decimal, *, force: bool = False, note: str = ""
    ) -> None:
        if done >= self.n and not self.fired:
            self.fired = True
            _thread.interrupt_main()

    def close(self, done: int, errors: int, cost_usd: Decimal, *, note: str = "") -> None:
        pass


@pytest.mark.usefixtures("ctrl_c")
# The gateway's own cache is off here: a row cut off in flight was still answered (and, as
# Cencori does, cached) by the server, so its re-run would be a free X-Cencori-Cache HIT;
# this test counts what the re-run sends and charges (tests/test_receipts.py covers HITs).
@pytest.mark.parametrize(
    "own_sandbox", [{"latency_ms": 150, "seed": 2, "gateway_cache": False}], indirect=True
)
@pytest.mark.parametrize("temperature", [0.8, None], ids=["sampled-checkpoint", "cached"])
def test_interrupt_then_rerun_sends_only_missing_rows_and_charges_once(
    own_sandbox: SandboxServer, temperature: float | None
) -> None:
    """Interrupt a managed batch mid-way; the re-run sends only the unfinished rows (counted
    at the sandbox) and no request id is debited twice. Sampled requests (temperature 0.8)
    resume from the batch checkpoint; deterministic ones from the response cache."""
    wallet.top_up(25)
    prompts = [f"sample row {i}" for i in range(12)]
    with pytest.raises(batch.BatchInterrupted) as info:
        cencori_nb.map(
            prompts,
            model="gpt-4o-mini",
            route="managed",
            temperature=temperature,
            concurrency=2,
            progress=InterruptAfter(4),
        )
    part = info.value.partial
    finished = part["error"].isna()
    n_done = int(finished.sum())
    assert 4 <= n_done < 12
    assert (part["error"][~finished] == "interrupted").all()
    time.sleep(0.4)  # let requests cut off in flight reach the server
    before = own_sandbox.stats["requests"]

    out = cencori_nb.map(
        prompts,
        model="gpt-4o-mini",
        route="managed",
        temperature=temperature,
        concurrency=2,
        progress=False,
    )
    assert own_sandbox.stats["requests"] - before == 12 - n_done
    assert out["error"].isna().all()
    assert out["cached"].tolist() == finished.tolist()
    assert (out["cost_usd"][finished] == 0).all() and (out["cost_usd"][~finished] > 0).all()
    assert out["text"][finished].tolist() == part["text"][finished].tolist()
    debits = _usage_debits()
    assert set(out["request_id"][~finished]) <= set(debits)
    assert set(part["request_id"][finished]) <= set(debits)
    assert max(debits.values()) == 1
    if temperature is None:
        assert len(_rows("cached")) == n_done  # the cache answered, and said so
    assert not list((home_dir() / "batches").glob("*.jsonl"))  # complete: no checkpoint


def test_canary_key_never_reaches_results_or_the_home(
    sandbox_env: SandboxServer, canary: str, private_home: Any
) -> None:
    """With the canary as the BYOK key: not in the frame, its errors, the checkpoint, the
    ledger or the cache (the key store holds it encrypted only)."""
    from tests.conftest import all_bytes_under

    keys.set("openai", canary)

    from cencori_nb.client import achat as real_achat

    async def leaky(prompt: str, **kw: Any) -> Completion:
        if prompt == "three":  # a foreign error that quotes the header
            raise ValueError(f"upstream said: bad header Authorization: Bearer {canary}")
        return await real_achat(prompt, **kw)

    out = cencori_nb.map(
        ["one", "two", "three"], model="gpt-4o-mini", temperature=0.5, achat=leaky, progress=False
    )
    assert out["error"][:2].isna().all() and "upstream said" in out["error"][2]
    assert canary not in out["error"][2]
    assert list((private_home / "batches").glob("*.jsonl"))  # kept: a row failed
    assert canary not in out.to_json() and canary not in repr(out)
    assert canary.encode() not in all_bytes_under(private_home)


def test_dataframe_accessor_against_sandbox(sbx: SandboxServer) -> None:
    """df.cencori.prompt end to end with a shuffled integer index."""
    df = pd.DataFrame({"text": ["red apples", "green pears", "blue plums"]}, index=[9, 3, 5])
    out = df.cencori.prompt("Summarise: {text}", model="gpt-4o-mini", progress=False)
    assert list(out.index) == [9, 3, 5]
    assert "red apples" in out.loc[9, "text"] and "blue plums" in out.loc[5, "text"]
    assert sbx.stats["requests"] == 3


_EXIT_SCRIPT = """
import atexit

def report():  # registered first, so it runs last: after cencori_nb's own exit handlers
    from cencori_nb.batch import runner
    from cencori_nb.transport import pool

    loop = runner._loop
    client = pool._async_clients.get(loop)
    print(f"loop closed: {loop.is_closed()}; client closed: {client.is_closed}", flush=True)

atexit.register(report)

import cencori_nb

rows = [f"row {i}" for i in range(40)]
df = cencori_nb.map(rows, model="gpt-4o-mini", concurrency=16, progress=False)
print("rows ok:", int(df["error"].isna().sum()), flush=True)
"""


def test_a_script_that_calls_map_exits_cleanly(sbx: SandboxServer, tmp_path: Path) -> None:
    """A script that calls map() ends with nothing on stderr: no
    "Task exception was never retrieved … Event loop is closed", no "Unclosed client
    session", no ResourceWarning; the batch loop's pooled connections were closed on that
    loop at exit, not left to the garbage collector."""
    script = tmp_path / "uses_map.py"
    script.write_text(_EXIT_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(cencori_nb.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-W", "default", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert "rows ok: 40" in out.stdout
    assert "loop closed: True; client closed: True" in out.stdout
    assert out.stderr == ""


_FIRST_MAP_SCRIPT = """
import json
import sys
import cencori_nb

df = cencori_nb.map(
    [f"{sys.argv[1]} row {i}" for i in range(8)], model="gpt-4o-mini", progress=False
)
heavy = [m for m in ("genai_prices", "pydantic", "cencori_nb.schemas") if m in sys.modules]
rows = df[["model", "input_tokens", "output_tokens", "provider_cost_usd"]].values.tolist()
print(json.dumps([[m, int(i), int(o), str(c)] for m, i, o, c in rows]), flush=True)
print("imported:", heavy, flush=True)
"""


def test_a_second_process_first_map_imports_no_price_package(
    sbx: SandboxServer, tmp_path: Path
) -> None:
    """The first map of a process imports what it needs and no more: the first process
    after an install builds the price table (genai-prices, pydantic), the next prices its
    rows from it (same costs) without them, and nothing imports schemas without schema=."""
    script = tmp_path / "first_map.py"
    script.write_text(_FIRST_MAP_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(cencori_nb.__file__).parents[1])}

    def run(tag: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, str(script), tag],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0 and out.stderr == "", out.stderr
        return out.stdout.splitlines()

    first = run("first")
    assert first[1] == "imported: ['genai_prices', 'pydantic']"
    second = run("second")
    assert second[1] == "imported: []"
    for model, tokens_in, tokens_out, cost in json.loads(first[0]) + json.loads(second[0]):
        usage = genai_prices.Usage(input_tokens=tokens_in, output_tokens=tokens_out)
        assert (
            Decimal(cost) == genai_prices.calc_price(usage, model, provider_id="openai").total_price
        )
