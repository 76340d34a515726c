"""The ``cencori-nb`` command (also ``python -m cencori_nb``).

Each command group lives in its own module with a ``register(subparsers)`` function that
adds its parser and sets ``handler``. Exit codes: 0 success; 1 a user-facing error (one
plain line on stderr, no traceback); 2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import user_error

__all__ = ["build_parser", "main"]

# Modules registering sub-commands, in the order they appear in --help.
_COMMAND_MODULES = ("keys", "ask", "money", "ledger", "jobs", "sandbox", "lab")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors never echo a key.

    argparse quotes the offending value ("unrecognized arguments: sk-…", "invalid choice:
    'sk-…'"); a key pasted on the command line by mistake would then land on stderr, which
    a notebook's ``!cencori-nb`` cell saves. Sub-parsers inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        from ..redact import USER_MESSAGE

        super().error(USER_MESSAGE.scrub(message))


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="cencori-nb",
        description="Bring-your-own-key LLM prompting for Jupyter, with Cencori credits.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning in the shell is one ``cencori-nb: warning: …`` line, not Python's
    two-line ``file:line: Category`` form with a source excerpt."""
    from ..redact import USER_MESSAGE
    from ..safe_html import terminal_text

    print(
        f"cencori-nb: warning: {terminal_text(USER_MESSAGE.scrub(str(message)))}", file=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        code = args.handler(args)
    except Exception as exc:
        # Ours, or anything else the user's machine can cause (full disk, a file they
        # cannot read, a damaged database, bytes that are not UTF-8): one line, no traceback.
        err = user_error(exc)
        if err is None:
            raise
        from ..redact import USER_MESSAGE

        # Messages may quote an argument; a key pasted into the wrong one must not show.
        from ..safe_html import terminal_text

        # A provider's error text is data too: no escape sequences reach the terminal.
        print(f"cencori-nb: {terminal_text(USER_MESSAGE.scrub(str(err)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cencori-nb: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
