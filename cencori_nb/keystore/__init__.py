"""The encrypted per-user key store.

- :mod:`.secret`: :class:`Secret`, the masked type keys travel in;
- :mod:`.crypto`: AES-256-GCM sealing, the key envelope, Argon2id;
- :mod:`.kek`: where the key-encryption key comes from (passphrase, OS keyring, key file);
- :mod:`.store`: the file, its lock, its cache, and the :class:`KeyStore` reads and writes.

:func:`default_store` is the one store of this process: opened (KDF run) once, then every
lookup costs one ``stat`` and a dict lookup. ``import cencori_nb.keystore`` stays cheap:
``cryptography`` and ``filelock`` load on first use.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .secret import Secret, key_hint

if TYPE_CHECKING:
    from .store import KeyStatus, KeyStore, ProviderKey

__all__ = ["KeyStatus", "KeyStore", "ProviderKey", "Secret", "default_store", "key_hint"]

_default: KeyStore | None = None
_lock = threading.Lock()


def default_store() -> KeyStore:
    """The process's key store for the current home (``CENCORI_NB_HOME``)."""
    global _default
    from ..home import home_dir
    from .store import STORE_FILE, KeyStore

    path = home_dir() / STORE_FILE
    store = _default
    if store is not None and store.path == path:
        return store
    with _lock:
        if _default is None or _default.path != path:
            from ..home import verify_home

            verify_home(path.parent)  # never read a store through a planted symlink
            from ..ipython_hygiene import guard_running_shell

            guard_running_shell()  # keys now live in this process: keep them out of tracebacks
            _default = KeyStore(path)
        return _default


def _reset_for_tests() -> None:
    """Forget the default store and every cached data key."""
    global _default
    import sys

    with _lock:
        _default = None
    store_module = sys.modules.get(f"{__name__}.store")
    if store_module is not None:
        store_module._reset_cache()


def __getattr__(name: str) -> Any:
    if name in ("KeyStatus", "KeyStore", "ProviderKey"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
