"""Text no encoder takes: the one rule for a lone surrogate.

A JSON escape can name half of a UTF-16 surrogate pair alone (``"\\ud800"``): valid JSON,
and a Python ``str`` no UTF-8 encoder takes. A reply holding one could not be printed,
shown in a notebook (the kernel's message is JSON sent as UTF-8), exported to CSV or stored.
Text decoded from bytes never holds one; text decoded from JSON can, so the rule applies
where outside JSON becomes our values: every provider body and stream event
(``providers/_common``), provider batch result files (``jobs/wire``), and, with NUL as well,
what the ledger stores (``ledger.clean_text``). The replacement is U+FFFD, the character a
decoder puts for what it cannot read; a valid pair (``"\\ud83d\\ude00"``) is one character
after decoding and is kept.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "LONE_SURROGATES",
    "REPLACEMENT",
    "clean_text",
    "decoded",
    "may_escape_surrogates",
    "without_lone_surrogates",
]

REPLACEMENT = "\ufffd"
# the code points of UTF-16 surrogates, as a regular-expression character range; decoded
# text holds one only alone (a pair decodes to one character above U+FFFF)
LONE_SURROGATES = "\ud800-\udfff"
_LONE = re.compile(f"[{LONE_SURROGATES}]")
# what no stored text may hold: a lone surrogate, and a NUL (PostgreSQL text refuses it;
# SQLite keeps it, but C string functions and exports stop at it)
_UNSTORABLE = re.compile(f"[\x00{LONE_SURROGATES}]")
# a JSON escape of a surrogate (lone or half of a pair): only JSON holding one is walked
_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def may_escape_surrogates(raw: str) -> bool:
    """True when the JSON text ``raw`` escapes a surrogate (so its decoded value may hold a
    lone one). Substring tests first: most bodies have no such escape at all, and a body of
    other escapes (``\\u00e9``…) is not scanned by the regular expression."""
    return ("\\ud" in raw or "\\uD" in raw) and _ESCAPE.search(raw) is not None


def decoded(value: Any, raw: str) -> Any:
    """``value``, just decoded from the JSON text ``raw``, without lone surrogates: the one
    call every reader of outside JSON makes (walked only when ``raw`` escapes one)."""
    return without_lone_surrogates(value) if may_escape_surrogates(raw) else value


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate and NUL replaced by U+FFFD: the rule for text the
    ledger stores, on SQLite and PostgreSQL alike (``ledger``)."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _UNSTORABLE.sub(REPLACEMENT, text)


def _clean(text: str) -> str:
    return text if text.isascii() else _LONE.sub(REPLACEMENT, text)


def without_lone_surrogates(value: Any) -> Any:
    """``value`` (a freshly decoded JSON value) with every lone surrogate in its texts,
    keys included, replaced by U+FFFD. Containers are changed in place and walked without
    recursion (a hostile reply may nest as deep as the decoder allows). A key that becomes
    one already present replaces it, as a repeated key does when JSON is decoded."""
    if isinstance(value, str):
        return _clean(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if isinstance(k, str) and _clean(k) is not k]:
                node[_clean(key)] = node.pop(key)
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for slot, item in list(items):
            if isinstance(item, str):
                cleaned = _clean(item)
                if cleaned is not item:
                    node[slot] = cleaned
            elif isinstance(item, dict | list):
                stack.append(item)
    return value
