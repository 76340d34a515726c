"""The ``%cencori`` line subcommands and ``%%cencori --dry-run``.

Each handler is a thin call into the service the CLI also uses (``keys``, ``router``,
``reports``, ``charts``, ``wallet``, ``cache``, ``sandbox``) and a display of its result.
Imported on first use of the line magic, so none of this weighs on ``%load_ext``.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from IPython.display import display

from .. import safe_html
from ..settings import ENV_PROJECT, ENV_SANDBOX
from .parser import LineArgs, MagicUsageError, parse_line, usage_text
from .render import Bundle, bundle, notice_bundle

if TYPE_CHECKING:
    from . import CencoriMagics

__all__ = ["dry_run", "help_bundle", "run_line"]

_PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def show(content: Bundle) -> None:
    display(content, raw=True)


def run_line(magics: CencoriMagics, line: str) -> Any:
    """Parse ``line`` and run its subcommand. Returns what the cell should show as Out
    (nothing: every subcommand displays its result, so no key-free-but-large object lands
    in ``Out``)."""
    args = parse_line(line)
    handler = _HANDLERS[args.command]
    handler(magics, args)
    return None


# ----------------------------------------------------------------------------- handlers
def help_bundle() -> Bundle:
    """``%cencori help`` (also ``%%cencori -h``)."""
    return bundle(usage_text(), text_html=f"<pre>{html.escape(usage_text())}</pre>")


def _help(magics: CencoriMagics, args: LineArgs) -> None:
    show(help_bundle())


def _setup(magics: CencoriMagics, args: LineArgs) -> None:
    from ..widgets import setup

    display(setup(project=args.project))


def _providers(magics: CencoriMagics, args: LineArgs) -> None:
    from ..widgets.controller import provider_rows

    rows = provider_rows(args.project)
    head = ("provider", "status", "key", "default model", "project default")
    body = [
        (
            r.display_name,
            r.badge,
            r.key_hint or "",
            r.default_model or "",
            "yes" if r.is_default else "",
        )
        for r in rows
    ]
    show(_table(head, body, title=f"Providers — project {_project(args.project)}"))


def _models(magics: CencoriMagics, args: LineArgs) -> None:
    from ..catalog import PROVIDERS, provider_info

    infos = [provider_info(args.provider)] if args.provider else list(PROVIDERS.values())
    body = [
        (info.name, model, "default" if model == info.default_model else "")
        for info in infos
        for model in info.models
    ]
    show(
        _table(
            ("provider", "model", ""),
            body,
            title="Known models (any other id works as provider/model)",
        )
    )


def _route(magics: CencoriMagics, args: LineArgs) -> None:
    from .. import router

    decision = router.explain_route(
        args.model, provider=args.provider, route=args.route, project=args.project
    )
    display(decision)


def _usage_cmd(magics: CencoriMagics, args: LineArgs) -> None:
    """A summary, not the ledger: requests, tokens and cost by provider and route (with a
    total line), then the spend chart. ``cencori_nb.usage()`` has every row."""
    from .. import charts, reports

    if args.team:
        team = reports.spend(by="member", since=args.since, project=args.project)
        if not len(team):
            show(notice_bundle("no requests recorded."))
            return
        show(team_summary_bundle(team, since=args.since, project=args.project))
        return
    frame = reports.spend(by=["provider", "route"], since=args.since, project=args.project)
    if not len(frame):
        show(
            notice_bundle(
                "no requests recorded" + (f" since {args.since}" if args.since else "") + "."
            )
        )
        return
    show(usage_summary_bundle(frame, since=args.since, project=_project(args.project)))
    display(charts.spend_over_time(since=args.since, project=args.project))


_ROUTE_LABELS = {"byok": "BYOK", "managed": "managed (credits)"}


def usage_summary_bundle(frame: Any, *, since: str | None, project: str) -> Bundle:
    """The ``%cencori usage`` table from a ``reports.spend(by=["provider", "route"])``
    frame: whole-number counts with thousands separators, dollars, and a total line."""
    head = (
        "provider",
        "route",
        "requests",
        "errors",
        "cached",
        "input tokens",
        "output tokens",
        "cost",
    )
    rows: list[tuple[str, ...]] = [
        (
            r.provider,
            _ROUTE_LABELS.get(r.route, r.route),
            f"{int(r.requests):,}",
            f"{int(r.errors):,}",
            f"{int(r.cached):,}",
            f"{int(r.input_tokens):,}",
            f"{int(r.output_tokens):,}",
            _dollars(r.cost_usd),
        )
        for r in frame.itertuples(index=False)
    ]
    if len(rows) > 1:
        rows.append(
            (
                "total",
                "",
                *(
                    f"{int(frame[c].sum()):,}"
                    for c in ("requests", "errors", "cached", "input_tokens", "output_tokens")
                ),
                _dollars(frame["cost_usd"].sum()),
            )
        )
    when = f" since {since}" if since else ""
    return _table(
        head,
        rows,
        title=f"Usage{when} — project {project} (every request: cencori_nb.usage())",
        numeric=range(2, len(head)),
    )


def team_summary_bundle(frame: Any, *, since: str | None, project: str | None) -> Bundle:
    """The ``%cencori usage --team`` table from a ``reports.spend(by="member")`` frame:
    who spent what (largest first), with a total line."""
    head = ("member", "requests", "errors", "cached", "input tokens", "output tokens", "cost")
    counts = ("requests", "errors", "cached", "input_tokens", "output_tokens")
    rows: list[tuple[str, ...]] = [
        (
            str(r.member) or "(before members were recorded)",
            *(f"{int(getattr(r, c)):,}" for c in counts),
            _dollars(r.cost_usd),
        )
        for r in frame.itertuples(index=False)
    ]
    if len(rows) > 1:
        rows.append(
            (
                "total",
                *(f"{int(frame[c].sum()):,}" for c in counts),
                _dollars(frame["cost_usd"].sum()),
            )
        )
    when = f" since {since}" if since else ""
    scope = f"project {project}" if project else "every project"
    return _table(
        head,
        rows,
        title=f"Spend by member{when} — {scope} (cencori_nb.spend(by='member'))",
        numeric=range(1, len(head)),
    )


def _dollars(value: float) -> str:
    """$1,234.56 / $0.0123 / $0.000042: sub-cent amounts keep their digits."""
    return f"${value:,.2f}" if abs(value) >= 1 or value == 0 else f"${value:,.6f}"


def _credits(magics: CencoriMagics, args: LineArgs) -> None:
    from .. import wallet

    if args.action == "reconcile":
        result = wallet.reconcile(args.period, project=args.project)
        # Several dollar amounts in one <pre>: MathJax would typeset "$…$" between them.
        show(bundle(str(result), text_html=safe_html.block(result._repr_html_())))
        return
    summary = wallet.credits()
    show(bundle(str(summary), text_html=safe_html.block(summary._repr_html_())))


def _use(magics: CencoriMagics, args: LineArgs) -> None:
    project = args.project or ""
    if not _PROJECT_NAME.fullmatch(project):
        raise MagicUsageError(
            f"%cencori use: {project!r} is not a project name.",
            hint="Use letters, digits, '.', '_' or '-' (at most 64 characters).",
        )
    from ..settings import refuse_key_as_project

    refuse_key_as_project(project)  # a stored key must not become the project
    os.environ[ENV_PROJECT] = project  # this kernel only; other kernels keep theirs
    show(notice_bundle(f"current project for this kernel: {project}"))


def _cache(magics: CencoriMagics, args: LineArgs) -> None:
    from .. import cache

    removed = cache.clear()
    show(
        notice_bundle(
            f"cache cleared ({removed} cached repl{'y' if removed == 1 else 'ies'} removed)."
        )
    )


def _sandbox(magics: CencoriMagics, args: LineArgs) -> None:
    from ..egress import (
        ENV_SANDBOX_ALLOW_REMOTE,
        allowed_remote_sandbox_hosts,
        parse_url,
        sandbox_endpoint,
    )

    if args.action == "on":
        url = args.url
        if url is None:
            if args.allow_remote:
                raise MagicUsageError("%cencori sandbox on: --allow-remote needs a URL.")
            if magics.sandbox_server is None:
                from ..sandbox import SandboxServer

                server = SandboxServer(port=args.port)
                server.start_in_thread()
                magics.sandbox_server = server
            url = magics.sandbox_server.url
        from ..settings import load_settings

        allowed = allowed_remote_sandbox_hosts(load_settings().sandbox_allow_remote)
        if args.allow_remote:
            allowed.append(parse_url(url, what="sandbox URL").host)
        endpoint = sandbox_endpoint(url, allow_remote=allowed)  # UnsafeURLError if not
        if args.allow_remote and not endpoint.loopback:
            os.environ[ENV_SANDBOX_ALLOW_REMOTE] = endpoint.host
        os.environ[ENV_SANDBOX] = endpoint.url
        started_here = args.url is None
        what = (
            "the offline sandbox started in this kernel (fake replies, no provider is called)"
            if started_here
            else "the server you named (this machine)"
            if endpoint.loopback
            else f"{endpoint.host}, a remote server you allowed"
        )
        show(
            notice_bundle(
                f"sandbox on: requests in this kernel go to {endpoint.url}, "
                f"{what}, carrying fixed demo keys only: your stored keys are "
                "never sent there."
            )
        )
        return
    if magics.sandbox_server is not None:
        magics.sandbox_server.stop()
        magics.sandbox_server = None
    os.environ.pop(ENV_SANDBOX, None)
    os.environ.pop(ENV_SANDBOX_ALLOW_REMOTE, None)
    from ..settings import sandbox_url

    still = sandbox_url()
    if still:
        show(
            notice_bundle(
                f"sandbox off in this kernel, but config.json still sets sandbox_url = {still}."
            )
        )
    else:
        show(notice_bundle("sandbox off: requests go to the real providers."))


_HANDLERS = {
    "help": _help,
    "setup": _setup,
    "providers": _providers,
    "models": _models,
    "route": _route,
    "usage": _usage_cmd,
    "credits": _credits,
    "use": _use,
    "cache": _cache,
    "sandbox": _sandbox,
}


# ----------------------------------------------------------------------------- dry run
def dry_run(prompt: str | list[Any], options: dict[str, Any]) -> None:
    """Show the routing decision and an estimated cost; send nothing. ``prompt`` is the
    text, or text and :class:`~cencori_nb.images.ImagePart` items in order."""
    from .. import accounting, pricing, router
    from ..settings import load_settings
    from ..tokens import estimate_messages_tokens

    decision = router.explain_route(
        options["model"],
        provider=options["provider"],
        route=options["route"],
        project=options["project"],
    )
    parts = [prompt] if isinstance(prompt, str) else prompt
    text = "".join(p for p in parts if isinstance(p, str))
    contents = [c for c in (options.get("system"), text) if c]
    input_tokens = estimate_messages_tokens(contents)
    image_note = ""
    if not isinstance(prompt, str):
        from ..images import check_request, parts_tokens
        from ..types import ChatRequest

        check_request(
            ChatRequest.from_prompt(prompt),
            provider=decision.provider,
            model=decision.model,
            route=decision.route,
        )
        images = parts_tokens(parts, decision.provider, decision.model)
        count = sum(not isinstance(p, str) for p in parts)
        input_tokens += images
        image_note = f" (of which {images} for {count} image{'s' if count > 1 else ''})"
    assumed = options.get("max_tokens") is None
    output_tokens = options.get("max_tokens") or DRY_RUN_OUTPUT_TOKENS
    cost = pricing.estimate_cost(decision.provider, decision.model, input_tokens, output_tokens)
    lines = [
        f"dry run — nothing was sent. Estimated ~{input_tokens} input tokens{image_note} and "
        f"{'up to ' if not assumed else ''}{output_tokens} output tokens"
        f"{' (assumed; set --max-tokens)' if assumed else ''}."
    ]
    if cost is None:
        lines.append(f"No price known for {decision.provider}/{decision.model}.")
    elif decision.route == "managed":
        markup = load_settings().markup_pct
        charge = accounting.charge_for("managed", cost)
        lines.append(
            f"Estimated provider cost ${cost:.6f}; charged to Cencori credits "
            f"≈ ${charge:.6f} (+{markup}% markup)."
        )
    else:
        # the one cost rule: provider price plus any BYOK fee the policy charges in credits
        fee = accounting.charge_for("byok", cost) or Decimal(0)
        total = accounting.cost_of("byok", cost, fee)
        fee_note = f" plus a BYOK fee of ${fee:.6f} in credits" if fee else ""
        lines.append(
            f"Estimated cost ${total:.6f}: ${cost:.6f} paid to {decision.provider} "
            f"with your key (BYOK){fee_note}."
        )
    display(decision)
    show(notice_bundle(" ".join(lines)))


DRY_RUN_OUTPUT_TOKENS = 500  # assumed reply length when --max-tokens is not given


# ----------------------------------------------------------------------------- helpers
def _project(explicit: str | None) -> str:
    from ..settings import current_project

    return current_project(explicit)


def _table(
    head: tuple[str, ...],
    rows: Sequence[tuple[str, ...]],
    *,
    title: str,
    numeric: Iterable[int] = (),
) -> Bundle:
    """A small table as HTML and aligned plain text; ``numeric`` columns align right."""
    right = set(numeric)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    fmt = "  ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths))
    plain = "\n".join([title, fmt.format(*head), *(fmt.format(*r) for r in rows)])

    def align(i: int) -> str:
        return "right" if i in right else "left"

    th = "".join(
        f"<th style='text-align:{align(i)}'>{html.escape(h)}</th>" for i, h in enumerate(head)
    )
    trs = "".join(
        "<tr>"
        + "".join(
            f"<td style='text-align:{align(i)}'>{html.escape(str(c))}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return bundle(
        plain,
        text_html=safe_html.block(
            f"<div><b>{html.escape(title)}</b></div>"
            f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"
        ),
    )
