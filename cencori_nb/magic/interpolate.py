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

:func:`interpolate_parts` does the same, except that a value which is an image (a figure,
a PIL or IPython image, a ``pathlib.Path``, image bytes: :func:`cencori_nb.images.is_image_like`)
is kept as its own part instead of becoming text, so ``Describe {fig}`` sends the chart.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["interpolate", "interpolate_parts"]

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


def interpolate_parts(text: str, namespace: Mapping[str, Any]) -> list[Any]:
    """Like :func:`interpolate`, but image values stay objects: a list of ``str`` and
    image-like items in order (adjacent text merged). Converting an image is left to the
    caller (:func:`cencori_nb.images.as_image`), so nothing here reads a file."""
    from ..images import is_image_like

    parts: list[Any] = []
    at = 0
    for match in _TOKEN.finditer(text):
        value = None
        if match.group("escaped") is None:
            value = _resolve(match.group("path"), namespace)
        if value is not None and value is not _MISSING and is_image_like(value):
            parts.append(interpolate(text[at : match.start()], namespace))
            parts.append(value)
            at = match.end()
    parts.append(interpolate(text[at:], namespace))
    merged: list[Any] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif not (isinstance(part, str) and not part):
            merged.append(part)
    return merged
