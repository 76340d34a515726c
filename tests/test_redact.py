"""cencori_nb.redact: the one home of key shapes, and the callers that build on it.

Each caller used to carry its own regex; the old literals are kept here as references, and
hypothesis checks that the patterns now built by :func:`key_pattern` behave exactly the same.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cencori_nb import state
from cencori_nb.jupyter import scrubber
from cencori_nb.magic import parser
from cencori_nb.providers import _common
from cencori_nb.redact import (
    KEY_PREFIXES,
    PROMPT_KEY_SHAPES,
    REDACTED,
    USER_MESSAGE,
    key_pattern,
    key_regex,
    looks_like_key,
    scrub,
)

# The literals each module held before they were built from cencori_nb.redact.
_OLD_COMMON = re.compile(
    r"(?:"
    r"\bBearer\s+\S+"
    r"|\b(?:sk|pk|rk)-[\w\-*.…]{4,}"
    r"|\b(?:sk|csk|cpk|gsk|xai)[_-][\w\-*.…]{4,}"
    r"|AIza[\w\-]{8,}"
    r"|(?<![/\\.])\b[\w\-*]{32,}"  # since the policies: not after "/", "\\" or "."
    r")"
)
_OLD_PARSER = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bcsk_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"\bgsk_[A-Za-z0-9]{16,}"),
    re.compile(r"\bxai-[A-Za-z0-9]{16,}"),
)
_B, _S, _D = r"[A-Za-z0-9_\-]", r"(?<![A-Za-z0-9_\-])", r"(?=[A-Za-z_\-]*[0-9])"
_OLD_SCRUBBER = re.compile(
    "|".join(
        (
            rf"{_S}sk-(?:proj|ant|or|svcacct|admin)-{_B}{{20,}}",
            rf"{_S}sk-{_D}{_B}{{20,}}",
            rf"{_S}AIza{_D}{_B}{{30,}}",
            rf"{_S}csk_{_D}{_B}{{16,}}",
            rf"{_S}gsk_{_D}{_B}{{20,}}",
            rf"{_S}xai-{_D}{_B}{{20,}}",
        )
    )
)
_OLD_DEFAULT = re.compile(
    _S + "(?:" + "|".join(re.escape(p) for p in KEY_PREFIXES) + f"){_B}{{6,}}"
)
_OLD_DEFAULT_DIGIT = re.compile(
    _S + "(?:" + "|".join(re.escape(p) for p in KEY_PREFIXES) + f"){_D}{_B}{{6,}}"
)

# Text made of key prefixes, key characters, masks and separators, so that near-misses
# (short bodies, missing digits, a prefix inside a word) come up often.
_PIECES = st.sampled_from(
    [
        *KEY_PREFIXES,
        "pk-",
        "rk-",
        "sk_",
        "csk-",
        "cpk_",
        "cpk-",
        "gsk-",
        "xai_",
        "Bearer ",
        "a",
        "Z",
        "0",
        "7",
        "_",
        "-",
        "*",
        ".",
        "…",
        " ",
        "/",
        "é",
        "x",
        "abcdefgh",
        "12345678",
        "proj-",
        "ant-",
        "\n",
        "'",
        "=",
    ]
)
_TEXT = st.lists(_PIECES, max_size=40).map("".join)


def _old_parser_redact(text: str) -> str:
    for pattern in _OLD_PARSER:
        text = pattern.sub("[redacted]", text)
    return text


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_callers_match_exactly_as_their_old_literals(text: str) -> None:
    assert USER_MESSAGE.shapes[0].sub(REDACTED, text) == _OLD_COMMON.sub(REDACTED, text)
    assert scrubber.KEY_PATTERN.findall(text) == _OLD_SCRUBBER.findall(text)
    assert scrubber.KEY_PATTERN.sub("#", text) == _OLD_SCRUBBER.sub("#", text)
    assert [bool(p.search(text)) for p in PROMPT_KEY_SHAPES] == [
        bool(p.search(text)) for p in _OLD_PARSER
    ]
    new = text
    for pattern in PROMPT_KEY_SHAPES:
        new = pattern.sub("[redacted]", new)
    assert new == _old_parser_redact(text)
    assert key_pattern().sub("#", text) == _OLD_DEFAULT.sub("#", text)
    assert key_pattern(require_digit=True).sub("#", text) == _OLD_DEFAULT_DIGIT.sub("#", text)


def test_every_known_prefix_is_a_key_with_a_long_enough_body() -> None:
    for prefix in KEY_PREFIXES:
        assert looks_like_key(f"use {prefix}abc123 here")
        if not any(prefix.startswith(p) for p in KEY_PREFIXES if p != prefix):
            assert not looks_like_key(f"use {prefix}abc12 here")  # 5 body characters
        assert scrub(f"key: {prefix}abcdef123") == "key: [redacted]"


def test_a_prefix_inside_a_word_is_not_a_key() -> None:
    assert not looks_like_key("task-runner-123456 disk-0123456789 mask_abcdef12")
    assert not key_pattern(4).search("task-abcdef")


def test_require_digit_per_prefix_and_for_all() -> None:
    words = "sk-learn-classifier"
    assert key_pattern().search(words)
    assert not key_pattern(require_digit=True).search(words)
    mixed = key_pattern({"sk-ant-": 6, "sk-": 6}, require_digit={"sk-"})
    assert mixed.search("sk-ant-abcdefgh")  # no digit needed here
    assert not mixed.search("sk-abcdefgh")
    assert mixed.search("sk-abcdefg1")


def test_min_body_mapping_names_exactly_the_prefixes() -> None:
    only = key_pattern({"gsk_": 8, "pk-": 4})
    assert only.search("gsk_abcdefgh") and only.search("pk-abcd")
    assert not only.search("gsk_abcdefg")  # 7 < 8
    assert not only.search("sk-abcdefghijkl")  # not named
    assert not only.search("AIzaabcdefghijkl")


def test_body_and_start_can_be_chosen_per_caller() -> None:
    plain = key_pattern({"xai-": 4}, body={"xai-": "[A-Za-z0-9]"})
    assert plain.search("xai-ab_cd") is None  # "_" stops the body at 2
    assert plain.search("xai-abcd").group(0) == "xai-abcd"
    masked = key_pattern({"sk-": 4}, body=r"[\w\-*.…]")
    assert masked.search("key sk-****…abcd!").group(0) == "sk-****…abcd"
    anywhere = key_pattern({"AIza": 4}, start="")
    assert anywhere.search("xAIzaabcd") and not key_pattern({"AIza": 4}).search("xAIzaabcd")


def test_key_regex_has_no_groups_so_it_can_be_embedded() -> None:
    combined = re.compile(rf"(key)=({key_regex(4)})")
    m = combined.search("key=csk_abcd1234")
    assert m is not None and m.group(2) == "csk_abcd1234" and combined.groups == 2


def test_scrub_removes_exact_secrets_first_and_context_values() -> None:
    out = scrub(
        "token plainsecretvalue and Bearer abc.def and api_key=hunter22x", ["plainsecretvalue"]
    )
    assert "plainsecretvalue" not in out and "abc.def" not in out and "hunter22x" not in out
    assert out == f"token {REDACTED} and Bearer {REDACTED} and api_key={REDACTED}"


def test_canary_is_scrubbed(canary: str) -> None:
    text = f"the server said: invalid key {canary}."
    assert canary not in scrub(text)
    assert canary not in _common.scrub(text)
    assert canary not in scrubber.KEY_PATTERN.sub("#", text)
    assert canary not in parser.redact(text)


def test_one_marker_for_every_policy_and_caller(canary: str) -> None:
    """Logs, messages, history and notebooks all leave the same marker."""
    from cencori_nb import transport
    from cencori_nb.redact import LOG_LINE, MARKER, NOTEBOOK

    text = f"key {canary} end"
    for out in (
        LOG_LINE.scrub(text),
        USER_MESSAGE.scrub(text),
        NOTEBOOK.scrub(text),
        transport.scrub(text),
        _common.scrub(text),
        parser.redact(text),
        scrubber.scrub_text(text)[0],
    ):
        assert out == f"key {MARKER} end"


def test_registered_secrets_reach_every_policy() -> None:
    """A registered credential (not key-shaped) is blanked by each policy; short ones are
    not registered (they would shred text)."""
    from cencori_nb import redact

    redact.register_secret("plain-registered-token-77")
    redact.register_secret("abc")
    assert "abc" not in redact.registered_secrets()
    for policy in (redact.LOG_LINE, redact.USER_MESSAGE, redact.NOTEBOOK):
        assert policy.scrub("t=plain-registered-token-77;") == "t=[redacted];"


def test_key_in_prompt_is_one_class_everywhere() -> None:
    """The magic's, the client's and redact's refusals raise the errors module's class."""
    import pytest

    from cencori_nb import errors, redact

    assert parser.KeyInPromptError is errors.KeyInPromptError
    redact.register_secret("plain-registered-token-77")
    with pytest.raises(errors.KeyInPromptError) as info:
        redact.refuse_key_in_prompt("please use plain-registered-token-77", shapes=False)
    assert "token-77" not in str(info.value) and info.value.code == "key_in_prompt"
    redact.refuse_key_in_prompt("sk-proj-Abc123def456ghi789jkl012", shapes=False)  # shape only


def _old_held_tail(text: str, secrets: frozenset[str]) -> int:
    """StreamRedactor's hold-back before it became one regex search: compare every tail
    (longest first, up to the longest key's length minus one) with every key's start."""
    from cencori_nb.redact import MIN_REGISTERED

    usable = [s for s in secrets if len(s) >= MIN_REGISTERED]
    for size in range(min(len(text), max(map(len, usable), default=1) - 1), 0, -1):
        if any(s.startswith(text[-size:]) for s in usable):
            return size
    return 0


def _stream_as_the_old_loop(pieces: list[str]) -> str:
    """Feed ``pieces`` to a StreamRedactor: each delta shows what the old tail-by-tail check
    showed, and the whole stream shows remove_stored_keys(whole). Returns what it showed."""
    from cencori_nb import redact

    secrets = redact.registered_secrets()
    stream, held, shown = redact.StreamRedactor(), "", []
    for piece in pieces:
        text = redact.remove_stored_keys(held + piece)
        keep = _old_held_tail(text, secrets)
        held = text[len(text) - keep :] if keep else ""
        out = stream.feed(piece)
        assert out == text[: len(text) - keep]
        shown.append(out)
    shown.append(stream.close())
    assert "".join(shown) == redact.remove_stored_keys("".join(pieces))
    return "".join(shown)


_KEYS = st.lists(st.text("ab-k1", min_size=6, max_size=14), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(keys=_KEYS, pieces=st.lists(st.text("ab-k1x", max_size=12), max_size=6))
def test_stream_redactor_holds_back_exactly_what_the_old_loop_did(
    keys: list[str], pieces: list[str]
) -> None:
    """Each delta shows the same text as the old tail-by-tail check, and the whole stream
    shows remove_stored_keys(whole): a key split over deltas never shows."""
    from cencori_nb import redact

    for key in keys:
        redact.register_secret(key)
    _stream_as_the_old_loop(pieces)
    state.reset("redact")


@pytest.mark.parametrize("length", [299, 301, 520, 1500])
def test_stream_redactor_takes_a_key_too_long_for_a_prefix_regex(length: int) -> None:
    """A stored key of hundreds of characters (a JWT) beside a short one: each delta shows
    what the old tail-by-tail check showed, the whole stream shows remove_stored_keys, and
    no part of either key shows. A prefix regex nests one group per character: from about
    450 characters the stream redactor raised RecursionError on every delta."""
    import random

    from cencori_nb import redact

    rng = random.Random(length)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    long_key = "eyJ" + "".join(rng.choice(alphabet) for _ in range(length - 3))
    short_key = "sk-short-" + "s" * 20
    redact.register_secret(long_key)
    redact.register_secret(short_key)
    whole = f"a {long_key} b {short_key} c {long_key[:40]} d {long_key}"
    for cuts in ([3, length - 1, length + 2], [length // 2, length + 30], [1, 2, len(whole) - 2]):
        pieces = [whole[i:j] for i, j in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
        shown = _stream_as_the_old_loop(pieces)
        assert long_key not in shown and short_key not in shown
    state.reset("redact")


def test_module_patterns_compile_on_first_use_and_behave_as_compiled() -> None:
    """redact's patterns are compiled when first used (importing the package compiles
    none), then match, substitute, iterate, copy and pickle like the compiled pattern."""
    import copy
    import pickle

    lazy = key_pattern({"sk-": 8})
    eager = re.compile(lazy.pattern)
    text = "a sk-abcdefgh12 b sk-short c sk-zyxwvuts99"
    assert lazy.sub("#", text) == eager.sub("#", text)
    assert lazy.subn("#", text) == eager.subn("#", text)
    assert [m.span() for m in lazy.finditer(text)] == [m.span() for m in eager.finditer(text)]
    assert lazy.search(text) is not None and lazy.search(text).group(0) == "sk-abcdefgh12"
    # once compiled, its methods are the compiled pattern's own (no wrapper call per use)
    for name in ("search", "sub", "subn", "match", "finditer"):
        assert getattr(lazy, name).__self__ is lazy.compiled(), name  # type: ignore[attr-defined]
    pickled = pickle.loads(pickle.dumps(lazy))  # noqa: S301 (bytes pickled on this line)
    for clone in (copy.copy(lazy), copy.deepcopy(lazy), pickled):
        assert clone.sub("#", text) == eager.sub("#", text)
    fresh = key_pattern({"gsk_": 8})
    assert fresh._compiled is None  # type: ignore[attr-defined]  # not compiled until used
    assert fresh.search("gsk_abcdefgh1") and fresh._compiled is not None  # type: ignore[attr-defined]


def test_stream_redactor_removes_a_key_registered_after_it_started() -> None:
    """The redactor keeps the regexes of the keys registered when it last fed; a key
    registered mid-stream (the store opened by another call) is removed from the next
    delta on, also when it is split over deltas."""
    from cencori_nb import redact

    redact.register_secret("first-key-" + "f" * 20)
    late = "late-key-" + "L" * 20
    r = redact.StreamRedactor()
    assert r.feed("before ") == "before "
    redact.register_secret(late)
    shown = r.feed("x " + late[:7]) + r.feed(late[7:] + " y") + r.close()
    assert late not in shown and shown == "x [redacted] y"
    state.reset("redact")
    assert redact.StreamRedactor().feed(late) == late  # forgotten at a reset: no stale regex


def test_every_credential_header_is_masked_by_the_sandbox_and_scrubbed_from_log_lines() -> None:
    """The sandbox masks redact's one list of credential headers (and cookies) in its
    stats; a log line naming any of them loses the value."""
    from cencori_nb.redact import CREDENTIAL_HEADERS, LOG_LINE, masked_headers
    from cencori_nb.sandbox import server

    assert set(CREDENTIAL_HEADERS) <= server._SECRET_HEADERS
    for name in CREDENTIAL_HEADERS:
        line = f"sent {name}: opaqueValue0123 to the proxy"
        assert "opaqueValue0123" not in LOG_LINE.scrub(line), name
        assert masked_headers([(name.title(), "opaqueValue0123")]) == [(name.title(), "[redacted]")]


def test_the_compatibility_class_holds_every_character_folding_to_key_characters() -> None:
    """redact._COMPATIBLE lists, as ranges, the characters whose NFKC form is made of key
    characters (fullwidth, mathematical, circled, superscript…): every such character of
    this Python's Unicode data is in it (a newer Unicode adding some fails here: widen it)."""
    import unicodedata

    from cencori_nb import redact

    key_chars = re.compile(r"[A-Za-z0-9_\-]+\Z")
    missing = [
        f"U+{code:04X}"
        for code in range(0x80, 0x110000)
        if not 0xD800 <= code < 0xE000
        and key_chars.match(unicodedata.normalize("NFKC", chr(code)))
        and not redact._COMPATIBLE.match(chr(code))
    ]
    assert missing == [], missing[:20]


def test_forget_sent_credentials_masks_a_finished_request_and_nothing_shared() -> None:
    """A response's request (httpx2) and a raw header list (httpcore2/h11 shape) lose their
    credential values; other headers stay; a pool (shared past one call: another thread's
    request in flight) is not walked."""
    import httpx2

    from cencori_nb.redact import MARKER, forget_sent_credentials

    key = "sk-proj-forgetMe0123456789abcdef"
    request = httpx2.Request(
        "POST", "http://127.0.0.1:9/v1", headers={"Authorization": f"Bearer {key}", "X-Trace": "t1"}
    )
    response = httpx2.Response(200, request=request)
    raw = [(b"x-api-key", key.encode()), (b"accept", b"application/json")]
    in_flight = httpx2.Request("POST", "http://127.0.0.1:9/v1", headers={"x-goog-api-key": key})
    pool = type("ConnectionPool", (), {"__module__": "httpx2._fake"})()
    pool.pending = [in_flight]
    assert forget_sent_credentials({"response": response, "raw": raw, "pool": pool}) == 2
    assert request.headers["authorization"] == MARKER and request.headers["x-trace"] == "t1"
    assert raw == [(b"x-api-key", MARKER.encode()), (b"accept", b"application/json")]
    assert in_flight.headers["x-goog-api-key"] == key  # not ours to touch
    assert forget_sent_credentials(response) == 0  # already masked: idempotent


def _folded_lengths(monkeypatch: Any) -> list[int]:
    """Record the length of every text the reader's view folds (redact._read_quickly)."""
    from cencori_nb import redact

    lengths: list[int] = []
    fold = redact._read_quickly

    def recording(text: str) -> str:
        lengths.append(len(text))
        return fold(text)

    monkeypatch.setattr(redact, "_read_quickly", recording)
    return lengths


_PROSE = (
    "The **answer** is below. Use `numpy` and *pandas* for this; see [docs](https://x.org). "
    "It keeps each row's *order*, and ~~never~~ drops a value.\n\n"
)


def test_the_reader_view_folds_only_around_what_folds_between_key_characters(
    monkeypatch: Any,
) -> None:
    """A 4 KB Markdown reply whose code holds ``a_b*2`` is not folded whole: only a window
    of the longest registered key's length either side of a joint whose two characters
    may meet in a key (the reply scrub went from 15 to 350 us when every such reply was
    folded whole). A key disguised far from the first joint, a long key split by many
    tags, and a key of 450 characters split near its end are all still found."""
    from cencori_nb import redact

    key = "sk-proj-" + "Ab3dEf9hIjKlMn0pQrStUvWxYz" * 3
    redact.register_secret(key)
    code = "```python\ndef f(a_b):\n    return a_b*2 + len(x_y)\n```\n\n"
    reply = (_PROSE * 20 + code + _PROSE * 20)[:4096]
    redact.remove_stored_keys("")  # the key's regex built (it folds the key itself)
    folded = _folded_lengths(monkeypatch)
    assert redact.remove_stored_keys(reply) == reply
    assert folded == []  # "b" and "2" are side by side in no registered key: nothing folds
    joined = reply.replace("a_b*2", "A*b3")  # "Ab3" is in the key: this joint may be in it
    assert redact.remove_stored_keys(joined) == joined
    assert folded and max(folded) <= 3 * len(key)

    far = _PROSE * 30 + key[:20] + "**" + key[20:] + "**" + _PROSE * 3
    assert key not in redact.remove_stored_keys(far).replace("*", "")
    assert redact.remove_stored_keys(far).count("[redacted]") == 1
    tagged = "".join(f"{c}<b></b>" for c in key)  # the key spans 8x its length
    assert redact.remove_stored_keys(_PROSE * 10 + tagged + _PROSE) == (
        _PROSE * 10 + "[redacted]<b></b>" + _PROSE
    )
    long_key = ("tok-" + "Qw9eRt5yUi1oPz7xCv3bNm8" * 20)[:450]  # past _KEY_REACH
    redact.register_secret(long_key)
    split = long_key[:440] + "<span>" + long_key[440:] + "</span>"
    assert redact.remove_stored_keys(_PROSE * 10 + split) == _PROSE * 10 + "[redacted]</span>"
    stream = redact.StreamRedactor()
    shown = "".join(stream.feed(split[i : i + 12]) for i in range(0, len(split), 12))
    assert long_key not in (shown + stream.close()).replace("<span>", "")


def test_the_markup_and_underscore_folds_match_as_their_plain_spellings() -> None:
    """_MARKUP's marks and _UNDERSCORE_MARK are spelled to start with a literal character
    (so a search skips to the next candidate in C); they match exactly what the plain
    spellings did, on every short string of the characters that matter."""
    import itertools

    from cencori_nb import redact

    plain_marks, marks = re.compile(r"[*`~]+"), re.compile(r"\*[*`~]*|`[*`~]*|~[*`~]*")
    plain_under = re.compile(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])")
    under = redact._UNDERSCORE_MARK
    for n in range(1, 7):
        for chars in itertools.product("a_-* `~", repeat=n):
            text = "".join(chars)
            assert [m.span() for m in plain_marks.finditer(text)] == [
                m.span() for m in marks.finditer(text)
            ], text
            assert [m.span() for m in plain_under.finditer(text)] == [
                m.span() for m in under.finditer(text)
            ], text
    assert r"|\*[*`~]*|`[*`~]*|~[*`~]*" in redact._MARKUP_SOURCE


def test_joints_are_found_as_one_joint_scan_finds_them() -> None:
    """redact._joints (candidates from the one-class _NEAR_JOINT scan, each tried with
    _JOINT.match) yields exactly _JOINT.finditer's matches."""
    import random

    from cencori_nb import redact

    rng = random.Random(7)
    alphabet = [*"ab_-*`~<>/ \n.,\\", "<b>", "</b>", "<!-- x -->", "\u200b", "\x1b[1m", "\x0b"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        assert [m.span() for m in redact._JOINT.finditer(text)] == [
            m.span() for m in redact._joints(text)
        ], text


def test_a_finished_response_loses_its_credentials_without_a_graph_walk(
    monkeypatch: Any,
) -> None:
    """forget_response_credentials (every stream's end) masks the request a response holds
    and httpcore2's request in its pool stream by name, in constant time: it never walks
    the object graph (forget_sent_credentials, ~55 us a stream)."""
    import http.server
    import threading

    import httpx2

    from cencori_nb import redact

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    key = "sk-proj-finishedResponse" + "Qx7Lm2Vr9Tz4Wn1Bh"
    try:
        with (
            httpx2.Client() as client,
            client.stream(
                "GET",
                f"http://127.0.0.1:{server.server_port}/",
                headers={"authorization": f"Bearer {key}", "x-api-key": key, "x-other": "kept"},
            ) as response,
        ):
            assert response.read() == b"ok"
            core = response.stream._stream._httpcore_stream._pool_request.request  # type: ignore[attr-defined]
            assert (b"authorization", f"Bearer {key}".encode()) in core.headers
            monkeypatch.setattr(redact, "forget_sent_credentials", None)  # no walk
            assert redact.forget_response_credentials(response) == 4
            assert redact.forget_response_credentials(response) == 0  # idempotent
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert response.request.headers["authorization"] == "[redacted]"
    assert response.request.headers["x-api-key"] == "[redacted]"
    assert response.request.headers["x-other"] == "kept"
    assert dict(core.headers)[b"authorization"] == b"[redacted]"
    assert dict(core.headers)[b"x-api-key"] == b"[redacted]"
