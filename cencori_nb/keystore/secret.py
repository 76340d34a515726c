"""A secret value that will not show itself.

``Secret`` wraps an API key so that ``repr``, ``str``, f-strings, pickling, logging and
IPython's display all show only ``…`` and the last four characters (Cencori's key hint).
The clear value is reachable only through :meth:`Secret.reveal`, which the transport calls
when it builds a request header.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["Secret", "key_hint"]


def key_hint(value: str) -> str:
    """``…`` + the last four characters (all masked when the key is 8 characters or fewer)."""
    return "…" + value[-4:] if len(value) > 8 else "…"


class Secret:
    """An API key in a masked envelope. Compare with ``==`` against another ``Secret``."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """Return the clear value. Only for building the request that needs it."""
        return self._value

    @property
    def hint(self) -> str:
        return key_hint(self._value)

    def __repr__(self) -> str:
        return f"Secret('{self.hint}')"

    def __str__(self) -> str:
        return self.hint

    def __format__(self, spec: str) -> str:
        return format(self.hint, spec)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            import hmac

            return hmac.compare_digest(self._value.encode(), other._value.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled: it would write the key in clear")
