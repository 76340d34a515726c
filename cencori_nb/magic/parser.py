"""Parse ``%%cencori`` and ``%cencori`` lines into typed argument objects.

The line is tokenised with :mod:`shlex` (quotes work as in a shell) and parsed by
:mod:`argparse`. A parse failure never exits the kernel: :class:`MagicParser` turns it into
:class:`MagicUsageError`, which the magic shows as one line.

Before anything is parsed, :func:`refuse_key_shaped` looks for something that looks like an
API key. IPython writes every executed line to ``history.sqlite``, so a key typed on a magic
line is already on disk: we refuse it (without echoing it) and point at the two places where
keys belong.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ConfigurationError, KeyInPromptError
from ..redact import USER_MESSAGE, looks_like_secret
from ..redact import refuse_key_in_prompt as _refuse_key_in_prompt

if TYPE_CHECKING:
    from ..keystore.secret import Secret

__all__ = [
    "FORMATS",
    "ROUTES",
    "CellArgs",
    "KeyInArgumentsError",
    "KeyInPromptError",
    "LineArgs",
    "MagicUsageError",
    "looks_like_key",
    "parse_cell_line",
    "parse_line",
    "redact",
    "refuse_key_in_prompt",
    "refuse_key_shaped",
]

FORMATS = ("markdown", "text", "code", "json", "html")
ROUTES = ("auto", "byok", "managed")
SUBCOMMANDS = (
    "setup",
    "providers",
    "models",
    "route",
    "usage",
    "credits",
    "use",
    "cache",
    "sandbox",
    "help",
)


class MagicUsageError(ConfigurationError):
    """The magic line could not be parsed; the message says what was wrong."""

    code = "magic_usage"


class KeyInArgumentsError(ConfigurationError):
    """Something key-shaped was typed on a magic line (it would be kept in the history)."""

    code = "key_in_arguments"


def looks_like_key(text: str) -> bool:
    """True if ``text`` contains a known key shape or a long high-entropy token (see
    :func:`cencori_nb.redact.looks_like_secret`)."""
    return looks_like_secret(text)


def refuse_key_shaped(line: str, *, magic: str = "%cencori") -> None:
    """Raise :class:`KeyInArgumentsError` if ``line`` holds something key-shaped.

    The message never repeats the line (it would print the key into the notebook).
    """
    if looks_like_key(line):
        raise KeyInArgumentsError(
            f"Refused: the {magic} line looks like it contains an API key. Keys are never "
            "accepted as magic arguments, because IPython saves every line to its history "
            "file.",
            hint="Store the key with `%cencori setup` (the providers panel) or "
            "`cencori-nb keys set PROVIDER` in a terminal, then rerun without it.",
        )


def refuse_key_in_prompt(prompt: str, stored: Collection[Secret] = ()) -> None:
    """Raise :class:`~cencori_nb.errors.KeyInPromptError` if ``prompt`` holds a known key
    shape (``sk-…``, ``csk_…``, ``AIza…``…), a registered key or one of the ``stored`` keys
    (the check lives in :func:`cencori_nb.redact.refuse_key_in_prompt`)."""
    _refuse_key_in_prompt(prompt, stored)


class MagicParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`MagicUsageError` instead of exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # exit_on_error stays True: argparse then reports every failure through error(),
        # which raises instead of exiting (with False, some failures bypass error()).
        kwargs.setdefault("add_help", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise MagicUsageError(
            f"{self.prog}: {message}.", hint="Run `%cencori help` for the options."
        )

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise MagicUsageError(message.strip() if message else f"{self.prog}: bad arguments.")


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line, posix=True)
    except ValueError as exc:  # unbalanced quotes
        raise MagicUsageError(
            f"Could not read the magic line: {exc}.", hint="Check the quotes."
        ) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"  # argparse names the type in its error message


@dataclass(frozen=True)
class CellArgs:
    """The options of one ``%%cencori`` cell. ``None`` means "use the configured default"."""

    model: str | None = None
    provider: str | None = None
    route: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    format: str | None = None
    output: str | None = None
    stream: bool = True
    cache: bool = True
    project: str | None = None
    dry_run: bool = False
    help: bool = False
    unsafe_html: bool = False  # -f html shown unsanitised (the user trusts this reply)
    max_cost: str | None = None  # the most this request may cost (USD), accepted upfront
    schema: str | None = None  # a name in the user's namespace: the answer's JSON shape


def _cell_parser() -> MagicParser:
    p = MagicParser(prog="%%cencori", description="Send the cell body as a prompt.")
    p.add_argument("model_pos", nargs="?", metavar="MODEL", default=None)
    p.add_argument("-m", "--model", dest="model", default=None)
    p.add_argument("--provider", default=None)
    p.add_argument("--route", choices=ROUTES, default=None)
    p.add_argument("-s", "--system", default=None)
    p.add_argument("-t", "--temperature", type=float, default=None)
    p.add_argument("--max-tokens", type=_positive_int, default=None)
    p.add_argument("-f", "--format", choices=FORMATS, default=None)
    p.add_argument("-o", "--output", metavar="VAR", default=None)
    p.add_argument("--no-stream", dest="stream", action="store_false")
    p.add_argument("--no-cache", dest="cache", action="store_false")
    p.add_argument("--project", default=None)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--unsafe-html", action="store_true")
    p.add_argument("--max-cost", metavar="USD", default=None)  # checked by the client
    p.add_argument("--schema", metavar="NAME", default=None)  # looked up in the namespace
    p.add_argument("-h", "--help", action="store_true")
    return p


def parse_cell_line(line: str) -> CellArgs:
    """Parse the options of a ``%%cencori`` line (the body is the prompt, not parsed here)."""
    refuse_key_shaped(line, magic="%%cencori")
    ns = _cell_parser().parse_args(_split(line))
    if ns.model_pos and ns.model and ns.model_pos != ns.model:
        raise MagicUsageError(
            f"%%cencori: two models given ({ns.model_pos!r} and -m {ns.model!r}).",
            hint="Give the model once.",
        )
    if ns.output is not None and not ns.output.isidentifier():
        raise MagicUsageError(f"%%cencori: -o needs a Python variable name, not {ns.output!r}.")
    if ns.schema is not None and not all(p.isidentifier() for p in ns.schema.split(".")):
        raise MagicUsageError(
            f"%%cencori: --schema needs the name of a variable (a class or a dict), "
            f"not {ns.schema!r}."
        )
    if ns.temperature is not None and not 0 <= ns.temperature <= 2:
        raise MagicUsageError("%%cencori: -t/--temperature must be between 0 and 2.")
    return CellArgs(
        model=ns.model_pos or ns.model,
        provider=ns.provider,
        route=ns.route,
        system=ns.system,
        temperature=ns.temperature,
        max_tokens=ns.max_tokens,
        format=ns.format,
        output=ns.output,
        stream=ns.stream,
        cache=ns.cache,
        project=ns.project,
        dry_run=ns.dry_run,
        help=ns.help,
        unsafe_html=ns.unsafe_html,
        max_cost=ns.max_cost,
        schema=ns.schema,
    )


@dataclass(frozen=True)
class LineArgs:
    """One ``%cencori`` subcommand and its arguments."""

    command: str
    project: str | None = None
    provider: str | None = None  # models [PROVIDER], route --provider
    model: str | None = None  # route MODEL
    route: str = "auto"  # route --route
    since: str | None = None  # usage --since
    team: bool = False  # usage --team: by member
    action: str | None = None  # cache clear | sandbox on/off | credits reconcile
    period: str = "24h"  # credits reconcile --period
    url: str | None = None  # sandbox on URL
    port: int = 0  # sandbox on --port
    allow_remote: bool = False  # sandbox on URL --allow-remote


def _line_parser() -> MagicParser:
    p = MagicParser(prog="%cencori")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicParser)
    s = sub.add_parser("setup")
    s.add_argument("--project", default=None)
    s = sub.add_parser("providers")
    s.add_argument("--project", default=None)
    s = sub.add_parser("models")
    s.add_argument("provider", nargs="?", default=None)
    s = sub.add_parser("route")
    s.add_argument("model", nargs="?", default=None)
    s.add_argument("--provider", default=None)
    s.add_argument("--route", choices=ROUTES, default="auto")
    s.add_argument("--project", default=None)
    s = sub.add_parser("usage")
    s.add_argument("--since", default=None)
    s.add_argument("--project", default=None)
    s.add_argument("--team", action="store_true")
    s = sub.add_parser("credits")
    s.add_argument("action", nargs="?", choices=("reconcile",), default=None)
    s.add_argument("--period", choices=("1h", "24h", "7d", "30d", "mtd"), default="24h")
    s.add_argument("--project", default=None)
    s = sub.add_parser("use")
    s.add_argument("project")
    s = sub.add_parser("cache")
    s.add_argument("action", choices=("clear",))
    s = sub.add_parser("sandbox")
    s.add_argument("action", choices=("on", "off"))
    s.add_argument("url", nargs="?", default=None)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--allow-remote", action="store_true")
    sub.add_parser("help")
    return p


def parse_line(line: str) -> LineArgs:
    """Parse a ``%cencori`` line; an empty line (or ``-h``) means ``help``."""
    refuse_key_shaped(line)
    tokens = _split(line)
    if not tokens or tokens[0] in ("-h", "--help"):
        return LineArgs(command="help")
    if tokens[0] not in SUBCOMMANDS:
        raise MagicUsageError(
            f"%cencori: unknown subcommand {tokens[0]!r}.",
            hint="Subcommands: " + ", ".join(SUBCOMMANDS) + ". To send a prompt, use the "
            "cell magic `%%cencori` on the first line of a cell.",
        )
    ns = _line_parser().parse_args(tokens)
    if ns.command == "sandbox" and ns.action == "off" and ns.url:
        raise MagicUsageError("%cencori sandbox off takes no URL.")
    known = {k: v for k, v in vars(ns).items() if k in LineArgs.__dataclass_fields__}
    return LineArgs(**known)


def usage_text() -> str:
    """The help shown by ``%cencori help``."""
    return HELP


HELP = """\
%%cencori [MODEL] [options]      the cell body is the prompt
  -m/--model MODEL               e.g. gpt-4o-mini, claude-haiku-4-5, openai/gpt-4o
  --provider P                   force the provider
  --route auto|byok|managed      auto: your key (BYOK) if set, else Cencori credits
  -s/--system TEXT               system prompt
  -t/--temperature T             0 to 2
  --max-tokens N
  -f/--format markdown|text|code|json|html
                                 code also puts the code in a new cell below;
                                 replies never run as HTML: markdown and html are
                                 sanitised (no scripts, handlers, iframes, images)
  --unsafe-html                  with -f html: show the reply's HTML unsanitised
  --max-cost USD                 accept up to USD for this request (above the
                                 confirm_above_usd setting, $0.10, the cell asks)
                                 (only for a reply you trust: it runs in JupyterLab)
  --schema NAME                  answer as JSON shaped by NAME, a pydantic model,
                                 dataclass, TypedDict or JSON Schema dict among your
                                 variables (validated; retried once if it does not
                                 match); shown as JSON, VAR.parsed holds the value
  -o VAR                         store the Completion in VAR
  --no-stream, --no-cache, --project P
  --dry-run                      show the route and an estimated cost, send nothing
  Braces: {name}, {name.attr}, {name[key]}, {In[3]}, {Out[3]} are filled from your
  variables when the name exists; anything else in braces stays as written;
  {{name}} gives a literal {name}.

%cencori setup [--project P]     the providers panel (keys, default model, credits)
%cencori providers               which providers are configured (key hints only)
%cencori models [PROVIDER]       known models
%cencori route MODEL [--provider P] [--route R] [--project P]
                                 explain which provider, route and key would be used
%cencori usage [--since 7d]      usage table and chart
%cencori usage --team            spend by member (who spent it; a team's shared ledger)
%cencori credits                 credit wallet: balance, credits spent, all spend incl. BYOK
%cencori credits reconcile [--period 1h|24h|7d|30d|mtd]
                                 ledger's managed spend vs the gateway's (Metrics API)
%cencori use PROJECT             current project for this kernel
%cencori cache clear             forget cached replies
%cencori sandbox on [URL] | off  use the offline sandbox instead of real providers
                                 (demo keys only; a non-loopback URL needs --allow-remote)
%cencori help

Keys are never accepted on a magic line (IPython keeps every line in its history):
use `%cencori setup` or `cencori-nb keys set PROVIDER`.
%config CencoriMagics.default_model = "gpt-4o-mini"   (also default_route, default_format,
default_provider, default_system, default_max_tokens, stream, stream_throttle_ms)
"""


def redact(text: str, stored: Collection[Secret] = ()) -> str:
    """``text`` with every key-shaped token, each registered key and each of the ``stored``
    keys replaced by the marker (the :data:`~cencori_nb.redact.USER_MESSAGE` policy)."""
    return USER_MESSAGE.scrub(text, stored)
