"""The ledger on a PostgreSQL server a team shares (issue 17).

Chosen by ``CENCORI_NB_LEDGER_URL`` (``postgresql://user:password@host:5432/db``), else by
the URL saved with ``cencori-nb ledger use URL`` (in ``ledger_url``, a 0600 file in the
home); without either, the ledger is the SQLite file in the home. :func:`default_ledger
<cencori_nb.ledger.default_ledger>` returns a :class:`PostgresLedger`, and every caller
uses it exactly like the SQLite one: same tables, same migrations by name
(:data:`cencori_nb.migrations.PG_MIGRATIONS`), same SQL (``?`` parameters are turned into
psycopg's ``%s`` here), same guarantees (rows unique on the client's id, a wallet debit in
its row's transaction, the response cache written only after the row commits, the in-flight
journal and spill file on local disk).

How the guarantees carry over to a server many processes write to:

- every write transaction first takes one transaction-scoped advisory lock
  (``pg_advisory_xact_lock``), the equivalent of SQLite's ``BEGIN IMMEDIATE``: the
  read-modify-writes (a reservation against a cap, a wallet debit) see every committed
  write and exclude each other, across machines;
- connections come from a psycopg pool (checked before use, so a server restart costs no
  failed request), one process-wide;
- **when the server is away**: rows the writer cannot commit go to the local spill file and
  requests go on; :meth:`PostgresLedger.check` retries every :data:`RETRY_S` seconds and
  writes them (unique on ``client_id``: nothing twice). A request under a hard cap needs its
  reservation on the server, so it is refused with a one-line message until it is back.

Nothing secret is written to the server: rows hold names, counts and money, never keys
(the key store stays local). The URL's password never appears in output, errors or logs:
the ledger is shown as ``…@host:port/db`` (:attr:`LedgerURL.display`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import state
from .errors import ConfigurationError, LedgerError
from .home import atomic_write, ensure_home, home_dir
from .ledger import ENV_LEDGER_URL, INSERT_SQL, Ledger, _Item, clean_params
from .migrations import PG_MIGRATIONS

__all__ = [
    "MIN_SERVER_VERSION",
    "LedgerURL",
    "PostgresLedger",
    "applied",
    "configured_url",
    "migrate",
    "parse_url",
    "save_url",
]

# The oldest release the PostgreSQL project still supported when this backend was written.
MIN_SERVER_VERSION = 140000
RETRY_S = 5.0  # how often a request retries writing rows that wait for an away server
CONNECT_TIMEOUT_S = 5
CHECK_IDLE_S = 2.0  # a pooled connection idle this long is checked before it is lent
# Advisory lock keys (any constant bigint; these spell "cnb-write" and "cnb-migr" in ASCII).
WRITE_LOCK = 0x636E622D7772
MIGRATE_LOCK = 0x636E622D6D67
URL_FILE = "ledger_url"


@dataclass(frozen=True)
class LedgerURL:
    """A PostgreSQL connection URL. ``secret`` (with the password) goes to the driver
    only; ``display`` (``…@host:port/db``) is what people see; ``key`` names the database
    without the password (which ledger a process has open)."""

    secret: str
    display: str
    key: str

    def __repr__(self) -> str:
        return f"LedgerURL({self.display!r})"

    __str__ = __repr__

    def redact(self, text: str) -> str:
        """``text`` with the URL and its password replaced by the display form."""
        out = text.replace(self.secret, self.display)
        password = _password(self.secret)
        if password and len(password) >= 3:
            out = out.replace(password, "…")
            quoted = self.secret.split("@", 1)[0].rsplit(":", 1)[-1]
            if quoted and len(quoted) >= 3:
                out = out.replace(quoted, "…")
        return out


def _password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    pw = parts.password
    if pw is None:
        match = re.search(r"[?&]password=([^&]*)", url)
        pw = match.group(1) if match else None
    return unquote(pw) if pw else None


def parse_url(text: str, *, source: str = "the ledger URL") -> LedgerURL:
    """Check that ``text`` is a ``postgresql://`` URL and build its :class:`LedgerURL`.

    Raises :class:`ConfigurationError` (naming ``source``, never the password) when it is
    not one."""
    raw = (text or "").strip()
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme not in ("postgresql", "postgres"):
        shown = scheme + "://…" if scheme else "a value without a scheme"
        raise ConfigurationError(
            f"{source} is not a PostgreSQL URL (it starts with {shown}).",
            hint="Write postgresql://USER@HOST:5432/DATABASE (the password in PGPASSWORD, "
            "~/.pgpass, or in the URL when it comes from the environment or a 0600 file).",
        )
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            f"{source} cannot be read as a URL (a bad port or bracket).",
            hint="Write postgresql://USER@HOST:5432/DATABASE.",
        ) from None
    host = parts.hostname or "localhost"
    db = unquote(parts.path.lstrip("/")) or (unquote(parts.username or "") or "postgres")
    user = unquote(parts.username) if parts.username else ""
    where = f"{host}:{port}" if port else host
    display = f"postgresql://…@{where}/{db}"
    # the query may name a socket directory (host=/run/postgresql): part of the identity
    query = re.sub(r"(^|&)password=[^&]*", "", parts.query)
    key = f"{user}@{where}/{db}?{query}"
    return LedgerURL(raw, display, key)


def _url_file() -> Path:
    return home_dir() / URL_FILE


def configured_url() -> LedgerURL | None:
    """The PostgreSQL ledger's URL: ``CENCORI_NB_LEDGER_URL``, else the URL saved by
    ``cencori-nb ledger use``; None for the SQLite ledger. A saved URL whose file others
    can read is refused (it may hold a password)."""
    env = os.environ.get(ENV_LEDGER_URL)
    if env is not None and env.strip():
        return parse_url(env, source=ENV_LEDGER_URL)
    path = _url_file()
    try:
        st = path.stat()
    except OSError:
        return None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigurationError(
            f"{path} (the team ledger's URL, which may hold a password) can be read by "
            "other users; it was not used.",
            hint=f"Run chmod 600 {path}, or save it again with `cencori-nb ledger use URL`.",
            path=path,
        )
    text = path.read_text(encoding="utf-8").strip()
    if not text or text == "sqlite":
        return None
    return parse_url(text, source=str(path))


def save_url(url: str | None) -> LedgerURL | None:
    """Save the team ledger's URL for later runs (a 0600 file in the home), or forget it
    (None: back to the SQLite ledger). Returns the parsed URL."""
    ensure_home()
    if url is None or url.strip().lower() in ("", "sqlite", "none"):
        with contextlib.suppress(FileNotFoundError):
            _url_file().unlink()
        state.reset("ledger")  # this process's next call uses the SQLite ledger
        return None
    parsed = parse_url(url)
    atomic_write(_url_file(), parsed.secret.encode() + b"\n")
    state.reset("ledger")  # this process's next call uses the saved URL
    return parsed


# --------------------------------------------------------------------------- errors


def _is_away(exc: BaseException) -> bool:
    """A failure to reach the server (as opposed to a refusal by it)."""
    text = str(exc).lower()
    refusals = ("password authentication", "does not exist", "no pg_hba", "permission denied")
    if any(word in text for word in refusals):
        return False
    import psycopg
    from psycopg_pool import PoolTimeout

    return isinstance(exc, (psycopg.OperationalError, PoolTimeout))


def ledger_error(url: LedgerURL, exc: BaseException) -> LedgerError:
    """One line a person can act on for a driver failure on ``url`` (password redacted)."""
    text = url.redact(" ".join(str(exc).split()))
    low = text.lower()
    where = url.display
    if "password authentication failed" in low or "no password supplied" in low:
        msg = f"The team ledger {where} refused the credentials (bad user or password)"
        hint = (
            "Check the user and password (CENCORI_NB_LEDGER_URL, ~/.pgpass or PGPASSWORD); "
            "the server's administrator can reset them."
        )
    elif re.search(r'database ".*" does not exist', low):
        msg = f"The team ledger's database does not exist on the server ({where})"
        hint = "Create it (createdb, or CREATE DATABASE as an administrator), then run again."
    elif "no pg_hba.conf entry" in low:
        msg = f"The team ledger {where} does not accept connections from this machine"
        hint = "Ask its administrator to allow this host (pg_hba.conf)."
    elif _is_away(exc):
        msg = f"The team ledger {where} cannot be reached ({_short(text)})"
        hint = (
            "Check the host and port and that the server is running. Requests under a hard "
            "cap are refused until it is reachable; others are recorded locally and sent "
            "when it is back."
        )
    else:
        msg = f"The team ledger {where} failed ({_short(text)})"
        hint = "Check the server's log; run again when it is fixed."
    error = LedgerError(msg + "; no request was sent.", hint=hint, reason=_short(text))
    error.away = _is_away(exc)  # type: ignore[attr-defined]  # read by the client's retry
    return error


def _short(text: str) -> str:
    text = re.sub(r"^connection failed: ", "", text)
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- SQL


def _pg_sql(sql: str) -> str:
    """The ledger's SQL (``?`` parameters) in psycopg's (``%s``; a literal ``%`` doubled).
    Quoted strings are left alone."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


def _pg_params(params: Sequence[Any]) -> tuple[Any, ...]:
    """``params`` with the ledger's one text rule applied (:func:`cencori_nb.ledger.
    clean_text`: a NUL, which PostgreSQL text cannot hold, or a lone surrogate becomes
    U+FFFD), as ``ledger._SQLiteConnection`` does on SQLite: every statement (rows, the
    wallet's, the budgets'), so no value is refused for its text and a lookup by such a
    value finds what was stored."""
    return clean_params(params)


class _Connection:
    """A pooled psycopg connection (autocommit: transactions are explicit, as with the
    SQLite connection) answering the few sqlite3 calls the ledger's callers make."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cur = self.raw.cursor()
        if params:
            cur.execute(_pg_sql(sql), _pg_params(params))
        else:
            cur.execute(sql)
        return cur

    def executemany(self, sql: str, seq: Any) -> Any:
        cur = self.raw.cursor()
        cur.executemany(_pg_sql(sql), [_pg_params(p) for p in seq])
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)


def _server_version(conn: Any) -> int:
    return int(conn.info.server_version)


def _check_version(url: LedgerURL, version: int) -> None:
    if version < MIN_SERVER_VERSION:
        have = f"{version // 10000}.{version % 10000}"
        raise LedgerError(
            f"The team ledger {url.display} runs PostgreSQL {have}; this toolkit needs "
            f"{MIN_SERVER_VERSION // 10000} or newer. No request was sent.",
            hint="Point CENCORI_NB_LEDGER_URL at a newer server (or upgrade this one).",
            reason=f"server version {have}",
        )


def applied(conn: Any) -> list[str]:
    """Names of the migrations recorded in a PostgreSQL ledger, in order applied."""
    cur = conn.execute("SELECT to_regclass('_migrations')")
    if cur.fetchone()[0] is None:
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY position")]


def migrate(conn: Any) -> list[str]:
    """Apply the missing :data:`PG_MIGRATIONS` in one transaction (DDL is transactional in
    PostgreSQL) under an advisory lock, so two processes starting at once cannot both
    apply a step. ``conn`` is a :class:`_Connection`."""
    conn.execute("BEGIN")
    try:
        conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (position INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL UNIQUE, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = set(applied(conn))
        new: list[str] = []
        for position, (name, statements) in enumerate(PG_MIGRATIONS, start=1):
            if name in done:
                continue
            for sql in statements:
                conn.execute(sql)
            conn.execute("INSERT INTO _migrations (position, name) VALUES (?, ?)", (position, name))
            new.append(name)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")
        raise
    return new


# --------------------------------------------------------------------------- the ledger


class PostgresLedger(Ledger):
    """The ledger in a PostgreSQL database (see the module docstring). Local files (spill,
    in-flight journal) live in the home, named after the database."""

    dialect = "postgresql"

    def __init__(self, url: LedgerURL | str) -> None:
        import psycopg
        from psycopg_pool import PoolTimeout

        self.url = url if isinstance(url, LedgerURL) else parse_url(url)
        self.target = self.url.key
        self._db_errors = (psycopg.Error, PoolTimeout)
        self._integrity_errors = (psycopg.IntegrityError,)
        # a value the server refuses (a number out of its column's range): the row's fault,
        # like a failed CHECK; not the server's, which would spill it and stop requests
        self._bad_row_errors = (psycopg.IntegrityError, psycopg.DataError)
        self._pool: Any = None
        self._pool_pid = -1
        self._active: _Connection | None = None  # the connection of the open statement(s)
        self._away = False  # the last failure was the server being unreachable
        self._retrying = False  # retry() is writing the waiting rows
        self._used: dict[int, float] = {}  # pooled connection id -> when last returned
        self._last_retry = 0.0
        self.server_version = 0
        digest = hashlib.sha256(self.url.key.encode()).hexdigest()[:12]
        home = ensure_home()
        super().__init__(home / f"ledger-pg-{digest}")

    @property
    def label(self) -> str:
        return self.url.display

    @property
    def is_shared(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"PostgresLedger({self.url.display!r})"

    # -- connecting -----------------------------------------------------------------------
    def _connect_direct(self) -> Any:
        import psycopg

        try:
            raw = psycopg.connect(
                self.url.secret, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.Error as exc:
            raise ledger_error(self.url, exc) from None
        except (ValueError, TypeError) as exc:  # psycopg.ProgrammingError is a psycopg.Error
            raise ledger_error(self.url, exc) from None
        return raw

    def migrate(self) -> list[str]:
        """Apply the missing migrations now; returns their names."""
        raw = self._connect_direct()
        try:
            self.server_version = _server_version(raw)
            _check_version(self.url, self.server_version)
            with self._sqlite_errors():
                return migrate(_Connection(raw))
        finally:
            raw.close()

    def applied(self) -> list[str]:
        raw = self._connect_direct()
        try:
            with self._sqlite_errors():
                return applied(_Connection(raw))
        finally:
            raw.close()

    def _open(self) -> None:
        """Check the server (reachable, credentials, database, version), migrate, start
        the pool, then write rows left in the spill file and the in-flight journals. A
        server that cannot be reached is not an error here: rows wait on local disk."""
        try:
            self.migrate()
        except LedgerError as exc:
            if not getattr(exc, "away", False):
                raise
            self._mark_away(exc.reason or exc.message)
            self._pid = os.getpid()
            return
        self._pid = os.getpid()
        self._replay_spill()
        self._reclaim_inflight()

    def _mark_away(self, reason: str) -> None:
        with self._spill_lock:
            self._away = True
            if self._failure is None:
                self._failure, self._failure_reported = reason, False

    def _get_pool(self) -> Any:
        if self._pool is None or self._pool_pid != os.getpid():
            from psycopg_pool import ConnectionPool

            # a pool copied by fork belongs to the parent: never close it from here
            self._pool = ConnectionPool(
                self.url.secret,
                min_size=1,
                max_size=2,  # one connection is used at a time (the ledger's lock)
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                timeout=CONNECT_TIMEOUT_S,
                check=self._check_if_idle,
                name="cencori-nb-ledger",
                open=True,
            )
            self._pool_pid = os.getpid()
        return self._pool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._active is not None and self._pid == os.getpid():
            yield self._active  # a query inside a transaction: same connection, same lock
            return
        if self._away and not self._retrying:
            import psycopg

            # fail at once instead of waiting on the pool: rows go to the spill file, a
            # warning-only read is skipped, a hard cap refuses; check() retries
            raise psycopg.OperationalError(f"server away: {self._failure or 'unreachable'}")
        self._pid = os.getpid()
        with self._get_pool().connection() as raw:
            self._active = _Connection(raw)
            try:
                yield self._active
            finally:
                self._active = None
                self._used[id(raw)] = time.monotonic()

    def _check_if_idle(self, raw: Any) -> None:
        """The pool's check before lending a connection: a round trip, but only for one idle
        for :data:`CHECK_IDLE_S` or more (a server restart is then caught before it costs a
        request). One used just now is lent as it is; if the server went away meanwhile, the
        statement fails and its rows wait on disk like any other while it is away."""
        from psycopg_pool import ConnectionPool

        if time.monotonic() - self._used.get(id(raw), 0.0) >= CHECK_IDLE_S:
            ConnectionPool.check_connection(raw)

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN")
        conn.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")

    def _insert_items(self, conn: Any, batch: list[_Item]) -> None:
        """Rows with nothing to do after their insert (no debit, no callback) go in one
        ``executemany`` (psycopg pipelines it: one round trip instead of one per row); a
        row with a debit or callback needs its own insert's answer, so it goes alone."""
        plain: list[tuple[Any, ...]] = []
        for item in batch:
            if item.params is None:
                continue
            if item.debit_pusd is None and item.callback is None:
                plain.append(item.params)
                continue
            if plain:
                conn.executemany(INSERT_SQL, plain)
                plain = []
            self._insert_item(conn, item)
        if plain:
            conn.executemany(INSERT_SQL, plain)

    def _error(self, exc: BaseException) -> LedgerError:
        if isinstance(exc, LedgerError):
            return exc
        return ledger_error(self.url, exc)

    def _reason(self, exc: BaseException) -> str:
        if _is_away(exc):
            self._away = True
        return _short(self.url.redact(" ".join(str(exc).split())))

    def _close_connection(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            with contextlib.suppress(Exception):
                pool.close(timeout=5)

    # -- when the server is away ------------------------------------------------------------
    def check(self) -> None:
        """As :meth:`Ledger.check`, except while the server is away: then requests go on
        (their rows wait in the local spill file) and, at most every :data:`RETRY_S`
        seconds, the waiting rows are written once it answers again."""
        if self._failure is None:
            return
        if not self._away:
            super().check()
            return
        now = time.monotonic()
        if now - self._last_retry < RETRY_S:
            return
        self._last_retry = now
        self.retry()

    def retry(self) -> bool:
        """Try now to write the rows waiting for the server; True when none wait."""
        with self._spill_lock:
            if self._failure is None:
                return True
            try:
                # a direct connection first (also migrates, if it was away at start); then a
                # fresh pool: the old one may be deep in its reconnect backoff
                self.migrate()
                with self._lock:
                    self._close_connection()
                    self._retrying = True
                try:
                    self._write_spill()
                    if not self._unspilled:
                        self._replay_spill()
                        # and what dead processes left in flight: a start while the server
                        # was away could not record it (a team cap would not count it)
                        self._reclaim_inflight()
                        self._failure, self._pending, self._away = None, 0, False
                        return True
                finally:
                    self._retrying = False
            except LedgerError as exc:
                self._failure = exc.reason or exc.message
                self._away = bool(getattr(exc, "away", False))
                if not self._away:
                    raise
        return False

    @property
    def waiting(self) -> int:
        """Rows recorded by this process that wait for the server (in the spill file)."""
        return self._pending
