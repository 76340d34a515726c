"""The response cache: exact-match answers for deterministic requests, in the per-user home.

``cache.sqlite`` (0600) maps ``cache_key(decision, request)`` — a sha256 over the provider,
the model sent, the messages and the sampling parameters — to the stored
:class:`~cencori_nb.types.Completion`. Only deterministic requests are cached (temperature
0 or unset; :func:`cacheable`). The route, the project and the key are *not* part of the key:
the same question to the same model gets the same answer whoever pays for it.

A hit returns a copy with ``cached=True`` and both costs zero; the client records it with
``accounting.record_cached``.

**Never ahead of the ledger.** The client stores an answer only once its ledger row is
committed (``Ledger.after_commit``; the cache keeps its own file), so a crash can leave an
answer recorded but not cached — the re-run pays for it again — and never cached but
unrecorded. Each entry keeps the ``client_id`` of the request that paid for it; a hit whose
request has no ledger row (an entry written by an older version, or a ledger restored from
a backup) records that request's row first, once. :func:`fetch` gives the entry as stored.

Entries do not expire (a notebook re-run months later should
still hit); :func:`clear` empties the cache (``%cencori cache clear``).

Speed: one connection per process (opened on first use, ``check_same_thread=False`` under a
lock), statements the sqlite3 module caches as prepared, and no JSON re-encoding of the
request beyond the key. A hit costs tens of microseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import state
from .errors import ConfigurationError
from .home import ensure_home, home_dir, open_private
from .types import ChatRequest, Completion, Message

if TYPE_CHECKING:
    from .ledger import Ledger
    from .router import Decision

__all__ = [
    "CacheEntry",
    "as_hit",
    "cache_key",
    "cache_path",
    "cacheable",
    "clear",
    "fetch",
    "lookup",
    "pending",
    "stats",
    "store",
    "store_after_commit",
]

SCHEMA_VERSION = 1
_DECIMAL_FIELDS = frozenset(
    f.name for f in dataclasses.fields(Completion) if "Decimal" in str(f.type)
)
_FIELDS = frozenset(f.name for f in dataclasses.fields(Completion))

_lock = threading.Lock()
_conn: sqlite3.Connection | None = None
_conn_path: Path | None = None
_hits = 0
_misses = 0


def cache_path() -> Path:
    return home_dir() / "cache.sqlite"


def cacheable(request: ChatRequest) -> bool:
    """True when ``request`` may be served from (and stored in) the cache."""
    return bool(request.cache) and (request.temperature is None or request.temperature == 0)


def cache_key(decision: Decision, request: ChatRequest) -> str:
    """sha256 hex of (provider, model, endpoint, messages, parameters) — what makes the
    answer. The endpoint (base URL) is part of it: a sandbox's fake reply must never be
    served later as the real provider's, nor one gateway's as another's."""
    payload = [
        SCHEMA_VERSION,
        decision.provider,
        decision.model,
        decision.base_url,
        [_message_key(m) for m in request.messages],
        request.temperature,
        request.max_tokens,
        request.extra or None,
    ]
    if request.schema is not None:  # the same prompt asked for another shape is another answer
        payload.append(["schema", request.schema.fingerprint])
    raw = json.dumps(
        payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str
    )
    return hashlib.sha256(raw.encode()).hexdigest()


def _message_key(message: Message) -> list[Any]:
    """What of a message makes the answer: role and text, and with images their order, type
    and SHA-256 (two charts never share an answer; text-only keys are unchanged)."""
    if not message.parts:
        return [message.role, message.content]
    return [
        message.role,
        message.content,
        [p if isinstance(p, str) else f"image:{p.mime}:{p.sha256}" for p in message.parts],
    ]


def _connect() -> sqlite3.Connection:
    global _conn, _conn_path
    path = cache_path()
    if _conn is not None and _conn_path == path:
        return _conn
    with _lock:
        if _conn is not None and _conn_path == path:
            return _conn
        if _conn is not None:
            _conn.close()
        ensure_home()
        if not path.exists():
            import os

            os.close(open_private(path, os.O_WRONLY | os.O_CREAT))  # 0600 from creation
        conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, cached_statements=16
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, created_ms INTEGER NOT NULL,"
                " provider TEXT NOT NULL, model TEXT NOT NULL,"
                " completion TEXT NOT NULL)"
            )
        except sqlite3.Error:
            conn.close()
            raise
        _conn, _conn_path = conn, path
        return conn


def _decode(raw: str) -> Completion:
    data: dict[str, Any] = json.loads(raw)
    fields = {k: v for k, v in data.items() if k in _FIELDS}
    for name in _DECIMAL_FIELDS:
        value = fields.get(name)
        if value is not None:
            fields[name] = Decimal(value)
    return Completion(**fields)


_warned = False


def _unusable(exc: Exception) -> None:
    """The cache is an optimisation: a damaged or busy cache file must not fail a request."""
    global _warned
    if not _warned:
        _warned = True
        import warnings

        warnings.warn(
            f"The response cache {cache_path()} cannot be used ({exc}); requests go "
            "to the provider. Delete the file to start a fresh cache.",
            RuntimeWarning,
            stacklevel=3,
        )


@dataclasses.dataclass(slots=True)
class CacheEntry:
    """One stored answer as it was paid for (``cached`` False, its real costs and
    ``client_id``), and when it was stored (UTC epoch ms)."""

    completion: Completion
    created_ms: int


def fetch(key: str) -> CacheEntry | None:
    """The entry stored under ``key``, or None (counted as a hit or a miss).

    A cache file that cannot be read counts as a miss (with one warning per process).
    """
    global _hits, _misses
    if key in _pending:  # stored once its ledger row commits: wait for that
        _wait_pending()
    try:
        conn = _conn if _conn is not None and _conn_path == cache_path() else _connect()
        with _lock:
            row = conn.execute(
                "SELECT completion, created_ms FROM responses WHERE key = ?", (key,)
            ).fetchone()
        entry = None if row is None else CacheEntry(_decode(row[0]), int(row[1]))
    except (sqlite3.Error, ValueError, TypeError) as exc:
        _unusable(exc)
        entry = None
    if entry is None:
        _misses += 1
        return None
    _hits += 1
    return entry


def lookup(key: str) -> Completion | None:
    """The cached completion for ``key`` (``cached=True``, zero cost), or None."""
    entry = fetch(key)
    return None if entry is None else as_hit(entry)


def as_hit(entry: CacheEntry) -> Completion:
    """A copy of the entry's completion as a hit: ``cached=True``, zero cost."""
    completion = dataclasses.replace(entry.completion)
    completion.cached = True
    completion.provider_cost_usd = Decimal(0)
    completion.credits_charged_usd = Decimal(0)
    completion.gateway_cost_usd = None
    completion.ttft_ms = None
    return completion


# keys whose answer waits for its ledger row to commit (then it is stored)
_pending: set[str] = set()


def _wait_pending() -> None:
    from .ledger import default_ledger

    default_ledger().flush()


def pending() -> int:
    """How many answers wait for their ledger row before being stored."""
    return len(_pending)


def store_after_commit(key: str, completion: Completion, ledger: Ledger | None = None) -> None:
    """Store ``completion`` once every ledger row this process submitted so far (its own
    included) is committed; never, if the ledger could not take them. ``ledger``: the one
    its row went to (where the request began); if that is no longer the current one (the
    home moved while it was in flight), the answer is not cached: the current home did not
    pay for it, and a hit there would record (and debit) the paying request again."""
    from .ledger import default_ledger

    current = default_ledger()
    if ledger is not None and ledger is not current:
        return
    _pending.add(key)
    current.after_commit(_AfterCommit(key, dataclasses.replace(completion), cache_path()))


_INSERT = (
    "INSERT OR REPLACE INTO responses (key, created_ms, provider, model, completion)"
    " VALUES (?, ?, ?, ?, ?)"
)


def _row(key: str, completion: Completion) -> tuple[str, int, str, str, str]:
    data = completion.to_dict()
    data["cached"] = False
    return (
        key,
        int(time.time() * 1000),
        completion.provider,
        completion.model,
        json.dumps(data, ensure_ascii=False),
    )


def _store_committed(entries: list[_AfterCommit]) -> None:
    """Store answers whose ledger rows are committed, in one transaction: the ledger's
    writer hands over each batch's answers at once (one commit for them all, not one
    each: an autocommit write was ~34 µs of the writer's CPU a row, ~13 µs batched, and
    the file's WAL grew and was checkpointed 250 times as often). An answer whose home
    moved meanwhile is not cached in a home that did not pay for it."""
    path = cache_path()
    try:
        rows = [_row(e.key, e.completion) for e in entries if e.path == path]
        if rows:
            conn = _connect()
            with _lock:
                conn.execute("BEGIN")
                try:
                    try:
                        conn.executemany(_INSERT, rows)
                    except ValueError:
                        # a text SQLite refuses (an endpoint's lone surrogate): the rest of
                        # the batch still goes in, one by one (a row again is a no-op)
                        for row in rows:
                            with contextlib.suppress(ValueError):
                                conn.execute(_INSERT, row)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
    except sqlite3.Error as exc:  # the answers were delivered and paid; only caching failed
        _unusable(exc)
    finally:
        # only now: a lookup meanwhile waits for the answers (fetch) instead of missing them
        for entry in entries:
            _pending.discard(entry.key)


@dataclasses.dataclass(slots=True)
class _AfterCommit:
    """An answer to store once its ledger row is committed (``Ledger.after_commit``)."""

    key: str
    completion: Completion
    path: Path

    run_together = staticmethod(_store_committed)  # a batch's answers in one transaction

    def __call__(self) -> None:
        _store_committed([self])


def store(key: str, completion: Completion) -> None:
    """Remember ``completion`` under ``key`` (replacing an older answer)."""
    try:
        conn = _connect()
        with _lock:
            conn.execute(_INSERT, _row(key, completion))
    except sqlite3.Error as exc:  # the answer was delivered and paid; only caching failed
        _unusable(exc)


def _damaged(exc: sqlite3.Error) -> ConfigurationError:
    return ConfigurationError(
        f"The response cache {cache_path()} cannot be opened ({exc}).",
        hint="Delete that file; a fresh cache is created on the next request.",
        path=cache_path(),
    )


def clear() -> int:
    """Delete every cached answer; return how many there were."""
    if _pending:
        _wait_pending()
    try:
        conn = _connect()
        with _lock:
            count = conn.execute("DELETE FROM responses").rowcount
    except sqlite3.Error as exc:
        raise _damaged(exc) from exc
    return int(count)


def stats() -> dict[str, Any]:
    """Entries, size on disk, and this process's hits and misses."""
    if _pending:
        _wait_pending()
    try:
        conn = _connect()
        with _lock:
            entries = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.Error as exc:
        raise _damaged(exc) from exc
    path = cache_path()
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    return {
        "entries": int(entries),
        "bytes": size,
        "hits": _hits,
        "misses": _misses,
        "path": str(path),
    }


def _forget() -> None:
    """Close the connection and zero the counters (a new home, or a reset)."""
    global _conn, _conn_path, _hits, _misses, _warned
    with _lock:
        if _conn is not None:
            _conn.close()
        _conn, _conn_path, _hits, _misses, _warned = None, None, 0, 0, False
        _pending.clear()


def _after_fork_in_child() -> None:
    """A forked child starts with a fresh lock (the parent's may have been copied held, by
    the ledger's writer storing a batch: nobody here would release it) and opens its own
    connection (a SQLite connection must not cross a fork; the parent's is kept, never
    closed from here). The parent's pending answers are the parent's to store."""
    global _lock, _conn, _conn_path
    if _conn is not None:
        _inherited.append(_conn)
    _lock, _conn, _conn_path = threading.Lock(), None, None
    _pending.clear()


_inherited: list[sqlite3.Connection] = []  # a parent's connections, never used or closed here
os.register_at_fork(after_in_child=_after_fork_in_child)


# The ledger's queued rows fill the cache when they commit (cache after ledger): at a reset
# the ledger is flushed and closed first, then this connection.
state.on_reset("cache", _forget, after=("ledger",))
