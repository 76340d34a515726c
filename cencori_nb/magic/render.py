"""What the magic shows: streamed text, the final reply in a format, footers, error lines.

Everything here builds plain MIME bundles (``{"text/plain": …, "text/html": …}``) so it
is testable without a notebook; :class:`StreamView` is the only piece that talks to a display
handle, and it takes the display function and the clock as arguments.

A reply is data, never markup: every bundle's HTML is made by :mod:`cencori_nb.safe_html`
(markdown rendered with raw HTML escaped and an allow-list sanitiser), and no bundle carries
``text/markdown`` (JupyterLab would render HTML inside it as trusted). Only ``-f html
--unsafe-html`` shows a reply's HTML as it is, on the user's explicit request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import safe_html
from ..redact import remove_stored_keys
from ..text import decoded

__all__ = [
    "Rendered",
    "StreamView",
    "bundle",
    "error_bundle",
    "extract_code",
    "notice_bundle",
    "render_completion",
]

Bundle = dict[str, Any]

_FENCE = re.compile(r"```[ \t]*([\w+\-.#]*)[^\n]*\n(.*?)(?:\n```|\Z)", re.DOTALL)


def bundle(plain: str, **others: Any) -> Bundle:
    """A MIME bundle with ``text/plain`` plus the given types (``text_html=…`` style keys)."""
    out: Bundle = {"text/plain": plain}
    for key, value in others.items():
        out[key.replace("_", "/", 1)] = value
    return out


def error_bundle(message: str) -> Bundle:
    """One styled line ``cencori: <message>`` (no traceback)."""
    line = f"cencori: {message}"
    return bundle(
        line,
        text_html=safe_html.text_html(
            line,
            cls="cencori-error",
            style="color:#b00020;font-family:monospace;white-space:pre-wrap",
        ),
    )


def notice_bundle(message: str) -> Bundle:
    """One neutral line ``cencori: <message>``."""
    line = f"cencori: {message}"
    return bundle(
        line,
        text_html=safe_html.text_html(
            line, cls="cencori-notice", style="font-family:monospace;white-space:pre-wrap"
        ),
    )


def extract_code(text: str) -> tuple[str, str]:
    """The first fenced code block of ``text`` and its language; the whole text if none."""
    match = _FENCE.search(text)
    if match is None:
        return text.strip("\n"), ""
    return match.group(2).strip("\n"), match.group(1)


def _parse_json(text: str) -> Any:
    """Parse the reply as JSON, accepting one fenced ```json block around it."""
    stripped = text.strip()
    try:
        return decoded(json.loads(stripped), stripped)  # no lone "\ud800" (cencori_nb/text.py)
    except ValueError:
        code, _lang = extract_code(stripped)
        return decoded(json.loads(code), code)


def _footer_html(footer: str) -> str:
    # The footer carries the model name the provider reported: untrusted text too.
    return safe_html.text_html(
        footer, cls="cencori-footer", style="opacity:.6;font-size:85%;margin-top:.4em"
    )


def _pre(text: str, *, lang: str = "") -> str:
    cls = f" class='language-{lang}'" if re.fullmatch(r"[\w+\-.#]+", lang) else ""
    return f"<pre style='white-space:pre-wrap'><code{cls}>{safe_html.escape(text)}</code></pre>"


@dataclass(frozen=True)
class Rendered:
    """The final display of a reply; ``next_input`` is code for a new cell (``-f code``)."""

    bundle: Bundle
    next_input: str | None = None
    error: str | None = None


def render_completion(text: str, footer: str, fmt: str, *, unsafe_html: bool = False) -> Rendered:
    """The final bundle for a reply ``text`` in format ``fmt`` with its ``footer`` line.

    ``unsafe_html`` (only with ``fmt="html"``) shows the reply's HTML unsanitised: the
    user's explicit choice (``--unsafe-html``) for a reply they trust.
    """
    plain = f"{text}\n\n[{footer}]"
    foot = _footer_html(footer)
    if fmt == "markdown":
        body = safe_html.block(safe_html.markdown_html(text), cls="cencori-reply")
        return Rendered(bundle(plain, text_html=body + foot))
    if fmt == "text":
        return Rendered(bundle(plain, text_html=safe_html.block(_pre(text) + foot)))
    if fmt == "html":
        if unsafe_html:
            return Rendered(bundle(plain, text_html=f"<div>{text}</div>{foot}"))
        body = safe_html.block(safe_html.clean_html(text), cls="cencori-reply")
        return Rendered(bundle(plain, text_html=body + foot))
    if fmt == "code":
        code, lang = extract_code(text)
        return Rendered(
            bundle(
                f"{code}\n\n[{footer}]",
                text_html=safe_html.block(_pre(code, lang=lang or "python") + foot),
            ),
            next_input=code,
        )
    if fmt == "json":
        try:
            data = _parse_json(text)
        except ValueError as exc:
            # The raw reply stays visible (as text); the caller shows ``error`` as its own line.
            raw = render_completion(text, footer, "text")
            return Rendered(raw.bundle, error=f"the reply is not valid JSON ({exc}).")
        pretty = json.dumps(data, indent=2, ensure_ascii=False)
        return Rendered(
            {
                "application/json": data if isinstance(data, (dict, list)) else {"value": data},
                "text/plain": f"{pretty}\n\n[{footer}]",
                "text/html": safe_html.block(_pre(pretty) + foot),
            }
        )
    raise ValueError(f"unknown format {fmt!r}")


def streaming_bundle(text: str) -> Bundle:
    """What the display shows while a reply is still arriving (the same safe markdown as
    the final reply, so a half-received tag is never markup either). A stored key the
    reply echoes is redacted once it has fully arrived, as in the final Completion."""
    text = remove_stored_keys(text)
    cursor = "<span class='cencori-cursor'> ▌</span>"
    return bundle(
        text + " ▌",
        text_html=safe_html.block(
            safe_html.markdown_html(text) + cursor, cls="cencori-reply cencori-streaming"
        ),
    )


class StreamView:
    """One display updated in place while a reply streams, at most every ``throttle_ms``.

    ``display`` is called once with the first bundle and must return a handle with
    ``update(bundle)``; ``clock`` returns seconds (monotonic). The text is always complete
    at :meth:`finish`, whatever was skipped by the throttle.
    """

    def __init__(
        self,
        display: Callable[[Bundle], Any],
        *,
        throttle_ms: float = 80,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._display = display
        self._throttle = max(0.0, throttle_ms) / 1000
        self._clock = clock
        self._handle: Any = None
        self._last = float("-inf")
        self._parts: list[str] = []
        self.updates = 0  # how many times the display was drawn (for tests)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def _draw(self, content: Bundle) -> None:
        if self._handle is None:
            self._handle = self._display(content)
        else:
            self._handle.update(content, raw=True)
        self.updates += 1

    def start(self) -> None:
        """Show the empty display at once, so the output area does not jump later."""
        self._draw(streaming_bundle(""))
        self._last = self._clock()

    def feed(self, delta: str) -> None:
        """Add a piece of text; redraw if the throttle interval has passed."""
        if not delta:
            return
        self._parts.append(delta)
        now = self._clock()
        if now - self._last >= self._throttle:
            self._draw(streaming_bundle(self.text))
            self._last = now

    def finish(self, final: Bundle) -> None:
        """Replace the streaming text with the final render."""
        self._draw(final)
