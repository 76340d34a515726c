"""``cencori-nb jobs list|status|wait|fetch|cancel``: provider batch jobs from the shell.

The same jobs as :func:`cencori_nb.jobs` (the home's ``jobs/`` folder), so a job submitted
in a notebook can be watched, fetched or cancelled here, and the other way round.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``jobs`` command."""
    p = subparsers.add_parser(
        "jobs",
        help="provider batch jobs (half price, results within 24 hours)",
        description="List, watch, fetch and cancel the batch jobs submitted with "
        "cencori_nb.submit() (OpenAI, Anthropic and Gemini Batch APIs).",
    )
    sub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="every job in this home, newest first")
    ls.add_argument("--refresh", action="store_true", help="ask the providers first")
    ls.add_argument("--json", action="store_true", help="one JSON list")
    ls.set_defaults(handler=_list)
    for name, helptext, handler in (
        ("status", "rows done, failed, expired; cost recorded", _status),
        ("wait", "wait until the job ends, then fetch its results", _wait),
        ("fetch", "record the results of the parts that ended", _fetch),
        ("cancel", "ask the provider to stop the job", _cancel),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("job_id", metavar="JOB_ID", help="job_… (see `cencori-nb jobs list`)")
        c.add_argument("--json", action="store_true", help="print the status as JSON")
        if name == "wait":
            c.add_argument("--timeout", type=float, default=None, help="give up after S seconds")
        if name == "fetch":
            c.add_argument(
                "--csv", metavar="FILE", help="also write the result table to FILE (CSV)"
            )
        c.set_defaults(handler=handler)


def _print_status(st: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(st.to_dict()))
    else:
        print(st)


def _list(args: argparse.Namespace) -> int:
    from ..jobs import jobs

    frame = jobs(refresh=args.refresh)
    if args.json:
        out = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        print(json.dumps(out, default=str))
    elif frame.empty:
        print("No batch jobs in this home.")
    else:
        cols = ["job_id", "created", "provider", "model", "rows", "state", "fetched", "cost_usd"]
        print(frame[cols].to_string(index=False))
    return 0


def _status(args: argparse.Namespace) -> int:
    from ..jobs import load_job

    _print_status(load_job(args.job_id).status(), args.json)
    return 0


def _wait(args: argparse.Namespace) -> int:
    from ..jobs import load_job

    st = load_job(args.job_id).wait(timeout=args.timeout, progress=sys.stderr.isatty())
    _print_status(st, args.json)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..jobs import load_job

    job = load_job(args.job_id)
    n = job.fetch()
    if args.csv:
        job.result(wait=False).to_csv(args.csv)
    st = job.status(refresh=False)
    if args.json:
        print(json.dumps({"recorded_now": n, **st.to_dict()}))
    else:
        print(f"{n} rows recorded now. {st}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from ..jobs import load_job

    _print_status(load_job(args.job_id).cancel(), args.json)
    return 0
