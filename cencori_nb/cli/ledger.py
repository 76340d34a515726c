"""``cencori-nb ledger``: which ledger this machine writes to, its schema, team budgets.

::

    cencori-nb ledger status [--json]
    cencori-nb ledger use URL | -      a team's PostgreSQL ledger (- reads the URL from stdin)
    cencori-nb ledger use sqlite       back to the SQLite ledger in the home
    cencori-nb ledger migrate          apply missing schema migrations, list them
    cencori-nb ledger budget (--project P | --member M) [--soft USD|none] [--hard-cap USD|none]

A URL holding a password is saved in a 0600 file in the home and never printed: the ledger
is shown as ``postgresql://…@host:port/db``. ``CENCORI_NB_LEDGER_URL`` wins over it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    ledger = subparsers.add_parser(
        "ledger",
        help="the usage ledger: SQLite or a team's PostgreSQL, migrations, team budgets",
        description="Which ledger requests are recorded in, its schema, and team budgets.",
    )
    sub = ledger.add_subparsers(dest="ledger_command", metavar="ACTION")
    ledger.set_defaults(handler=_status, json=False)
    status = sub.add_parser("status", help="which ledger, its migrations, rows waiting")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
    use = sub.add_parser("use", help="record into a team's PostgreSQL ledger (or sqlite)")
    use.add_argument(
        "url",
        metavar="URL",
        help="postgresql://USER[:PASSWORD]@HOST:PORT/DB, `-` to read it from stdin "
        "(keeps a password out of the shell history), or `sqlite`",
    )
    use.set_defaults(handler=_use)
    mig = sub.add_parser("migrate", help="apply the schema migrations the ledger lacks")
    mig.add_argument("--json", action="store_true")
    mig.set_defaults(handler=_migrate)
    budget = sub.add_parser(
        "budget", help="a team's monthly soft budget / hard cap for a project or a member"
    )
    who = budget.add_mutually_exclusive_group(required=True)
    who.add_argument("--project", help="a project (everyone's requests in it)")
    who.add_argument("--member", help="a member (their requests in every project)")
    budget.add_argument("--soft", metavar="USD", help="soft budget (warnings), or none")
    budget.add_argument("--hard-cap", metavar="USD", help="hard cap (refusals), or none")
    budget.add_argument("--json", action="store_true")
    budget.set_defaults(handler=_budget)


def _status(args: argparse.Namespace) -> int:
    from ..ledger import default_ledger
    from ..migrations import MIGRATIONS
    from ..settings import current_member

    led = default_ledger()
    out: dict[str, Any] = {
        "backend": led.dialect,
        "ledger": led.label,
        "member": current_member(),
        "waiting_rows": led._pending,
    }
    if led.dialect == "postgresql":
        from ..ledger_postgres import PostgresLedger

        assert isinstance(led, PostgresLedger)
        out["migrations"] = led.applied()
        out["server_version"] = led.server_version
    else:
        from ..migrations import applied

        with led.locked() as conn:
            out["migrations"] = applied(conn)
    out["migrations_missing"] = [n for n, _ in MIGRATIONS if n not in out["migrations"]]
    if getattr(args, "json", False):
        print(json.dumps(out, indent=2))
        return 0
    print(f"Ledger: {out['ledger']} ({out['backend']}) · member {out['member']}")
    print(f"Migrations applied: {len(out['migrations'])} of {len(MIGRATIONS)}")
    if out["waiting_rows"]:
        print(f"{out['waiting_rows']} row(s) wait on local disk for the server.")
    return 0


def _use(args: argparse.Namespace) -> int:
    from ..ledger_postgres import PostgresLedger, save_url

    text = sys.stdin.readline().strip() if args.url == "-" else args.url
    url = save_url(text)
    if url is None:
        print("Requests are recorded in the SQLite ledger in your home again.")
        return 0
    led = PostgresLedger(url)  # checks it now: reachable, credentials, database, version
    try:
        new = led.migrate()
    finally:
        led.close()
    print(
        f"Requests are now recorded in the team ledger {url.display}"
        + (f" ({len(new)} migration(s) applied)." if new else ".")
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from ..ledger import Ledger, default_ledger
    from ..migrations import migrate

    led = default_ledger()
    if led.dialect == "postgresql":
        from ..ledger_postgres import PostgresLedger

        assert isinstance(led, PostgresLedger)
        new = led.migrate()
        names = led.applied()
    else:
        assert isinstance(led, Ledger)
        from ..migrations import applied

        with led.locked() as conn:
            new = migrate(conn)
            names = applied(conn)
    if args.json:
        print(json.dumps({"ledger": led.label, "applied_now": new, "migrations": names}))
        return 0
    print(f"Ledger {led.label}: " + (f"applied {', '.join(new)}." if new else "up to date."))
    for name in names:
        print(f"  {name}")
    return 0


def _budget(args: argparse.Namespace) -> int:
    from .. import accounting
    from ..ledger import default_ledger
    from .money import _budget_value, _money

    changes: dict[str, Any] = {}
    set_soft, soft = _budget_value(args.soft, "soft budget")
    set_cap, cap = _budget_value(args.hard_cap, "hard cap")
    if set_soft:
        changes["soft_usd"] = soft
    if set_cap:
        changes["hard_cap_usd"] = cap
    led = default_ledger()
    scope, name = ("project", args.project) if args.project else ("member", args.member)
    if changes:
        budget = accounting.set_team_budget(**{scope: name}, **changes, ledger=led)
    else:
        found = accounting.team_budgets(led, fresh=True).get((scope, name))
        budget = found or accounting.TeamBudget(scope, name, None, None)
    spent = led.month_cost(None, member=name) if scope == "member" else led.month_cost(name)
    out = {
        "scope": scope,
        "name": name,
        "ledger": led.label,
        "soft_budget_usd": _money(budget.soft_usd),
        "hard_cap_usd": _money(budget.hard_cap_usd),
        "spent_this_month_usd": str(spent),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def usd(v: Any) -> str:
        return "none" if v is None else f"${v}"

    print(
        f"{scope.capitalize()} {name} on {led.label}: all spend incl. BYOK ${spent:.4f} this "
        f"month · soft budget {usd(budget.soft_usd)} · hard cap {usd(budget.hard_cap_usd)}"
    )
    return 0
