"""Log redaction for the HTTP stack: no key reaches a log line, at any level.

:class:`RedactingFilter` is installed on the ``httpx2``, ``httpcore2``, ``httpx``,
``httpcore`` and ``cencori_nb`` loggers (and their known children, because a logger's
filters do not apply to records propagated from its children; loggers created later are
picked up at the next request). It scrubs key-shaped strings, every credential this process
has used and every key of an opened key store (both registered with :mod:`cencori_nb.redact`,
whose log-line policy this is) from the message, its arguments, and any formatted
traceback.
"""

from __future__ import annotations

import logging

from .. import redact
from ..redact import LOG_LINE, MARKER

__all__ = ["REDACTED", "RedactingFilter", "install_log_redaction", "register_secret", "scrub"]

# The log-line policy lives in cencori_nb.redact, with the registry of credentials to scrub
# (the key store registers every key it opens; the router every credential it hands out).
REDACTED = MARKER
register_secret = redact.register_secret


def scrub(text: str) -> str:
    """``text`` under the log-line policy: key shapes, context values and every registered
    credential replaced by the marker."""
    return LOG_LINE.scrub(text) if text else text


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a log record before any handler formats it.

    The record's message is rendered once (``getMessage``) and replaced by its scrubbed text
    with no args, so an argument whose ``str`` reveals a key (``httpx2.URL`` with
    ``?key=``, a headers object) cannot slip through. A traceback is formatted and scrubbed
    into ``exc_text``, which formatters then use as is. This runs only for records a logger
    is enabled for, so it costs nothing when logging is off.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its template only, scrubbed
            message = str(record.msg)
        record.msg = scrub(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FILTER = RedactingFilter()
# Filters on a logger do not see records propagated from its children, so every logger the
# HTTP stack actually uses is named here (from httpx2/httpcore2 sources).
_LOGGER_NAMES = (
    "httpx2",
    "httpx",
    *(
        f"{base}{suffix}"
        for base in ("httpcore2", "httpcore")
        for suffix in (
            "",
            ".connection",
            ".connection_pool",
            ".http11",
            ".http2",
            ".proxy",
            ".socks",
        )
    ),
    "cencori_nb",
    "cencori_nb.transport",
    "cencori_nb.client",
    "cencori_nb.router",
    "cencori_nb.cache",
)
_REDACTED_PREFIXES = ("httpx", "httpcore", "cencori_nb")


_loggers_seen = 0  # size of the logging registry at the last scan


def install_log_redaction() -> None:
    """Put the redacting filter on every HTTP-stack and cencori_nb logger (idempotent)."""
    global _loggers_seen
    names = set(_LOGGER_NAMES)
    registry = logging.root.manager.loggerDict
    for name in list(registry):
        if name.startswith(_REDACTED_PREFIXES):
            names.add(name)
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    _loggers_seen = len(registry)


def _ensure_redaction() -> None:
    """Rescan when loggers were created since the last scan (a len() on the hot path)."""
    if len(logging.root.manager.loggerDict) != _loggers_seen:
        install_log_redaction()
