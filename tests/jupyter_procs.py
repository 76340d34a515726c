"""Start and stop real Jupyter servers for tests (used by the scrubber and browser tests).

Every server gets its own config, data, runtime, IPython and JupyterLab settings folders
under a temp directory, so nothing from ``~/.jupyter`` leaks in and nothing is written
into the real home.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

__all__ = ["JupyterProcess", "free_port", "isolated_jupyter_env"]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_jupyter_env(base: Path, **extra: str) -> dict[str, str]:
    """The current environment with every Jupyter/IPython user folder moved under ``base``."""
    env = dict(os.environ)
    for name, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
    ):
        path = base / sub
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class JupyterProcess:
    """A Jupyter server (or lab, or ``cencori-nb lab``) running as a child process."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str], log_path: Path, port: int, token: str
    ) -> None:
        self.argv, self.env, self.log_path = argv, env, log_path
        self.port, self.token = port, token
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def server(
        cls,
        root: Path,
        base: Path,
        *,
        app: str = "jupyter_server",
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "server",
    ) -> JupyterProcess:
        """``python -m <app>`` (jupyter_server or jupyterlab) on a free port with a token."""
        port, token = free_port(), secrets.token_hex(16)
        argv = [sys.executable, "-m", app, *server_args(root, port, token), *extra_args]
        return cls(
            argv,
            env=env or isolated_jupyter_env(base),
            log_path=base / f"{name}.log",
            port=port,
            token=token,
        )

    def start(self, timeout: float = 90.0) -> JupyterProcess:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        # A new session makes the server and its kernels one process group we can end.
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Jupyter exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx2.HTTPError):
                r = httpx2.get(f"{self.url}/api/status", headers=self.headers, timeout=2)
                if r.status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"Jupyter did not answer within {timeout}s:\n{self.log()}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(self, method: str, path: str, **kw: object) -> httpx2.Response:
        return httpx2.request(method, f"{self.url}{path}", headers=self.headers, timeout=30, **kw)  # type: ignore[arg-type]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group we created
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None


def server_args(root: Path, port: int, token: str) -> list[str]:
    args = [
        f"--ServerApp.root_dir={root}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    return args
