"""``cencori-nb usage`` and ``cencori-nb credits``: the ledger and the wallet from a shell.

::

    cencori-nb usage [--since 7d] [--project P] [--member M] [--json | --csv]
    cencori-nb credits [--json]
    cencori-nb credits top-up AMOUNT [--note TEXT]
    cencori-nb credits set-balance AMOUNT
    cencori-nb credits transactions [--json]
    cencori-nb credits budget [--project P] [--soft USD|none] [--hard-cap USD|none]
    cencori-nb credits reconcile [--period 1h|24h|7d|30d|mtd] [--project P] [--json]

JSON and CSV keep money exact (decimal strings). pandas is not loaded: these read the
ledger directly, so the commands start fast.

Two figures are kept apart everywhere: **credits spent** (what the Cencori wallet was
charged) and **all spend including BYOK** (``cost_usd``: credits plus the provider price of
BYOK requests, paid on your own provider accounts). Budgets count the second.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = ["register"]

USAGE_FIELDS = (
    "time",
    "request_id",
    "project",
    "provider",
    "model_requested",
    "model",
    "route",
    "credential_source",
    "status",
    "error_code",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "thinking_tokens",
    "provider_cost_usd",
    "credits_charged_usd",
    "cost_usd",
    "estimated",
    "price_version",
    "latency_ms",
    "ttft_ms",
    "test_mode",
    "client_id",
    "gateway_cache",
    "model_original",
    "member",
    "image_tokens",
    # new columns go last: a script reading the CSV by position keeps working
    "cache_write_1h_tokens",
)


def register(subparsers: Any) -> None:
    """Add the ``usage`` and ``credits`` commands."""
    usage = subparsers.add_parser(
        "usage",
        help="requests recorded in the ledger (tokens, cost, route)",
        description="Show the requests recorded in the usage ledger.",
    )
    usage.add_argument(
        "--since",
        default="7d",
        help='how far back: "7d", "24h", "30m", "2w" or a date (default 7d)',
    )
    usage.add_argument("--project", help="only this project")
    usage.add_argument("--member", help="only this member's requests (default: everyone's)")
    fmt = usage.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object: rows and totals")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    usage.set_defaults(handler=_usage)

    credits = subparsers.add_parser(
        "credits",
        help="the Cencori credit wallet (local mirror)",
        description="Show or update the local mirror of your Cencori credit wallet.",
    )
    credits.add_argument("--json", action="store_true", help="print the summary as JSON")
    credits.set_defaults(handler=_credits_show)
    sub = credits.add_subparsers(dest="credits_command", metavar="ACTION")
    top = sub.add_parser("top-up", help="record credits bought on cencori.com")
    top.add_argument("amount", metavar="AMOUNT", help="USD, e.g. 25 or 10.50")
    top.add_argument("--note", help="a note stored with the transaction")
    top.add_argument("--json", action="store_true")
    top.set_defaults(handler=_top_up)
    setb = sub.add_parser("set-balance", help="make the mirror match the dashboard")
    setb.add_argument("amount", metavar="AMOUNT", help="USD, e.g. 42.10")
    setb.add_argument("--json", action="store_true")
    setb.set_defaults(handler=_set_balance)
    txs = sub.add_parser("transactions", help="every wallet movement")
    txs.add_argument("--json", action="store_true")
    txs.set_defaults(handler=_transactions)
    budget = sub.add_parser("budget", help="a project's monthly soft budget and hard cap")
    budget.add_argument("--project", help="the project (default: the current one)")
    budget.add_argument(
        "--soft", metavar="USD", help="soft budget (warnings at 50/80/100%%); 'none' removes it"
    )
    budget.add_argument(
        "--hard-cap", metavar="USD", help="refuse requests past this; 'none' removes it"
    )
    budget.add_argument("--json", action="store_true")
    budget.set_defaults(handler=_budget)
    rec = sub.add_parser(
        "reconcile",
        help="the ledger's managed spend vs the gateway's",
        description="Compare the credits this ledger recorded with what "
        "Cencori's Metrics API reports for the same period.",
    )
    rec.add_argument(
        "--period",
        choices=("1h", "24h", "7d", "30d", "mtd"),
        default="24h",
        help="the gateway's period (default 24h)",
    )
    rec.add_argument("--project", help="the project (default: the current one)")
    rec.add_argument(
        "--json",
        action="store_true",
        help="period, ledger_usd, gateway_usd, drift_usd (decimal strings)",
    )
    rec.set_defaults(handler=_reconcile)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _usage(args: argparse.Namespace) -> int:
    from ..ledger import BILLED_STATUSES, default_ledger, parse_since

    parse_since(args.since)  # a clear error before touching the ledger
    rows = default_ledger().rows(since=args.since, project=args.project, member=args.member)
    records = []
    for r in rows:
        rec: dict[str, Any] = {f: getattr(r, f, None) for f in USAGE_FIELDS if f != "time"}
        rec = {"time": _iso(r.ts_ms), **rec}
        rec["provider_cost_usd"] = _money(r.provider_cost_usd)
        rec["credits_charged_usd"] = _money(r.credits_charged_usd)
        rec["cost_usd"] = _money(r.cost_usd)
        records.append(rec)
    ok = [r for r in rows if r.status in BILLED_STATUSES]  # answered, or stopped part way
    totals = {
        "requests": len(rows),
        "errors": sum(r.status == "error" for r in rows),
        "cached": sum(r.status == "cached" for r in rows),
        "interrupted": sum(r.status == "interrupted" for r in rows),
        "input_tokens": sum(r.input_tokens for r in ok),
        "output_tokens": sum(r.output_tokens for r in ok),
        "provider_cost_usd": str(sum((r.provider_cost_usd or Decimal(0) for r in ok), Decimal(0))),
        "credits_charged_usd": str(sum((r.credits_charged_usd for r in ok), Decimal(0))),
        # the stored cost of every row (the one rule); rows of unknown cost are counted
        "cost_usd": str(sum((r.cost_usd or Decimal(0) for r in rows), Decimal(0))),
        "cost_unknown_rows": sum(r.cost_usd is None for r in rows),
        # billed rows whose tokens (so cost) are estimates: a cut or stopped stream
        "cost_estimated_rows": sum(bool(r.estimated) for r in ok),
        "test_mode_rows": sum(bool(r.test_mode) for r in rows),
        "by_member": _by_member(rows),
    }
    if args.json:
        json.dump(
            {"since": args.since, "project": args.project, "rows": records, "totals": totals},
            sys.stdout,
            indent=2,
        )
        print()
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(USAGE_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    else:
        _print_usage_table(rows, totals, args.since)
    return 0


def _by_member(rows: list[Any]) -> dict[str, dict[str, Any]]:
    """Requests and all spend incl. BYOK per member (who made them), largest first."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = out.setdefault(r.member, {"requests": 0, "cost_usd": Decimal(0)})
        m["requests"] += 1
        m["cost_usd"] += r.cost_usd or Decimal(0)
    ranked = sorted(out.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))
    return {k: {"requests": v["requests"], "cost_usd": str(v["cost_usd"])} for k, v in ranked}


def _print_usage_table(rows: list[Any], totals: dict[str, Any], since: str) -> None:
    if not rows:
        print(f"No requests recorded since {since}.")
        return
    header = (
        "time (UTC)",
        "member",
        "project",
        "provider",
        "model",
        "route",
        "status",
        "in",
        "out",
        "provider $",
        "credits $",
        "cost $",
    )
    table = [header]
    for r in rows:
        provider = (
            "?"
            if r.provider_cost_usd is None and r.status == "ok"
            else f"{r.provider_cost_usd or 0:.6f}"
        )
        cost = "?" if r.cost_usd is None else f"{r.cost_usd:.6f}"
        status = r.status if r.status != "error" else f"error:{r.error_code or '?'}"
        route = r.route + (" (test key, free)" if r.test_mode else "")
        table.append(
            (
                _iso(r.ts_ms)[:19].replace("T", " "),
                r.member,
                r.project,
                r.provider,
                (r.model or r.model_requested or "") + ("*" if r.estimated else ""),
                route,
                status,
                str(r.input_tokens),
                str(r.output_tokens),
                provider,
                f"{r.credits_charged_usd:.6f}",
                cost,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {7, 8, 9, 10, 11}
    for row in table:
        print(
            "  ".join(
                cell.rjust(w) if i in numeric else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    stopped = f", {totals['interrupted']} interrupted" if totals["interrupted"] else ""
    print(
        f"\n{totals['requests']} requests ({totals['errors']} failed, {totals['cached']} "
        f"cached{stopped}) · {totals['input_tokens']:,} in / {totals['output_tokens']:,} out · "
        f"all spend incl. BYOK ${Decimal(totals['cost_usd']):.6f} · credits spent "
        f"${Decimal(totals['credits_charged_usd']):.6f} · provider price "
        f"${Decimal(totals['provider_cost_usd']):.6f}"
        + (
            f" · {totals['cost_unknown_rows']} of unknown cost"
            if totals["cost_unknown_rows"]
            else ""
        )
        + (
            f" · {totals['cost_estimated_rows']} of estimated cost"
            if totals["cost_estimated_rows"]
            else ""
        )
        + ("  (* estimated)" if any(r.estimated for r in rows) else "")
    )
    members = totals["by_member"]
    if len(members) > 1:
        print("\nBy member (all spend incl. BYOK):")
        width = max(len(m) for m in members)
        for name, m in members.items():
            print(
                f"  {name.ljust(width)}  {m['requests']:>6} requests  ${Decimal(m['cost_usd']):.6f}"
            )


def _credits_show(args: argparse.Namespace) -> int:
    from .. import wallet

    summary = wallet.credits()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary)
    return 0


def _tx_out(tx: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(tx.to_dict(), indent=2))
    else:
        print(f"{tx.kind}: {tx.amount:+} USD · balance ${tx.balance_before} → ${tx.balance_after}")


def _top_up(args: argparse.Namespace) -> int:
    from .. import wallet

    _tx_out(wallet.top_up(wallet.parse_amount(args.amount), note=args.note), args.json)
    return 0


def _set_balance(args: argparse.Namespace) -> int:
    from .. import wallet

    amount = wallet.parse_amount(args.amount, allow_zero=True, what="balance")
    _tx_out(wallet.set_balance(amount), args.json)
    return 0


def _transactions(args: argparse.Namespace) -> int:
    from .. import wallet

    txs = wallet.transactions(as_frame=False)
    if args.json:
        print(json.dumps([t.to_dict() for t in txs], indent=2))
        return 0
    if not txs:
        print("No wallet transactions yet. Record a top-up: cencori-nb credits top-up AMOUNT")
    for t in txs:
        print(
            f"{t.time.isoformat(timespec='seconds')}  {t.kind:<10} {t.amount:+.6f}  "
            f"→ ${t.balance_after:.6f}  {t.request_id or ''} {t.note or ''}".rstrip()
        )
    return 0


def _budget_value(text: str | None, what: str) -> tuple[bool, Decimal | None]:
    from .. import wallet

    if text is None:
        return False, None
    if text.strip().lower() in ("none", "off", ""):
        return True, None
    return True, wallet.parse_amount(text, what=what)


def _budget(args: argparse.Namespace) -> int:
    from .. import settings

    project = settings.current_project(args.project)
    changes: dict[str, Any] = {}
    set_soft, soft = _budget_value(args.soft, "soft budget")
    set_cap, cap = _budget_value(args.hard_cap, "hard cap")
    if set_soft:
        changes["soft_budget_usd"] = soft
    if set_cap:
        changes["hard_cap_usd"] = cap
    ps = (
        settings.update_project(project, **changes)
        if changes
        else settings.load_settings().for_project(project)
    )
    from ..accounting import month_cost

    spent = month_cost(project)
    out = {
        "project": project,
        "soft_budget_usd": _money(ps.soft_budget_usd),
        "hard_cap_usd": _money(ps.hard_cap_usd),
        "spent_this_month_usd": str(spent),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"Project {project}: all spend incl. BYOK ${spent:.4f} this month · soft budget "
            f"{'$' + str(ps.soft_budget_usd) if ps.soft_budget_usd is not None else 'none'}"
            f" · hard cap "
            f"{'$' + str(ps.hard_cap_usd) if ps.hard_cap_usd is not None else 'none'}"
        )
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from .. import wallet

    result = wallet.reconcile(args.period, project=args.project)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result)
    return 0
