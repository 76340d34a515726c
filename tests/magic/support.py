"""Shared by the magic tests: run a cell as a user would, read what it displayed."""

from __future__ import annotations

from typing import Any

from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output

from cencori_nb.magic import CencoriMagics


def magics_of(shell: InteractiveShell) -> CencoriMagics:
    return next(c for c in shell.configurables if isinstance(c, CencoriMagics))


def run(shell: InteractiveShell, source: str) -> tuple[CapturedIO, Any]:
    """Run one cell as a user would (stored in history) and capture what it displays."""
    with capture_output() as cap:
        result = shell.run_cell(source, store_history=True)
    return cap, result


def texts(cap: CapturedIO) -> list[str]:
    return [o.data.get("text/plain", "") for o in cap.outputs]


def assert_one_error_line(cap: CapturedIO, result: Any, *fragments: str) -> str:
    """Exactly one ``cencori:`` error line, no traceback, the cell itself succeeded."""
    assert result.error_in_exec is None and result.error_before_exec is None
    assert "Traceback" not in cap.stdout + cap.stderr
    errors = [o for o in cap.outputs if "cencori-error" in o.data.get("text/html", "")]
    assert len(errors) == 1, texts(cap)
    line = errors[0].data["text/plain"]
    assert line.startswith("cencori: ") and "\n" not in line
    for fragment in fragments:
        assert fragment in line
    return line


def last_request(sandbox: Any) -> dict[str, Any]:
    return sandbox.stats["recent"][-1]
