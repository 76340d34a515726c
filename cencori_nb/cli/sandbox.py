"""``cencori-nb sandbox``: run the offline provider sandbox in the foreground.

Prints the URL and the ``export CENCORI_NB_SANDBOX=…`` line, then serves until Ctrl-C.
Listens on loopback only unless ``--allow-remote`` is given: the sandbox accepts any key
and would otherwise answer anyone on the network.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation

from ..errors import ConfigurationError

__all__ = ["register", "run"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount in USD") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount in USD")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sandbox`` command."""
    p = subparsers.add_parser(
        "sandbox",
        help="run the offline sandbox that mimics every provider and Cencori",
        description="Run a local HTTP server that speaks the OpenAI, Anthropic, Gemini, "
        "OpenAI-compatible and Cencori wire formats with fake, deterministic replies. "
        "Point the toolkit at it with the printed export line.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; see --allow-remote)",
    )
    p.add_argument(
        "--port", type=int, default=0, help="port to listen on (default 0: any free port)"
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay before every answer, in milliseconds (default 0)",
    )
    p.add_argument(
        "--rpm",
        type=int,
        default=None,
        help="requests per minute allowed per API key (default: unlimited)",
    )
    p.add_argument(
        "--balance",
        type=_decimal,
        default=Decimal("25"),
        help="the sandbox Cencori credit wallet, in USD (default 25)",
    )
    p.add_argument(
        "--faults",
        default=None,
        metavar="SPEC",
        help="random faults, e.g. 429=0.2,500=0.1,timeout=0.05,truncate=0.05,"
        "malformed=0.01 (known: 401 402 403 429 500 503 529 timeout truncate "
        "malformed stream-error invalid-json refusal)",
    )
    p.add_argument(
        "--batch-delay",
        type=float,
        default=None,
        metavar="S",
        help="seconds a provider batch job takes to complete (default 3)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for replies and random faults (default 0)"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (anyone who can reach it gets answers)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``cencori-nb sandbox``."""
    if args.host not in LOOPBACK and not args.allow_remote:
        raise ConfigurationError(
            f"Refusing to listen on {args.host}: the sandbox accepts any key and would answer "
            "anyone who can reach it.",
            hint="Use --host 127.0.0.1, or add --allow-remote if you really mean it.",
        )
    if args.rpm is not None and args.rpm < 1:
        raise ConfigurationError("--rpm must be at least 1.", hint="Omit --rpm for no limit.")
    if args.latency_ms < 0:
        raise ConfigurationError("--latency-ms cannot be negative.")
    if args.batch_delay is not None and not args.batch_delay >= 0:
        raise ConfigurationError("--batch-delay must be a number of seconds, 0 or more.")
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port {args.port} is not a TCP port (0-65535).")

    from ..sandbox.server import SandboxServer

    try:
        server = SandboxServer(
            args.host,
            args.port,
            latency_ms=args.latency_ms,
            rpm=args.rpm,
            balance=args.balance,
            faults=args.faults,
            seed=args.seed,
            batch_delay_s=args.batch_delay,
        )
    except ValueError as exc:
        raise ConfigurationError(
            f"--faults: {exc}.", hint="Write it like 429=0.2,500=0.1,timeout=0.05."
        ) from None
    import asyncio

    async def main() -> None:
        try:
            url = await server.start()
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.",
                hint="Pick another port with --port N (0 picks a free one).",
            ) from None
        extras = []
        if args.latency_ms:
            extras.append(f"latency {args.latency_ms:g} ms")
        if args.rpm:
            extras.append(f"{args.rpm} requests/min per key")
        if args.faults:
            extras.append(f"faults {args.faults}")
        extras.append(f"wallet ${server.balance}")
        print(
            f"cencori-nb sandbox listening on {url} (offline: every reply is fake; "
            + ", ".join(extras)
            + ")",
            flush=True,
        )
        print(f"export CENCORI_NB_SANDBOX={url}", flush=True)
        print("Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        await server.serve()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("cencori-nb sandbox: stopped.", file=sys.stderr)
    return 0
