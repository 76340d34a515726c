"""Hard caps that hold: reservations across threads, map concurrency and processes.

Every request under a hard cap reserves its estimated maximum cost in the ledger file
(one ``BEGIN IMMEDIATE`` transaction) before it is sent and releases it in the transaction
that writes its row; these tests run real processes against the sandbox (a real HTTP
server) and measure the overshoot against its bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

import cencori_nb
from cencori_nb import accounting, keys, state
from cencori_nb.errors import BudgetExceededError, ProviderUnavailableError
from cencori_nb.ledger import default_ledger, now_ms, to_pusd
from cencori_nb.sandbox.faults import FaultPicker
from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.settings import update_project, update_settings
from cencori_nb.tokens import estimate_messages_tokens

OPENAI_KEY = "sk-test-caps-" + "A" * 20 + "c4p5"
MODEL = "gpt-4o"
MAX_TOKENS = 60


@pytest.fixture
def sbx(sandbox_env: SandboxServer) -> SandboxServer:
    keys.set("openai", OPENAI_KEY)
    return sandbox_env


def _held() -> list[tuple]:
    return default_ledger().query("SELECT id, project, amount_pusd, pid FROM budget_reservations")


def _chat_requests(sbx: SandboxServer) -> int:
    return sum(n for route, n in sbx.stats["routes"].items() if "chat" in route)


_WORKER = r"""
import json, sys, time
from pathlib import Path
import cencori_nb
tag, n, barrier = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
(barrier / f"ready-{tag}").touch()
while not (barrier / "go").exists():
    time.sleep(0.005)
prompts = [f"Process {tag} request {i}: say something about the number {i}." for i in range(n)]
out = cencori_nb.map(prompts, model=sys.argv[4], max_tokens=int(sys.argv[5]), concurrency=8,
                     cache=False, progress=False, temperature=0.5)
errors = [e for e in out["error"] if isinstance(e, str)]
print(json.dumps({"ok": int(out["error"].isna().sum()), "errors": errors,
                  "n_errors": len(errors),
                  "cost": str(sum(c for c in out["cost_usd"] if c is not None))}))
"""


def test_two_processes_at_concurrency_8_stay_under_one_cap(
    sbx: SandboxServer, private_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two processes × map(concurrency=8) × 60 prompts under one $0.02 cap: spend ends
    within one request's reservation of the cap (measured overshoot <= bound), the cap was
    used (requests that fit were sent), every sent request has its row, and no reservation
    is left behind. Without reservations the same run overshot by the ~16 requests in
    flight."""
    cap = Decimal("0.02")
    update_project("default", hard_cap_usd=cap)
    barrier = private_home.parent / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, tag, "60", str(barrier), MODEL, str(MAX_TOKENS)],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in "ab"
    ]
    deadline = time.monotonic() + 120
    while not all((barrier / f"ready-{t}").exists() for t in "ab"):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (barrier / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    led = default_ledger()
    led.flush()
    spent = accounting.month_cost("default")
    prompt = "Process a request 10: say something about the number 10."
    bound, _, _ = accounting.estimate_for(
        "openai", MODEL, "byok", estimate_messages_tokens([prompt]), MAX_TOKENS
    )
    assert bound is not None
    overshoot = max(spent - cap, Decimal(0))
    sent = sum(r["ok"] for r in results)
    rows = led.query("SELECT COUNT(*) FROM requests WHERE status = 'ok'")[0][0]
    print(
        f"\ncap ${cap}, spent ${spent}, overshoot ${overshoot} (bound ${bound} = one "
        f"request's reservation), sent {sent} (a {results[0]['ok']}, b {results[1]['ok']}), "
        f"rows {rows}, sandbox chat requests {_chat_requests(sbx)}"
    )
    with capsys.disabled():
        print(
            f"[caps] cap ${cap} spent ${spent} overshoot ${overshoot} bound ${bound} "
            f"sent {sent} rows {rows}"
        )
    statuses = led.query("SELECT status, error_code, COUNT(*) FROM requests GROUP BY 1, 2")
    why = f"results={results} rows={statuses} sandbox={sbx.stats['statuses']}"
    assert overshoot <= bound, why
    assert spent > cap - bound, why  # requests that fit were sent, not refused
    assert results[0]["ok"] > 0 and results[1]["ok"] > 0, why
    # every request the sandbox saw has its row (a retried one has an error row too)
    all_rows = led.query("SELECT COUNT(*) FROM requests")[0][0]
    assert sent == rows and all_rows == _chat_requests(sbx), why
    refused = [e for r in results for e in r["errors"]]
    assert refused and any("BudgetExceededError" in e for e in refused), why
    assert sum(Decimal(r["cost"]) for r in results) == spent
    assert _held() == []


def test_threads_share_the_cap(sbx: SandboxServer) -> None:
    """16 threads at once, one process: the same bound holds."""
    from concurrent.futures import ThreadPoolExecutor

    cap = Decimal("0.004")
    update_project("default", hard_cap_usd=cap)

    def one(i: int) -> str:
        try:
            cencori_nb.chat(
                f"thread {i} asks a question", model=MODEL, max_tokens=MAX_TOKENS, cache=False
            )
            return "ok"
        except BudgetExceededError:
            return "refused"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(16)))
    spent = accounting.month_cost()
    bound, _, _ = accounting.estimate_for(
        "openai", MODEL, "byok", estimate_messages_tokens(["thread 10 asks a question"]), MAX_TOKENS
    )
    assert bound is not None and spent <= cap + bound and spent > cap - bound
    assert "refused" in outcomes and outcomes.count("ok") == _chat_requests(sbx)
    assert _held() == []


def test_reservation_of_a_dead_process_expires(sbx: SandboxServer) -> None:
    """A reservation left by a process that died (SIGKILL before settling) holds nothing."""
    update_project("default", hard_cap_usd=Decimal("0.01"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with default_ledger().transaction() as conn:
        conn.execute(
            "INSERT INTO budget_reservations (id, project, amount_pusd, pid, host, created_ms) "
            "VALUES ('ghost', 'default', ?, ?, ?, ?)",
            (to_pusd(Decimal("0.0099")), dead.pid, accounting._HOST, now_ms()),
        )
    cencori_nb.chat("hello", model=MODEL, max_tokens=10)
    assert _held() == []


def test_live_and_remote_reservations_count_until_their_ttl(sbx: SandboxServer) -> None:
    """A reservation from another host older than the TTL expires; a live process's
    fresh one (here the parent of this test process) stays and keeps counting."""
    update_project("default", hard_cap_usd=Decimal("0.01"))
    old = now_ms() - accounting.RESERVATION_TTL_MS - 1
    with default_ledger().transaction() as conn:
        conn.execute(
            "INSERT INTO budget_reservations (id, project, amount_pusd, pid, host, created_ms) "
            "VALUES ('remote-old', 'default', ?, 1, "
            "'another-host', ?)",
            (to_pusd(Decimal("0.009")), old),
        )
        conn.execute(
            "INSERT INTO budget_reservations (id, project, amount_pusd, pid, host, created_ms) "
            "VALUES ('parent', 'other-project', ?, ?, ?, ?)",
            (to_pusd(Decimal(5)), os.getppid(), accounting._HOST, now_ms()),
        )
    cencori_nb.chat("hello", model=MODEL, max_tokens=10)  # the old remote one expired
    assert [r[0] for r in _held()] == ["parent"]  # the live one stays
    assert accounting._alive(1, "another-host", now_ms(), now_ms())


def test_reused_pid_does_not_keep_a_reservation() -> None:
    """A pid now held by a process started after the reservation was made is not its maker."""
    parent = os.getppid()
    started = accounting._started_ms(parent)
    if started is None:
        pytest.skip("no /proc start times here")
    made = started - 60_000  # a minute before the current holder started
    assert accounting._alive(parent, accounting._HOST, made, made + 1000) is False
    assert accounting._alive(parent, accounting._HOST, started + 5000, started + 6000) is True


def test_waiting_request_is_sent_once_the_other_settles(sbx: SandboxServer) -> None:
    """A request that fits on committed spend but not beside a reservation in flight waits
    for it and is then sent (not refused)."""
    update_project("default", hard_cap_usd=Decimal("0.01"))
    blocker = accounting.reserve("default", Decimal("0.0099"))
    assert blocker is not None
    import threading

    released = threading.Event()

    def release() -> None:
        blocker.release()
        released.set()

    threading.Timer(0.3, release).start()
    c = cencori_nb.chat("after the other one", model=MODEL, max_tokens=10)
    assert released.is_set()  # it could only be sent once the other had settled
    assert c.cost_usd is not None and _held() == [] and _chat_requests(sbx) == 1


def test_request_that_cannot_fit_is_refused_at_once_and_names_the_assumption(
    sbx: SandboxServer,
) -> None:
    """No max_tokens: 1,024 output tokens are reserved and the refusal says so; with
    max_tokens the same prompt fits and is sent; reserve_output_tokens changes the
    default."""
    update_project("default", hard_cap_usd=Decimal("0.005"))
    with pytest.raises(BudgetExceededError) as info:
        cencori_nb.chat("a short question", model=MODEL)
    assert "1,024 output tokens assumed" in str(info.value)
    assert "max_tokens" in str(info.value) and _chat_requests(sbx) == 0
    cencori_nb.chat("a short question", model=MODEL, max_tokens=50, cache=False)
    update_settings(reserve_output_tokens=100)
    cencori_nb.chat("a short question", model=MODEL, cache=False)
    assert _chat_requests(sbx) == 2 and _held() == []


def test_unpriced_model_under_a_hard_cap_is_refused_unless_allowed(sbx: SandboxServer) -> None:
    keys.set("local", "sk-local-caps-" + "L" * 20)
    update_project("default", hard_cap_usd=Decimal(10))
    with pytest.raises(BudgetExceededError) as info:
        cencori_nb.chat("hi", model="llama3.2", provider="local")
    assert "no price is known" in str(info.value)
    assert "unpriced_models_allowed" in str(info.value)
    assert _chat_requests(sbx) == 0
    update_settings(unpriced_models_allowed=["llama3.2"])
    c = cencori_nb.chat("hi", model="llama3.2", provider="local")
    assert c.cost_usd is None and _chat_requests(sbx) == 1 and _held() == []


def test_failed_and_abandoned_requests_release_their_reservation(sbx: SandboxServer) -> None:
    update_project("default", hard_cap_usd=Decimal(1))
    sbx.faults = FaultPicker({"500": 1.0}, 0)
    with pytest.raises(ProviderUnavailableError):
        cencori_nb.chat("fails", model=MODEL, max_tokens=10, retries=0)
    assert _held() == []
    sbx.faults = FaultPicker({}, 0)
    s = cencori_nb.stream("a stream read only in part", model=MODEL, max_tokens=40)
    assert len(_held()) == 1  # held while the stream is open
    next(iter(s))
    s.close()
    assert _held() == []
    rows = default_ledger().rows()
    assert [r.status for r in rows] == ["error", "interrupted"]  # stopped part way


def test_bad_settings_are_refused(private_home: Path) -> None:
    from cencori_nb.errors import ConfigurationError
    from cencori_nb.settings import load_settings

    (private_home).mkdir(parents=True, exist_ok=True)
    for bad in (
        {"reserve_output_tokens": 0},
        {"reserve_output_tokens": "lots"},
        {"unpriced_models_allowed": "llama3.2"},
    ):
        (private_home / "config.json").write_text(json.dumps(bad))
        state.recheck()  # edited by hand: looked at afresh
        with pytest.raises(ConfigurationError):
            load_settings()
