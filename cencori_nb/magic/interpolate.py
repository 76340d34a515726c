"""Fill ``{name}`` placeholders in a prompt without ever breaking pasted code.

``str.format`` on a whole prompt fails on the first dict literal, set literal, f-string or
JSON object in pasted code. This module substitutes only what is clearly a placeholder and
whose name exists in the user namespace; everything else stays exactly as written.

Grammar of a placeholder (no expressions are evaluated, ever)::

    {name}  {name.attr}  {name[key]}  {name[0]}  {name[-1]}  {name["a b"]}  {In[3]}  {Out[3]}
    and chains of those: {cfg.models[0].name}

- ``name`` must be a key of the namespace (builtins are not looked at).
- ``.attr`` is ``getattr`` on a public name (no leading underscore, so no dunders).
- ``[key]``: an integer, a quoted string, or a bare word (taken as a string, as
  ``str.format`` does).
- If any step fails (missing key, attribute, index), the placeholder stays as written.
- ``{{…}}`` with no brace inside gives a literal ``{…}`` (so ``{{name}}`` shows ``{name}``).
  A lone ``{{`` or ``}}`` (nested dict literals: ``{"a": {"b": 1}}``) is left alone.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["interpolate"]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_INDEX = r"""\[(?:-?\d+|'[^'\\\]\n]*'|"[^"\\\]\n]*"|[A-Za-z0-9_\-]+)\]"""
_PATH = rf"{_IDENT}(?:\.{_IDENT}|{_INDEX})*"
# One left-to-right scan: an escaped pair first, then a placeholder.
_TOKEN = re.compile(rf"\{{\{{(?P<escaped>[^{{}}]*)\}}\}}|\{{(?P<path>{_PATH})\}}")
_STEP = re.compile(rf"\.(?P<attr>{_IDENT})|\[(?P<index>[^\]]*)\]")

_MISSING = object()


def _index_key(raw: str) -> Any:
    if raw[:1] in ("'", '"'):
        return ast.literal_eval(raw)  # a quoted string literal only (regex-checked)
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    return raw


def _resolve(path: str, namespace: Mapping[str, Any]) -> Any:
    root = re.match(_IDENT, path)
    assert root is not None
    name = root.group(0)
    if name not in namespace:
        return _MISSING
    value = namespace[name]
    for step in _STEP.finditer(path, root.end()):
        attr = step.group("attr")
        try:
            if attr is not None:
                if attr.startswith("_"):
                    return _MISSING
                value = getattr(value, attr)
            else:
                key = _index_key(step.group("index"))
                if isinstance(value, (list, tuple, str)) and isinstance(key, int):
                    value = value[key]
                elif isinstance(value, Mapping) or hasattr(value, "__getitem__"):
                    value = value[key]
                else:
                    return _MISSING
        except (LookupError, AttributeError, TypeError, ValueError):
            return _MISSING
    return value


def interpolate(text: str, namespace: Mapping[str, Any]) -> str:
    """Return ``text`` with known placeholders filled from ``namespace`` (see module doc)."""

    def replace(match: re.Match[str]) -> str:
        escaped = match.group("escaped")
        if escaped is not None:
            return "{" + escaped + "}"
        value = _resolve(match.group("path"), namespace)
        if value is _MISSING:
            return match.group(0)
        return str(value)

    return _TOKEN.sub(replace, text)
