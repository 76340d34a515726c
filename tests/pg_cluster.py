"""A throwaway PostgreSQL cluster for the tests: a real server, never a mock.

``./dev test`` installs Debian's ``postgresql`` package when no server binaries are found.
The cluster lives in a temporary directory: ``initdb`` refuses to run as root, so when the
tests run as root (CI) the server runs as the ``postgres`` system user (which the Debian
package creates) or else ``nobody``. It listens on a free TCP port on 127.0.0.1 (password
auth, SCRAM) and on a unix socket in the temporary directory (trust, for the fixtures'
own administration). The postmaster gets SIGQUIT if the test process dies
(``PR_SET_PDEATHSIG``), so an interrupted run leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ADMIN = "cnb_admin"
ADMIN_PASSWORD = "pw-" + uuid.uuid4().hex  # noqa: S105 - a throwaway cluster's password


def find_bindir() -> Path | None:
    """The newest PostgreSQL server bin directory on this machine (Debian's layout)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG: immediate shutdown if we die


class Cluster:
    """One initdb'd data directory and its running postmaster."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.version = int(bindir.parts[-2]) if bindir.parts[-2].isdigit() else 0
        self.root = Path(tempfile.mkdtemp(prefix="cnb-pg-"))
        # the server user must reach its folders inside (search only: no listing)
        os.chmod(self.root, 0o711)  # noqa: S103
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        self.uid = os.getuid()
        self.gid = os.getgid()
        if os.getuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user, self.uid, self.gid = name, entry.pw_uid, entry.pw_gid
                break
            else:  # pragma: no cover - every Debian has nobody
                raise RuntimeError("no non-root user to run the PostgreSQL test cluster as")
        for d in (self.data, self.sockdir):
            d.mkdir(mode=0o700)
            os.chown(d, self.uid, self.gid)
        self.log = self.root / "server.log"

    def _as_server_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        os.chown(pwfile, self.uid, self.gid)
        os.chmod(pwfile, 0o600)
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                ADMIN,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            **self._as_server_user(),
        )
        pwfile.unlink()

    def start(self) -> None:
        log = open(self.log, "ab")  # handed to the child, closed here after
        os.chown(self.log, self.uid, self.gid)
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.sockdir),
                "-c",
                "listen_addresses=127.0.0.1",
                # fsync off: a killed server loses nothing (the kernel has the data), only
                # a power cut would; synchronous_commit stays on, as a team's server has it,
                # or a crash (SIGQUIT in the tests) would lose acknowledged commits
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            preexec_fn=_die_with_parent,  # only prctl, before exec
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            **self._as_server_user(),
        )
        # a test that stops and starts the server (it going away mid-run) leaves it serving
        # the rest of the run: the per-test reaper (conftest._reap_children) must not kill it
        self.proc.outlives_test = True  # type: ignore[attr-defined]
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start:\n{self.log.read_text()[-2000:]}")
            done = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", str(self.sockdir), "-p", str(self.port)],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT: roll back, disconnect) or ``immediate``
        (SIGQUIT, like a crash)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what tests use --------------------------------------------------------------------
    def admin_dsn(self, dbname: str = "postgres") -> str:
        """A unix-socket DSN for the admin (trust auth: for fixtures only)."""
        return f"host={self.sockdir} port={self.port} user={ADMIN} dbname={dbname}"

    def url(self, dbname: str, *, user: str = ADMIN, password: str | None = ADMIN_PASSWORD) -> str:
        """A ``postgresql://`` URL over TCP with a password, as a team would write it."""
        cred = user if password is None else f"{user}:{password}"
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.admin_dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
