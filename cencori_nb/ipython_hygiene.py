"""What cencori_nb does to IPython's own records so they keep no key (issue 10.5).

IPython keeps every executed cell (memory, ``_i`` variables, ``history.sqlite``) and prints
tracebacks that, under ``%xmode Verbose``, show every frame's local variables. Neither is
ours to prevent, so:

- :func:`forget_in_history` overwrites a refused cell in every place the history keeps it.
  The magic calls it when it refuses a line or a prompt; the client calls it (through
  :func:`forget_refused_input`) when it refuses a prompt holding a stored key or a stored key
  given as a model/project name, whichever face was used.
- :func:`guard_tracebacks` passes every traceback IPython renders (any exception, any
  ``%xmode``) and the error value a kernel sends to the browser through the log-line
  policy of :mod:`cencori_nb.redact`: registered keys and key shapes become the marker. It is
  installed when the extension loads, when ``cencori_nb`` is imported inside a running
  shell and when the key store is first opened there.

Nothing here imports IPython: a shell is only used when one is already running.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "forget_in_history",
    "forget_keys_in_frames",
    "forget_refused_input",
    "guard_running_shell",
    "guard_tracebacks",
    "running_shell",
]


def running_shell() -> Any:
    """The running IPython shell, or None (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    get = getattr(ipython, "get_ipython", None)
    return get() if get is not None else None


def _redactor(stored: Iterable[Any]) -> Callable[[str], str]:
    from .magic.parser import redact as redact_all

    stored = frozenset(stored)

    def redact(text: str) -> str:
        return redact_all(text, stored)

    return redact


def forget_in_history(shell: Any, stored: Iterable[Any] = ()) -> None:
    """Redact key-shaped text (and the ``stored`` keys) from the current input in IPython's
    history: the in-memory lists, the ``_i`` variables and ``history.sqlite``.

    IPython stores the cell before it runs; we cannot stop that, but we can overwrite it at
    once.
    """
    redact = _redactor(stored)
    hm = getattr(shell, "history_manager", None)
    if shell is None or hm is None:
        return
    for hist in (hm.input_hist_raw, hm.input_hist_parsed):
        for i in range(max(0, len(hist) - 2), len(hist)):
            hist[i] = redact(hist[i])
    for attr in ("_i00", "_i", "_ii", "_iii"):
        if isinstance(getattr(hm, attr, None), str):
            setattr(hm, attr, redact(getattr(hm, attr)))
    for name in list(shell.user_ns):
        if re.fullmatch(r"_i+\d*", name) and isinstance(shell.user_ns[name], str):
            shell.user_ns[name] = redact(shell.user_ns[name])
    if not getattr(hm, "enabled", False) or getattr(hm, "db", None) is None:
        return
    # Holding the cache lock means the saving thread is not half-way through a write: the
    # line is either still in the cache (redact it there) or committed (UPDATE it).
    with hm.db_input_cache_lock:
        hm.db_input_cache = [(n, redact(src), redact(raw)) for n, src, raw in hm.db_input_cache]
        rows = hm.db.execute(
            "SELECT line, source, source_raw FROM history WHERE session = ?", (hm.session_number,)
        ).fetchall()
        with hm.db:
            for line_no, src, raw in rows:
                if redact(src or "") != (src or "") or redact(raw or "") != (raw or ""):
                    hm.db.execute(
                        "UPDATE history SET source = ?, source_raw = ? WHERE "
                        "session = ? AND line = ?",
                        (redact(src or ""), redact(raw or ""), hm.session_number, line_no),
                    )


def forget_refused_input() -> None:
    """In a running shell, forget the current cell's keys (the store's and key shapes).

    Called by the client right before it raises a key refusal; never fails (a history
    that cannot be rewritten must not hide the refusal itself).
    """
    shell = running_shell()
    if shell is None:
        return
    from .redact import registered_secrets

    try:
        forget_in_history(shell, registered_secrets())
    except Exception:  # noqa: BLE001  (best effort: the refusal is what the user must see)
        import logging

        logging.getLogger(__name__).warning("could not rewrite the IPython history")


class _ScrubbedError(Exception):
    """Stands in for an exception whose text held a key, where IPython shows its value."""


_ANSI = re.compile(r"(\x1b\[[0-9;]*[A-Za-z])")


def _scrub(text: str) -> str:
    """One traceback line without keys. The log-line policy (registered keys and key shapes,
    but no "long token" rule, which would cut long identifiers and paths out of every
    traceback), applied between the colour codes (``\x1b[33msk-…`` would hide a key from
    the shapes' word boundary); if a key still shows once the codes are removed (split
    across colours), the line loses its colours."""
    from .redact import LOG_LINE

    parts = _ANSI.split(text)
    clean = "".join(part if i % 2 else LOG_LINE.scrub(part) for i, part in enumerate(parts))
    plain = _ANSI.sub("", clean)
    if LOG_LINE.scrub(plain) != plain:
        return LOG_LINE.scrub(plain)
    return clean


def _library_files() -> tuple[str, ...]:
    """The path parts of a frame in cencori_nb or its HTTP stack (redact.HTTP_MODULES)."""
    from .redact import HTTP_MODULES

    return tuple(os.sep + name + os.sep for name in HTTP_MODULES)


def _holds_key(value: Any) -> bool:
    from .redact import holds_secret

    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return holds_secret(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        return any(isinstance(v, str | bytes) and _holds_key(v) for v in value)
    return False


def forget_keys_in_frames(exc: BaseException) -> None:
    """Leave no key in clear in the frames a failed call keeps alive (``%debug``, ``%tb``
    under ``%xmode Verbose``, ``sys.last_traceback``), on the whole cause/context chain.

    In each frame of cencori_nb or its HTTP stack: the credential headers holding a stored
    key in the requests its locals reach are replaced by the marker (the call is over,
    they are sent); a frame holding a stored key in a local string (or a dict or list of
    them) loses its locals (``frame.clear()``: the traceback keeps its lines). The user's
    own frames are left alone, and so is a request the user sent with their own token
    (an httpx2 call's ``raise_for_status()`` fails in httpx2's frame: ``exc.request`` must
    still be re-sendable).
    """
    from .redact import forget_sent_credentials

    library_files = _library_files()
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        todo += [err.__cause__, err.__context__]
        tb = err.__traceback__
        while tb is not None:
            frame, tb = tb.tb_frame, tb.tb_next
            if not any(part in frame.f_code.co_filename for part in library_files):
                continue
            values = list(frame.f_locals.values())
            if any(_holds_key(value) for value in values):
                with contextlib.suppress(RuntimeError):  # still running: not ours to clear
                    frame.clear()
                continue
            for value in values:
                forget_sent_credentials(value, stored_only=True)


def guard_tracebacks(shell: Any) -> None:
    """Scrub keys from every traceback ``shell`` renders (idempotent)."""
    tb = getattr(shell, "InteractiveTB", None)
    if tb is None or getattr(shell, "_cencori_tb_guard", False):
        return
    for formatter in (tb, getattr(shell, "SyntaxTB", None)):
        if formatter is None:
            continue
        original = formatter.structured_traceback

        def structured_traceback(*args: Any, _original: Any = original, **kwargs: Any) -> list[str]:
            return [_scrub(line) for line in _original(*args, **kwargs)]

        formatter.structured_traceback = structured_traceback
    show = shell._showtraceback

    def _showtraceback(etype: Any, evalue: Any, stb: Any) -> Any:
        if isinstance(evalue, BaseException):  # before %debug or %tb can walk its frames
            with contextlib.suppress(Exception):
                forget_keys_in_frames(evalue)
        # A kernel sends str(evalue) to the browser next to the (already scrubbed) lines.
        try:
            text = str(evalue)
        except Exception:  # noqa: BLE001  (an exception whose __str__ fails: show its type)
            text = ""
        clean = _scrub(text)
        if clean != text:
            evalue = _ScrubbedError(clean)
        return show(etype, evalue, [_scrub(line) for line in stb])

    shell._showtraceback = _showtraceback
    shell._cencori_tb_guard = True


def guard_running_shell() -> None:
    """:func:`guard_tracebacks` on the running shell, if there is one."""
    shell = running_shell()
    if shell is not None:
        guard_tracebacks(shell)
