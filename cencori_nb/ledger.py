"""The usage ledger: one SQLite row per request (successful, failed or served from cache).

``ledger.sqlite`` lives in the per-user home (0600). It is opened in WAL mode with
``synchronous=NORMAL`` and a busy timeout, so two kernels can write at once and a commit
does not wait for the disk (WAL with NORMAL is still crash-safe; at worst the last commits
before a power cut are lost, never the file). The schema and its migrations are in
:mod:`cencori_nb.migrations` (time as UTC epoch ms, money as integer pico-USD).

Two ways to write, both measured in ``benchmarks/ledger.py``:

- :meth:`Ledger.record` — a plain ``INSERT`` and commit, about 50 µs a row;
- :meth:`Ledger.submit` — queue the row for a background writer thread that gathers
  rows for up to 250 ms and commits them in one transaction, about 5 µs for the caller.
  ``accounting.settle`` uses it (with the wallet debit in the same transaction as its
  row), because the synchronous commit was most of the toolkit's per-call overhead
  against a raw HTTP call (docs/benchmarks.md, "Per-call overhead"). Every read flushes
  first, so a program never sees its own rows missing; ``flush()``, closing (a change of
  home, :func:`cencori_nb.state.reset`) and interpreter exit (``atexit``) write what is
  queued. A process killed hard (SIGKILL, a crashed kernel) before its rows commit leaves
  them in its in-flight journal: a request whose row was queued is recorded as that row
  (its real tokens, cost and debit), one still waiting for its answer as ``interrupted``
  with estimated tokens, at the next start; never a half-written row or a debit without
  its row.

One :class:`Ledger` per process and home: :func:`default_ledger` (registered with
:mod:`cencori_nb.state`). It reopens itself after a ``fork`` (a SQLite connection must not
cross processes); when ``CENCORI_NB_HOME`` moves, the next call flushes and closes it and
opens the new home's.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from . import state
from .errors import ConfigurationError, LedgerCorruptError, LedgerError, LedgerWriteError
from .home import ENV_HOME, ensure_home, home_dir, open_private, private_umask
from .migrations import migrate
from .text import clean_text

__all__ = [
    "BILLED_SQL",
    "BILLED_STATUSES",
    "COST_SQL",
    "PUSD",
    "Ledger",
    "LedgerRow",
    "clean_text",
    "default_ledger",
    "from_pusd",
    "ledger_path",
    "month_start_ms",
    "new_client_id",
    "now_ms",
    "parse_since",
    "to_pusd",
]

_log = logging.getLogger("cencori_nb.ledger")
PUSD = 10**12  # pico-USD per USD: the integer unit money is stored in
# What a request cost its user, as stored when it was settled (accounting.cost_of is the
# one rule; NULL = cost unknown). Views read this column, never recompute it.
COST_SQL = "cost_pusd"
# Rows that cost money: answered requests and requests stopped part way (a provider bills
# what it generated before the cut). ``error`` and ``cached`` rows cost nothing.
BILLED_STATUSES = ("ok", "interrupted")
BILLED_SQL = "status IN ('ok', 'interrupted')"
_PICO = Decimal(1).scaleb(-12)
DAY_MS = 86_400_000


# Text the ledger stores follows one rule on both backends, text.clean_text (a lone
# surrogate or a NUL becomes U+FFFD), applied to every statement's parameters where they
# reach the database (_SQLiteConnection, ledger_postgres._pg_params): a row holding such a
# text is recorded with its real tokens, cost and debit, a lookup by the raw text finds it,
# and reports and exports can encode every row.
def clean_params(params: Sequence[Any]) -> tuple[Any, ...]:
    """``params`` with :func:`clean_text` applied to every text (the same tuple when none
    needs it: about a microsecond a row)."""
    for value in params:
        if value.__class__ is str and (not value.isascii() or "\x00" in value):
            return tuple(clean_text(v) if v.__class__ is str else v for v in params)
    return params if isinstance(params, tuple) else tuple(params)


def to_pusd(amount: Decimal | int | str | None) -> int | None:
    """USD (Decimal) → integer pico-USD, rounding half-even below a pico-dollar."""
    if amount is None:
        return None
    value = Decimal(amount) if not isinstance(amount, Decimal) else amount
    return int((value * PUSD).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_pusd(pusd: int | None) -> Decimal | None:
    """Integer pico-USD → exact Decimal USD (``7500000000`` → ``Decimal('0.0075')``)."""
    if pusd is None:
        return None
    if not pusd:
        return Decimal(0)
    value = (Decimal(int(pusd)) * _PICO).normalize()
    # normalize() writes 10 as 1E+1; keep whole dollars plain
    exponent = value.as_tuple().exponent  # an int: the value is finite
    return value.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else value


def new_client_id() -> str:
    """A fresh id for one request's ledger row (what rows are unique on; 32 hex chars,
    shaped as a version 7 UUID's hex (RFC 9562): the Unix time in milliseconds, then 74
    random bits).

    Time first, so ids sort by when they were made and a new row's entry in the unique
    index lands on the index's last page, not on a random one: a commit writes one page
    of that index instead of one per row (measured: 22 -> 18 µs of writer CPU per row on
    a 2,000-row ledger, 37 -> 31 on 100,000 rows; docs/benchmarks.md).

    The random bits are keyed BLAKE2b of a counter, under a 32-byte key drawn from
    ``os.urandom`` once per process (again in a forked child): as unpredictable and as
    unique as random bytes (a teammate sharing the ledger cannot guess the next id and
    take it), without a ``getrandom`` system call per request, which also hands the GIL
    to the ledger's writer thread (measured: a median 2.6 us, 20 us at p90 and ~1 ms at
    p99 of waiting in the calling thread)."""
    raw = bytearray(int(_time() * 1000).to_bytes(6, "big"))
    raw += _blake2b(next(_ids).to_bytes(8, "little"), key=_id_key, digest_size=10).digest()
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


_time = time.time
_blake2b = hashlib.blake2b
_id_key = os.urandom(32)
_ids = itertools.count()  # next() on it is atomic: threads never share a number
_pid = os.getpid()  # this process's id, kept up to date at fork (no system call to ask)


def _after_fork_in_child() -> None:
    global _id_key, _ids, _pid
    _id_key, _ids, _pid = os.urandom(32), itertools.count(), os.getpid()
    # a lock another thread held at the fork (the writer mid-commit) is copied held, and
    # nobody in the child would release it: the child's first read or write would hang
    for led in list(_ledgers):
        led._lock, led._holder = threading.RLock(), None
        led._journal_lock, led._writer_lock = threading.Lock(), threading.Lock()
        led._spill_lock = threading.Lock()


_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()


os.register_at_fork(after_in_child=_after_fork_in_child)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def month_start_ms(at: datetime | None = None) -> int:
    """UTC epoch ms of the first instant of ``at``'s month (default: now)."""
    at = at or datetime.now(UTC)
    start = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(start.timestamp() * 1000)


_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_MS = {"m": 60_000, "min": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}


def parse_since(
    since: str | datetime | date | int | float | None, *, now: datetime | None = None
) -> int | None:
    """``"7d"``, ``"24h"``, ``"30m"``, ``"2w"``, an ISO date/time, a ``datetime`` (naive =
    UTC) or a ``date`` (its UTC midnight) → UTC epoch ms; None → None."""
    if since is None:
        return None
    if isinstance(since, datetime):
        dt = since if since.tzinfo else since.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    if isinstance(since, date):
        return int(datetime(since.year, since.month, since.day, tzinfo=UTC).timestamp() * 1000)
    if isinstance(since, (int, float)):
        raise ConfigurationError(
            f"since={since!r} is ambiguous.",
            hint='Write a duration such as "7d", "24h", "30m", or a date "2026-11-01".',
        )
    text = str(since).strip()
    match = _SINCE.match(text)
    if match:
        now_dt = now or datetime.now(UTC)
        amount = float(match.group(1)) * _UNIT_MS[match.group(2).lower()]
        return int(now_dt.timestamp() * 1000 - amount)
    try:
        return parse_since(datetime.fromisoformat(text))
    except ValueError:
        raise ConfigurationError(
            f"Cannot read since={text!r}.",
            hint='Write a duration such as "7d", "24h", "30m", "2w", or an ISO date "2026-11-01".',
        ) from None


class _Derive:
    def __repr__(self) -> str:
        return "DERIVE"


# LedgerRow.cost_usd's default: derive it from the row's own fields by the one cost rule
# (accounting.cost_of) when the row is built. accounting.settle always passes the value.
DERIVE: Any = _Derive()


@dataclass(slots=True)
class LedgerRow:
    """One request as recorded. Money in Decimal USD; ``ts_ms`` is UTC epoch ms.

    ``cost_usd`` (what it cost its user; None = unknown) defaults to the cost rule applied
    to the row's route, provider cost and credits (0 for a failed request).
    ``client_id`` is the id this toolkit generated for the request (unique: one row per
    request); ``request_id`` is the provider's id for it, which need not be unique.
    """

    request_id: str
    project: str
    provider: str
    route: str
    status: str = "ok"  # ok | error | cached | interrupted
    model_requested: str | None = None
    model: str | None = None
    credential_source: str = ""
    error_code: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    thinking_tokens: int = 0
    provider_cost_usd: Decimal | None = None
    credits_charged_usd: Decimal = Decimal(0)
    estimated: bool = False
    price_version: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    ts_ms: int = 0
    cost_usd: Decimal | None = DERIVE  # what it cost its user (accounting.cost_of); None: unknown
    test_mode: bool = False  # made with a Cencori test key: never charged
    client_id: str = field(default_factory=new_client_id)

    def __post_init__(self) -> None:
        if not self.member:
            self.member = _member()
        if self.cost_usd is DERIVE:
            from .accounting import cost_of  # the one rule (accounting imports this module)

            self.cost_usd = (
                Decimal(0)
                if self.status == "error"
                else cost_of(
                    self.route,
                    self.provider_cost_usd,
                    self.credits_charged_usd,
                    cached=self.status == "cached",
                    test_mode=self.test_mode,
                )
            )

    gateway_cache: str | None = None  # Cencori's X-Cencori-Cache (managed route)
    model_original: str | None = None  # the model asked for, when the gateway upgraded it
    # who made the request (settings.current_member(): CENCORI_NB_MEMBER, the member
    # setting, else user@host); filled in when the row is stored
    member: str = ""
    image_tokens: int = 0  # of input_tokens, the images' share
    # of cache_write_tokens, Anthropic's 1-hour cache writes (priced at their own rate)
    cache_write_1h_tokens: int = 0

    def as_params(self) -> tuple[Any, ...]:
        """The row's values in :data:`COLUMNS` order: what the INSERT, the in-flight
        journal and the spill file get (texts are cleaned at the database:
        :func:`clean_text`)."""
        credits = self.credits_charged_usd
        return (
            self.ts_ms or now_ms(),
            self.client_id or new_client_id(),
            self.request_id,
            self.project,
            self.provider,
            self.model_requested,
            self.model,
            self.route,
            self.credential_source,
            self.status,
            self.error_code,
            int(self.input_tokens),
            int(self.output_tokens),
            int(self.cache_read_tokens),
            int(self.cache_write_tokens),
            int(self.thinking_tokens),
            to_pusd(self.provider_cost_usd),
            (to_pusd(credits) or 0) if credits else 0,  # 0 for most rows: no call
            int(bool(self.estimated)),
            self.price_version,
            self.latency_ms,
            self.ttft_ms,
            to_pusd(self.cost_usd),
            int(bool(self.test_mode)),
            self.gateway_cache,
            self.model_original,
            self.member,
            int(self.image_tokens),
            int(self.cache_write_1h_tokens),
        )


# Column order of LedgerRow.as_params(), as stored, with what each holds (the schema's
# types; a journal or spill line holding anything else is damage, see _storable).
_COLUMN_TYPES: dict[str, type] = {
    "ts_ms": int,
    "client_id": str,
    "request_id": str,
    "project": str,
    "provider": str,
    "model_requested": str,
    "model": str,
    "route": str,
    "credential_source": str,
    "status": str,
    "error_code": str,
    "input_tokens": int,
    "output_tokens": int,
    "cache_read_tokens": int,
    "cache_write_tokens": int,
    "thinking_tokens": int,
    "provider_cost_pusd": int,
    "credits_charged_pusd": int,
    "estimated": int,
    "price_version": str,
    "latency_ms": float,
    "ttft_ms": float,
    "cost_pusd": int,
    "test_mode": int,
    "gateway_cache": str,
    "model_original": str,
    "member": str,
    "image_tokens": int,
    "cache_write_1h_tokens": int,
}
COLUMNS = tuple(_COLUMN_TYPES)
# what a row written by a version before a column existed holds in it (spill and journal
# lines outlive upgrades)
_COLUMN_DEFAULTS: dict[str, Any] = {"member": "", "image_tokens": 0, "cache_write_1h_tokens": 0}


def _member() -> str:
    global _current_member
    if _current_member is None:
        from .settings import current_member  # here: settings imports more than this module

        _current_member = current_member
    return _current_member()


_current_member: Callable[[], str] | None = None  # settings.current_member, once imported


def _params_from(row: dict[str, Any]) -> tuple[Any, ...]:
    """A stored row (spill file, journal) → INSERT parameters in COLUMNS order."""
    return tuple(row[c] if c in row else _COLUMN_DEFAULTS[c] for c in COLUMNS)


# ON CONFLICT DO NOTHING (not INSERT OR IGNORE, which would also drop rows failing a CHECK)
INSERT_SQL = (
    f"INSERT INTO requests ({', '.join(COLUMNS)}) "  # noqa: S608 (constants)
    f"VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT DO NOTHING"
)


def ledger_path() -> Path:
    return home_dir() / "ledger.sqlite"


BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's lock


def connect(path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open ``path`` (created 0600) with the pragmas the ledger relies on; no migrations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(open_private(path, os.O_WRONLY | os.O_CREAT))
    with private_umask():  # the -wal and -shm files are private too
        conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    _set_wal(conn)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class _SQLiteConnection:
    """The ledger's SQLite connection as its callers get it (rows, the wallet, budgets,
    reservations, reads): each statement's parameters go through :func:`clean_params`,
    the rule ``ledger_postgres._Connection`` applies on PostgreSQL, so both backends store
    and look up the same text. Anything else is the ``sqlite3.Connection``'s own."""

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.raw.execute(sql, clean_params(params))

    def executemany(self, sql: str, seq: Any) -> sqlite3.Cursor:
        return self.raw.executemany(sql, [clean_params(p) for p in seq])

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def _set_wal(conn: sqlite3.Connection, attempts: int = 300) -> None:
    """Switch to WAL, waiting out another process that is switching the same fresh file.

    Changing the journal mode needs an exclusive lock, and SQLite answers ``database is
    locked`` at once instead of calling the busy handler when two connections race for it
    on a new file; so the wait is here.
    """
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * min(attempt + 1, 10))


class Ledger:
    """The request ledger (and the wallet's tables) in one SQLite file.

    Thread-safe: one connection guarded by a lock. Cross-process safety comes from SQLite
    (WAL, busy timeout, ``BEGIN IMMEDIATE`` for read-modify-write).

    The backend interface (what :class:`cencori_nb.ledger_postgres.PostgresLedger`
    overrides; callers never see which one they have): ``dialect``, ``label``, ``_open``,
    ``_connection``, ``_begin``, ``_error``, ``_insert_guarded`` and the two error families
    ``_db_errors`` / ``_integrity_errors``. Every SQL statement callers pass is written to
    run on both (``?`` parameters, ``ON CONFLICT``, ``TRUE``, ``CASE`` instead of summing
    booleans).
    """

    dialect = "sqlite"
    # what the driver raises: a database failure (→ LedgerError), and a bad row
    _db_errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)
    _integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    # what makes one row unstorable (the writer drops it alone, a replay skips it)
    _bad_row_errors: tuple[type[BaseException], ...] = _integrity_errors

    @property
    def label(self) -> str:
        """Where the ledger is, as it may be shown to a person (a path or ``…@host/db``)."""
        return str(self.path)

    @property
    def is_shared(self) -> bool:
        """True for a ledger on a server that several people and machines write to."""
        return False

    target: str | None = None  # which server database (PostgreSQL); None: the file

    def __init__(
        self, path: Path | str | None = None, *, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        self.busy_timeout_s = busy_timeout_s
        if path is None:
            ensure_home()
            path = ledger_path()
        self.path = Path(path)
        self.spill_path = self.path.with_name(self.path.stem + "-spill.jsonl")
        self.inflight_dir = self.path.with_name(self.path.stem + "-inflight")
        self._journal: _Journal | None = None
        self._journal_lock = threading.Lock()
        self._inserted: list[str] = []  # rows insert() wrote in the open transaction
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        self._writer: _Writer | None = None
        self._writer_lock = threading.Lock()
        # rows the writer could not commit (see _spill); guarded by _spill_lock
        self._spill_lock = threading.Lock()
        self._failure: str | None = None
        self._failure_reported = False
        self._pending = 0  # rows not in the ledger: spilled or in memory
        self._unspilled: list[_Item] = []  # rows the spill file could not take either
        # closed (the home or the ledger URL changed): requests begun here still settle here
        self._closed = False
        _ledgers.add(self)  # its locks are made afresh in a forked child
        self._open()

    def _open(self) -> None:
        """Connect, migrate, then write any spilled rows: a ledger that cannot do all three
        raises a :class:`LedgerError` (so the request that needed it is not sent)."""
        conn: sqlite3.Connection | None = None
        try:
            with private_umask():
                conn = connect(self.path, self.busy_timeout_s)
                migrate(conn)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            raise self._error(exc) from None
        self._conn = conn
        self._pid = os.getpid()
        self._replay_spill()
        self._reclaim_inflight()

    def _reason(self, exc: BaseException) -> str:
        """The text of a driver failure, safe to show and store."""
        return str(exc)

    def _error(self, exc: BaseException) -> LedgerError:
        """The LedgerError for a SQLite failure on this file, with what to do about it."""
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and any(
            word in text for word in ("not a database", "malformed", "corrupt")
        ):
            return LedgerCorruptError(
                f"The usage ledger {self.path} is damaged ({text}); no request was sent, "
                "because it could not be recorded.",
                hint=f"Move the file aside (mv {self.path} {self.path}.broken) and run again: "
                "a fresh ledger is created, and the moved file keeps what can be read "
                "of your history.",
                path=self.path,
                reason=text,
            )
        if "locked" in text or "busy" in text:
            what = "is locked by another process"
            hint = "Close the other program using it (a stuck kernel?) and run again."
        elif "full" in text or isinstance(exc, OSError):
            what = "cannot be written: the disk is full"
            hint = f"Free space on the disk holding {self.path.parent} and run again."
        else:
            what = "cannot be written"
            hint = f"Check that {self.path} and its folder are writable, then run again."
        return LedgerError(
            f"The usage ledger {self.path} {what} ({text}); no request was "
            "sent, because it could not be recorded.",
            hint=hint,
            path=self.path,
            reason=text,
        )

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (reopened after a fork)."""
        if self._conn is None or self._pid != os.getpid():
            self._conn = None  # never close a parent's connection from the child
            self._open()
        assert self._conn is not None
        return self._conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """The connection to run statements on (the caller holds ``_lock``): texts in
        every statement's parameters cleaned (:func:`clean_text`)."""
        yield _SQLiteConnection(self.conn)

    def _begin(self, conn: Any) -> None:
        """Start a write transaction that excludes every other writer until it ends (so a
        read-modify-write such as a reservation or a wallet debit cannot interleave)."""
        conn.execute("BEGIN IMMEDIATE")

    def _insert_guarded(self, conn: Any, item: _Item, instead: _Item | None = None) -> int:
        """Insert one replayed row inside a transaction; a bad row is logged and skipped
        without ending the transaction, and ``instead`` (its request's estimate) is
        inserted in its place when given. Fenced in a savepoint: a failed statement ends a
        PostgreSQL transaction, and in both a row must not stay without its debit."""
        conn.execute("SAVEPOINT row")
        try:
            inserted = int(self._insert_item(conn, item))
        except self._bad_row_errors as exc:  # a bad row: log, never block
            conn.execute("ROLLBACK TO SAVEPOINT row")
            conn.execute("RELEASE SAVEPOINT row")
            if instead is None:
                self._drop([item], exc)
                return 0
            _log.error(
                "cencori_nb: a dead process's ledger row could not be written to %s (%s); "
                "its request is recorded as the estimate noted before it was sent",
                self.label,
                exc,
            )
            return self._insert_guarded(conn, instead)
        conn.execute("RELEASE SAVEPOINT row")
        return inserted

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """Turn the database's failures into :class:`LedgerError` (a constraint violation,
        which is a bug in the row and not the database's fault, stays as it is)."""
        try:
            yield
        except self._integrity_errors:
            raise
        except self._db_errors as exc:
            raise self._error(exc) from None

    # -- writing ---------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error), holding the thread lock.

        Queued rows are written first, so transactions stay in the order they were asked for.
        """
        self.flush()
        with self._lock, self._holding(), self._sqlite_errors(), self._connection() as conn:
            self._begin(conn)
            self._inserted = []
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            finally:
                inserted, self._inserted = self._inserted, []
            self._resolve(inserted)
        if self._closed:  # a late write (a reservation settled after the close)
            with self._lock:
                self._close_connection()
            self._close_journal_if_done()

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        """Mark this thread as holding the lock, so a flush inside cannot deadlock on the
        writer (which needs the same lock)."""
        previous, self._holder = self._holder, threading.get_ident()
        try:
            yield
        finally:
            self._holder = previous

    _holder: int | None = None

    def insert(self, conn: Any, row: LedgerRow) -> bool:
        """Insert ``row`` inside a caller's transaction; False if it was a duplicate."""
        self._inserted.append(row.client_id)  # in flight until the commit
        return bool(conn.execute(INSERT_SQL, row.as_params()).rowcount == 1)

    def record(self, row: LedgerRow) -> bool:
        """Write one row now (one commit); False if its ``client_id`` was already there."""
        self.flush()
        with self._lock, self._sqlite_errors(), self._connection() as conn:
            inserted = bool(conn.execute(INSERT_SQL, row.as_params()).rowcount == 1)
        self._resolve([row.client_id])
        return inserted

    def submit(
        self,
        row: LedgerRow,
        on_insert: Callable[[Any], Any] | None = None,
        *,
        debit_usd: Decimal | None = None,
    ) -> None:
        """Queue ``row`` for the background writer (returns in microseconds).

        The writer commits queued rows in batches, one transaction per batch. ``debit_usd``
        debits the wallet mirror for this row (idempotent on its ``client_id``) and
        ``on_insert`` runs a callback, both inside that transaction right after the row is
        inserted (not when it was a duplicate), so a debit commits together with its row or
        not at all. Every read (``query``, ``rows``, ``transaction``…) flushes first, as do
        :meth:`flush`, closing and interpreter exit.

        If the writer cannot commit (disk full, file locked too long, damaged file), the
        rows go to the spill file instead and the next request fails (:meth:`check`).
        """
        params = row.as_params()
        debit_pusd = to_pusd(debit_usd) or None
        journal = self._journal
        if journal is not None and journal.pid == _pid:
            journal.settled(row.client_id, debit_pusd, params)
        self._enqueue(_Item(params, on_insert, debit_pusd))

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` (in the writer thread) once every row submitted so far by this
        process is committed; never, if one of them could not be (it went to the spill
        file). The response cache is written this way, so it never holds an answer the
        ledger does not."""
        self._enqueue(_Item(None, callback, None))

    def _enqueue(self, item: _Item) -> None:
        if self._closed and self._writer is None:
            self._write_late(item)
            return
        writer = self._writer
        if writer is None or writer.pid != _pid:
            if writer is not None:  # forked: a lock copied mid-use would never open
                self._writer_lock = threading.Lock()
            with self._writer_lock:  # not self._lock: submitting never waits on I/O
                writer = self._writer
                if writer is None or writer.pid != os.getpid():
                    # a forked child starts its own writer; the parent's queue is the parent's
                    writer = self._writer = _Writer(self)
        writer.submit(item)

    def record_many(self, rows: Sequence[LedgerRow] | Sequence[tuple[Any, ...]]) -> None:
        """Write many rows (LedgerRow or raw parameter tuples) in one transaction."""
        params = [r.as_params() if isinstance(r, LedgerRow) else r for r in rows]
        with self.transaction() as conn:
            conn.executemany(INSERT_SQL, params)

    def flush(self) -> None:
        """Wait until every row submitted so far is committed (a no-op when none are queued)."""
        writer = self._writer
        if writer is not None and writer.pid == _pid and self._holder != threading.get_ident():
            writer.flush()

    # -- reading ---------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[Any]:
        """The connection for reads, after a flush, holding the thread lock."""
        self.flush()
        with self._lock, self._holding(), self._sqlite_errors(), self._connection() as conn:
            yield conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.flush()
        with self._lock, self._sqlite_errors(), self._connection() as conn:
            return list(conn.execute(sql, params).fetchall())

    def rows(
        self,
        *,
        since: Any = None,
        project: str | None = None,
        status: str | None = None,
        member: str | None = None,
    ) -> list[LedgerRow]:
        """Rows (oldest first) as :class:`LedgerRow` objects with Decimal money."""
        where, params = self.where(since=since, project=project, member=member)
        if status:
            where += " AND status = ?"
            params.append(status)
        out = []
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM requests WHERE {where} "  # noqa: S608
            "ORDER BY ts_ms, id"
        )  # (constant names; values are bound parameters)
        for r in self.query(sql, params):
            data = dict(zip(COLUMNS, r, strict=True))
            data["provider_cost_usd"] = from_pusd(data.pop("provider_cost_pusd"))
            data["credits_charged_usd"] = from_pusd(data.pop("credits_charged_pusd"))
            data["cost_usd"] = from_pusd(data.pop("cost_pusd"))
            data["estimated"] = bool(data["estimated"])
            data["test_mode"] = bool(data["test_mode"])
            out.append(LedgerRow(**data))
        return out

    @staticmethod
    def where(
        *,
        since: Any = None,
        project: str | None = None,
        until: Any = None,
        member: str | None = None,
    ) -> tuple[str, list[Any]]:
        """A WHERE clause (always true when no filter) and its parameters."""
        clauses: list[str] = ["TRUE"]
        params: list[Any] = []
        since_ms = parse_since(since)
        if since_ms is not None:
            clauses.append("ts_ms >= ?")
            params.append(since_ms)
        until_ms = parse_since(until)
        if until_ms is not None:
            clauses.append("ts_ms < ?")
            params.append(until_ms)
        if project:
            clauses.append("project = ?")
            params.append(project)
        if member:
            clauses.append("member = ?")
            params.append(member)
        return " AND ".join(clauses), params

    def has_row(self, client_id: str) -> bool:
        """True when a row with this ``client_id`` is in the ledger (after a flush)."""
        return bool(self.query("SELECT 1 FROM requests WHERE client_id = ?", (client_id,)))

    def count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM requests")[0][0])

    def month_cost(
        self, project: str | None, *, member: str | None = None, at: datetime | None = None
    ) -> Decimal:
        """What ``project`` (None: every project) cost its user this UTC month, or only
        ``member``'s requests in it: the sum of the rows' stored ``cost_usd`` (credits
        charged; for BYOK the provider's list price plus any fee). Every status counts: a
        failed or cached row costs 0 unless it was billed."""
        start = month_start_ms(at)
        end = month_start_ms(
            (datetime.fromtimestamp(start / 1000, UTC) + timedelta(days=32)).replace(day=1)
        )
        sql = "SELECT COALESCE(SUM(cost_pusd), 0) FROM requests_daily WHERE day >= ? AND day < ?"
        params: list[Any] = [start // DAY_MS, end // DAY_MS]
        if project is not None:
            sql += " AND project = ?"
            params.append(project)
        if member is not None:
            sql += " AND member = ?"
            params.append(member)
        # a month is whole UTC days, so the daily rollup answers it exactly
        (total,) = self.query(sql, params)[0]
        return from_pusd(int(total)) or Decimal(0)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the connection (and this
        process's in-flight journal, removed when no request in it is unrecorded).

        A request begun on this ledger and still in flight (the home or the ledger URL
        changed under it) settles here all the same: its journal stays open and locked
        until its row is in (so no other start records it as interrupted), and a row
        submitted after the close is written at once (:meth:`_write_late`), reopening the
        connection for that write only."""
        self._closed = True
        writer = self._writer
        if writer is not None and writer.pid == os.getpid():
            writer.stop()
        self._writer = None
        self._close_journal_if_done()
        with self._lock:
            self._close_connection()

    def _close_journal_if_done(self) -> None:
        """Once closed, the journal is closed when no request in it is unrecorded."""
        journal = self._journal
        if journal is None or journal.pid != os.getpid():
            self._journal = None
            return
        if journal.pending():
            return  # a request begun here is in flight: it settles into this ledger
        journal.close()
        self._journal = None

    def _write_late(self, item: _Item) -> None:
        """A row (or an after-commit callback) submitted after :meth:`close`: committed
        now in the caller's thread (no writer is started again), or kept in the spill file
        like any row the ledger cannot take, never dropped."""
        try:
            with self._lock, self._connection():
                pass  # reopen first: a file that cannot be opened now spills the row
        except LedgerError as exc:
            self._spill([item], exc.reason or exc.message)
        except self._db_errors as exc:
            self._spill([item], self._reason(exc))
        else:
            self._write_batch([item])  # rows spilled before wait ahead of it, in order
        with self._lock:
            self._close_connection()
        self._close_journal_if_done()

    def _close_connection(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def _write_batch(self, batch: list[_Item]) -> None:
        """Commit one batch of queued rows (the writer thread calls this), then run the
        ``after_commit`` callbacks of the batch if none of its rows had to be spilled."""
        if self._failure is not None:
            # rows are already waiting in the spill file: keep their order, spill these too
            # (check() writes them all once the ledger takes writes again)
            self._spill(batch, self._failure)
            return
        try:
            for item in batch:
                if item.params is not None:
                    # the one rule for a row, as a replay checks it (a count below zero,
                    # money as a float, …): refused here, a live row and its replay agree
                    _storable(item.params)
            self._commit(batch)
        except self._bad_row_errors as exc:
            self._salvage(batch, exc)
            return
        except self._db_errors as exc:
            self._spill(batch, self._reason(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bad row must not kill the writer
            self._salvage(batch, exc)
            return
        self._run_callbacks(batch)

    def _commit(self, batch: list[_Item]) -> None:
        # each attempt already waits busy_timeout_s for the lock; after three, the file is
        # "locked too long": the rows go to the spill file and the next request says so
        delay = 0.05
        for attempt in range(3):
            try:
                with self._lock, self._connection() as conn:
                    self._begin(conn)
                    try:
                        self._insert_items(conn, batch)
                        conn.execute("COMMIT")
                    except BaseException:
                        _rollback(conn)
                        raise
                self._resolve(
                    [item.params[_CLIENT_ID] for item in batch if item.params is not None]
                )
                return
            except sqlite3.OperationalError as exc:
                # another process held the write lock past the busy timeout: try again
                if ("locked" in str(exc) or "busy" in str(exc)) and attempt < 2:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise

    def _insert_items(self, conn: Any, batch: list[_Item]) -> None:
        """Insert a writer batch's rows (with their debits and callbacks) in the open
        transaction. SQLite runs in-process, so one statement per row costs nothing."""
        for item in batch:
            if item.params is not None:
                self._insert_item(conn, item)

    @staticmethod
    def _insert_item(conn: Any, item: _Item) -> bool:
        assert item.params is not None
        inserted = bool(conn.execute(INSERT_SQL, item.params).rowcount == 1)
        if inserted:
            if item.debit_pusd:
                from .wallet import debit_in  # here: wallet imports the ledger

                client_id, request_id, project = item.params[1], item.params[2], item.params[3]
                debit_in(
                    conn,
                    client_id,
                    from_pusd(item.debit_pusd) or Decimal(0),
                    project=project,
                    request_id=request_id,
                )
            if item.callback is not None:
                item.callback(conn)
        return inserted

    def _run_callbacks(self, batch: list[_Item]) -> None:
        """Run the batch's after-commit callbacks in order. A run of callbacks that can go
        together (the same ``run_together`` attribute, e.g. the response cache's writes:
        one transaction for the batch's answers instead of one each) is handed over as a
        list to that function."""
        callbacks = [i.callback for i in batch if i.params is None and i.callback is not None]
        for together, run in itertools.groupby(callbacks, key=_run_together):
            group = list(run)
            steps: list[Callable[[], Any]] = (
                group if together is None else [functools.partial(together, group)]
            )
            for step in steps:
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - e.g. a cache write: log, go on
                    _log.warning("cencori_nb: after-commit step failed: %s", exc)

    def _salvage(self, batch: list[_Item], exc: BaseException) -> None:
        """A batch failed on a bad row: write its rows one by one so only the bad ones are
        lost (logged; a request noted in flight is recorded as its estimate instead), and
        the rest commit or spill as usual."""
        rows = [item for item in batch if item.params is not None]
        if len(rows) == 1 and len(batch) == 1:
            self._drop(batch, exc)
            self._write_estimate(batch[0])
            return
        for item in batch:
            if item.params is None:
                if self._failure is None:  # every row before it is committed
                    self._run_callbacks([item])
            else:
                self._write_batch([item])

    def _write_estimate(self, item: _Item) -> None:
        """A noted request's row could not be stored: write the estimate noted before it
        was sent in its place now (interrupted, estimated tokens, priced, its debit), as
        the next start would from the journal; meanwhile budgets and caps would not see
        a request that was paid for. Nothing if the request was not noted here, or when
        this is that estimate failing too (it then waits in the journal, logged)."""
        journal = self._journal
        if item.params is None or journal is None or journal.pid != _pid or self._estimating:
            return
        line = journal.noted(item.params[_CLIENT_ID])
        if line is None:
            return
        try:
            client_id, estimate = _journal_item(json.loads(line))
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError):
            return
        if client_id != item.params[_CLIENT_ID]:
            return
        _log.error(
            "cencori_nb: the request's row is recorded as the estimate noted before it was sent"
        )
        self._estimating = True
        try:
            self._write_batch([estimate])
        finally:
            self._estimating = False

    _estimating = False  # _write_estimate is writing one (never an estimate of an estimate)

    def _drop(self, batch: list[Any], exc: BaseException) -> None:
        self.dropped += len(batch)
        _log.error(
            "cencori_nb: %d ledger row(s) could not be written to %s: %s",
            len(batch),
            self.label,
            exc,
        )

    dropped = 0  # rows the writer could not commit (logged as errors)

    # -- requests in flight -----------------------------------------------------------------
    def begin(self, row: LedgerRow) -> None:
        """Note a request about to be sent, as ``row`` (status ``interrupted``, estimated
        tokens): what to record if this process dies before the request's own row (same
        ``client_id``) is committed. One append to this process's journal in
        ``ledger-inflight/`` (about 10 µs); the next process to open the ledger records the
        rows a dead process left there (:meth:`_reclaim_inflight`). Raises
        :class:`LedgerError` if the note cannot be written (then nothing is sent)."""
        journal = self._journal
        if journal is None or journal.pid != _pid:
            with self._journal_lock:
                journal = self._journal
                if journal is None or journal.pid != os.getpid():
                    try:
                        journal = self._journal = _Journal(self.inflight_dir)
                    except OSError as exc:
                        raise self._error(exc) from None
        try:
            journal.begin(row.client_id, row.as_params())
        except OSError as exc:
            raise self._error(exc) from None

    def _resolve(self, client_ids: list[str]) -> None:
        """These requests' rows are committed (or safe in the spill file)."""
        journal = self._journal
        if journal is not None and client_ids and journal.pid == _pid:
            journal.resolve(client_ids)

    def _reclaim_inflight(self) -> int:
        """Record the requests dead processes left in flight: each journal nobody holds
        (its process is gone) gives, for every noted request without a row, its
        ``interrupted`` row (estimated, ``error_code`` ``process_ended``), priced from the
        estimate and debited like a cut stream; then the journal is removed."""
        try:
            paths = sorted(self.inflight_dir.glob("*.jsonl"))
        except OSError:
            return 0
        own = self._journal.path if self._journal is not None else None
        written = 0
        for path in paths:
            if path == own:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue  # reclaimed by another process just now
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                if os.fstat(fd).st_nlink == 0:
                    continue  # reclaimed already
                with os.fdopen(os.dup(fd), "rb") as fh:
                    lines = fh.read().splitlines()
                # per request, its last line: the settled row when the process lived to
                # queue it, else the estimate noted before sending. The estimate stays at
                # hand: a settled row the database refuses (a failed CHECK, which is also
                # why its writer never committed it) is recorded as the estimate, as it
                # was before settled lines existed; a request paid for is never left out
                items: dict[str, _Item] = {}
                estimates: dict[str, _Item] = {}
                for line in lines:
                    try:
                        data = json.loads(line)
                        client_id, item = _journal_item(data)
                    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError):
                        continue  # a torn last line, or a value that cannot be a row
                    items[client_id] = item
                    if not _is_settled(data):
                        estimates[client_id] = item
                written += self._replay_items(list(items.values()), estimates)
                path.unlink()
            finally:
                os.close(fd)
        self._remove_dead_compactions()
        return written

    def _remove_dead_compactions(self) -> None:
        """Remove the half-written copies of journals (:meth:`_Journal._compact`) whose
        process died while writing them: the journal they were to replace still holds
        every request, and was reclaimed from."""
        with contextlib.suppress(OSError):
            for path in self.inflight_dir.glob("*" + COMPACTING_SUFFIX):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
                except OSError:
                    continue  # its process is alive and compacting (BlockingIOError)
                finally:
                    os.close(fd)

    # -- when the ledger cannot be written ------------------------------------------------
    def _spill(self, batch: list[_Item], reason: str) -> None:
        """Keep rows the ledger could not take in the spill file (append-only JSONL,
        fsynced, 0600), or in memory if even that fails; the next request fails (check)."""
        rows = [item for item in batch if item.params is not None]
        with self._spill_lock:
            if self._failure is None:
                self._failure, self._failure_reported = reason, False
            self._pending += len(rows)
            self._unspilled.extend(rows)
            self._write_spill()
        _log.error(
            "cencori_nb: %d ledger row(s) could not be committed to %s (%s); kept in %s",
            len(rows),
            self.label,
            reason,
            self.spill_path,
        )

    def _write_spill(self) -> None:
        """Append the rows held in memory to the spill file (caller holds _spill_lock)."""
        if not self._unspilled:
            return
        journal = self._journal
        noted = journal.noted if journal is not None and journal.pid == _pid else None
        data = "".join(
            json.dumps(item.to_json(noted), separators=(",", ":")) + "\n"
            for item in self._unspilled
        ).encode()
        try:
            fd = open_private(self.spill_path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a replaying process truncates under it
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # an earlier append was cut short (disk full, killed): end that line,
                    # so only it is torn (skipped) and the first row here is not glued on
                    data = b"\n" + data
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _log.error(
                "cencori_nb: cannot write the ledger spill file %s: %s", self.spill_path, exc
            )
            return
        self._resolve(
            [item.params[_CLIENT_ID] for item in self._unspilled if item.params is not None]
        )
        self._unspilled = []

    def _replay_spill(self) -> int:
        """Write the spill file's rows into the ledger (idempotent: rows are unique on
        ``client_id``, debits too), then empty it. Raises :class:`LedgerError` when the
        ledger still cannot take them."""
        try:
            if self.spill_path.stat().st_size == 0:
                return 0
            fd = os.open(self.spill_path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._error(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as fh:
                lines = fh.read().splitlines()
            items: list[_Item] = []
            estimates: dict[str, _Item] = {}
            unreadable = 0
            for line in lines:
                try:
                    data = json.loads(line)
                    item = _Item.from_json(data)
                except (ValueError, TypeError, KeyError):
                    unreadable += 1  # a torn last line (a crash mid-append)
                    continue
                assert item.params is not None
                client_id = item.params[_CLIENT_ID]
                estimate = _spilled_estimate(data, client_id)
                try:
                    _storable(item.params)  # else the replay fails at every start
                    _checked_debit(item.debit_pusd, item.params[_CHARGED])
                except (ValueError, TypeError, KeyError):
                    if estimate is None:
                        unreadable += 1  # a bad value, and no estimate to record instead
                        continue
                    _log.error(
                        "cencori_nb: a spilled ledger row holds a value no database can "
                        "store or a bad debit; its request is recorded as the estimate "
                        "noted before it was sent"
                    )
                    item = estimate
                if estimate is not None:  # in the row's place if the database refuses it
                    estimates[client_id] = estimate
                items.append(item)
            written = self._replay_items(items, estimates)
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the lock
        if unreadable:
            _log.error(
                "cencori_nb: %d unreadable line(s) in %s were skipped", unreadable, self.spill_path
            )
        return written

    def _replay_items(self, items: list[_Item], estimates: dict[str, _Item] | None = None) -> int:
        """Insert rows left by a process (spill file, journal) in one transaction, each
        fenced; a row the database refuses is replaced by its request's entry in
        ``estimates`` (by client id) when there is one, else logged and skipped."""
        written = 0
        estimates = estimates or {}
        with self._lock, self._sqlite_errors(), self._connection() as conn:
            self._begin(conn)
            try:
                for item in items:
                    assert item.params is not None
                    estimate = estimates.get(item.params[_CLIENT_ID])
                    written += self._insert_guarded(
                        conn, item, None if estimate is item else estimate
                    )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return written

    def check(self) -> None:
        """Raise :class:`LedgerWriteError` when rows this process recorded are not in the
        ledger (the writer could not commit them). The client calls it before every request
        that can cost money, so nothing is sent while the ledger is behind.

        The first call after a failure always raises (naming the file and how many rows
        wait); later calls first try to write the waiting rows, and let the request go
        only once they are in.
        """
        if self._failure is None:
            return
        with self._spill_lock:
            if self._failure is None:
                return
            if self._failure_reported:
                try:
                    self._write_spill()
                    if not self._unspilled:
                        self._replay_spill()
                        self._failure, self._pending = None, 0
                        return
                except LedgerError as exc:
                    self._failure = getattr(exc, "reason", None) or exc.message
            self._failure_reported = True
            raise self._write_error()

    def _write_error(self) -> LedgerWriteError:
        where = (
            f"kept in {self.spill_path}"
            if not self._unspilled
            else f"{len(self._unspilled)} of them held in memory only (the spill file "
            f"{self.spill_path} could not be written either)"
        )
        return LedgerWriteError(
            f"The usage ledger {self.label} could not record {self._pending} request(s) "
            f"({self._failure}); they are {where}. This request was not sent.",
            hint=(
                "Fix the cause (free disk space, close the program holding the file, or "
                "move a damaged file aside), then run again: the waiting rows are written "
                "to the ledger first."
            ),
            path=self.path,
            pending=self._pending,
            spill_path=self.spill_path,
        )


class _Journal:
    """This process's requests in flight: one JSON line per request about to be sent (and
    one more when its row is queued), truncated whenever every noted request's row is
    committed, and compacted when it passes :data:`JOURNAL_COMPACT_BYTES` while requests
    stay in flight (a long ``map`` never has none). The file is locked for the process's
    life, so a journal whose lock can be taken belongs to a dead process."""

    def __init__(self, directory: Path) -> None:
        with private_umask():
            directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.pid = os.getpid()
        self.lock = threading.Lock()
        # the noted requests whose rows are not committed yet, each with its latest line
        # (what a compacted journal keeps of it)
        self.open: dict[str, str] = {}
        self.size = 0  # bytes written since the file was last emptied or compacted
        self.torn = False  # the last line was cut short and is not ended yet

    def _append(self, line: str) -> None:
        """Append one line (the caller holds the lock); no fsync: a killed process's
        writes persist. A short write (the disk or the file size limit reached mid-line)
        raises ENOSPC; its line is ended with a newline, now or before the next line, so
        only that line is torn (the reader skips it), never the next one too."""
        data = ("\n" + line if self.torn else line).encode()
        written = os.write(self.fd, data)
        self.size += written
        if written == len(data):
            self.torn = False
            return
        self.torn = True
        with contextlib.suppress(OSError):
            self.torn = os.write(self.fd, b"\n") != 1
        raise OSError(errno.ENOSPC, "the in-flight journal line was cut short")

    def begin(self, client_id: str, params: tuple[Any, ...]) -> None:
        # ``[2, ts_ms, client_id, …]``: the row's values in COLUMNS order. A list, not the
        # ``{"v": 1, "row": {column: value}}`` object older versions wrote (still read):
        # a third of the encoding time, paid on every request.
        line = "".join(_journal_chunks((JOURNAL_VERSION, *params), 0)) + "\n"
        with self.lock:
            self._append(line)  # raises if not all written: then the request is not sent
            self.open[client_id] = line

    def settled(self, client_id: str, debit_pusd: int | None, params: tuple[Any, ...]) -> None:
        """The request's row as it is queued for the writer (real tokens and cost, and its
        wallet debit): if this process dies before the writer commits it, the next start
        records this row instead of the estimate :meth:`begin` noted. Only for a request
        noted here; best effort (the estimate stays if the append fails)."""
        if client_id not in self.open:
            return
        line = "".join(_journal_chunks((JOURNAL_SETTLED, debit_pusd, *params), 0)) + "\n"
        with self.lock, contextlib.suppress(OSError):
            self._append(line)
            noted = self.open.get(client_id)
            if noted is not None:
                # a compacted journal keeps the estimate too: what the next start records
                # if the database refuses this row (see Ledger._reclaim_inflight)
                self.open[client_id] = noted.partition("\n")[0] + "\n" + line

    def resolve(self, client_ids: list[str]) -> None:
        """These requests' rows are committed (the writer thread calls this): their lines
        are no longer needed. Empties the file when no request is left, else compacts it
        once it has grown past :data:`JOURNAL_COMPACT_BYTES`."""
        with self.lock:
            if not self.open:
                return
            for client_id in client_ids:
                self.open.pop(client_id, None)
            if not self.open:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, 0)
                    self.size, self.torn = 0, False
            elif self.size > JOURNAL_COMPACT_BYTES:
                self._compact()

    def _compact(self) -> None:
        """Replace the file with one holding only the open requests' latest lines (the
        caller holds the lock). Written whole under its own lock beside the journal (a name
        no reclaimer reads), then renamed over it: a process killed at any point leaves
        either the old file or the new one, each with every open request. A reclaimer
        already waiting on the old file's lock finds it unlinked and leaves it. If the
        new file cannot be written (disk full), the old one stays and grows."""
        temporary = self.path.with_name(self.path.name + COMPACTING_SUFFIX)
        data = "".join(self.open.values()).encode()
        try:
            fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.replace(temporary, self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            return
        old, self.fd, self.size, self.torn = self.fd, fd, len(data), False
        os.close(old)

    def noted(self, client_id: str) -> str | None:
        """The estimate line :meth:`begin` wrote for a request still open, else None."""
        with self.lock:
            line = self.open.get(client_id)
        return None if line is None else line.partition("\n")[0]

    def pending(self) -> bool:
        """Whether a noted request's row is not committed yet."""
        with self.lock:
            return bool(self.open)

    def close(self) -> None:
        with self.lock:
            if not self.open:  # nothing unrecorded: nothing for a later start to do
                with contextlib.suppress(OSError):
                    self.path.unlink()
            with contextlib.suppress(OSError):
                os.close(self.fd)  # releases the lock: a later start reclaims what is left


JOURNAL_VERSION = 2
# A journal with requests still in flight is rewritten with only theirs once it has grown
# past this (a long map: ~320 bytes a request, so about every 3,000 requests).
JOURNAL_COMPACT_BYTES = 1 << 20
COMPACTING_SUFFIX = ".compacting"  # the journal being rewritten; never read as a journal
# ``[3, debit_pusd, ts_ms, client_id, …]``: a noted request's row as it was queued for the
# writer, written after its answer was settled; it replaces that request's estimate.
JOURNAL_SETTLED = 3
_JOURNAL_ENCODER = json.JSONEncoder(separators=(",", ":"))
# What _JOURNAL_ENCODER.encode writes, from its C encoder built once (encode builds one per
# call, through two Python frames, with a dict for cycles a flat row of values cannot have).
_journal_chunks: Callable[[Any, int], Any]
try:
    from _json import make_encoder as _make_encoder
except ImportError:  # pragma: no cover - a Python without json's C accelerator
    _journal_chunks = lambda values, _level: (_JOURNAL_ENCODER.encode(values),)  # noqa: E731
else:
    _journal_chunks = _make_encoder(
        None, _JOURNAL_ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, True
    )


def _journal_row(data: Any) -> dict[str, Any]:
    """A journal line's row by column: ``[2, values…]`` (this version) or
    ``{"v": 1, "row": {column: value}}`` (written by older versions, left by a process that
    died under one). Raises ValueError, TypeError or KeyError on anything else."""
    if isinstance(data, list) and data and data[0] == JOURNAL_VERSION:
        if len(data) - 1 > len(COLUMNS):
            raise ValueError("a journal line with more values than columns")
        # a shorter line was written before a column was added: _params_from fills it
        return dict(zip(COLUMNS, data[1:], strict=False))
    if isinstance(data, dict) and data.get("v") == 1:
        return dict(data["row"])
    raise ValueError("not a journal line")


def _is_settled(data: Any) -> bool:
    """Whether a journal line is a settled row (else it is an estimate)."""
    return isinstance(data, list) and bool(data) and data[0] == JOURNAL_SETTLED


def _journal_item(data: Any) -> tuple[str, _Item]:
    """A journal line → (its request's client id, the item to record): a settled row as it
    was queued (its debit too), or the estimate noted before sending, priced."""
    if _is_settled(data):
        values = data[2:]
        if len(values) > len(COLUMNS):
            raise ValueError("a journal line with more values than columns")
        row = dict(zip(COLUMNS, values, strict=False))
        item = _Item(_params_from(row), None, _checked_debit(data[1], row["credits_charged_pusd"]))
    else:
        item = _priced_intent(data)
    assert item.params is not None
    _storable(item.params)
    return item.params[_CLIENT_ID], item


def _checked_debit(debit: Any, charge: Any) -> int | None:
    """A left row's wallet debit (journal or spill line), or ValueError: as queued, a
    row's debit is its charge (accounting.settle); anything else (negative, a float, a
    word, more than the row charged) would leave the wallet and the ledger disagreeing,
    or fail the replay at every start."""
    if debit is not None and (type(debit) is not int or debit < 0 or debit != charge):
        raise ValueError("a line with a bad debit")
    return debit or None


_INT64 = 1 << 63
# the positions of the columns holding a number (the rest hold text): from _COLUMN_TYPES
_CHARGED = COLUMNS.index("credits_charged_pusd")
_CLIENT_ID = COLUMNS.index("client_id")
_REAL = frozenset(i for i, t in enumerate(_COLUMN_TYPES.values()) if t is float)
_INTEGER = frozenset(i for i, t in enumerate(_COLUMN_TYPES.values()) if t is int)
# token counts and money: never below 0 in a row (a refund is the wallet's own kind)
_NON_NEGATIVE = frozenset(
    i for i, c in enumerate(COLUMNS) if c.endswith("_tokens") or c.endswith("_pusd")
)


def _storable(params: tuple[Any, ...]) -> tuple[Any, ...]:
    """``params`` if every value is of its column's type, else ValueError: a journal left
    in a synced home may hold anything, and a value the database cannot take (a list, an
    int past 64 bits, a word where PostgreSQL wants a number) would fail the whole
    reclaim, so the ledger could not open again; a float as money would break every read
    of the rows. A lone surrogate or NUL in a text is not damage: it is stored as U+FFFD
    (:func:`clean_text`, where statements reach the database). A row without a client id is
    damage too: rows and debits are unique on it (a debit without one fails the replay at
    every start)."""
    client_id = params[_CLIENT_ID]
    if type(client_id) is not str or not client_id:
        raise ValueError("a line without a client id")
    for index, value in enumerate(params):
        if value is None:
            continue
        kind = type(value)
        if index in _INTEGER or (index in _REAL and kind is not float):
            ok = (kind is int and -_INT64 <= value < _INT64) or kind is bool
            ok = ok and (value >= 0 or index not in _NON_NEGATIVE)
        elif index in _REAL:
            ok = math.isfinite(value)
        else:
            ok = kind is str
        if not ok:
            raise ValueError("a journal line with a value its column cannot hold")
    return params


def _priced_intent(data: Any) -> _Item:
    """A journal line → the ``interrupted`` row to record, priced from its estimated tokens
    by the one cost rule, with the wallet debit a cut stream would have."""
    from .accounting import charge_for, cost_of  # here: accounting imports this module
    from .pricing import provider_cost, usage_problem
    from .types import Usage

    row = _journal_row(data)
    # every count the line has (a note holds no cache tokens today; a line from an older
    # version may lack the later columns)
    usage = Usage(
        int(row["input_tokens"]),
        int(row["output_tokens"]),
        int(row.get("cache_read_tokens") or 0),
        int(row.get("cache_write_tokens") or 0),
        cache_write_1h_tokens=int(row.get("cache_write_1h_tokens") or 0),
    )
    if usage_problem(usage) is not None:
        # priced, such counts cost less than nothing: a negative charge the wallet refuses
        # (the reclaim would fail at every start) or a cost that lowers spend and caps
        raise ValueError("a note with counts no request has")
    quote = provider_cost(row["provider"], row["model"] or row["model_requested"], usage)
    test_mode = bool(row.get("test_mode"))
    charge = Decimal(0) if test_mode else charge_for(row["route"], quote.cost_usd)
    row["provider_cost_pusd"] = to_pusd(quote.cost_usd)
    row["credits_charged_pusd"] = to_pusd(charge) or 0
    row["cost_pusd"] = to_pusd(cost_of(row["route"], quote.cost_usd, charge, test_mode=test_mode))
    row["price_version"] = quote.version
    return _Item(_params_from(row), None, row["credits_charged_pusd"] or None)


def _spilled_estimate(data: Any, client_id: str) -> _Item | None:
    """A spill line's estimate for its request (the journal line noted before it was
    sent, see _Item.to_json), priced; None when it has none or it cannot be a row."""
    try:
        noted = data.get("estimate")
        if noted is None or _is_settled(noted):
            return None
        noted_id, item = _journal_item(noted)
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, AttributeError):
        return None
    return item if noted_id == client_id else None


def _run_together(callback: Callable[..., Any]) -> Callable[[list[Any]], Any] | None:
    """What runs a run of such after-commit callbacks at once (their ``run_together``), or
    None: each runs alone."""
    return getattr(callback, "run_together", None)


def _rollback(conn: Any) -> None:
    """End a failed transaction (a failed COMMIT may or may not have ended it already)."""
    if conn.in_transaction:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")


@dataclass(slots=True)
class _Item:
    """One queued write: a row (``params``) with its optional debit and in-transaction
    callback, or (``params`` None) an after-commit callback."""

    params: tuple[Any, ...] | None
    callback: Callable[..., Any] | None
    debit_pusd: int | None

    def to_json(self, noted: Callable[[str], str | None] | None = None) -> dict[str, Any]:
        """The spill file's line; with the estimate ``noted`` holds for the row's request
        (its in-flight journal line), recorded instead if the row cannot be stored."""
        assert self.params is not None
        if self.callback is not None:
            _log.error("cencori_nb: a spilled ledger row loses its on_insert callback")
        data = {
            "v": 1,
            "row": dict(zip(COLUMNS, self.params, strict=True)),
            "debit_pusd": self.debit_pusd,
        }
        line = noted(self.params[_CLIENT_ID]) if noted is not None else None
        if line is not None:
            data["estimate"] = json.loads(line)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Item:
        return cls(_params_from(data["row"]), None, data.get("debit_pusd"))


# How long the writer gathers rows before committing them in one transaction, and the most
# it gathers. One commit per request cost the writer ~300 µs of CPU a row (six WAL pages:
# the row, its indexes, the daily rollup) and woke it, to contend for the GIL, on every
# request; gathered, a row costs a fraction of that (docs/benchmarks.md, "Per-call
# overhead"), and the fewer commits overlap the caller's next requests, the less they slow
# them. Nothing waits for the linger: flush() (every read, a budget check, the cache
# waiting for its row, interpreter exit) cuts it short. A row not yet committed is in the
# in-flight journal as it was queued (_Journal.settled), so a process killed meanwhile
# still has it recorded exactly, tokens, cost and debit; the linger only decides how late
# another process sees it (a hard cap never waits on it: a budgeted request's row is
# written at once, with its reservation's release).
WRITER_LINGER_S = 0.25
WRITER_MAX_BATCH = 256


class _Writer:
    """The background thread that commits submitted rows in batches: it wakes for the first
    row, gathers for up to :data:`WRITER_LINGER_S` (less when flushed, stopped or full),
    then commits the batch in one transaction."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.pid = os.getpid()
        self.cond = threading.Condition()
        self.pending: list[_Item] = []
        self.submitted = 0  # rows submitted so far
        self.done = 0  # rows committed (or dropped) so far
        self.waiting = 0  # callers inside flush(): commit now
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="cencori-nb-ledger", daemon=True)
        self.thread.start()

    def submit(self, item: _Item) -> None:
        with self.cond:
            self.pending.append(item)
            self.submitted += 1
            # wake the writer for the first row of a batch and when the batch is full; the
            # rows between join the batch without a wake-up (and a GIL hand-over) each
            if len(self.pending) == 1 or len(self.pending) >= WRITER_MAX_BATCH:
                self.cond.notify_all()

    def flush(self) -> None:
        if threading.current_thread() is self.thread:
            return  # never wait on ourselves
        with self.cond:
            target = self.submitted
            if self.done >= target:
                return
            self.waiting += 1
            try:
                self.cond.notify_all()  # end the writer's linger
                self.cond.wait_for(lambda: self.done >= target or not self.thread.is_alive())
            finally:
                self.waiting -= 1

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if threading.current_thread() is not self.thread:
            self.thread.join()

    def _now(self) -> bool:
        return self.stopping or self.waiting > 0 or len(self.pending) >= WRITER_MAX_BATCH

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self.pending) or self.stopping)
                if not self.pending:
                    return  # stopping, and nothing left to write
                if WRITER_LINGER_S > 0:
                    self.cond.wait_for(self._now, timeout=WRITER_LINGER_S)
                batch, self.pending = self.pending, []
            try:
                self.ledger._write_batch(batch)
            finally:
                with self.cond:
                    self.done += len(batch)
                    self.cond.notify_all()


ENV_LEDGER_URL = "CENCORI_NB_LEDGER_URL"


def _open() -> Ledger:
    from .ledger_postgres import PostgresLedger, configured_url  # here: it imports this module

    url = configured_url()
    return Ledger() if url is None else PostgresLedger(url)


def _close(led: Ledger) -> None:
    led.flush()
    led.close()


# The ledger of the current home and ledger URL, registered with cencori_nb.state: when
# CENCORI_NB_HOME or CENCORI_NB_LEDGER_URL changes, the next call flushes and closes this
# one and opens the new one (`cencori-nb ledger use` resets it when it saves a URL).
_default = state.register("ledger", open=_open, close=_close, env=(ENV_HOME, ENV_LEDGER_URL))


def default_ledger() -> Ledger:
    """The process's ledger (opened and migrated on first use): PostgreSQL when a ledger
    URL is configured (``CENCORI_NB_LEDGER_URL``, else ``cencori-nb ledger use URL``), else
    ``ledger.sqlite`` in the current home."""
    return _default.get()


@atexit.register
def _close_at_exit() -> None:  # pragma: no cover - interpreter shutdown
    with contextlib.suppress(Exception):
        _default.reset()  # what the writer still holds is written
