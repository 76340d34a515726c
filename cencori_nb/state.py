"""The one registry of this process's state.

Process state is whatever a module keeps between calls: the opened key store, the settings
read from ``config.json``, the ledger and its writer thread, the response-cache connection,
the pooled HTTP clients, memoised routing decisions, pacers, price lookups, the registered
secrets. Every piece is registered here, so that one place

- notices, at the next call, that a variable it was built from changed
  (``CENCORI_NB_HOME``, ``CENCORI_NB_PROJECT``, ``CENCORI_NB_TIMEOUT``…) and resets what
  depended on it, closing what needs closing (the ledger is flushed, HTTP clients closed);
  no reset call is needed after ``os.environ["CENCORI_NB_HOME"] = …`` in a running kernel;
- resets everything on demand (:func:`reset`: the test fixtures' one call);
- says how fresh a file this process did not write must be (:class:`FileWatch`).

How to register (one call, at import of the module that owns the state)
-----------------------------------------------------------------------

A value built on first use, e.g. a connection::

    from . import state

    _ledger = state.register("ledger", open=Ledger, close=Ledger.close)

    def default_ledger() -> Ledger:
        return _ledger.get()  # the env check, then the value (built if needed)

Caches that are not one value (dicts of memoised results, a warn-once flag)::

    state.on_reset("router.memo", _memo.clear, env=state.ALL)

``env`` names the variables the state depends on; the default is ``CENCORI_NB_HOME``
alone. A change of any of them resets the entry at the next :meth:`Slot.get` or
:func:`check` anywhere in the process. ``env=()`` means the state does not depend on the
environment at all (a cache of pure results, the registered secrets): only :func:`reset`
drops it. A new variable (``CENCORI_NB_LEDGER_URL`` for a second ledger backend) is just
named in ``env``: the registry watches the union of all names. Entries are reset in the
reverse order of registration (what was registered later may use what came before), and
a failing ``close`` never stops the others (it is logged).

Noticing a change is one comparison of a tuple of the watched variables against the last
snapshot, read from the environment's own dict (``os.environ.get`` decodes every key and
value; it would cost more than the ``stat`` this module saves).

Other processes' changes: the one-second rule
---------------------------------------------

A change another process makes to a file this process reads (another kernel's
``keys set``, a ``config.json`` edited in a terminal) is noticed up to :data:`FRESH_S`
(one second) late: :meth:`FileWatch.signature` runs ``stat`` at most once a second per
file instead of once per request. It is always checked at once before the two moments
where a stale view would mislead: before a call is retried after a 401 (the key may have
been replaced meanwhile) and before "not configured" is reported; both call
:func:`recheck`. This process's own writes are seen at once (:meth:`FileWatch.note`).
The clock is injectable (:func:`set_clock`), so tests advance time instead of sleeping.

No module reaches another's state through ``sys.modules``: what one module's reset must
also reset is registered by its owner here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = [
    "ALL",
    "ENV_HOME",
    "FRESH_S",
    "FileWatch",
    "Registry",
    "Slot",
    "check",
    "env",
    "generation",
    "now",
    "on_reset",
    "recheck",
    "register",
    "registered",
    "reset",
    "set_clock",
    "watch",
]

_log = logging.getLogger("cencori_nb.state")

ENV_HOME = "CENCORI_NB_HOME"
# The variables that shape what a request does (``env=ALL``: the router's memo). Not
# CENCORI_NB_PASSPHRASE: it only opens a store, and an open store stays open when it
# changes (keys.change_passphrase says so); nothing is rebuilt for it.
ALL: tuple[str, ...] = (
    ENV_HOME,
    "CENCORI_NB_PROJECT",
    "CENCORI_NB_SANDBOX",
    "CENCORI_NB_SANDBOX_ALLOW_REMOTE",
    "CENCORI_NB_TIMEOUT",
    "CENCORI_NB_SCRUB_HOMES",
)
FRESH_S = 1.0  # another process's file change is noticed at most this late

T = TypeVar("T")
_UNSET: Any = object()

# The environment's own dict (bytes keys on POSIX): reading it costs a dict lookup, where
# os.environ.get encodes the key and decodes the value. Elsewhere, os.environ itself.
_environ_data = getattr(os.environ, "_data", None)
if os.name == "posix" and isinstance(_environ_data, dict):
    _env_get: Callable[[Any], Any] = _environ_data.get
    _env_key: Callable[[str], Any] = os.fsencode
else:  # pragma: no cover - Windows
    _env_get = os.environ.get
    _env_key = str
_FS_ENCODING = sys.getfilesystemencoding()
_env_keys: dict[str, Any] = {}  # variable name -> its key in the environment's dict


def env(name: str) -> str | None:
    """``os.environ.get(name)``, read from the environment's own dict: the one way this
    package reads its ``CENCORI_NB_*`` variables on a request's path (several a request;
    ``os.environ.get`` costs four Python-level calls each). Always the current value: a
    change made with ``os.environ[...] = ...`` is seen by the next read."""
    key = _env_keys.get(name)
    if key is None:
        key = _env_keys[name] = _env_key(name)
    value = _env_get(key)
    if value is None or value.__class__ is str:  # pragma: no branch - str on Windows
        return value
    return value.decode(_FS_ENCODING, "surrogateescape")


class _Entry:
    """One registered piece of state."""

    __slots__ = ("after", "env", "name", "reset_fn")

    def __init__(
        self,
        name: str,
        env: frozenset[str],
        reset_fn: Callable[[], None] | None,
        after: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.env = env
        self.reset_fn = reset_fn
        self.after = after  # reset after these entries when both are reset together

    def reset(self) -> None:
        if self.reset_fn is not None:
            self.reset_fn()


class Slot(_Entry, Generic[T]):
    """A value of this process built on first use and dropped (closed) at a reset.

    Get it with :meth:`get`; never keep it across calls, so a change of home is picked up.
    """

    __slots__ = ("_close", "_lock", "_open", "_registry", "_value")

    def __init__(
        self,
        registry: Registry,
        name: str,
        open: Callable[[], T],  # noqa: A002 (the registry's word for it)
        close: Callable[[T], object] | None,
        env: frozenset[str],
    ) -> None:
        super().__init__(name, env, None)
        self._registry = registry
        self._open = open
        self._close = close
        self._value: T = _UNSET
        self._lock = threading.Lock()

    def get(self) -> T:
        """The value for the current environment (checked first), built if needed."""
        registry = self._registry
        if registry.snapshot != tuple(map(_env_get, registry.keys)):
            registry.changed()
        value = self._value
        if value is _UNSET:
            with self._lock:
                value = self._value
                if value is _UNSET:
                    value = self._value = self._open()
        return value

    def peek(self) -> T | None:
        """The value if it has been built (no check, nothing built)."""
        value = self._value
        return None if value is _UNSET else value

    def reset(self) -> None:
        with self._lock:
            value, self._value = self._value, _UNSET
        if value is not _UNSET and self._close is not None:
            self._close(value)


class Registry:
    """Registered state and the snapshot of the variables it depends on. The package uses
    one (this module's functions); tests may build their own."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.entries: list[_Entry] = []
        self.names: tuple[str, ...] = ()  # the watched variables
        self.keys: tuple[Any, ...] = ()  # the same, as keys of the environment's dict
        self.snapshot: tuple[Any, ...] = ()  # their values when last looked at
        self.generation = 0

    def register(
        self,
        name: str,
        *,
        open: Callable[[], T],  # noqa: A002 (the registry's word for it)
        close: Callable[[T], object] | None = None,
        env: Iterable[str] | str = (ENV_HOME,),
    ) -> Slot[T]:
        """Register a value built by ``open()`` on first use and passed to ``close`` when
        it is reset (a change of a variable in ``env``, or :meth:`reset`). Registering a
        name again replaces the earlier entry (a module reloaded)."""
        slot: Slot[T] = Slot(self, name, open, close, _env_names(env))
        self._add(slot)
        return slot

    def on_reset(
        self,
        name: str,
        fn: Callable[[], None],
        *,
        env: Iterable[str] | str = (ENV_HOME,),
        after: Iterable[str] = (),
    ) -> None:
        """Register ``fn`` to drop a module's caches when a variable in ``env`` changes
        and at :meth:`reset`. The module calls :meth:`check` where it reads them.
        ``after`` names entries whose reset must come first when both are reset (their
        close still uses this state, e.g. a ledger flush that fills the response cache)."""
        self._add(_Entry(name, _env_names(env), fn, tuple(after)))

    def check(self) -> None:
        """Notice a change of a watched variable now (resetting what depends on it).
        Cheap: one tuple comparison when nothing changed."""
        if self.snapshot != tuple(map(_env_get, self.keys)):
            self.changed()

    def reset(self, *names: str) -> None:
        """Reset every entry (closing what needs closing), or only those named or under
        a name (``"keystore"`` is ``keystore`` and ``keystore.data_keys``)."""
        unknown = [n for n in names if not any(_named(e.name, (n,)) for e in self.entries)]
        if unknown:
            raise ValueError(f"no state registered as {', '.join(map(repr, unknown))}")
        with self.lock:
            self.snapshot = tuple(map(_env_get, self.keys))
            self.generation += 1
            _reset_entries(e for e in self.entries if _named(e.name, names))

    def names_registered(self) -> list[str]:
        """The registered entries, in order of registration."""
        return [e.name for e in self.entries]

    def _add(self, entry: _Entry) -> None:
        with self.lock:
            self.entries = [e for e in self.entries if e.name != entry.name] + [entry]
            names = tuple(dict.fromkeys((*self.names, *sorted(entry.env))))
            if names != self.names:
                # A variable watched from now on: its current value is the baseline. The
                # ones watched already keep theirs: re-reading them here would take in a
                # change no check() has seen yet, and what depends on it would never be
                # reset (a module imported after os.environ["CENCORI_NB_SANDBOX"] = url
                # made the next request go to the real provider).
                seen = dict(zip(self.names, self.snapshot, strict=True))
                keys = tuple(map(_env_key, names))
                self.snapshot = tuple(
                    seen[n] if n in seen else _env_get(k) for n, k in zip(names, keys, strict=True)
                )
                self.names, self.keys = names, keys

    def changed(self) -> None:
        """Reset the entries that depend on a variable that changed since the snapshot."""
        with self.lock:
            now = tuple(map(_env_get, self.keys))
            if now == self.snapshot:
                return  # another thread got here first
            moved = {n for n, a, b in zip(self.names, self.snapshot, now, strict=True) if a != b}
            self.snapshot = now
            self.generation += 1
            _reset_entries(e for e in self.entries if e.env & moved)


def _reset_order(entries: Iterable[_Entry]) -> list[_Entry]:
    """Reverse order of registration, except that an entry comes after the entries it
    names in ``after`` (when they are reset too)."""
    order = list(reversed(list(entries)))
    for entry in [e for e in order if e.after]:
        later = [i for i, e in enumerate(order) if _named(e.name, entry.after)]
        if later and max(later) > order.index(entry):
            order.remove(entry)
            order.insert(
                max(i for i, e in enumerate(order) if _named(e.name, entry.after)) + 1, entry
            )
    return order


def _reset_entries(entries: Iterable[_Entry]) -> None:
    for entry in _reset_order(entries):
        try:
            entry.reset()
        except Exception:  # noqa: BLE001 - one failing close must not keep the others open
            _log.warning("cencori_nb: resetting %s failed", entry.name, exc_info=True)


def _named(name: str, names: tuple[str, ...]) -> bool:
    return not names or any(name == n or name.startswith(n + ".") for n in names)


def _env_names(env: Iterable[str] | str) -> frozenset[str]:
    if isinstance(env, str):
        return frozenset((env,))
    return frozenset(env)


_registry = Registry()  # the process's one
register = _registry.register
on_reset = _registry.on_reset
check = _registry.check


def generation() -> int:
    """A number that changes whenever some state was reset."""
    return _registry.generation


def reset(*names: str) -> None:
    """Reset every registered piece of state (closing ledgers and clients), look at every
    file afresh, and go back to the real clock: a fresh process, as far as this package is
    concerned. The test fixtures' one call.

    With ``names``, only the entries so named or under them (``"keystore"`` is
    ``keystore`` and ``keystore.data_keys``), e.g. a test's "another process opens the
    store"; the clock stays.
    """
    global _epoch
    _registry.reset(*names)
    _epoch += 1  # every file is looked at afresh
    if not names:
        set_clock(None)


def registered() -> list[str]:
    """The names of the registered state, in order of registration."""
    return _registry.names_registered()


# --------------------------------------------------------------------------- files and time

_clock: Callable[[], float] = time.monotonic


def set_clock(clock: Callable[[], float] | None) -> Callable[[], float]:
    """Use ``clock`` (monotonic seconds) for file freshness; None restores the real one.
    Returns the clock it replaces."""
    global _clock
    previous, _clock = _clock, clock or time.monotonic
    return previous


def now() -> float:
    """The registry's clock (monotonic seconds)."""
    return _clock()


_Sig = tuple[int, int, int, int]
_epoch = 0  # bumped by recheck(): every watch then stats at its next use


def recheck() -> None:
    """Make every :class:`FileWatch` look at its file at its next use, however recently it
    did: called before a retry after a 401 and before "not configured" is reported."""
    global _epoch
    _epoch += 1


class FileWatch:
    """A file's signature (inode, mtime, ctime, size; None while it does not exist), read
    with ``stat`` at most once per :data:`FRESH_S` unless :func:`recheck` was called.

    One watch per path in the process (:func:`watch`), so a write through any object of
    this process is seen at once by every reader: the writer calls :meth:`note`.
    """

    __slots__ = ("_at", "_epoch", "_sig", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: _Sig | None = None
        self._at = float("-inf")
        self._epoch = -1

    def signature(self) -> _Sig | None:
        """The file's signature, at most :data:`FRESH_S` old. ``OSError`` other than a
        missing file propagates (the caller names the file)."""
        if self._epoch == _epoch and _clock() - self._at < FRESH_S:
            return self._sig
        return self.stat()

    def stat(self) -> _Sig | None:
        """The file's signature now (one ``stat``)."""
        at, epoch = _clock(), _epoch
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            sig = None
        else:
            sig = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        self._sig, self._at, self._epoch = sig, at, epoch
        return sig

    def note(self, sig: _Sig | None) -> None:
        """Record a signature this process has just seen (read or written), as fresh."""
        self._sig, self._at, self._epoch = sig, _clock(), _epoch


_watches: dict[str, FileWatch] = {}
_watch_lock = threading.Lock()


def watch(path: os.PathLike[str] | str) -> FileWatch:
    """The process's one :class:`FileWatch` of ``path``."""
    key = os.fspath(path)
    found = _watches.get(key)
    if found is None:
        with _watch_lock:
            found = _watches.setdefault(key, FileWatch(key))
    return found
