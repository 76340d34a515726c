"""Prompt templates filled from a DataFrame's rows or a Series' values (for the accessors).

A template is ``str.format`` syntax; a row whose value is missing is not sent, with the
reason in its ``error``, instead of sending ``"nan"``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .params import Prompt

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["fill_series_template", "fill_template", "with_reasons"]


class _ColumnFormatter(string.Formatter):
    """``str.format`` that finds ``{0}`` in a column named 0 (format_map cannot)."""

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Any) -> Any:
        return kwargs[str(key)]


def _fields(template: str) -> list[str]:
    names: list[str] = []
    try:
        for _, name, spec, _conv in string.Formatter().parse(template):
            if name is not None:
                names.append(name)
            if spec and "{" in spec:
                names.extend(_fields(spec))
    except ValueError as exc:
        raise ConfigurationError(
            f"The template {template!r} is not a valid format string ({exc}).",
            hint="Write {{ and }} for literal braces.",
        ) from None
    return names


def _base_name(field_name: str) -> str:
    for i, ch in enumerate(field_name):
        if ch in ".[":
            return field_name[:i]
    return field_name


def fill_template(template: str, frame: pd.DataFrame) -> tuple[list[Prompt], list[str | None]]:
    """Fill ``template`` from each row's columns: (prompts, per-row reasons not to send).

    ``{column}`` is replaced by the row's value (``{column:.2f}``, ``{column!r}`` work as in
    ``str.format``); ``{{`` and ``}}`` are literal braces. A name that is not a column
    raises :class:`ConfigurationError` listing the columns; a missing value (NaN/None) in a
    used column makes that row ``"not sent: …"`` instead of sending ``"nan"``.
    """
    by_name = {str(c): c for c in frame.columns}
    columns_list = ", ".join(by_name) or "(none)"
    used: list[str] = []
    for name in _fields(template):
        base = _base_name(name)
        if base == "":
            raise ConfigurationError(
                f"The template {template!r} has a positional {{}}, but a DataFrame row is "
                f"filled by column name. Columns: {columns_list}.",
                hint="Write {column_name}, or {{ and }} for literal braces.",
            )
        if base not in by_name:
            raise ConfigurationError(
                f"The template {template!r} names {{{base}}}, which is not a column. "
                f"Columns: {columns_list}.",
                hint="Use one of those names, or write {{ and }} for literal braces.",
            )
        if base not in used:
            used.append(base)
    if not used:
        raise ConfigurationError(
            f"The template {template!r} names no column, so every row would send the same "
            f"prompt. Columns: {columns_list}.",
            hint="Add a field such as {text}.",
        )
    import pandas as pd

    fast = all(not b.isdigit() for b in used)
    fmt = _ColumnFormatter()
    series = [frame[by_name[b]].tolist() for b in used]
    prompts: list[Prompt] = []
    reasons: list[str | None] = []
    for values in zip(*series, strict=True):
        row = dict(zip(used, values, strict=True))
        missing = [b for b, v in row.items() if _is_missing(v, pd)]
        if missing:
            prompts.append(None)
            reasons.append(f"not sent: empty value in column {missing[0]!r}")
            continue
        try:
            prompts.append(template.format_map(row) if fast else fmt.vformat(template, (), row))
            reasons.append(None)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            prompts.append(None)
            reasons.append(f"not sent: cannot fill the template ({type(exc).__name__}: {exc})")
    return prompts, reasons


def _is_missing(value: Any, pd: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, list | tuple | dict) else False
    except (TypeError, ValueError):
        return False


def fill_series_template(
    template: str, values: Iterable[Any]
) -> tuple[list[Prompt], list[str | None]]:
    """Fill ``{}`` (or ``{0}``) in ``template`` with each value; see :func:`fill_template`."""
    names = _fields(template)
    if not names:
        raise ConfigurationError(
            f"The template {template!r} has no {{}} for the value, so every row would send "
            "the same prompt.",
            hint='Write e.g. "Summarise: {}".',
        )
    bad = [n for n in names if _base_name(n) not in ("", "0")]
    if bad:
        raise ConfigurationError(
            f"The template {template!r} names {{{_base_name(bad[0])}}}, but a Series has one "
            "value a row: write {} for it.",
            hint="For several columns use df.cencori.prompt('… {col_a} … {col_b}').",
        )
    import pandas as pd

    prompts: list[Prompt] = []
    reasons: list[str | None] = []
    for v in values:
        if _is_missing(v, pd):
            prompts.append(None)
            reasons.append("not sent: empty value")
            continue
        try:
            prompts.append(template.format(v))
            reasons.append(None)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            prompts.append(None)
            reasons.append(f"not sent: cannot fill the template ({type(exc).__name__}: {exc})")
    return prompts, reasons


def with_reasons(df: pd.DataFrame, reasons: list[str | None]) -> pd.DataFrame:
    """Put the template's "not sent: …" reasons in ``error`` (the runner saw None there)."""
    if any(reasons):
        import pandas as pd

        mask = [r is not None for r in reasons]
        df.loc[mask, "error"] = pd.Series(
            [r for r in reasons if r is not None], index=df.index[mask]
        )
    return df
