"""``cencori-nb ask``: one prompt from the command line, streamed to stdout.

The prompt comes from the arguments, else from stdin (``cat notes.md | cencori-nb ask -m
gpt-4o-mini``). By default the answer is streamed to stdout as it arrives and a one-line
footer (model · route · tokens · cost) goes to stderr, so ``> answer.txt`` captures only the
text. ``--json`` prints exactly one JSON object instead::

    {"text", "model", "provider", "route", "input_tokens", "output_tokens",
     "provider_cost_usd", "credits_charged_usd", "cost_usd", "test_mode", "cached",
     "request_id"}

Money fields are JSON *strings* holding the exact Decimal (``"0.0000297"``), so no precision
is lost to binary floats; ``provider_cost_usd`` and ``cost_usd`` (what it cost you, the one
rule of :func:`cencori_nb.accounting.cost_of`) are ``null`` when no price is known;
``test_mode`` is true for a Cencori test key (free).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigurationError
from ..safe_html import TerminalStream, terminal_text

__all__ = ["JSON_FIELDS", "register"]

JSON_FIELDS = (
    "text",
    "model",
    "provider",
    "route",
    "input_tokens",
    "output_tokens",
    "provider_cost_usd",
    "credits_charged_usd",
    "cost_usd",
    "test_mode",
    "cached",
    "request_id",
)


def _positive_int(text: str) -> int:
    # ArgumentTypeError: argparse then prints our message instead of quoting the value (a key
    # pasted into the wrong place would otherwise be echoed to stderr, and into a notebook).
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number of tokens") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("expected a positive number of tokens")
    return value


def _temperature(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number such as 0 or 0.7") from None


def _route(text: str) -> str:
    if text not in ("auto", "byok", "managed"):
        raise argparse.ArgumentTypeError("expected auto, byok or managed")
    return text


def register(subparsers: Any) -> None:
    """Add the ``ask`` command."""
    p = subparsers.add_parser(
        "ask",
        help="send one prompt (BYOK or managed) and print the answer",
        description="Send one prompt and stream the answer to stdout. The prompt is read "
        "from stdin when not given as an argument.",
    )
    p.add_argument(
        "prompt",
        nargs="*",
        metavar="PROMPT",
        help="the prompt (words are joined with spaces); default: stdin",
    )
    p.add_argument(
        "-m", "--model", help="model id, or provider/model (default: the project default)"
    )
    p.add_argument("--provider", help="provider to use (when the model name is ambiguous)")
    p.add_argument(
        "--route",
        type=_route,
        default="auto",
        metavar="{auto,byok,managed}",
        help="auto (BYOK if an enabled key exists, else managed), byok or managed",
    )
    p.add_argument("--system", "-s", help="system prompt")
    p.add_argument("--max-tokens", type=_positive_int, metavar="N", help="maximum output tokens")
    p.add_argument(
        "--temperature", "-t", type=_temperature, metavar="T", help="sampling temperature"
    )
    p.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    p.add_argument("--no-cache", action="store_true", help="do not use the response cache")
    p.add_argument("--project", "-p", help="project (default: the current project)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (money as decimal strings)"
    )
    p.add_argument(
        "--max-cost",
        metavar="USD",
        default=None,
        help="the most this request may cost you (default: the confirm_above_usd "
        "setting, $0.10; above it the command asks on a terminal)",
    )
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="send a request above the cost threshold without asking",
    )
    p.set_defaults(handler=_cmd_ask)


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt:
        return " ".join(args.prompt)
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigurationError(
            "No prompt given.",
            hint='Write it after `ask` (cencori-nb ask "Hello") or pipe it on stdin.',
        )
    text = sys.stdin.read()
    if not text.strip():
        raise ConfigurationError(
            "The prompt read from stdin is empty.",
            hint='Write it after `ask` (cencori-nb ask "Hello").',
        )
    return text


def _json_object(completion: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in JSON_FIELDS:
        value = getattr(completion, name)
        if name.endswith("_usd"):
            value = None if value is None else str(value)
        out[name] = value
    return out


def _cmd_ask(args: argparse.Namespace) -> int:
    try:
        return _ask(args)
    except BrokenPipeError:
        # `cencori-nb ask … | head`: the reader left; stop quietly (the request is recorded).
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _ask(args: argparse.Namespace) -> int:
    from ..errors import CostConfirmationError

    prompt = _prompt(args)
    kwargs: dict[str, Any] = {
        "model": args.model,
        "provider": args.provider,
        "route": args.route,
        "system": args.system,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "project": args.project,
        "cache": not args.no_cache,
        "max_cost_usd": args.max_cost,
    }
    try:
        return _send(args, prompt, kwargs)
    except CostConfirmationError as exc:
        if not (args.yes or _confirmed_on_terminal(exc, reads_prompt=not args.prompt)):
            raise
        accepted = exc.estimate_usd
    # Accepted: up to the estimate the refusal named (nothing was sent the first time).
    return _send(args, prompt, {**kwargs, "max_cost_usd": accepted})


def _confirmed_on_terminal(exc: Any, *, reads_prompt: bool) -> bool:
    """Ask on the terminal whether to send a request above the cost threshold. No terminal
    (a pipe, a script, CI), or the prompt came on stdin: no question, the error stands
    (its hint names --yes)."""
    if reads_prompt or sys.stdin is None or not sys.stdin.isatty():
        return False
    sys.stderr.write(f"cencori-nb: {terminal_text(exc.message)} Send it? [y/N] ")
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")


def _send(args: argparse.Namespace, prompt: str, kwargs: dict[str, Any]) -> int:
    from .. import client

    # A reply is data: on a terminal its escape sequences are removed (they could retitle
    # the window, write the clipboard, hide text), also when one is split across stream
    # deltas; into a pipe or a file it goes byte for byte.
    on_terminal = sys.stdout.isatty()
    shown = TerminalStream() if on_terminal else None

    if args.json or args.no_stream:
        completion = client.chat(prompt, **kwargs)
        if args.json:
            sys.stdout.write(json.dumps(_json_object(completion), ensure_ascii=False) + "\n")
            return 0
        sys.stdout.write(terminal_text(completion.text) if on_terminal else completion.text)
    else:
        with client.stream(prompt, **kwargs) as s:
            for delta in s:
                sys.stdout.write(shown.feed(delta) if shown is not None else delta)
                sys.stdout.flush()
        if shown is not None:
            sys.stdout.write(shown.close())
        streamed = s.completion
        assert streamed is not None  # set once the stream was read to its end
        completion = streamed
    if not completion.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    sys.stderr.write(f"[{terminal_text(completion.footer())}]\n")
    return 0
