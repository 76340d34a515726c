"""Helpers for the cross-cutting leak audit (tests/attacks/test_leaks.py).

A planted key leaks if it appears in an artifact in clear, in base64 (standard or urlsafe,
at any byte alignment inside a larger encoded blob) or in hex (either case). The audit
collects artifacts (bytes or text, each with a name saying where it came from) and reports
every (secret, encoding, artifact) triple found, with a little context around the hit.
"""

from __future__ import annotations

import base64
import collections
import logging
import sqlite3
import traceback
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Audit", "encodings", "exception_texts", "find", "reachable_texts", "sqlite_dump"]


def _b64_cores(raw: bytes, encode: Any) -> list[bytes]:
    """Base64 of ``raw`` as it appears inside a larger blob, for each of the three byte
    alignments: the characters that depend only on ``raw``'s bytes."""
    cores = []
    for offset in range(3):
        enc = encode(b"\0" * offset + raw).rstrip(b"=")
        start = -(-8 * offset // 6)  # first char made of raw bits only
        end = (8 * (offset + len(raw))) // 6  # chars past this mix in what follows
        core = enc[start:end]
        if len(core) >= 8:
            cores.append(core)
    return cores


def encodings(secret: str) -> dict[str, list[bytes]]:
    """Every form of ``secret`` we search for: clear, base64 (std, urlsafe), hex."""
    raw = secret.encode()
    return {
        "clear": [raw],
        "base64": _b64_cores(raw, base64.b64encode),
        "base64url": _b64_cores(raw, base64.urlsafe_b64encode),
        "hex": [raw.hex().encode(), raw.hex().upper().encode()],
    }


def find(data: bytes | str, secrets: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(secret label, encoding, context)`` for each planted secret found in ``data``."""
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    hits = []
    for label, secret in secrets.items():
        for encoding, needles in encodings(secret).items():
            for needle in needles:
                at = blob.find(needle)
                if at >= 0:
                    context = blob[max(0, at - 60) : at + len(needle) + 20]
                    hits.append((label, encoding, context.decode("utf-8", "replace")))
                    break
    return hits


def exception_texts(exc: BaseException) -> list[tuple[str, str]]:
    """Everything a user or a log can see of ``exc``: str, repr, attributes, the traceback
    text, and the same for every exception on its ``__cause__``/``__context__`` chain."""
    out: list[tuple[str, str]] = []
    seen: set[int] = set()
    todo: list[tuple[str, BaseException]] = [("exc", exc)]
    out.append(("traceback", "".join(traceback.format_exception(exc))))
    out.append(("IPython %xmode Verbose traceback", _verbose_tb(exc)))
    while todo:
        name, e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        out.append(
            (
                f"{name} traceback with locals (pytest --showlocals, error trackers)",
                "".join(
                    traceback.StackSummary.extract(
                        traceback.walk_tb(_library_tb(e.__traceback__)), capture_locals=True
                    ).format()
                ),
            )
        )
        out.append((f"{name} str", str(e)))
        out.append((f"{name} repr", repr(e)))
        out.append((f"{name} args", repr(e.args)))
        attrs = getattr(e, "__dict__", {})
        out.append(
            (f"{name} attributes", repr({k: v for k, v in attrs.items() if not k.startswith("__")}))
        )
        for attr, value in attrs.items():
            if hasattr(value, "to_dict"):
                out.append((f"{name}.{attr}.to_dict", repr(value.to_dict())))
        for note in getattr(e, "__notes__", ()) or ():
            out.append((f"{name} note", str(note)))
        for path, text in reachable_texts(e):
            out.append((f"{name} reachable value {path}", text))
        if e.__cause__ is not None:
            todo.append((f"{name}.__cause__", e.__cause__))
        if e.__context__ is not None:
            todo.append((f"{name}.__context__", e.__context__))
    return out


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)


def reachable_texts(root: Any, max_depth: int = 8) -> list[tuple[str, str]]:
    """Every string (and bytes, decoded) reachable from ``root`` through attributes
    (``__dict__``, ``__slots__``), containers and exception chains, with its path: what
    ``err.__cause__.request.headers[...]``, ``vars()`` or a debugger hands a user. A
    ``Secret`` is not opened (it is the one holder allowed to keep the key); frames and
    tracebacks are left to :func:`exception_texts`."""
    out: list[tuple[str, str]] = []
    seen: set[int] = set()
    todo: collections.deque[tuple[Any, str, int]] = collections.deque([(root, "root", 0)])
    while todo:  # breadth first: each object is reached by its shortest path
        obj, path, depth = todo.popleft()
        if id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            out.append((path, obj))
            continue
        if isinstance(obj, bytes | bytearray):
            out.append((path, bytes(obj).decode("latin-1")))
            continue
        if (
            obj is None
            or isinstance(obj, (int, float, *_OPAQUE))
            or type(obj).__name__
            in (
                "Secret",
                "frame",
                "traceback",
            )
        ):
            continue
        children: list[tuple[Any, str]] = []
        if isinstance(obj, dict):
            children = [(v, f"{path}[{k!r}]") for k, v in obj.items()]
            children += [(k, f"{path} key") for k in obj]
        elif isinstance(obj, list | tuple | set | frozenset):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        else:
            for name in ("__cause__", "__context__", "args"):
                if hasattr(obj, name):
                    children.append((getattr(obj, name), f"{path}.{name}"))
            children += [(v, f"{path}.{k}") for k, v in getattr(obj, "__dict__", {}).items()]
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()) or ():
                    if isinstance(slot, str) and hasattr(obj, slot):
                        children.append((getattr(obj, slot), f"{path}.{slot}"))
        todo.extend((child, name, depth + 1) for child, name in children)
    return out


_TESTS = str(Path(__file__).resolve().parents[1])


def _library_tb(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without its leading frames in the tests (they hold the planted keys on
    purpose): what is left is the toolkit's and its libraries' frames."""
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith(_TESTS)
        or "/_pytest/" in tb.tb_frame.f_code.co_filename
    ):
        tb = tb.tb_next
    return tb


def _verbose_tb(exc: BaseException) -> str:
    """The traceback as IPython prints it under ``%xmode Verbose`` (values of the names on
    each executed line, along the whole cause/context chain)."""
    from IPython.core.ultratb import VerboseTB

    return VerboseTB(theme_name="nocolor").text(type(exc), exc, _library_tb(exc.__traceback__))


def sqlite_dump(path: Path) -> str:
    """The SQL dump of a SQLite file, opened read-only (committed rows, incl. the WAL)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


class Audit:
    """Collects artifacts and checks them for every planted secret."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self.secrets = dict(secrets)
        self.artifacts: list[tuple[str, bytes | str]] = []

    def add(self, where: str, data: Any) -> None:
        if data is None:
            return
        if not isinstance(data, bytes | str):
            data = repr(data)
        self.artifacts.append((where, data))

    def add_exception(self, where: str, exc: BaseException) -> None:
        for part, text in exception_texts(exc):
            self.add(f"{where}: {part}", text)

    def add_home(self, home: Path) -> list[Path]:
        """Every file under the home (raw bytes), and a SQL dump of every SQLite file."""
        files = sorted(p for p in home.rglob("*") if p.is_file())
        for p in files:
            self.add(f"file {p.relative_to(home)}", p.read_bytes())
            if p.suffix == ".sqlite":
                self.add(f"sqlite dump {p.relative_to(home)}", sqlite_dump(p))
        return files

    def add_log_records(
        self, where: str, records: Iterable[logging.LogRecord], formatted: str = ""
    ) -> None:
        """Each record's rendered message, its raw args, its traceback text."""
        for r in records:
            name = f"{where} [{r.name} {r.levelname}]"
            try:
                self.add(name, r.getMessage())
            except Exception:  # noqa: BLE001 (a malformed record: keep its template)
                self.add(name, str(r.msg))
            self.add(f"{name} args", repr(r.args))
            self.add(f"{name} exc_text", r.exc_text or "")
            if r.exc_info and r.exc_info[1] is not None:
                self.add(f"{name} exc_info", "".join(traceback.format_exception(r.exc_info[1])))
            self.add(f"{name} stack", r.stack_info or "")
        self.add(f"{where} formatted", formatted)

    def leaks(self) -> list[str]:
        found = []
        for where, data in self.artifacts:
            for label, encoding, context in find(data, self.secrets):
                found.append(f"{label} ({encoding}) in {where}: …{context!r}…")
        return found

    def summary(self) -> str:
        """Where the artifacts came from (for a failing audit's message and debugging)."""
        import collections

        kinds = collections.Counter(w.split(" ")[0] for w, _ in self.artifacts)
        return ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))

    def assert_clean(self) -> None:
        assert self.artifacts, "nothing was collected: the audit would pass vacuously"
        found = self.leaks()
        assert not found, "LEAK:\n" + "\n".join(found[:20])
