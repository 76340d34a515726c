"""The offline sandbox: one local HTTP server speaking every provider's wire format.

Start it with ``cencori-nb sandbox`` or from Python::

    from cencori_nb.sandbox import SandboxServer
    url = SandboxServer(latency_ms=50).start_in_thread()

and point clients at it (``CENCORI_NB_SANDBOX=url``). Every reply says it came from the
sandbox. This module stays light: the server loads on first use of ``SandboxServer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import SandboxServer

__all__ = ["SandboxServer"]


def __getattr__(name: str) -> Any:
    if name == "SandboxServer":
        from .server import SandboxServer

        return SandboxServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
