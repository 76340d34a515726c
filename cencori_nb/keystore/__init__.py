"""The encrypted per-user key store.

- :mod:`.secret`: :class:`Secret`, the masked type keys travel in;
- :mod:`.crypto`: AES-256-GCM sealing, the key envelope, Argon2id;
- :mod:`.kek`: where the key-encryption key comes from (passphrase, OS keyring, key file);
- :mod:`.store`: the file, its lock, its cache, and the :class:`KeyStore` reads and writes.

:func:`default_store` is the one store of this process (registered with
:mod:`cencori_nb.state`): opened (KDF run) once, then a lookup is a dict lookup, with a
``stat`` at most once a second to notice another process's write (the one-second rule).
``import cencori_nb.keystore`` stays cheap: ``cryptography`` and ``filelock`` load on first
use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import state
from .secret import Secret, key_hint

if TYPE_CHECKING:
    from .store import KeyStatus, KeyStore, ProviderKey

__all__ = ["KeyStatus", "KeyStore", "ProviderKey", "Secret", "default_store", "key_hint"]


def _open_default() -> KeyStore:
    from ..home import home_dir, verify_home
    from ..ipython_hygiene import guard_running_shell
    from .store import STORE_FILE, KeyStore

    path = home_dir() / STORE_FILE
    verify_home(path.parent)  # never read a store through a planted symlink
    guard_running_shell()  # keys now live in this process: keep them out of tracebacks
    return KeyStore(path)


# The store of the current home: reopened (at the next call) when CENCORI_NB_HOME changes.
_default = state.register("keystore", open=_open_default)


def default_store() -> KeyStore:
    """The process's key store for the current home (``CENCORI_NB_HOME``)."""
    return _default.get()


def __getattr__(name: str) -> Any:
    if name in ("KeyStatus", "KeyStore", "ProviderKey"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
