"""The PostgreSQL ledger (issue 17), against a real throwaway server (tests/pg_cluster.py):
same migrations and views as SQLite, members, team caps held across processes, errors
that never show a password, nothing secret in any table, and the server going away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

import cencori_nb
from cencori_nb import accounting, keys, reports, router, state, wallet
from cencori_nb import ledger as ledger_mod
from cencori_nb.cli import main
from cencori_nb.errors import BudgetExceededError, ConfigurationError, LedgerError
from cencori_nb.ledger import Ledger, LedgerRow, default_ledger
from cencori_nb.ledger_postgres import PostgresLedger, parse_url
from cencori_nb.migrations import MIGRATIONS
from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.settings import current_member, update_settings
from cencori_nb.tokens import estimate_messages_tokens
from tests.ledger_rows import charged_row, noted_row

OPENAI_KEY = "sk-test-pgledger-" + "B" * 20 + "p9q8"
MODEL = "gpt-4o"


@pytest.fixture
def sbx(sandbox_env: SandboxServer) -> SandboxServer:
    keys.set("openai", OPENAI_KEY)
    return sandbox_env


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode()).fetchall()


def test_cluster_is_real_and_not_root(pg_cluster: Any, pg_url: str) -> None:
    """The test cluster is a real server, run by a non-root user, reached with a password."""
    with psycopg.connect(pg_url) as conn:
        (version,) = conn.execute("SHOW server_version_num").fetchone()  # type: ignore[misc]
        (db,) = conn.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
    assert int(version) >= 130000
    assert pg_url.endswith("/" + db)
    assert os.stat(pg_cluster.data).st_uid != 0
    assert pg_cluster.proc is not None and pg_cluster.proc.poll() is None
    bad = pg_url.replace(":pw-", ":wrong-")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad, connect_timeout=5).close()


def test_same_migrations_by_name_and_idempotent(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cencori-nb ledger migrate` brings an empty database to the same named migrations as
    the SQLite ledger, once; the tables and columns callers use are all there."""
    assert main(["ledger", "migrate", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    names = [n for n, _ in MIGRATIONS]
    assert first["migrations"] == names
    assert first["ledger"].startswith("postgresql://…@127.0.0.1:") and "pw-" not in first["ledger"]
    assert main(["ledger", "migrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied_now"] == []
    cols = {
        r[0]
        for r in _rows(
            pg_url,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests'",
        )
    }
    from cencori_nb.ledger import COLUMNS

    assert set(COLUMNS) <= cols
    tables = {
        r[0] for r in _rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert tables == {
        "_migrations",
        "requests",
        "requests_daily",
        "wallet_transactions",
        "budget_alerts",
        "budget_reservations",
        "budgets",
    }


def test_rows_wallet_and_views_match_sqlite(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rows written to PostgreSQL and to SQLite give the same usage(), spend() by
    member / project / day / month, month cost and wallet; a row is written once."""
    rows = [
        LedgerRow(
            request_id=f"r{i}",
            project=("alpha", "beta")[i % 2],
            provider="openai",
            route="byok" if i % 3 else "managed",
            model="gpt-4o-mini",
            input_tokens=10 * i,
            output_tokens=i,
            provider_cost_usd=Decimal(i) / 1000 if i % 4 else None,
            credits_charged_usd=Decimal(i) / 400,
            member=("ana@lab", "bo@lab", "cy@lab")[i % 3],
            status=("ok", "ok", "error", "cached", "interrupted")[i % 5],
            ts_ms=1_764_000_000_000 + i * 40_000_000,
        )
        for i in range(40)
    ]
    results = {}
    for backend in ("postgresql", "sqlite"):
        if backend == "sqlite":
            monkeypatch.delenv("CENCORI_NB_LEDGER_URL")
        state.reset()
        led = default_ledger()
        assert led.dialect == backend
        assert led.record(rows[0]) is True
        assert led.record(rows[0]) is False  # keyed on the client id: never twice
        wallet.top_up("100")
        for r in rows[1:]:
            led.submit(r, debit_usd=r.credits_charged_usd if r.status == "ok" else None)
        led.flush()
        out: dict[str, Any] = {}
        for by in ("member", "project", "day", "month", ["member", "project"], "week"):
            frame = reports.spend(by=by, since="2020-01-01")
            out[str(by)] = frame.astype(str).values.tolist()
        frame = reports.usage(since="2020-01-01")
        out["usage"] = frame.drop(columns=["time"]).astype(str).values.tolist()
        out["usage_bo"] = len(reports.usage(since="2020-01-01", member="bo@lab"))
        out["balance"] = wallet.balance()
        out["credits"] = wallet.credits().credits_spent_this_month
        out["rows"] = [(r.client_id, r.member, r.cost_usd) for r in led.rows(since="2020-01-01")]
        results[backend] = out
    assert results["postgresql"] == results["sqlite"]
    assert results["postgresql"]["usage_bo"] == 13
    members = [r[0] for r in results["postgresql"]["member"]]
    assert sorted(members) == ["ana@lab", "bo@lab", "cy@lab"]


def test_chat_records_member_and_caches_after_the_ledger(
    sbx: SandboxServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real chat through the sandbox lands in PostgreSQL with the member and project; the
    same prompt again is a cache hit recorded as its own row."""
    monkeypatch.setenv("CENCORI_NB_MEMBER", "ana@example.org")
    first = cencori_nb.chat("Say hi to the team ledger.", model=MODEL, max_tokens=20)
    again = cencori_nb.chat("Say hi to the team ledger.", model=MODEL, max_tokens=20)
    assert again.cached and not first.cached
    default_ledger().flush()  # rows are written by the background writer
    got = _rows(pg_url, "SELECT client_id, member, project, status FROM requests ORDER BY id")
    assert [(g[1], g[2], g[3]) for g in got] == [
        ("ana@example.org", "default", "ok"),
        ("ana@example.org", "default", "cached"),
    ]
    assert got[0][0] == first.client_id
    assert list(reports.usage()["member"]) == ["ana@example.org"] * 2


def test_a_dead_processs_journal_is_reclaimed_into_postgresql(pg_url: str) -> None:
    """The PostgreSQL ledger shares the local in-flight journal: a dead process's settled
    row is recorded as it was queued (its tokens, not the estimate), and a damaged line (a
    word where a count goes, which PostgreSQL refuses) is skipped instead of failing the
    reclaim, which would keep the ledger from opening at every start."""
    led = default_ledger()
    assert isinstance(led, PostgresLedger)

    def line(kind: int, cid: str, **change: object) -> str:
        row = LedgerRow(
            "chatcmpl-" + cid,
            "default",
            "openai",
            "byok",
            model="gpt-4o-mini",
            input_tokens=12,
            output_tokens=34,
            cost_usd=Decimal("0.000021"),
            client_id=cid,
        )
        values = list(row.as_params())
        for name, value in change.items():
            values[ledger_mod.COLUMNS.index(name)] = value
        return json.dumps([kind, *([None] if kind == 3 else []), *values]) + "\n"

    led.inflight_dir.mkdir(exist_ok=True)
    (led.inflight_dir / "999999-0badf11e.jsonl").write_text(
        line(2, "pg-settled", status="interrupted", output_tokens=0, estimated=True)
        + line(3, "pg-settled")
        + line(3, "pg-word", input_tokens="twelve")
    )
    state.reset("ledger")  # the next start reclaims what the dead process left
    default_ledger().flush()
    got = _rows(pg_url, "SELECT client_id, status, input_tokens, output_tokens FROM requests")
    assert got == [("pg-settled", "ok", 12, 34)]
    assert list(led.inflight_dir.glob("*.jsonl")) == []


def test_member_names_that_are_keys_are_refused(
    sbx: SandboxServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key given as the member name never reaches the shared server."""
    for bad in (OPENAI_KEY, "sk-proj-" + "Q" * 40, "x" * 300):
        monkeypatch.setenv("CENCORI_NB_MEMBER", bad)
        with pytest.raises(ConfigurationError, match="member name"):
            cencori_nb.chat("hello", model=MODEL, max_tokens=5)
    monkeypatch.delenv("CENCORI_NB_MEMBER")
    dump = " ".join(str(r) for r in _rows(pg_url, "SELECT * FROM requests"))
    assert "sk-" not in dump


# --------------------------------------------------------------------------- secrets


def test_no_key_or_password_in_any_table(
    sbx: SandboxServer, pg_url: str, canary: str, pg_cluster: Any
) -> None:
    """Keys stay in the local store: after requests (answered, failed, cached), a top-up
    and a team budget, no table of the server holds a key, the canary, or the password."""
    keys.set("openai", canary)  # the key the requests below are made with
    update_settings(byok_policy="percent", byok_fee_pct=Decimal(5))
    wallet.top_up("50")  # above the low-balance line: no LowBalanceWarning to filter
    accounting.set_team_budget(project="default", hard_cap_usd=Decimal(50))
    cencori_nb.chat("one", model=MODEL, max_tokens=10)
    cencori_nb.chat("one", model=MODEL, max_tokens=10)
    cencori_nb.chat("two", model="gpt-4o-mini", max_tokens=10)
    with (
        pytest.warns(router.UnknownModelWarning),
        pytest.raises(Exception),  # noqa: B017 - any refusal: the point is what is stored
    ):
        cencori_nb.chat("three", model="no-such-model-xyz", provider="openai", max_tokens=5)
    default_ledger().flush()
    tables = [
        r[0] for r in _rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    ]
    assert len(tables) == 7
    dump = ""
    for table in tables:
        dump += "\n".join(r[0] for r in _rows(pg_url, f'SELECT t::text FROM "{table}" t'))  # noqa: S608
    assert _rows(pg_url, "SELECT COUNT(*) FROM requests")[0][0] >= 3
    password = pg_url.split(":")[2].split("@")[0]
    for secret in (canary, OPENAI_KEY, password, canary[-12:], OPENAI_KEY[-12:]):
        assert secret not in dump


@pytest.mark.parametrize(
    "case",
    ["scheme", "password", "database", "port", "version", "garbage"],
)
def test_connection_errors_are_one_line_and_never_show_the_password(
    case: str, pg_cluster: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch, sbx: SandboxServer
) -> None:
    """Wrong URL, bad credentials, missing database, nothing listening, an old server:
    each a one-line error naming the problem; the password is in no message, hint,
    traceback or repr; no request is sent."""
    import socket

    secret = "S3cret-" + "pw" * 8
    good = parse_url(pg_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    url, want = {
        "scheme": (f"mysql://u:{secret}@h/db", "not a PostgreSQL URL"),
        "password": (pg_url.replace(pg_url.split(":")[2].split("@")[0], secret), "credentials"),
        "database": (pg_url.rsplit("/", 1)[0] + "/nope_db", "does not exist"),
        "port": (f"postgresql://cnb_admin:{secret}@127.0.0.1:{free_port}/x", "cannot be reached"),
        "version": (pg_url, "needs 99 or newer"),
        "garbage": (f"postgresql://u:{secret}@[::1/db", "cannot be read as a URL"),
    }[case]
    if case == "version":
        monkeypatch.setattr("cencori_nb.ledger_postgres.MIN_SERVER_VERSION", 990000)
        secret = pg_url.split(":")[2].split("@")[0]
    monkeypatch.setenv("CENCORI_NB_LEDGER_URL", url)
    state.reset()
    before = sum(sbx.stats["routes"].values())
    if case == "port":
        # nothing listening: rows would wait on disk, so a budgeted request is refused
        accounting._team_cache.clear()
        with pytest.raises(LedgerError) as info:
            accounting.team_budgets()
    else:
        with pytest.raises((LedgerError, ConfigurationError)) as info:
            cencori_nb.chat("hello", model=MODEL, max_tokens=5)
    exc = info.value
    text = " ".join(
        [str(exc), exc.message, exc.hint or "", repr(exc), *traceback.format_exception(exc)]
    )
    assert want in exc.message, exc.message
    assert "\n" not in exc.message
    assert secret not in text
    assert sum(sbx.stats["routes"].values()) == before
    assert good.secret not in repr(good) and "…@127.0.0.1" in repr(good)


def test_url_file_must_be_private(
    pg_url: str, private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`cencori-nb ledger use -` reads the URL from stdin and saves it 0600; a saved URL
    that others can read is refused; `ledger use sqlite` goes back."""
    import io

    monkeypatch.delenv("CENCORI_NB_LEDGER_URL")
    monkeypatch.setattr("sys.stdin", io.StringIO(pg_url + "\n"))
    assert main(["ledger", "use", "-"]) == 0
    out = capsys.readouterr().out
    password = pg_url.split(":")[2].split("@")[0]
    assert "team ledger postgresql://…@127.0.0.1" in out and password not in out
    saved = private_home / "ledger_url"
    assert saved.stat().st_mode & 0o777 == 0o600
    state.reset()
    assert isinstance(default_ledger(), PostgresLedger)
    assert main(["ledger", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["backend"] == "postgresql" and status["migrations_missing"] == []
    os.chmod(saved, 0o644)
    state.reset()
    with pytest.raises(ConfigurationError, match="can be read by other users"):
        default_ledger()
    assert main(["ledger", "use", "sqlite"]) == 0
    state.reset()
    assert type(default_ledger()) is Ledger


# --------------------------------------------------------------------------- team caps

_WORKER = r"""
import json, os, sys, time
from decimal import Decimal
from pathlib import Path
import cencori_nb
from cencori_nb import keys
from cencori_nb.settings import update_settings
tag, n, barrier = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
keys.set("openai", sys.argv[6])
update_settings(byok_policy="percent", byok_fee_pct=Decimal(10))
(barrier / f"ready-{tag}").touch()
while not (barrier / "go").exists():
    time.sleep(0.005)
prompts = [f"Process {tag} request {i}: say something about the number {i}." for i in range(n)]
t0 = time.perf_counter()
out = cencori_nb.map(prompts, model=sys.argv[4], max_tokens=int(sys.argv[5]), concurrency=8,
                     cache=False, progress=False, temperature=0.5)
errors = [e for e in out["error"] if isinstance(e, str)]
print(json.dumps({"ok": int(out["error"].isna().sum()), "errors": errors[:3],
                  "refused": sum("BudgetExceededError" in e for e in errors),
                  "n_errors": len(errors), "seconds": time.perf_counter() - t0,
                  "cost": str(sum(c for c in out["cost_usd"] if c is not None))}))
"""


def run_team(
    sandbox_url: str,
    ledger_url: str,
    workdir: Path,
    *,
    processes: int,
    requests: int,
    cap: Decimal,
    max_tokens: int = 60,
) -> dict[str, Any]:
    """``processes`` workers, each its own home (another machine, as far as local files
    go) and member, ``map(concurrency=8)`` over ``requests`` prompts, all recording into
    one PostgreSQL ledger under one team hard cap on the project. Returns the figures."""
    led = default_ledger()
    assert led.is_shared
    update_settings(byok_policy="percent", byok_fee_pct=Decimal(10))  # as the workers: a
    wallet.top_up("1000")  # BYOK fee, so every answered request debits the wallet
    accounting.set_team_budget(project="default", hard_cap_usd=cap)
    barrier = workdir / "barrier"
    barrier.mkdir()
    procs = []
    for i in range(processes):
        home = workdir / f"home-{i}"
        env = {
            **os.environ,
            "CENCORI_NB_HOME": str(home),
            "CENCORI_NB_MEMBER": f"member-{i}@host-{i % 3}",
            "CENCORI_NB_LEDGER_URL": ledger_url,
            "CENCORI_NB_SANDBOX": sandbox_url,
        }
        argv = [
            sys.executable,
            "-c",
            _WORKER,
            str(i),
            str(requests),
            str(barrier),
            MODEL,
            str(max_tokens),
            OPENAI_KEY,
        ]
        procs.append(
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    deadline = time.monotonic() + 300
    while not all((barrier / f"ready-{i}").exists() for i in range(processes)):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    (barrier / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    led.flush()
    spent = led.month_cost("default")
    prompt = "Process 0 request 100: say something about the number 100."
    bound, _, _ = accounting.estimate_for(
        "openai", MODEL, "byok", estimate_messages_tokens([prompt]), max_tokens
    )
    assert bound is not None
    (ok_rows,) = led.query("SELECT COUNT(*) FROM requests WHERE status = 'ok'")[0]
    (charged,) = led.query(
        "SELECT COALESCE(SUM(credits_charged_pusd), 0) FROM requests WHERE status = 'ok'"
    )[0]
    (debits, debit_rows) = led.query(
        "SELECT COALESCE(-SUM(amount_pusd), 0), COUNT(*) FROM wallet_transactions "
        "WHERE kind = 'usage'"
    )[0]
    members = led.query("SELECT COUNT(DISTINCT member) FROM requests")[0][0]
    return {
        "results": results,
        "answered": sum(r["ok"] for r in results),
        "refused": sum(r["refused"] for r in results),
        "ok_rows": int(ok_rows),
        "spent": spent,
        "cap": cap,
        "bound": bound,
        "overshoot": max(spent - cap, Decimal(0)),
        "charged_pusd": int(charged),
        "debited_pusd": int(debits),
        "debit_rows": int(debit_rows),
        "balance": wallet.balance(),
        "members": int(members),
        "held": led.query("SELECT COUNT(*) FROM budget_reservations")[0][0],
        "seconds": max(r["seconds"] for r in results),
    }


def test_team_cap_holds_across_processes(
    sbx: SandboxServer, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 processes (own homes, own members) × concurrency 8 × 30 requests, one PostgreSQL
    ledger, one team hard cap: rows recorded = requests answered, overshoot within one
    reservation, the wallet mirror equals the ledger, nothing left reserved.
    (benchmarks/team_ledger.py runs the full 8 × 8 × 200.)"""
    fig = run_team(sbx.url, pg_url, tmp_path, processes=4, requests=30, cap=Decimal("0.03"))
    with capsys.disabled():
        print(
            f"\n[team] cap ${fig['cap']} spent ${fig['spent']} overshoot ${fig['overshoot']} "
            f"bound ${fig['bound']} answered {fig['answered']} refused {fig['refused']}"
        )
    why = str(fig)
    assert fig["answered"] == fig["ok_rows"], why
    assert fig["overshoot"] <= fig["bound"], why
    assert fig["spent"] > fig["cap"] - fig["bound"], why  # the cap was used, not refused early
    assert fig["refused"] > 0, why
    assert fig["debited_pusd"] == fig["charged_pusd"] and fig["debit_rows"] == fig["ok_rows"]
    assert fig["balance"] == Decimal(1000) - Decimal(fig["charged_pusd"]) / 10**12, why
    assert fig["members"] == 4 and fig["held"] == 0, why


def test_member_cap_refuses_only_that_member(
    sbx: SandboxServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's team cap stops that member (in every project), not the others; the
    refusal names the member and how to change the cap."""
    keys.set("openai", OPENAI_KEY, project="other")
    monkeypatch.setenv("CENCORI_NB_MEMBER", "ana@lab")
    cencori_nb.chat("first", model=MODEL, max_tokens=10)
    accounting.set_team_budget(member="ana@lab", hard_cap_usd=Decimal("0.0001"))
    with pytest.raises(BudgetExceededError) as info:
        cencori_nb.chat("second", model=MODEL, max_tokens=10, project="other")
    assert "Member 'ana@lab'" in info.value.message
    assert "ledger budget --member ana@lab" in (info.value.hint or "")
    monkeypatch.setenv("CENCORI_NB_MEMBER", "bo@lab")
    cencori_nb.chat("third", model=MODEL, max_tokens=10, project="other")
    assert default_ledger().query("SELECT COUNT(*) FROM budget_reservations")[0][0] == 0


def test_team_soft_budget_warns_once_per_threshold_for_everyone(
    sbx: SandboxServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A team soft budget on the project warns (never refuses) once per threshold and month,
    remembered in the shared ledger: a second member crossing no new threshold is not
    warned again."""
    accounting.set_team_budget(project="default", soft_usd=Decimal("0.0001"))
    monkeypatch.setenv("CENCORI_NB_MEMBER", "ana@lab")
    cencori_nb.chat("one", model=MODEL, max_tokens=10)
    default_ledger().flush()
    with pytest.warns(accounting.BudgetWarning, match="the team's project") as seen:
        cencori_nb.chat("two", model=MODEL, max_tokens=10)
    assert {str(w.message).split("%")[0][-3:] for w in seen} == {" 50", " 80", "100"}
    monkeypatch.setenv("CENCORI_NB_MEMBER", "bo@lab")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", accounting.BudgetWarning)
        cencori_nb.chat("three", model=MODEL, max_tokens=10)
    alerts = _rows(pg_url, "SELECT project, threshold FROM budget_alerts ORDER BY threshold")
    assert alerts == [("team-project:default", t) for t in (50, 80, 100)]


# --------------------------------------------------------------------------- server away


def test_server_killed_mid_run_loses_nothing_and_writes_nothing_twice(
    sbx: SandboxServer, pg_url: str, pg_cluster: Any
) -> None:
    """No hard cap: the server is killed (SIGQUIT, like a crash) between requests; the
    requests go on, their rows wait in the local spill file, and once it is back they are
    written exactly once (with their wallet debits). A process that starts while it is away
    (a soft team budget set: a warning never refuses) does the same. Under a team hard
    cap, a request while it is away is refused with a one-line message, nothing sent."""
    update_settings(byok_policy="percent", byok_fee_pct=Decimal(10))
    wallet.top_up("10")
    accounting.set_team_budget(member=current_member(), soft_usd=Decimal(5))
    led = default_ledger()
    assert isinstance(led, PostgresLedger)
    sent: list[str] = []
    for i in range(5):
        sent.append(cencori_nb.chat(f"before {i}", model=MODEL, max_tokens=10).client_id)
    led.flush()
    assert led.count() == 5
    pg_cluster.stop(mode="immediate")
    try:
        for i in range(6):
            sent.append(cencori_nb.chat(f"during {i}", model=MODEL, max_tokens=10).client_id)
        led.flush()
        assert led.waiting == 6
        assert len(led.spill_path.read_text().splitlines()) == 6
        # a budget check needs the server: the last-read budgets say none applies here, but
        # reading usage does need it, and says so in one line
        with pytest.raises(LedgerError, match="cannot be reached"):
            reports.usage()
        state.reset()  # a new process (a restarted kernel) while it is away
        for i in range(2):
            sent.append(cencori_nb.chat(f"restarted {i}", model=MODEL, max_tokens=10).client_id)
        led = default_ledger()
        assert isinstance(led, PostgresLedger)
        led.flush()
        assert len(led.spill_path.read_text().splitlines()) == 8
    finally:
        pg_cluster.start()
    assert led.retry() is True
    sent.append(cencori_nb.chat("after", model=MODEL, max_tokens=10).client_id)
    led.flush()
    got = [r[0] for r in led.query("SELECT client_id FROM requests WHERE status = 'ok'")]
    assert sorted(got) == sorted(sent) and len(got) == 14
    (debits,) = led.query("SELECT COUNT(*) FROM wallet_transactions WHERE kind = 'usage'")[0]
    assert debits == 14
    assert led.waiting == 0 and led.spill_path.stat().st_size == 0
    assert led.retry() is True  # again: nothing twice
    assert led.count() == 14

    # under a hard cap, nothing is sent while the server is away
    accounting.set_team_budget(project="default", hard_cap_usd=Decimal(100))
    before = sum(sbx.stats["routes"].values())
    pg_cluster.stop(mode="immediate")
    try:
        with pytest.raises(LedgerError) as info:
            cencori_nb.chat("capped", model=MODEL, max_tokens=10)
        assert "cannot be reached" in info.value.message
        assert "\n" not in info.value.message
        assert sum(sbx.stats["routes"].values()) == before
    finally:
        pg_cluster.start()
    cencori_nb.chat("capped, back", model=MODEL, max_tokens=10)
    assert led.count() == 15


# --------------------------------------------------------------------------- unstorable text


def test_a_nul_in_a_providers_text_is_stored_as_a_replacement_character_with_its_debit(
    pg_url: str,
) -> None:
    """PostgreSQL text cannot hold a NUL (psycopg refuses the value with DataError), and a
    provider's id or model name may hold one (SQLite stores it as it is). On every path
    the row is stored with U+FFFD in its place, and its wallet debit with it: a row the
    live writer commits, a row left in the spill file (written while the server was away,
    replayed at the next start) and a dead process's settled journal line. Before, the
    live row was spilled with its whole batch (the next request refused), and the spill
    replay skipped it as unreadable: the row and its debit were gone; the settled line
    fell back to the estimate (1,000 tokens instead of 12 + 34, no charge)."""
    wallet.set_balance(10)
    led = default_ledger()
    assert isinstance(led, PostgresLedger)
    with led._lock:  # one batch: the NUL row must not take the row after it down with it
        led.submit(
            charged_row("live", "chatcmpl-\x00live", model="gpt-4o\x00"), debit_usd=Decimal("0.25")
        )
        led.submit(charged_row("next", "chatcmpl-next", model="gpt-4o"), debit_usd=Decimal("0.25"))
    led.flush()
    led.check()  # nothing waits: the next request may go
    assert led.waiting == 0

    spilled = ledger_mod._Item(
        charged_row("spill", "chatcmpl-\x00spill", model="m").as_params(), None, 0
    )
    spilled.debit_pusd = ledger_mod.to_pusd(Decimal("0.25"))
    led.spill_path.write_text(json.dumps(spilled.to_json()) + "\n")
    settled = charged_row("journal", "chatcmpl-\x00journal", model="m")
    noted = noted_row("journal", "managed")
    led.inflight_dir.mkdir(exist_ok=True)
    (led.inflight_dir / "999999-00000000.jsonl").write_text(
        json.dumps([2, *noted.as_params()])
        + "\n"
        + json.dumps([3, spilled.debit_pusd, *settled.as_params()])
        + "\n"
    )
    state.reset("ledger", "wallet")  # the next start replays the spill file and the journal
    default_ledger().flush()
    got = _rows(
        pg_url,
        "SELECT client_id, request_id, status, input_tokens, credits_charged_pusd "
        "FROM requests ORDER BY client_id",
    )
    pusd = 250_000_000_000
    assert got == [
        ("journal", "chatcmpl-\ufffdjournal", "ok", 12, pusd),
        ("live", "chatcmpl-\ufffdlive", "ok", 12, pusd),
        ("next", "chatcmpl-next", "ok", 12, pusd),
        ("spill", "chatcmpl-\ufffdspill", "ok", 12, pusd),
    ]
    assert _rows(pg_url, "SELECT model FROM requests WHERE client_id = 'live'") == [
        ("gpt-4o\ufffd",)
    ]
    debits = _rows(
        pg_url,
        "SELECT client_id, amount_pusd, request_id FROM wallet_transactions "
        "WHERE kind = 'usage' ORDER BY client_id",
    )
    assert [(c, a) for c, a, _ in debits] == [(c, -pusd) for c, *_ in got]
    assert debits[1][2] == "chatcmpl-\ufffdlive"
    assert wallet.balance() == Decimal(9)
    assert led.spill_path.read_text() == ""
    assert list(led.inflight_dir.glob("*.jsonl")) == []


def _send_a_row_the_server_refuses(home: str) -> None:
    """In a fresh process: note a request, queue its row with a count past 64 bits (a
    hostile endpoint's answer) in one batch with a good row, let the writer try them."""
    os.environ["CENCORI_NB_HOME"] = home
    led = default_ledger()
    led.begin(noted_row("huge-1", "byok"))
    huge = LedgerRow("chatcmpl-1", "default", "openai", "byok", client_id="huge-1")
    huge.input_tokens = 2**70
    with led._lock:  # one batch: the refused row must not take the good one down with it
        led.submit(huge)
        led.submit(LedgerRow("chatcmpl-2", "default", "openai", "byok", client_id="fine-2"))
    led.flush()
    led.check()  # the refused row is the row's fault: nothing waits, requests go on
    assert led.has_row("fine-2") and led.dropped == 1
    # in its place, at once, the estimate noted before the request was sent
    assert [r.estimated for r in led.rows() if r.client_id == "huge-1"] == [True]


def test_a_row_the_server_refuses_is_recorded_as_its_estimate(
    pg_url: str, private_home: Path
) -> None:
    """A count past 64 bits is refused by the server (DataError: bigint out of range), not
    by a check. Like a failed CHECK it is the row's fault: the writer drops that row alone
    (logged) and writes the estimate noted before the request was sent in its place; the
    next start adds nothing. Before, the server's refusal spilled the whole batch (the
    next request refused) and the spill replay skipped the row as unreadable, its journal
    line already resolved: the request was recorded nowhere."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_send_a_row_the_server_refuses, args=(str(private_home),))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    rows = sorted(default_ledger().rows(), key=lambda r: r.client_id)
    assert [(r.client_id, r.status, r.estimated, r.input_tokens) for r in rows] == [
        ("fine-2", "ok", False, 0),
        ("huge-1", "interrupted", True, 1000),
    ]


def test_rows_spilled_while_the_server_was_away_that_it_refuses_are_recorded_as_estimates(
    pg_url: str, pg_cluster: Any
) -> None:
    """While the server is away every row waits in the spill file, so one the server will
    refuse (a status its CHECK rejects, a count past 64 bits) is not dropped alone by the
    writer but replayed later, its journal note already resolved. Once the server is
    back, each refused row's request is recorded as the estimate noted before it was sent
    (carried in its spill line), with its debit; the good row as it is. Before, both were
    skipped at the replay: requests paid for and recorded nowhere."""
    wallet.set_balance(10)
    led = default_ledger()
    assert isinstance(led, PostgresLedger)
    pg_cluster.stop(mode="immediate")
    try:
        for cid, change in (
            ("bad-check", {"status": "weird"}),
            ("bad-huge", {"output_tokens": 2**70}),
            ("good", {}),
        ):
            led.begin(noted_row(cid, "managed"))
            row = charged_row(cid, "chatcmpl-" + cid, model="gpt-4o-mini")
            for name, value in change.items():
                setattr(row, name, value)
            led.submit(row, debit_usd=Decimal("0.25"))
        led.flush()
        assert led.waiting == 3
    finally:
        pg_cluster.start()
    assert led.retry() is True
    got = _rows(
        pg_url,
        "SELECT client_id, status, estimated, input_tokens, credits_charged_pusd "
        "FROM requests ORDER BY client_id",
    )
    assert [g[:4] for g in got] == [
        ("bad-check", "interrupted", 1, 1000),
        ("bad-huge", "interrupted", 1, 1000),
        ("good", "ok", 0, 12),
    ]
    assert got[0][4] > 0 and got[2][4] == 250_000_000_000
    debits = _rows(
        pg_url,
        "SELECT client_id, -amount_pusd FROM wallet_transactions WHERE kind = 'usage' "
        "ORDER BY client_id",
    )
    assert debits == [(g[0], g[4]) for g in got]
    assert led.spill_path.read_text() == ""


def test_a_start_while_the_server_is_away_reclaims_dead_processes_requests_once_it_is_back(
    pg_url: str, pg_cluster: Any
) -> None:
    """A process died with a request in flight (its settled row in the journal, a charge
    and a debit); the next start finds the server away, so it cannot record it then. Once
    the server answers (the next request's retry), the dead process's request is recorded
    with its debit, before that request is sent. Before, only the spill file was written
    then: the dead process's request waited for another start, uncounted by team caps and
    budgets for as long as this process ran."""
    wallet.set_balance(10)
    led = default_ledger()
    settled = charged_row("dead-1", "chatcmpl-dead-1", model="gpt-4o-mini")
    led.inflight_dir.mkdir(exist_ok=True)
    (led.inflight_dir / "999999-0dead0ff.jsonl").write_text(
        json.dumps([3, 250_000_000_000, *settled.as_params()]) + "\n"
    )
    pg_cluster.stop(mode="immediate")
    try:
        state.reset("ledger", "wallet")
        led = default_ledger()  # opens while the server is away: nothing reclaimed yet
        assert isinstance(led, PostgresLedger) and led._away
        assert list(led.inflight_dir.glob("*.jsonl")) != []
    finally:
        pg_cluster.start()
    assert led.retry() is True
    assert _rows(pg_url, "SELECT client_id, status, output_tokens FROM requests") == [
        ("dead-1", "ok", 34)
    ]
    assert _rows(
        pg_url, "SELECT client_id, -amount_pusd FROM wallet_transactions WHERE kind = 'usage'"
    ) == [("dead-1", 250_000_000_000)]
    assert list(led.inflight_dir.glob("*.jsonl")) == []
