"""How untrusted text becomes something a notebook may display: the one home for it.

A model reply, a provider's error text, a model name echoed by a provider, a batch error:
all of it is *data* written by someone else (a prompt injection only has to make the model
echo one tag). JupyterLab runs the HTML of outputs produced in a live kernel as trusted, so
anything we emit as ``text/html`` or ``text/markdown`` must already be harmless. Every
display path in the package (the magic's replies, stream redraws, footers and error lines,
the providers panel, the batch progress widget, ``Completion._repr_mimebundle_``) builds
its HTML with the functions here and emits no ``text/markdown`` of untrusted text at all.

The rules:

- :func:`escape` for text that is shown as text (error lines, status, footers).
- :func:`markdown_html` for a reply shown as markdown: raw HTML in the markdown is escaped
  (shown, not parsed), the result goes through :func:`clean_html`.
- :func:`clean_html` for HTML from outside (``-f html``): an allow-list sanitiser (``nh3``)
  keeps formatting tags only; no ``<script>``, ``<style>``, ``<iframe>``, ``<form>``,
  ``<svg>``, ``<math>``, ``<object>``, ``<embed>``, ``<meta>``, ``<base>``, ``<img>``
  (a remote image is a way to send data out), no ``on*`` handlers, no ``class``/``id``,
  links only to ``http``, ``https`` and ``mailto`` URLs (``rel="noopener noreferrer
  nofollow"``), no relative URLs (they would point into the Jupyter server's own API).
- :func:`block` wraps the result in an element MathJax skips (``mathjax_ignore``), so
  ``$\\href{javascript:…}{…}$``, ``\\style`` and ``\\class`` in untrusted text stay text.

``--unsafe-html`` on the magic is the one way around this, and it is the user's explicit
choice for one cell.

A terminal is a display too: :func:`terminal_text` is the same rule for the CLI (escape
sequences in a reply can retitle the window, write the clipboard (OSC 52), hide text or
forge a prompt).
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import Any

__all__ = [
    "ALLOWED_TAGS",
    "URL_SCHEMES",
    "block",
    "clean_html",
    "escape",
    "markdown_html",
    "TerminalStream",
    "terminal_text",
    "text_html",
]

# Whole escape sequences first (CSI, OSC/DCS/APC/PM/SOS strings up to their terminator, and
# two-byte ESC forms), then any other C0/C1 control character except tab and newline, and
# the bidirectional overrides that make text read differently than it is ("Trojan source").
_TERMINAL_UNSAFE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI … final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"  # OSC, DCS… strings
    r"|\x1b[@-Z\\-_]"  # other two-byte ESC sequences
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # remaining controls (not \t \n)
    r"|[\u202a-\u202e\u2066-\u2069]",  # bidi embeddings and overrides
    re.DOTALL,
)


def terminal_text(text: str) -> str:
    """``text`` without anything a terminal would act on instead of showing: escape
    sequences, control characters other than tab and newline, bidi overrides."""
    return _TERMINAL_UNSAFE.sub("", text)


_INTRODUCERS = "\x1b\x90\x98\x9b\x9d\x9e\x9f"
_COMPLETE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[^\[\]PX^_]|\x9b[0-?]*[ -/]*[@-~]",
    re.DOTALL,
)
_HOLD_MAX = 4096  # an escape "sequence" longer than this is not waited for


class TerminalStream:
    """:func:`terminal_text` for a reply that arrives in pieces: an escape sequence split
    across two deltas is held back until it is complete (and then removed), so no piece of
    it reaches the terminal. ``feed`` each delta, ``close`` at the end."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, delta: str) -> str:
        text = self._pending + delta
        cut = len(text)
        start = max(text.rfind(ch) for ch in _INTRODUCERS)
        if start >= 0 and len(text) - start <= _HOLD_MAX and not _COMPLETE.match(text, start):
            cut = start  # an unfinished sequence: wait for the rest
        self._pending = text[cut:]
        return terminal_text(text[:cut])

    def close(self) -> str:
        rest, self._pending = self._pending, ""
        return terminal_text(rest)


# Formatting only. Anything not listed is removed (its text content kept, escaped).
ALLOWED_TAGS = frozenset(
    {
        "a",
        "abbr",
        "b",
        "blockquote",
        "br",
        "caption",
        "code",
        "dd",
        "del",
        "details",
        "div",
        "dl",
        "dt",
        "em",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "ins",
        "kbd",
        "li",
        "mark",
        "ol",
        "p",
        "pre",
        "q",
        "s",
        "samp",
        "small",
        "span",
        "strike",
        "strong",
        "sub",
        "summary",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "u",
        "ul",
        "var",
    }
)
# Removed together with everything inside them (their content is code or markup, not text).
_DROP_WITH_CONTENT = frozenset(
    {
        "script",
        "style",
        "template",
        "noscript",
        "xmp",
        "iframe",
        "noembed",
        "noframes",
        "object",
        "embed",
        "svg",
        "math",
        "textarea",
        "title",
        "select",
        "frameset",
        "applet",
    }
)
_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "ol": {"start"},
    "td": {"style", "colspan", "rowspan"},
    "th": {"style", "colspan", "rowspan"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
_STYLE_PROPERTIES = frozenset({"text-align"})  # markdown tables align columns this way
_IGNORE_MATH = "mathjax_ignore tex2jax_ignore"  # MathJax 3 and 2 class names
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape(text: Any) -> str:
    """``text`` as HTML text: ``<``, ``>``, ``&`` and quotes escaped, control characters
    (which JupyterLab would pass on) dropped."""
    return html.escape(_CONTROL.sub("", str(text)), quote=True)


def clean_html(fragment: str) -> str:
    """Sanitise an HTML fragment from outside with the allow-list above."""
    import nh3

    return nh3.clean(
        _CONTROL.sub("", fragment),
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(_DROP_WITH_CONTENT),
        attributes={tag: set(attrs) for tag, attrs in _ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        url_relative="deny",
        filter_style_properties=set(_STYLE_PROPERTIES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


@lru_cache(maxsize=1)
def _markdown() -> Any:
    import mistune

    # escape=True: raw HTML blocks and inline tags in the markdown are shown as text.
    return mistune.create_markdown(escape=True, plugins=["strikethrough", "table", "url"])


def markdown_html(text: str) -> str:
    """A reply's markdown as safe HTML: raw HTML escaped, links and tags sanitised."""
    return clean_html(str(_markdown()(text)))


def block(inner: str, *, cls: str = "", style: str = "", tag: str = "div") -> str:
    """Wrap HTML made by this module in one element that MathJax leaves alone.

    ``inner`` must already be safe (from :func:`escape`, :func:`clean_html` or
    :func:`markdown_html`); ``cls`` and ``style`` are ours, never from outside.
    """
    style_attr = f" style='{style}'" if style else ""
    return f"<{tag} class='{cls} {_IGNORE_MATH}'{style_attr}>{inner}</{tag}>".replace(
        "class=' ", "class='"
    )


def text_html(text: Any, *, cls: str = "", style: str = "", tag: str = "div") -> str:
    """``text`` shown as text (escaped) in one element MathJax leaves alone."""
    return block(escape(text), cls=cls, style=style, tag=tag)
