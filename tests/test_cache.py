"""The response cache: keys, storage, file mode, hits with zero cost."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cencori_nb import cache, state
from cencori_nb.keystore.secret import Secret
from cencori_nb.router import Decision
from cencori_nb.types import ChatRequest, Completion


def _decision(
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    route: str = "byok",
    key: str = "sk-test-aaaaaaaaaaaaaaaa",
) -> Decision:
    return Decision(
        provider=provider,
        model=model,
        route=route,
        credential=Secret(key),
        credential_source=f"keystore:{route}:{provider}",
        base_url="http://127.0.0.1:1",
        adapter=provider,
    )


def _completion(text: str = "hello") -> Completion:
    return Completion(
        text=text,
        model="gpt-4o-mini-2024-07-18",
        provider="openai",
        route="byok",
        input_tokens=12,
        output_tokens=3,
        provider_cost_usd=Decimal("0.0000036"),
        credits_charged_usd=Decimal("0.000005"),
        request_id="req-1",
        latency_ms=42.0,
        finish_reason="stop",
        project="default",
        gateway_cost_usd=Decimal("0.000005"),
    )


def test_key_depends_on_what_makes_the_answer() -> None:
    """Provider, model, messages and parameters change the key; route and the key do not."""
    req = ChatRequest.from_prompt("hi", system="be brief")
    base = cache.cache_key(_decision(), req)
    assert len(base) == 64
    assert cache.cache_key(_decision(route="managed", key="csk_other_bbbbbbbb"), req) == base
    assert cache.cache_key(_decision(model="gpt-4o"), req) != base
    assert cache.cache_key(_decision(provider="groq"), req) != base
    assert cache.cache_key(_decision(), ChatRequest.from_prompt("hi")) != base
    assert cache.cache_key(_decision(), ChatRequest.from_prompt("hi!", system="be brief")) != base
    assert (
        cache.cache_key(_decision(), ChatRequest.from_prompt("hi", system="be brief", max_tokens=5))
        != base
    )
    assert (
        cache.cache_key(
            _decision(), ChatRequest.from_prompt("hi", system="be brief", temperature=0)
        )
        != base
    )
    other_endpoint = dataclasses.replace(_decision(), base_url="https://api.openai.com/v1")
    assert cache.cache_key(other_endpoint, req) != base


def test_a_sandbox_answer_is_never_served_by_another_endpoint(
    sandbox_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply cached while talking to one server (a sandbox) is not a cache hit when the
    same prompt goes to another (a second sandbox here; the real provider in life): that
    server is asked, and the fake answer never stands in for a real one."""
    import cencori_nb
    from cencori_nb import keys
    from cencori_nb.sandbox import SandboxServer

    keys.set("openai", "sk-test-endpoint-" + "E" * 24 + "e1e2")
    first = cencori_nb.chat("the same deterministic prompt", model="gpt-4o-mini")
    assert not first.cached and sandbox_env.stats["requests"] == 1
    assert cencori_nb.chat("the same deterministic prompt", model="gpt-4o-mini").cached
    second = SandboxServer(seed=7)
    monkeypatch.setenv("CENCORI_NB_SANDBOX", second.start_in_thread())
    try:
        again = cencori_nb.chat("the same deterministic prompt", model="gpt-4o-mini")
        assert not again.cached and second.stats["requests"] == 1
    finally:
        second.stop()


def test_cacheable_only_deterministic() -> None:
    assert cache.cacheable(ChatRequest.from_prompt("x"))
    assert cache.cacheable(ChatRequest.from_prompt("x", temperature=0))
    assert cache.cacheable(ChatRequest.from_prompt("x", temperature=0.0))
    assert not cache.cacheable(ChatRequest.from_prompt("x", temperature=0.7))
    assert not cache.cacheable(ChatRequest.from_prompt("x", cache=False))


def test_store_then_lookup_returns_cached_zero_cost(private_home: Path) -> None:
    """A hit is a copy with cached=True and both costs zero; the rest round-trips."""
    key = cache.cache_key(_decision(), ChatRequest.from_prompt("hi"))
    assert cache.lookup(key) is None
    cache.store(key, _completion())
    hit = cache.lookup(key)
    assert hit is not None
    assert hit.cached is True
    assert hit.provider_cost_usd == Decimal(0) and hit.credits_charged_usd == Decimal(0)
    assert hit.text == "hello" and hit.model == "gpt-4o-mini-2024-07-18"
    assert (hit.input_tokens, hit.output_tokens) == (12, 3)
    assert hit.finish_reason == "stop"
    assert cache.stats()["entries"] == 1
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_file_is_private_and_in_the_home(private_home: Path) -> None:
    """cache.sqlite lives in CENCORI_NB_HOME with mode 0600; the home is 0700."""
    cache.store("k", _completion())
    path = private_home / "cache.sqlite"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_home.stat().st_mode) == 0o700
    for extra in (path.with_name("cache.sqlite-wal"), path.with_name("cache.sqlite-shm")):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0


def test_bytes_on_disk_hold_the_answer_not_a_key(private_home: Path, canary: str) -> None:
    """The stored row is the answer; the credential is never written."""
    decision = _decision(key=canary)
    key = cache.cache_key(decision, ChatRequest.from_prompt("hi"))
    cache.store(key, _completion("the answer"))
    state.reset("cache")  # close, so the WAL is checkpointed
    rows = (
        sqlite3.connect(private_home / "cache.sqlite")
        .execute("SELECT key, provider, model, completion FROM responses")
        .fetchall()
    )
    assert rows[0][0] == key and rows[0][1] == "openai"
    assert "the answer" in rows[0][3]
    data = b"".join(p.read_bytes() for p in private_home.iterdir() if p.is_file())
    assert canary.encode() not in data


def test_clear_returns_count(private_home: Path) -> None:
    for i in range(3):
        cache.store(f"k{i}", _completion(str(i)))
    assert cache.clear() == 3
    assert cache.lookup("k1") is None
    assert cache.clear() == 0


def test_another_process_sees_entries(private_home: Path) -> None:
    """Entries are on disk: a fresh connection (another kernel) gets the same hit."""
    cache.store("shared", _completion("from kernel A"))
    state.reset("cache")
    hit = cache.lookup("shared")
    assert hit is not None and hit.text == "from kernel A"


def test_home_switch_reopens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A different CENCORI_NB_HOME gets its own cache file."""
    cache.store("k", _completion())
    monkeypatch.setenv("CENCORI_NB_HOME", str(tmp_path / "other-home"))
    assert cache.lookup("k") is None
    assert (tmp_path / "other-home" / "cache.sqlite").exists()


def test_damaged_cache_file_is_a_miss_not_a_failure(private_home: Path) -> None:
    """Garbage in cache.sqlite: lookups miss and stores are skipped (one RuntimeWarning);
    clear() says which file to delete."""
    from cencori_nb import errors

    private_home.mkdir(parents=True, exist_ok=True)
    (private_home / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.warns(RuntimeWarning, match="cache.sqlite"):
        assert cache.lookup("k") is None
    cache.store("k", _completion())  # no exception, no second warning
    assert cache.lookup("k") is None
    with pytest.raises(errors.ConfigurationError, match="Delete that file"):
        cache.clear()


def test_a_writer_batchs_answers_are_stored_in_one_transaction(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers waiting for their ledger rows are stored when the writer commits them, each
    run of them in one transaction (one COMMIT, not one per answer); a callback queued
    between two runs still runs between them, in order; nothing is stored before its
    row commits."""
    from cencori_nb import ledger as ledger_mod
    from cencori_nb.ledger import LedgerRow, default_ledger

    monkeypatch.setattr(ledger_mod, "WRITER_LINGER_S", 3600.0)  # one batch, ended by flush
    led = default_ledger()
    cache.store("warm", _completion())  # opens the cache's connection
    statements: list[str] = []
    order: list[str] = []
    cache._connect().set_trace_callback(statements.append)
    for i in range(3):
        led.submit(LedgerRow(f"req-a{i}", "default", "openai", "byok"))
        cache.store_after_commit(f"a{i}", _completion(f"answer a{i}"))
    led.after_commit(lambda: order.append(f"between, {len(statements)} statements"))
    for i in range(2):
        led.submit(LedgerRow(f"req-b{i}", "default", "openai", "byok"))
        cache.store_after_commit(f"b{i}", _completion(f"answer b{i}"))
    assert cache.pending() == 5 and statements == []  # nothing before the rows commit
    led.flush()
    assert cache.pending() == 0
    words = [s.split()[0].upper() for s in statements]
    assert words == ["BEGIN", *["INSERT"] * 3, "COMMIT", "BEGIN", *["INSERT"] * 2, "COMMIT"]
    assert order == ["between, 5 statements"]
    hits = {k: cache.lookup(k) for k in ("a0", "a1", "a2", "b0", "b1")}
    assert {k: c.text if c else None for k, c in hits.items()} == {
        "a0": "answer a0",
        "a1": "answer a1",
        "a2": "answer a2",
        "b0": "answer b0",
        "b1": "answer b1",
    }
    assert all(c is not None and c.cached and c.credits_charged_usd == 0 for c in hits.values())


def test_an_answer_being_stored_is_waited_for_not_missed(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the ledger's writer stores a batch's answers, a lookup of one of them from
    another thread waits for it (a hit), instead of finding it neither pending nor stored
    (a miss: the caller would send, and pay for, the same request again)."""
    import threading

    from cencori_nb.ledger import LedgerRow, default_ledger

    led = default_ledger()
    cache.store("warm", _completion())  # opens the cache's connection
    looked_up: list[Completion | None] = []
    reached = threading.Event()  # the lookup is waiting, or done
    wait_pending = cache._wait_pending

    def waiting() -> None:
        reached.set()
        wait_pending()

    def lookup() -> None:
        looked_up.append(cache.lookup("k"))
        reached.set()

    connect = cache._connect
    lookers: list[threading.Thread] = []

    def connect_while_storing() -> sqlite3.Connection:
        # the writer is about to store the batch: a lookup from another thread now
        if threading.current_thread().name == "cencori-nb-ledger" and not lookers:
            lookers.append(threading.Thread(target=lookup))
            lookers[0].start()
            assert reached.wait(30)
        return connect()

    monkeypatch.setattr(cache, "_wait_pending", waiting)
    monkeypatch.setattr(cache, "_connect", connect_while_storing)
    led.submit(LedgerRow("req-k", "default", "openai", "byok"))
    cache.store_after_commit("k", _completion("answer k"))
    led.flush()
    assert lookers
    lookers[0].join(30)
    assert [c.text if c else None for c in looked_up] == ["answer k"]


def test_an_answer_the_cache_cannot_store_does_not_lose_the_rest_of_its_batch(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint's answer can hold a lone surrogate (valid JSON, not UTF-8: SQLite
    refuses it). Stored in one transaction with the rest of its writer batch, it must not
    take the other answers down with it: they are cached (a re-run gets them free), it
    alone is not."""
    from cencori_nb import ledger as ledger_mod
    from cencori_nb.ledger import LedgerRow, default_ledger

    monkeypatch.setattr(ledger_mod, "WRITER_LINGER_S", 3600.0)  # one batch, ended by flush
    led = default_ledger()
    for key, text in (("before", "fine"), ("bad", "half a pair \ud800"), ("after", "fine too")):
        led.submit(LedgerRow(f"req-{key}", "default", "openai", "byok"))
        cache.store_after_commit(key, _completion(text))
    led.flush()
    assert cache.pending() == 0
    found = {k: cache.lookup(k) for k in ("before", "bad", "after")}
    assert {k: c.text if c else None for k, c in found.items()} == {
        "before": "fine",
        "bad": None,
        "after": "fine too",
    }


def _child_looks_up(answers: Any) -> None:
    hit = cache.lookup("shared")
    answers.put(None if hit is None else hit.text)


def test_a_child_forked_while_the_cache_is_busy_can_use_it(private_home: Path) -> None:
    """A child forked while another thread holds the cache's lock (the ledger's writer
    storing a batch's answers, now one transaction under it) must not inherit that lock
    held: nobody in the child would ever release it, and its first lookup would hang.
    It gets its own lock and connection (a SQLite connection must not cross a fork)."""
    cache.store("shared", _completion("stored before the fork"))
    ctx = multiprocessing.get_context("fork")
    answers = ctx.Queue()
    with cache._lock:  # as the writer thread holds it mid-batch
        proc = ctx.Process(target=_child_looks_up, args=(answers,))
        proc.start()
    proc.join(60)
    hung = proc.is_alive()
    if hung:
        proc.kill()
        proc.join()
    assert not hung and proc.exitcode == 0
    assert answers.get(timeout=10) == "stored before the fork"
