"""Shared by the attack tests: a sandbox that keeps every request as received, the canary keys,
and a CLI run under a file-size limit."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cencori_nb.redact import CREDENTIAL_HEADERS
from cencori_nb.sandbox.server import SandboxServer

CANARIES = {
    "openai": "sk-proj-canaryUrl" + "Qm3Zr8Tx1Lp6Wd",
    "anthropic": "sk-ant-api03-canaryUrl" + "Hn2Kb7Vc4Xs9",
    "google": "AIzaCanaryUrl" + "Pk5Mj2Nh8Bg4Vf1Cd",
    "mistral": "canaryUrlMistral" + "Rt6Yu3Io9",
    "groq": "gsk_canaryUrl" + "Jh4Gf7Ds2Aq5",
    "xai": "xai-canaryUrl" + "Lk8Mn3Bv6Cx",
    "deepseek": "sk-canaryUrlDeep" + "Ws1Ed4Rf7",
    "together": "canaryUrlTogether" + "Tg5Yh8Uj2",
    "openrouter": "sk-or-v1-canaryUrl" + "Ik9Ol2Pm5",
    "cencori": "csk_canaryUrl" + "Zx3Cv6Bn9Mq",
}


class RecordingSandbox(SandboxServer):
    """The real sandbox, also keeping every request exactly as it arrived (headers, target,
    body), so a test can say what it RECEIVED, unmasked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, dict[str, str], bytes]] = []

    async def _dispatch(self, req: Any, resp: Any) -> None:
        self.received.append((req.target, dict(req.headers), bytes(req.body)))
        await super()._dispatch(req, resp)

    def keys_received(self) -> list[str]:
        """Every credential value received, ``Bearer`` stripped."""
        out = []
        for _target, headers, _body in self.received:
            for name in CREDENTIAL_HEADERS:  # redact's one list
                value = headers.get(name)
                if value:
                    out.append(value.removeprefix("Bearer "))
        return out

    def assert_no_canary(self) -> None:
        blob = json.dumps([(t, h, b.decode("utf-8", "replace")) for t, h, b in self.received])
        for name, canary in CANARIES.items():
            assert canary not in blob, f"the stored {name} key reached the server"


class LoopbackHandler(http.server.BaseHTTPRequestHandler):
    """The base of the attack suites' loopback endpoints (see ``loopback_openai`` in
    conftest.py): reads a request's body, answers with a whole body, logs nothing."""

    def request_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def answer(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


_FSIZE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of being killed
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from cencori_nb.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_limited(
    home: Path, limit: int, argv: list[str], stdin: str = "", **env: str
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, CENCORI_NB_HOME=str(home), PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run(
        [sys.executable, "-c", _FSIZE, str(limit), *argv],
        input=stdin,
        text=True,
        capture_output=True,
        env=full_env,
        timeout=120,
    )
