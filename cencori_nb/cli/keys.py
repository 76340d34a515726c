"""``cencori-nb keys``: set, list, enable, disable, remove, rotate, passphrase.

A key is read from stdin when stdin is not a terminal (``pass show x | cencori-nb keys set
openai``), else with a hidden prompt; never from the command line, where it would stay in
the shell history and the process list. Output shows only the key hint (``…`` + last four).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from ..errors import ConfigurationError

__all__ = ["register"]

_CENCORI = "cencori"


class _NoKeyOnArgv(argparse.Action):
    """Catches a stray positional (a key typed on the command line) and refuses it with a
    usage error that does not echo it, as argparse's "unrecognized arguments" would."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values:
            parser.error(
                "the key is never taken from the command line (it would stay in "
                "your shell history): pipe it on stdin or type it at the prompt"
            )


def register(subparsers: Any) -> None:
    """Add the ``keys`` command group."""
    keys = subparsers.add_parser(
        "keys",
        help="store, list and manage provider keys (encrypted)",
        description="Manage the encrypted per-user key store.",
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def project_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--project", "-p", help="project (default: the current project)")

    p = sub.add_parser(
        "set",
        help="store a provider key (read from stdin or a hidden prompt)",
        description="Store PROVIDER's key; 'cencori' stores the managed Cencori "
        "project key (csk_…). The key is read from stdin when it is not a "
        "terminal, else with a hidden prompt; never from the command line.",
    )
    p.add_argument("provider", metavar="PROVIDER")
    p.add_argument("stray", nargs="*", action=_NoKeyOnArgv, help=argparse.SUPPRESS)
    project_arg(p)
    p.add_argument("--default-model", "-m", metavar="MODEL", help="model used when none is named")
    p.add_argument(
        "--make-default", action="store_true", help="make this provider the project default"
    )
    p.add_argument("--disabled", action="store_true", help="store the key switched off")
    p.add_argument(
        "--force",
        action="store_true",
        help="store a key that looks wrong (another provider's prefix, shorter "
        "than 12 characters, a space inside)",
    )
    p.set_defaults(handler=_cmd_set)

    p = sub.add_parser("list", help="list stored keys (hints only)")
    project_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(handler=_cmd_list)

    for name, handler, text in (
        ("enable", _cmd_enable, "switch a stored key on"),
        ("disable", _cmd_disable, "switch a stored key off"),
        ("remove", _cmd_remove, "delete a stored key"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("provider", metavar="PROVIDER")
        project_arg(p)
        p.set_defaults(handler=handler)

    p = sub.add_parser(
        "rotate",
        help="new data key and key-encryption key; re-encrypt all",
        description="New data key and key-encryption key; every record is "
        "re-encrypted and the backup replaced. A passphrase store keeps its "
        "passphrase (CENCORI_NB_PASSPHRASE must hold it); with "
        "CENCORI_NB_PASSPHRASE set, a key-file or keyring store switches to it.",
    )
    p.add_argument(
        "--accept-rollback",
        action="store_true",
        help="accept on purpose a store file older than the newest generation "
        "seen (a restored backup or copy), re-keyed as the newest",
    )
    p.set_defaults(handler=_cmd_rotate)

    p = sub.add_parser(
        "passphrase",
        help="protect the store with a (new) passphrase",
        description="Change the passphrase (or switch a key-file store to one). Reads the "
        "current and the new passphrase with hidden prompts, or as two lines on stdin (the "
        "first line may be empty to use CENCORI_NB_PASSPHRASE or when the store has no "
        "passphrase yet; a single line is the new passphrase).",
    )
    p.set_defaults(handler=_cmd_passphrase)


# --------------------------------------------------------------------------- input


def _stdin_is_tty() -> bool:
    stdin = sys.stdin
    return stdin is not None and stdin.isatty()


def _read_key(provider: str) -> str:
    if sys.stdin is None:
        raise ConfigurationError(
            "No stdin to read the key from.", hint="Pipe the key on stdin or run in a terminal."
        )
    if _stdin_is_tty():
        label = "Cencori project key (csk_…)" if provider == _CENCORI else f"{provider} API key"
        return getpass.getpass(f"{label} (hidden): ")
    return sys.stdin.read()


# --------------------------------------------------------------------------- handlers


def _describe(row: Any, project: str) -> str:
    what = "Cencori project key" if row.provider == _CENCORI else f"{row.provider} key"
    state = "enabled" if row.enabled else "disabled"
    extra = f", default model {row.default_model}" if row.default_model else ""
    extra += ", project default" if row.is_default else ""
    return f"{what} {row.key_hint} for project {project!r}: {state}{extra}."


def _project(args: argparse.Namespace) -> str:
    from ..settings import current_project

    return current_project(args.project)


def _cmd_set(args: argparse.Namespace) -> int:
    from .. import keys
    from ..keystore.store import clean_provider

    provider = clean_provider(args.provider)  # refuse an unknown name before asking for a key
    project = _project(args)
    if provider == _CENCORI and (args.default_model or args.make_default):
        raise ConfigurationError(
            "The Cencori project key takes no --default-model or --make-default.",
            hint="Set those on a provider key.",
        )
    from ..keystore import default_store

    default_store().projects()  # open the store first: a locked one fails before the prompt
    key = _read_key(provider)
    if provider == _CENCORI:
        row = keys.set(provider, key, project=project, enabled=not args.disabled, force=args.force)
    else:
        row = keys.set(
            provider,
            key,
            project=project,
            default_model=args.default_model,
            make_default=args.make_default,
            enabled=not args.disabled,
            force=args.force,
        )
    del key
    replaces = f" It replaces the key {row.replaces}." if row.replaces else ""
    print(f"Stored {_describe(row, project)}{replaces}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .. import keys

    project = _project(args)
    rows = keys.status(project)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    if not rows:
        print(f"No keys stored for project {project!r}. Add one with: cencori-nb keys set PROVIDER")
        return 0
    table = [("PROVIDER", "ENABLED", "KEY", "DEFAULT MODEL", "DEFAULT")]
    table += [
        (
            r.provider,
            "yes" if r.enabled else "no",
            r.key_hint,
            r.default_model or "-",
            "*" if r.is_default else "",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"Project {project!r}:")
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_enable(args: argparse.Namespace) -> int:
    from .. import keys

    project = _project(args)
    print(f"Enabled {_describe(keys.enable(args.provider, project=project), project)}")
    return 0


def _cmd_disable(args: argparse.Namespace) -> int:
    from .. import keys

    project = _project(args)
    print(f"Disabled {_describe(keys.disable(args.provider, project=project), project)}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from .. import keys
    from ..keystore.store import clean_provider

    project = _project(args)
    provider = clean_provider(args.provider)
    keys.remove(provider, project=project)
    print(f"Removed the {provider} key of project {project!r}.")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    from .. import keys
    from ..keystore import default_store

    count = keys.rotate(accept_rollback=args.accept_rollback)
    store = default_store()
    if count == 0 and store.kek_source is None:
        print(f"Nothing to rotate: no key store at {store.path} yet.")
        return 0
    source = {
        "passphrase": "your passphrase (Argon2id, new salt)",
        "keyring": "a new OS keyring entry",
        "keyfile": "a new key file",
    }.get(store.kek_source or "", store.kek_source)
    print(
        f"Rotated {store.path}: new data key, {count} records re-encrypted, data key "
        f"wrapped by {source}."
    )
    return 0


def _cmd_passphrase(args: argparse.Namespace) -> int:
    from .. import keys
    from ..keystore import default_store
    from ..keystore.kek import ENV_PASSPHRASE, passphrase_from_env

    store = default_store()
    if sys.stdin is None:
        raise ConfigurationError("No stdin to read the passphrase from.")
    if _stdin_is_tty():
        old: str | None = None
        if store.kek_source == "passphrase" and passphrase_from_env() is None:
            old = getpass.getpass("Current passphrase (hidden): ")
        new = getpass.getpass("New passphrase (hidden): ")
        if getpass.getpass("Repeat the new passphrase: ") != new:
            raise ConfigurationError("The two new passphrases differ; nothing was changed.")
    else:
        lines = sys.stdin.read().splitlines()
        if len(lines) == 1:
            old, new = None, lines[0]
        elif len(lines) == 2:
            old, new = (lines[0] or None), lines[1]
        else:
            raise ConfigurationError(
                "Expected one line (the new passphrase) or two lines (current, new) on stdin."
            )
    keys.change_passphrase(new, old=old)
    print(
        f"The key store {store.path} is now protected by the new passphrase. Set "
        f"{ENV_PASSPHRASE} to it wherever cencori-nb runs (kernels, shells)."
    )
    return 0
