"""Every CLI command against every broken environment a user can cause: one plain line.

The README promises "exit 1, one plain message on stderr, no traceback" for anything a user
can cause. This is checked as a property of the whole CLI, not case by case: each command
(the rows of ``COMMANDS``) runs as a real process against each environment (``ENVIRONMENTS``:
damaged, misplaced, oversized or undecodable home files, a home that is a file, bad bytes,
bad environment values, a full disk, an unreachable or hanging sandbox). For each pair:

- no traceback, and stderr is at most one line, starting ``cencori-nb:``;
- the exit code is 0 (the command did not need the broken part), 1 (a user error) or 2
  (a usage error);
- on a failure the line names the file or value at fault (the environment's ``names``),
  and every file that was in the home before is byte for byte the same afterwards.

Permission-based cases (unreadable files) are skipped as root, who reads everything.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

OPENAI_TEST_KEY = "sk-envmatrix-" + "Q" * 28


@dataclass(frozen=True)
class Command:
    name: str
    argv: tuple[str, ...]
    stdin: bytes = b""
    needs_sandbox: bool = False


COMMANDS = [
    Command("keys list", ("keys", "list")),
    Command("keys list --json", ("keys", "list", "--json")),
    Command("keys set", ("keys", "set", "anthropic"), stdin=b"sk-ant-envmatrix-" + b"R" * 30),
    Command("ask", ("ask", "hello there", "-m", "gpt-4o-mini", "--no-stream"), needs_sandbox=True),
    Command(
        "ask stdin", ("ask", "-m", "gpt-4o-mini"), stdin=b"hello from stdin", needs_sandbox=True
    ),
    Command("usage", ("usage",)),
    Command("usage --json", ("usage", "--json")),
    Command("credits", ("credits",)),
    Command("credits top-up", ("credits", "top-up", "5")),
    Command("lab --dry-run", ("lab", "--dry-run")),
]


@dataclass
class Env:
    """A broken environment: ``prepare(home, env)`` breaks a copy of a healthy home."""

    name: str
    prepare: Callable[[Path, dict[str, str]], None]
    names: tuple[str, ...] = ()  # one of these must be in a failure's line
    full_disk: bool = False
    root_skips: bool = False
    argv_extra: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None
    stdin: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _write(rel: str, data: bytes) -> Callable[[Path, dict[str, str]], None]:
    def prepare(home: Path, env: dict[str, str]) -> None:
        path = home / rel
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(data)
        os.chmod(path, 0o600)

    return prepare


def _make_dir(rel: str) -> Callable[[Path, dict[str, str]], None]:
    def prepare(home: Path, env: dict[str, str]) -> None:
        path = home / rel
        if path.exists():
            path.unlink()
        path.mkdir(mode=0o700)

    return prepare


def _set_env(**values: str) -> Callable[[Path, dict[str, str]], None]:
    def prepare(home: Path, env: dict[str, str]) -> None:
        env.update(values)

    return prepare


def _home_is_a_file(home: Path, env: dict[str, str]) -> None:
    target = home.parent / "not-a-folder"
    target.write_text("a file where the home should be\n")
    env["CENCORI_NB_HOME"] = str(target)


def _home_under_a_file(home: Path, env: dict[str, str]) -> None:
    target = home.parent / "plain-file"
    target.write_text("x\n")
    env["CENCORI_NB_HOME"] = str(target / "home")


def _unreadable(rel: str) -> Callable[[Path, dict[str, str]], None]:
    def prepare(home: Path, env: dict[str, str]) -> None:
        os.chmod(home / rel, 0)

    return prepare


def _hanging_sandbox(home: Path, env: dict[str, str]) -> None:
    env["CENCORI_NB_SANDBOX"] = _HANGING.url


def _closed_port_sandbox(home: Path, env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["CENCORI_NB_SANDBOX"] = f"http://127.0.0.1:{port}"


ENVIRONMENTS = [
    Env("healthy", lambda home, env: None),
    Env(
        "ledger damaged",
        _write("ledger.sqlite", b"this is not a database" * 100),
        names=("ledger.sqlite", "database"),
    ),
    Env("ledger is a folder", _make_dir("ledger.sqlite"), names=("ledger.sqlite",)),
    Env("ledger empty", _write("ledger.sqlite", b""), names=("ledger.sqlite",)),
    Env("config.json not JSON", _write("config.json", b"{not json"), names=("config.json",)),
    Env("config.json a list", _write("config.json", b"[1, 2]"), names=("config.json",)),
    Env(
        "config.json not UTF-8",
        _write("config.json", b'{"project": "\xff\xfe"}'),
        names=("config.json", "UTF-8"),
    ),
    Env("config.json is a folder", _make_dir("config.json"), names=("config.json",)),
    Env(
        "keystore damaged",
        _write("keystore.json", b'{"version": 1, "garbage'),
        names=("keystore.json",),
    ),
    Env("keystore is a folder", _make_dir("keystore.json"), names=("keystore.json",)),
    Env("home is a file", _home_is_a_file, names=("not-a-folder", "CENCORI_NB_HOME")),
    Env("home under a file", _home_under_a_file, names=("plain-file", "CENCORI_NB_HOME")),
    Env(
        "full disk",
        lambda home, env: None,
        full_disk=True,
        names=("disk", "limit", "ledger.sqlite", "keystore.json", "space"),
    ),
    Env(
        "argv not UTF-8",
        lambda home, env: None,
        names=("UTF-8",),
        argv_extra=lambda argv: tuple(a.replace("hello", "hello \udcff\udcfe") for a in argv),
    ),
    Env("stdin not UTF-8", lambda home, env: None, names=("UTF-8",), stdin=b"\xff\xfe hi"),
    Env(
        "CENCORI_NB_PROJECT bad",
        _set_env(CENCORI_NB_PROJECT="../../etc"),
        names=("CENCORI_NB_PROJECT", "project"),
    ),
    Env(
        "CENCORI_NB_PROJECT empty",
        _set_env(CENCORI_NB_PROJECT=" "),
        names=("CENCORI_NB_PROJECT", "project"),
    ),
    Env(
        "CENCORI_NB_SANDBOX not a URL",
        _set_env(CENCORI_NB_SANDBOX="not a url"),
        names=("CENCORI_NB_SANDBOX", "not a url", "sandbox"),
    ),
    Env(
        "CENCORI_NB_SANDBOX ftp",
        _set_env(CENCORI_NB_SANDBOX="ftp://127.0.0.1:1"),
        names=("CENCORI_NB_SANDBOX", "ftp", "sandbox"),
    ),
    Env("sandbox unreachable", _closed_port_sandbox, names=("127.0.0.1", "connect", "sandbox")),
    Env("sandbox hangs", _hanging_sandbox, names=("127.0.0.1", "time", "sandbox")),
    Env(
        "unreadable config.json",
        _unreadable("config.json"),
        root_skips=True,
        names=("config.json",),
    ),
    Env(
        "unreadable ledger", _unreadable("ledger.sqlite"), root_skips=True, names=("ledger.sqlite",)
    ),
]


class _HangingServer:
    """Accepts connections and never answers (a sandbox that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.conns:
            conn.close()


_HANGING: _HangingServer


@pytest.fixture(scope="module", autouse=True)
def hanging_server() -> Iterator[_HangingServer]:
    global _HANGING
    _HANGING = _HangingServer()
    yield _HANGING
    _HANGING.close()


def _base_env(home: Path, sandbox_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENCORI_NB_")}
    env.update(
        CENCORI_NB_HOME=str(home),
        CENCORI_NB_SANDBOX=sandbox_url,
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        # a hanging sandbox must end in a clear timeout, not after minutes
        CENCORI_NB_TIMEOUT="3",
        PYTHONIOENCODING="utf-8",
    )
    return env


def _run(
    argv: tuple[str, ...], env: dict[str, str], stdin: bytes, *, full_disk: bool
) -> subprocess.CompletedProcess[bytes]:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    encoded = [os.fsencode(a) for a in argv]
    return subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"cencori_nb", *encoded],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
        preexec_fn=limit if full_disk else None,
        check=False,
    )


@pytest.fixture(scope="module")
def healthy_home(tmp_path_factory: pytest.TempPathFactory, _sandbox_session: Any) -> Path:
    """A home with a stored OpenAI key (the default model), a top-up and one answered
    request in the ledger, and settings: what a user has after the quickstart."""
    home = tmp_path_factory.mktemp("template") / "home"
    env = _base_env(home, _sandbox_session.url)
    for argv, stdin in (
        (
            ("keys", "set", "openai", "--default-model", "gpt-4o-mini", "--make-default"),
            OPENAI_TEST_KEY.encode(),
        ),
        (("credits", "top-up", "10"), b""),
        (("ask", "seed the ledger", "--no-stream"), b""),
    ):
        out = _run(argv, env, stdin, full_disk=False)
        assert out.returncode == 0, out.stderr.decode()
    (home / "config.json").write_text('{"project": "default"}\n')
    os.chmod(home / "config.json", 0o600)
    return home


def _snapshot(home: Path) -> dict[str, Any]:
    """Each file's digest; for a readable SQLite database, the set of rows of each table
    instead (a failed request adds its error row to the ledger: rows may be added, never
    changed or lost)."""
    out: dict[str, Any] = {}
    if not home.is_dir():
        return out
    for p in sorted(home.rglob("*")):
        if not p.is_file() or p.is_symlink() or p.name.endswith(("-wal", "-shm")):
            continue
        name = str(p.relative_to(home))
        try:
            data = p.read_bytes()
        except PermissionError:
            out[name] = "unreadable"
            continue
        out[name] = (
            _rows(p)
            if data.startswith(b"SQLite format 3\0")
            else (hashlib.sha256(data).hexdigest())
        )
    return out


def _rows(path: Path) -> dict[str, frozenset[tuple[Any, ...]]] | str:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            # t comes from sqlite_master of a file this test wrote, not from input
            return {
                t: frozenset(conn.execute(f'SELECT * FROM "{t}"'))  # noqa: S608
                for t in tables
            }
        finally:
            conn.close()
    except sqlite3.Error:
        return hashlib.sha256(path.read_bytes()).hexdigest()


def _kept(before: Any, after: Any) -> bool:
    if isinstance(before, dict) and isinstance(after, dict):
        return all(rows <= after.get(table, frozenset()) for table, rows in before.items())
    return before == after


def _check(
    command: Command, environment: Env, base: Path, healthy_home: Path, sandbox_url: str
) -> str | None:
    """Run one pair; return a description of what went wrong, or None."""
    home = base / "home"
    shutil.copytree(healthy_home, home)
    env = _base_env(home, sandbox_url)
    environment.prepare(home, env)
    before = _snapshot(home)
    argv = command.argv
    if environment.argv_extra is not None:
        argv = environment.argv_extra(argv)
    stdin = command.stdin
    if environment.stdin is not None and command.stdin:
        stdin = environment.stdin
    out = _run(argv, env, stdin, full_disk=environment.full_disk)
    err = out.stderr.decode("utf-8", "replace")
    where = f"[{command.name} × {environment.name}] exit {out.returncode}: {err!r}"
    if "Traceback" in err or "Traceback" in out.stdout.decode("utf-8", "replace"):
        return "traceback " + where
    if out.returncode not in (0, 1, 2):
        return "exit code " + where
    if out.returncode == 0:
        return None
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith("cencori-nb: warning: ")
    ]
    if out.returncode == 1:
        if len(lines) != 1 or not lines[0].startswith("cencori-nb: "):
            return "not one line " + where
        if environment.names and not any(n.lower() in lines[0].lower() for n in environment.names):
            return "does not name the file or value " + where
    after = _snapshot(home)
    changed = [name for name, was in before.items() if not _kept(was, after.get(name))]
    if changed:
        return f"changed {changed} " + where
    return None


_HEALTHY_MUST_PASS = {c.name for c in COMMANDS}


@pytest.mark.slow
@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=[e.name for e in ENVIRONMENTS])
def test_every_command_in_a_broken_environment_gives_one_line(
    environment: Env, healthy_home: Path, tmp_path: Path, _sandbox_session: Any
) -> None:
    """Each command, run as a real process in this environment: one line, no traceback,
    the file or value named, the user's files untouched."""
    if environment.root_skips and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    sandbox_url = _sandbox_session.url
    commands = COMMANDS
    if environment.stdin is not None:
        commands = [c for c in COMMANDS if c.stdin]
    if environment.argv_extra is not None:
        commands = [c for c in COMMANDS if any("hello" in a for a in c.argv)]

    def one(item: tuple[int, Command]) -> str | None:
        i, command = item
        base = tmp_path / f"run{i}"
        base.mkdir()
        return _check(command, environment, base, healthy_home, sandbox_url)

    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(one, enumerate(commands)) if p]
    assert not problems, "\n".join(problems)
    if environment.name == "healthy":
        # The matrix can fail: in a healthy home every command succeeds.
        for i, command in enumerate(COMMANDS):
            base = tmp_path / f"healthy{i}"
            base.mkdir()
            home = base / "home"
            shutil.copytree(healthy_home, home)
            out = _run(command.argv, _base_env(home, sandbox_url), command.stdin, full_disk=False)
            assert out.returncode == 0, (command.name, out.stderr.decode())
