"""Money under faults (issue 11): a request is never paid for unseen.

A damaged or full ledger sends nothing it cannot record; rows the background writer could
not commit are spilled and replayed; every request has its own row even when the provider
repeats ids; the response cache never gets ahead of the ledger; interrupted requests are
recorded. Real processes and the sandbox on 127.0.0.1; counts are requests the sandbox
answered against rows the ledger holds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import cencori_nb
from cencori_nb import cache, keys, wallet
from cencori_nb.errors import LedgerCorruptError, LedgerError, LedgerWriteError
from cencori_nb.ledger import Ledger, LedgerRow, _Item, default_ledger

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"
OPENAI_KEY = "sk-faults-" + "A" * 24 + "f1f1"
CENCORI_KEY = "csk_live_faults_" + "B" * 24 + "f2f2"    # a live key: debited (test keys are not)


@pytest.fixture
def sbx(sandbox_env: Any) -> Any:
    """The sandbox, with an OpenAI key and a Cencori key stored."""
    keys.set("openai", OPENAI_KEY)
    keys.set_cencori_key(CENCORI_KEY)
    return sandbox_env


def _child_env(home: Path, sandbox: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CENCORI_NB_HOME=str(home), CENCORI_NB_SANDBOX=sandbox.url,
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _default_sigint() -> None:
    """In the child: Ctrl-C raises KeyboardInterrupt even when the suite ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_child(code: str, home: Path, sandbox: Any, *,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=_child_env(home, sandbox),
                          preexec_fn=_default_sigint)


def _ledger_rows(home: Path) -> list[tuple[Any, ...]]:
    """(client_id, request_id, status, estimated) of every row, read with plain sqlite3."""
    conn = sqlite3.connect(home / "ledger.sqlite")
    try:
        return conn.execute("SELECT client_id, request_id, status, estimated FROM requests "
                            "ORDER BY id").fetchall()
    finally:
        conn.close()


# ------------------------------------------------------------------ a damaged ledger file

GARBAGE = b"this is not a database, it was overwritten by a bad sync\n" * 200


def _damage(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "ledger.sqlite").write_bytes(GARBAGE)


def test_damaged_ledger_refuses_before_sending(private_home: Path, sbx: Any) -> None:
    """Python: a damaged ledger.sqlite is LedgerCorruptError naming the file; not sent."""
    _damage(private_home)
    for call in (lambda: cencori_nb.chat("hi", model=MODEL),
                 lambda: list(cencori_nb.stream("hi", model=MODEL))):
        with pytest.raises(LedgerCorruptError) as info:
            call()
        assert str(private_home / "ledger.sqlite") in str(info.value)
        assert "Move the file aside" in str(info.value)
        assert info.value.path == private_home / "ledger.sqlite"
    assert sbx.stats["requests"] == 0
    assert (private_home / "ledger.sqlite").read_bytes() == GARBAGE   # left for the user


def test_damaged_ledger_in_ask_is_one_line(private_home: Path, sbx: Any) -> None:
    """`cencori-nb ask` with a damaged ledger: exit 1, one line naming the file, no
    traceback, nothing streamed, nothing sent."""
    _damage(private_home)
    out = subprocess.run([sys.executable, "-m", "cencori_nb", "ask", "-m", MODEL, "hello"],
                         capture_output=True, text=True, timeout=120,
                         env=_child_env(private_home, sbx))
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    assert "Traceback" not in out.stderr and "DatabaseError" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(private_home / "ledger.sqlite") in lines[0]
    assert "damaged" in lines[0]
    assert sbx.stats["requests"] == 0


def test_unreadable_ledger_reads_are_ledger_errors(private_home: Path) -> None:
    """Opening a damaged file directly (reports, credits) is a LedgerError too."""
    _damage(private_home)
    with pytest.raises(LedgerCorruptError):
        default_ledger()
    with pytest.raises(LedgerError):
        wallet.balance()


# ------------------------------------------------------------------ a full disk

FULL_DISK_CHILD = """
    import json, resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit is EFBIG
    import cencori_nb
    from cencori_nb.errors import LedgerWriteError
    from cencori_nb.ledger import default_ledger

    answered, refused, messages = 0, 0, []
    for i in range({warm}):
        cencori_nb.chat(f"warm {{i}}", model="{model}", cache=False)
        answered += 1
    default_ledger().flush()
    # from here no file may grow past {limit} bytes: the ledger's WAL cannot take a commit
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    for i in range({full}):
        try:
            cencori_nb.chat(f"full {{i}}", model="{model}", cache=False)
            answered += 1
        except LedgerWriteError as exc:
            refused += 1
            messages.append(str(exc))
    default_ledger().flush()
    print(json.dumps({{"answered": answered, "refused": refused, "messages": messages}}))
"""


def test_full_disk_spills_refuses_and_replays(private_home: Path, sbx: Any) -> None:
    """RLIMIT_FSIZE in a child: the rows it could not commit go to the spill file, the next
    request is refused naming the file and the count; the next start writes them."""
    code = FULL_DISK_CHILD.format(warm=3, full=12, limit=16384, model=MODEL)
    out = _run_child(code, private_home, sbx)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    answered = result["answered"]
    assert result["refused"] >= 1 and answered + result["refused"] == 15
    first = result["messages"][0]
    assert str(private_home / "ledger.sqlite") in first and "not sent" in first
    assert str(private_home / "ledger-spill.jsonl") in first
    spill = private_home / "ledger-spill.jsonl"
    assert stat.S_IMODE(spill.stat().st_mode) == 0o600
    spilled = [json.loads(line) for line in spill.read_text().splitlines()]
    assert len(spilled) == answered - 3 >= 1       # every answer after the limit
    counted = re.search(r"could not record (\d+) request\(s\) \((.*?)\)", first)
    assert counted is not None and 1 <= int(counted.group(1)) <= len(spilled), first
    assert "disk" in counted.group(2) or "I/O" in counted.group(2), first
    # the sandbox answered exactly the requests that were not refused
    assert sbx.stats["requests"] == answered
    assert len(_ledger_rows(private_home)) == 3    # before the replay
    # the next start (another process) writes the spilled rows, once
    for _ in range(2):
        again = _run_child("from cencori_nb.ledger import default_ledger; default_ledger()",
                           private_home, sbx)
        assert again.returncode == 0, again.stderr
    rows = _ledger_rows(private_home)
    assert len(rows) == answered == sbx.stats["requests"]
    assert {r[0] for r in rows} >= {s["row"]["client_id"] for s in spilled}
    assert spill.read_bytes() == b""
    print(f"\nfull disk: sent {answered + result['refused']}, refused {result['refused']}, "
          f"sandbox answered {sbx.stats['requests']}, recorded {len(rows)} "
          f"({len(spilled)} through the spill file)")


def test_spill_replay_is_idempotent_and_debits_once(private_home: Path) -> None:
    """Spilled rows (with their wallet debit) replayed twice: one row and one debit each."""
    wallet.top_up(10)
    led = default_ledger()
    rows = [LedgerRow(f"req-{i}", "p", "cencori", "managed", client_id=f"spilled-{i}",
                      credits_charged_usd=Decimal("0.25")) for i in range(3)]
    led._spill([_Item(r.as_params(), None, 250_000_000_000) for r in rows], "disk full")
    copy = led.spill_path.read_bytes()
    with pytest.raises(LedgerWriteError, match=r"could not record 3 request\(s\)") as info:
        led.check()
    assert info.value.pending == 3 and info.value.spill_path == led.spill_path
    led.check()          # the second request finds the ledger writable: rows written, sent
    led.spill_path.write_bytes(copy)                   # a second process replays them too
    other = Ledger(led.path)
    other.close()
    assert sorted(r.client_id for r in led.rows()) == ["spilled-0", "spilled-1", "spilled-2"]
    assert wallet.balance() == Decimal("9.25")
    assert [t.client_id for t in wallet.transactions(as_frame=False)][1:] == \
        ["spilled-0", "spilled-1", "spilled-2"]


def test_a_torn_spill_line_is_skipped_not_fatal(private_home: Path) -> None:
    """A crash mid-append leaves half a line: the whole lines are written, the rest logged."""
    led = default_ledger()
    row = LedgerRow("r", "p", "openai", "byok", client_id="whole")
    led._spill([_Item(row.as_params(), None, None)], "disk full")
    with led.spill_path.open("ab") as fh:
        fh.write(b'{"v":1,"row":{"ts_ms":1,"client_')
    led.close()
    reopened = Ledger(led.path)
    assert [r.client_id for r in reopened.rows()] == ["whole"]
    reopened.close()


# ------------------------------------------------------------------ repeated provider ids

def test_a_provider_repeating_ids_keeps_every_row(sbx: Any) -> None:
    """The sandbox draws answer ids from 3 values (Ollama: 999): 30 requests, 30 rows,
    30 wallet debits."""
    sbx.id_pool = 3
    wallet.top_up(25)
    answers = [cencori_nb.chat(f"q {i}", model=MODEL, route="managed", cache=False)
               for i in range(30)]
    rows = default_ledger().rows()
    assert len(rows) == 30 == sbx.stats["requests"]
    assert len({r.request_id for r in rows}) <= 3
    assert len({r.client_id for r in rows}) == 30
    assert [r.client_id for r in rows] == [a.client_id for a in answers]
    debits = [t for t in wallet.transactions(as_frame=False) if t.kind == "usage"]
    assert len(debits) == 30 and {t.client_id for t in debits} == {a.client_id for a in answers}
    assert sum(-t.amount for t in debits) == sum(a.credits_charged_usd for a in answers)
    print(f"\nrepeated ids: sent 30, sandbox answered {sbx.stats['requests']}, "
          f"recorded {len(rows)}, distinct provider ids {len({r.request_id for r in rows})}")


# ------------------------------------------------------------------ the cache and the ledger

def _cache_entries(home: Path) -> int:
    path = home / "cache.sqlite"
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_the_cache_is_written_only_after_the_row_commits(private_home: Path,
                                                         sbx: Any) -> None:
    """While the ledger writer is held back, the answer is not in the cache file."""
    led = default_ledger()
    with led._lock:                       # the writer cannot commit while we hold this
        answer = cencori_nb.chat("cache me", model=MODEL)
        assert _cache_entries(private_home) == 0
        assert cache.pending() == 1
    led.flush()
    assert _cache_entries(private_home) == 1 and cache.pending() == 0
    assert led.has_row(answer.client_id)


def test_a_cached_but_unrecorded_answer_is_recorded_once(private_home: Path,
                                                        sbx: Any) -> None:
    """An entry whose paying request has no row (a crash, an old version): the first hit
    records that request's row (with its cost) before its own cached row; later hits
    record only themselves."""
    first = cencori_nb.chat("remember me", model=MODEL, route="managed")
    led = default_ledger()
    led.flush()
    # the crash: the row is gone, the cache entry stayed
    led.conn.execute("DELETE FROM requests WHERE client_id = ?", (first.client_id,))
    hit = cencori_nb.chat("remember me", model=MODEL, route="managed")
    again = cencori_nb.chat("remember me", model=MODEL, route="managed")
    assert hit.cached and again.cached
    rows = led.rows()
    assert [(r.client_id, r.status) for r in rows] == [
        (first.client_id, "ok"), (hit.client_id, "cached"), (again.client_id, "cached")]
    assert rows[0].credits_charged_usd == first.credits_charged_usd > 0
    assert sbx.stats["requests"] == 1
