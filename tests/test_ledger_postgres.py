"""The PostgreSQL ledger (issue 17), against a real throwaway server (tests/pg_cluster.py)."""

from __future__ import annotations

import os
from typing import Any

import psycopg


def test_cluster_is_real_and_not_root(pg_cluster: Any, pg_url: str) -> None:
    """The test cluster is a real server, run by a non-root user, reached with a password."""
    with psycopg.connect(pg_url) as conn:
        (version,) = conn.execute("SHOW server_version_num").fetchone()  # type: ignore[misc]
        (db,) = conn.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
    assert int(version) >= 130000
    assert pg_url.endswith("/" + db)
    owner = os.stat(pg_cluster.data).st_uid
    assert owner != 0
    assert pg_cluster.proc is not None and pg_cluster.proc.poll() is None
    # a wrong password is refused: host connections really use password auth
    bad = pg_url.replace(":pw-", ":wrong-")
    try:
        psycopg.connect(bad, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("a wrong password was accepted")
