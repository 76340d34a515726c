"""The progress displays: the throttled terminal line and the widget's state."""

from __future__ import annotations

import io
from decimal import Decimal

from cencori_nb.batch.progress import TextProgress, WidgetProgress, summary_line


def test_text_progress_is_throttled_and_ends_with_a_newline() -> None:
    """The terminal line updates at most every min_interval_s, \\r in place, then \\n."""
    t = {"now": 0.0}
    buf = io.StringIO()
    p = TextProgress(10, stream=buf, min_interval_s=0.1, clock=lambda: t["now"])
    p.update(1, 0, Decimal("0.01"))
    p.update(2, 0, Decimal("0.02"))  # throttled
    t["now"] = 0.2
    p.update(3, 1, Decimal("0.03"))
    p.close(10, 1, Decimal("0.1"))
    out = buf.getvalue()
    assert out.count("\r") == 3
    assert "1/10 rows · 0 errors · $0.0100" in out
    assert "2/10" not in out
    assert "3/10 rows · 1 error · $0.0300" in out
    assert out.endswith("10/10 rows · 1 error · $0.1000\n")


def test_widget_progress_state() -> None:
    """The widget's bar and label follow the batch (no browser needed)."""
    w = WidgetProgress(4, display=False, min_interval_s=0)
    w.update(2, 1, Decimal("0.5"))
    assert w.bar.value == 2 and w.bar.max == 4 and w.bar.bar_style == "warning"
    assert w.text == summary_line(2, 4, 1, Decimal("0.5"))
    w.close(4, 1, Decimal("0.75"), note="interrupted")
    assert w.bar.value == 4 and w.bar.bar_style == "danger"
    assert w.text.endswith("interrupted")
