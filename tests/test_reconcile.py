"""The wallet mirror says what it knows; reconciliation with the gateway's Metrics API;
Cencori test keys cost nothing.

All against the sandbox (a real HTTP server) serving Cencori's ``GET /api/v1/metrics`` in
the shape of cencori/cencori ``app/api/v1/metrics/route.ts``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx2
import pytest

import cencori_nb
from cencori_nb import accounting, keys, reports, wallet
from cencori_nb.cli import main as cli_main
from cencori_nb.egress import DEMO_KEYS
from cencori_nb.errors import ConfigurationError
from cencori_nb.ledger import default_ledger
from cencori_nb.sandbox.faults import FaultPicker
from cencori_nb.sandbox.server import SandboxServer
from cencori_nb.settings import update_project
from tests.magic.support import run, texts

LIVE_KEY = "csk_live_reconcile_" + "R" * 20 + "r3c0"
# What the sandbox receives in place of LIVE_KEY: a stored key never travels to a sandbox
# (issue 10), so the gateway's per-key metrics are the demo key's.
SANDBOX_KEY = DEMO_KEYS["cencori"]
TEST_KEY = "csk_test_reconcile_" + "T" * 20 + "t3s7"
HTTP = httpx2.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Any:
    yield
    HTTP.close()


@pytest.fixture
def live(sandbox_env: SandboxServer) -> SandboxServer:
    keys.set_cencori_key(LIVE_KEY)
    return sandbox_env


def _metrics(
    sbx: SandboxServer,
    period: str | None = "24h",
    key: str | None = SANDBOX_KEY,
    path: str = "/api/v1/metrics",
) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    params = {"period": period} if period else {}
    return HTTP.get(sbx.url + path, params=params, headers=headers)


# ------------------------------------------------------------------ the sandbox endpoint


def test_sandbox_metrics_has_cencoris_shape_and_rules(live: SandboxServer) -> None:
    """Fields as Cencori's MetricsResponse; Bearer only; 401 {"error"} shapes; per key;
    unknown period → 24h window but echoed; mtd starts at the UTC month."""
    empty = _metrics(live).json()
    assert set(empty) == {
        "period",
        "start_date",
        "end_date",
        "requests",
        "cost",
        "tokens",
        "latency",
        "providers",
        "models",
    }
    assert empty["requests"] == {
        "total": 0,
        "success": 0,
        "error": 0,
        "filtered": 0,
        "success_rate": 0,
    }
    assert empty["cost"] == {"total_usd": 0, "average_per_request_usd": 0}
    assert empty["latency"] == {"avg_ms": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None}
    c = cencori_nb.chat("count me", model="gpt-4o-mini", route="managed")
    body = _metrics(live).json()
    assert body["requests"]["total"] == body["requests"]["success"] == 1
    assert body["requests"]["success_rate"] == 100
    assert Decimal(str(body["cost"]["total_usd"])) == c.gateway_cost_usd.quantize(Decimal("0.0001"))
    assert body["tokens"]["prompt"] == c.input_tokens
    assert body["providers"]["openai"]["requests"] == 1
    assert body["models"]["gpt-4o-mini"]["requests"] == 1
    assert _metrics(live, path="/v1/metrics").json()["requests"]["total"] == 1
    other = _metrics(live, key="csk_live_someone_else_" + "Z" * 12).json()
    assert other["requests"]["total"] == 0  # another project's key
    r = _metrics(live, key=None)
    assert r.status_code == 401 and r.json() == {
        "error": "Missing API key. Use Authorization: Bearer <api_key>"
    }
    r = _metrics(live, key="sk-not-a-cencori-key-000000")
    assert r.status_code == 401 and r.json() == {"error": "Invalid API key"}
    odd = _metrics(live, period="fortnight").json()
    assert odd["period"] == "fortnight"
    span = datetime.fromisoformat(odd["end_date"].replace("Z", "+00:00")) - datetime.fromisoformat(
        odd["start_date"].replace("Z", "+00:00")
    )
    assert span.total_seconds() == 86_400
    mtd = _metrics(live, period="mtd").json()
    start = datetime.fromisoformat(mtd["start_date"].replace("Z", "+00:00"))
    assert (start.day, start.hour, start.minute, start.tzinfo) == (1, 0, 0, UTC)
    assert _metrics(live, period=None).json()["period"] == "24h"


# ------------------------------------------------------------------ reconcile


def test_reconcile_agrees_after_managed_requests(
    live: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Requests sent == rows recorded == gateway requests; ledger $ == gateway $ (within the
    gateway's 4-decimal rounding); the same through Python, the CLI --json and the text."""
    wallet.set_balance(25)
    for i in range(5):
        cencori_nb.chat(f"managed request {i}", model="gpt-4o", route="managed", cache=False)
    live.faults = FaultPicker({"500": 1.0}, 0)  # one failure: a row, no charge
    with pytest.raises(cencori_nb.ProviderUnavailableError):
        cencori_nb.chat("fails", model="gpt-4o", route="managed", retries=0)
    live.faults = FaultPicker({}, 0)
    result = cencori_nb.reconcile("1h")
    sandbox_spent = Decimal(live.stats["spent_usd"])
    assert result.ledger_requests == result.gateway_requests == 6
    assert result.ledger_usd == sandbox_spent == Decimal(25) - wallet.balance()
    assert result.gateway_usd == sandbox_spent.quantize(Decimal("0.0001"))
    assert result.within_rounding and result.drift_usd == result.gateway_usd - result.ledger_usd
    assert "in agreement" in str(result)

    assert cli_main(["credits", "reconcile", "--period", "1h", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"period", "ledger_usd", "gateway_usd", "drift_usd"} <= set(data)
    assert data["period"] == "1h" and Decimal(data["ledger_usd"]) == result.ledger_usd
    assert Decimal(data["drift_usd"]) == result.drift_usd
    assert cli_main(["credits", "reconcile"]) == 0
    assert "ledger:" in capsys.readouterr().out


def test_reconcile_shows_drift_from_requests_the_ledger_never_saw(live: SandboxServer) -> None:
    """Spend made with the same key outside this ledger shows up as positive drift."""
    cencori_nb.chat("recorded", model="gpt-4o", route="managed")
    r = HTTP.post(
        live.url + "/api/ai/chat",
        headers={"CENCORI_API_KEY": SANDBOX_KEY},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 400}]},
    )
    unseen = Decimal(str(r.json()["cost_usd"]))
    result = cencori_nb.reconcile("24h")
    assert result.gateway_requests == result.ledger_requests + 1
    assert not result.within_rounding and result.drift_usd > 0
    assert abs(result.drift_usd - unseen) <= Decimal("0.0001")
    assert "MORE than the ledger" in str(result)


def test_reconcile_refuses_clearly(
    sandbox_env: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match="no Cencori key"):
        cencori_nb.reconcile()
    with pytest.raises(ConfigurationError, match="1h, 24h, 7d, 30d, mtd"):
        cencori_nb.reconcile("week")
    assert cli_main(["credits", "reconcile"]) == 1
    err = capsys.readouterr().err
    assert "cencori-nb keys set cencori" in err and "Traceback" not in err
    keys.set_cencori_key(DEMO_KEYS["cencori"] + "_revoked")  # the sandbox's revoked demo key
    with pytest.raises(cencori_nb.AuthenticationError):
        cencori_nb.reconcile()


def test_magic_credits_reconcile(shell: Any, live: SandboxServer) -> None:  # noqa: F811
    cencori_nb.chat("from the notebook", model="gpt-4o-mini", route="managed")
    cap, _ = run(shell, "%cencori credits reconcile --period 24h")
    out = texts(cap)[0]
    assert "ledger:" in out and "gateway:" in out and "in agreement" in out


def test_credits_before_any_balance_says_not_tracked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["credits"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Balance not tracked yet") and "set-balance" in out
    assert "low" not in out
    assert "Credits spent this month" in out and "All spend this month incl. BYOK" in out


# ------------------------------------------------------------------ test keys


def test_test_key_requests_are_free_and_labelled_everywhere(
    sandbox_env: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A csk_test_ key: test_mode on the completion, the row, usage(), map and the CLI;
    cost 0; the wallet mirror and the gateway wallet untouched; allowed past a reached
    hard cap (it costs nothing); the gateway reports $0 too."""
    keys.set_cencori_key(TEST_KEY)
    wallet.set_balance(10)
    update_project("default", hard_cap_usd=Decimal(0))
    before = sandbox_env.balance
    c = cencori_nb.chat("free please", model="gpt-4o", route="managed", max_tokens=30)
    assert c.test_mode and c.cost_usd == 0 and c.credits_charged_usd == 0
    assert "test mode" in c.footer() and "$0.000000" in c.footer()
    frame = cencori_nb.map(["also free"], model="gpt-4o", route="managed", progress=False)
    assert bool(frame["test_mode"][0]) and frame["cost_usd"][0] == 0
    s = cencori_nb.stream("streamed for free", model="gpt-4o", route="managed")
    "".join(s)
    assert s.completion is not None and s.completion.test_mode
    assert wallet.balance() == 10 and sandbox_env.balance == before
    assert [tx.kind for tx in wallet.transactions(as_frame=False)] == ["adjustment"]
    rows = default_ledger().rows()
    assert [r.test_mode for r in rows] == [True, True, True]
    assert all(r.cost_usd == 0 and r.credits_charged_usd == 0 for r in rows)
    assert reports.usage()["test_mode"].tolist() == [True, True, True]
    assert accounting.month_cost() == 0
    assert cli_main(["usage"]) == 0
    assert "(test key, free)" in capsys.readouterr().out
    result = cencori_nb.reconcile("1h")
    assert result.gateway_usd == result.ledger_usd == 0 and result.gateway_requests == 3


def test_live_key_is_not_test_mode(live: SandboxServer) -> None:
    c = cencori_nb.chat("paid", model="gpt-4o-mini", route="managed")
    assert not c.test_mode and c.cost_usd == c.credits_charged_usd > 0
    assert "test mode" not in c.footer()
