"""Progress display for batches: a widget in a notebook, one ``\\r`` line on stderr elsewhere.

Both show the same three things a person watching a batch asks about: rows done out of
the total, how many failed, and what it has cost so far. Updates are throttled (a batch can
finish hundreds of rows a second; redrawing each time would cost more than the requests).
ipywidgets is imported only when a notebook display is actually made.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol, TextIO

__all__ = [
    "NullProgress",
    "Progress",
    "TextProgress",
    "WidgetProgress",
    "in_notebook",
    "make_progress",
    "summary_line",
]


class Progress(Protocol):
    """What a batch calls: ``update`` many times (throttled inside), ``close`` once.

    ``note`` (e.g. ``"rate limited: waiting 58 s"``) is shown until the next update.
    """

    def update(
        self, done: int, errors: int, cost_usd: Decimal, *, force: bool = False, note: str = ""
    ) -> None: ...

    def close(self, done: int, errors: int, cost_usd: Decimal, *, note: str = "") -> None: ...


def summary_line(done: int, total: int, errors: int, cost_usd: Decimal, note: str = "") -> str:
    """``37/100 rows · 2 errors · $0.0123`` (the text both displays show)."""
    err = "1 error" if errors == 1 else f"{errors} errors"
    line = f"{done}/{total} rows · {err} · ${cost_usd:.4f}"
    return f"{line} · {note}" if note else line


class NullProgress:
    """``progress=False``: shows nothing."""

    def update(
        self, done: int, errors: int, cost_usd: Decimal, *, force: bool = False, note: str = ""
    ) -> None:
        return None

    def close(self, done: int, errors: int, cost_usd: Decimal, *, note: str = "") -> None:
        return None


class TextProgress:
    """One line on a terminal stream, rewritten in place with ``\\r``."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        min_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        label: str = "cencori",
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.label = label
        self._last = float("-inf")
        self._width = 0

    def _draw(self, text: str, end: str = "") -> None:
        pad = max(0, self._width - len(text))
        self._width = len(text)
        try:
            self.stream.write(f"\r{text}{' ' * pad}{end}")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not fail the batch
            pass

    def update(
        self, done: int, errors: int, cost_usd: Decimal, *, force: bool = False, note: str = ""
    ) -> None:
        now = self.clock()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        self._draw(f"{self.label}: {summary_line(done, self.total, errors, cost_usd, note)}")

    def close(self, done: int, errors: int, cost_usd: Decimal, *, note: str = "") -> None:
        self._draw(
            f"{self.label}: {summary_line(done, self.total, errors, cost_usd, note)}", end="\n"
        )


class WidgetProgress:
    """An ipywidgets ``IntProgress`` with a label, displayed once in the current cell.

    Built on the thread that runs the cell (so the display lands in that cell's output);
    updated from the batch's event-loop thread (widget state changes are comm messages,
    which ipykernel sends safely from any thread).
    """

    def __init__(
        self,
        total: int,
        *,
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        display: bool = True,
    ) -> None:
        import ipywidgets

        self.total = total
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last = float("-inf")
        self.bar = ipywidgets.IntProgress(
            value=0, min=0, max=max(total, 1), description="cencori", bar_style="info"
        )
        # An HTML widget with escaped text, not a Label: a Label's text is typeset by
        # MathJax, and a note can carry a provider's error text ("stopped: …") between
        # two dollar amounts. safe_html keeps it text (no markup, no math).
        self.label = ipywidgets.HTML()
        self.text = ""
        self._show(summary_line(0, total, 0, Decimal(0)))
        self.box = ipywidgets.HBox([self.bar, self.label])
        if display:
            from IPython.display import display as show

            show(self.box)

    def _show(self, text: str) -> None:
        from ..safe_html import text_html

        self.text = text
        self.label.value = text_html(text, cls="cencori-progress", tag="span")

    def update(
        self, done: int, errors: int, cost_usd: Decimal, *, force: bool = False, note: str = ""
    ) -> None:
        now = self.clock()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.bar.value = done
        self._show(summary_line(done, self.total, errors, cost_usd, note))
        if errors:
            self.bar.bar_style = "warning"

    def close(self, done: int, errors: int, cost_usd: Decimal, *, note: str = "") -> None:
        self.bar.value = done
        self._show(summary_line(done, self.total, errors, cost_usd, note))
        if note:
            self.bar.bar_style = "danger"
        else:
            self.bar.bar_style = "warning" if errors else "success"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell attached to a kernel)."""
    ipython_mod = sys.modules.get("IPython")
    if ipython_mod is None:  # never import IPython just to ask
        return False
    shell: Any = ipython_mod.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def make_progress(total: int, enabled: bool | Progress = True) -> Progress:
    """The right display for where we run; ``enabled`` may also be a ready ``Progress``."""
    if enabled is False or enabled is None:
        return NullProgress()
    if enabled is not True:
        return enabled
    if in_notebook():
        try:
            return WidgetProgress(total)
        except ImportError:
            pass
    return TextProgress(total)
