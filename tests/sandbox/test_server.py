"""The sandbox server itself: HTTP handling, replies, token counts, limits, faults, stats."""

from __future__ import annotations

import json
import socket
from decimal import Decimal

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cencori_nb.sandbox import SandboxServer
from cencori_nb.sandbox.faults import RateLimiter, parse_faults
from cencori_nb.sandbox.replies import count_tokens, make_reply, split_tokens

# one client for the module: building one per call costs an SSL context each time
HTTP = httpx2.Client(verify=False, timeout=10)
KEY = "sk-test-abcdefgh1234"
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat_body(prompt: str = "Summarise the history of Rome in three sentences", **extra):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **extra}


def post_chat(url: str, body: dict, headers: dict | None = None, **kw) -> httpx2.Response:
    return HTTP.post(
        url + "/openai/v1/chat/completions", json=body, headers={**AUTH, **(headers or {})}, **kw
    )


# --- replies and token counting ------------------------------------------------------------


def test_reply_says_sandbox_and_echoes_the_prompt(sandbox):
    """The reply names the sandbox and the model and repeats the prompt's first words."""
    r = post_chat(sandbox.url, chat_body("Summarise the history of Rome in short sentences"))
    assert r.status_code == 200
    assert r.headers["x-sandbox"] == "true"
    text = r.json()["choices"][0]["message"]["content"]
    assert text.startswith(
        "[sandbox reply from openai/gpt-4o-mini] You asked: "
        "'Summarise the history of Rome in short sentences'."
    )


def test_long_prompt_is_echoed_with_ellipsis(sandbox):
    """Only the first eight words come back, followed by an ellipsis."""
    r = post_chat(sandbox.url, chat_body("one two three four five six seven eight nine ten"))
    text = r.json()["choices"][0]["message"]["content"]
    assert "You asked: 'one two three four five six seven eight …'." in text
    assert "nine" not in text


def test_same_prompt_and_seed_give_same_text_and_other_seed_differs(sandbox):
    """Replies are a function of (seed, prompt): stable across calls, different by seed."""
    first = post_chat(sandbox.url, chat_body()).json()["choices"][0]["message"]["content"]
    again = post_chat(sandbox.url, chat_body()).json()["choices"][0]["message"]["content"]
    assert first == again
    other = SandboxServer(seed=7)
    url = other.start_in_thread()
    try:
        seeded = post_chat(url, chat_body()).json()["choices"][0]["message"]["content"]
    finally:
        other.stop()
    assert seeded != first
    assert seeded.split("'.")[0] == first.split("'.")[0]  # same prefix and echo
    other_prompt = post_chat(sandbox.url, chat_body("Translate this into French please"))
    assert other_prompt.json()["choices"][0]["message"]["content"] != first


def test_usage_grows_with_the_prompt_and_matches_the_token_rule(sandbox):
    """prompt_tokens counts every message with the one sandbox rule; it grows with the prompt."""
    short = post_chat(sandbox.url, chat_body("Hello there.")).json()["usage"]
    long_prompt = "Hello there. " + "Please consider this extra sentence, carefully! " * 20
    long = post_chat(sandbox.url, chat_body(long_prompt)).json()
    assert short["prompt_tokens"] == count_tokens("Hello there.") == 3
    assert long["usage"]["prompt_tokens"] == count_tokens(long_prompt) > short["prompt_tokens"]
    text = long["choices"][0]["message"]["content"]
    assert long["usage"]["completion_tokens"] == count_tokens(text)
    assert long["usage"]["total_tokens"] == (
        long["usage"]["prompt_tokens"] + long["usage"]["completion_tokens"]
    )
    system = post_chat(
        sandbox.url,
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there."},
            ],
        },
    )
    assert system.json()["usage"]["prompt_tokens"] == 3 + 3


def test_max_tokens_cuts_the_reply_with_finish_reason_length(sandbox):
    """max_tokens is respected exactly and reported as a length stop."""
    body = post_chat(sandbox.url, chat_body(max_completion_tokens=5)).json()
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "[sandbox reply from openai"
    legacy = post_chat(sandbox.url, chat_body(max_tokens=7)).json()
    assert legacy["usage"]["completion_tokens"] == 7


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_split_tokens_rejoins_and_counts(text):
    """Pieces join back to the text (minus trailing space) and number count_tokens(text)."""
    pieces = split_tokens(text)
    assert "".join(pieces) == text.rstrip()
    assert len(pieces) == count_tokens(text)


def test_make_reply_is_pure():
    """make_reply depends on its inputs only; max_tokens never cuts below one token."""
    a = make_reply(seed=1, label="x/y", conversation=["hi"], last_user="hi", max_tokens=None)
    b = make_reply(seed=1, label="x/y", conversation=["hi"], last_user="hi", max_tokens=None)
    assert a == b and not a.truncated and a.output_tokens == len(a.pieces)
    one = make_reply(seed=1, label="x/y", conversation=["hi"], last_user="hi", max_tokens=1)
    assert one.pieces == ("[",) and one.truncated


# --- HTTP handling -------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(sandbox):
    """HTTP/1.1 keep-alive: one TCP connection carries every request."""
    with httpx2.Client(limits=httpx2.Limits(max_connections=1)) as client:
        for _ in range(5):
            r = client.post(
                sandbox.url + "/openai/v1/chat/completions", json=chat_body(), headers=AUTH
            )
            assert r.status_code == 200
    recent = sandbox.stats["recent"]
    assert len(recent) == 5


def test_raw_socket_chunked_request_body_and_connection_close(sandbox):
    """A chunked request body is decoded; ``Connection: close`` ends the connection."""
    body = json.dumps(chat_body("chunked body works")).encode()
    half = len(body) // 2
    chunks = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (
        half,
        body[:half],
        len(body) - half,
        body[half:],
    )
    host, port = sandbox.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in head
    assert (
        "You asked: 'chunked body works'" in json.loads(payload)["choices"][0]["message"]["content"]
    )


def test_unknown_route_and_wrong_method(sandbox):
    """404 names the routes; a GET on a POST route is 405."""
    r = HTTP.get(sandbox.url + "/nowhere")
    assert r.status_code == 404 and "/openai/v1/chat/completions" in r.json()["error"]["message"]
    r = HTTP.get(sandbox.url + "/openai/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405


def test_bad_fault_header_is_refused(sandbox):
    """An unknown X-Sandbox-Fault value is a 400 naming the known ones."""
    r = post_chat(sandbox.url, chat_body(), {"X-Sandbox-Fault": "explode"})
    assert r.status_code == 400 and "timeout" in r.json()["error"]["message"]


def test_latency_is_applied_before_the_answer():
    """The processing time the server reports includes the configured latency."""
    with SandboxServer(latency_ms=40) as url:
        r = post_chat(url, chat_body())
    assert r.status_code == 200
    assert int(r.headers["openai-processing-ms"]) >= 40


def test_an_answer_due_to_a_dead_client_is_counted_before_a_reset():
    """A client sends a request and dies while ``latency_ms`` holds the answer: the sandbox
    answers all the same, later, and counts it then. ``wait_until_answered`` waits for that,
    so the ``reset`` the ``sandbox`` fixture does next starts the next test's counters at
    zero (without it, a killed child's answer from one test of test_money_faults.py was
    counted in the next test, as an answer nobody there had asked for)."""
    import time

    server = SandboxServer(latency_ms=300)
    with server as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps(chat_body("a question whose asker dies")).encode()
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(
                b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            deadline = time.monotonic() + 10
            while not server._uncounted:  # received, its answer held by the latency
                assert time.monotonic() < deadline, "the sandbox never got the request"
                time.sleep(0.005)
        assert server.stats["requests"] == 0  # the asker is gone, the answer not given yet
        assert server.wait_until_answered()
        assert server.stats["requests"] == 1 and server.stats["statuses"] == {"200": 1}
        server.reset()
        assert server.stats["requests"] == 0
        assert server.wait_until_answered()  # nothing more to come


# --- rate limits ---------------------------------------------------------------------------


def test_rpm_limit_gives_429_with_retry_after_per_key():
    """The third request of a key in a minute is refused; another key is still served."""
    with SandboxServer(rpm=2) as url:
        codes = [post_chat(url, chat_body()).status_code for _ in range(2)]
        refused = post_chat(url, chat_body())
        other = post_chat(url, chat_body(), {"Authorization": "Bearer sk-other-key-9999"})
    assert codes == [200, 200]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert other.status_code == 200
    assert other.headers["x-ratelimit-remaining-requests"] == "1"


def test_rate_limiter_sliding_window_with_injected_clock():
    """Requests leave the window after 60 s; Retry-After counts down to that moment."""
    now = [1000.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.hit("k")[0] and limiter.hit("k")[0]
    allowed, _, retry = limiter.hit("k")
    assert not allowed and retry == 60
    now[0] += 59.5
    assert limiter.hit("k") == (False, 0, 1)
    now[0] += 0.5  # both earlier requests left the window
    assert limiter.hit("k")[:2] == (True, 1)


# --- faults --------------------------------------------------------------------------------


def test_parse_faults_validates():
    assert parse_faults("429=0.2, timeout=0.05") == {"429": 0.2, "timeout": 0.05}
    assert parse_faults(None) == {}
    for bad in ("boom=0.1", "429=2", "429", "429=0.7,500=0.7", "500=x"):
        with pytest.raises(ValueError):
            parse_faults(bad)


def test_truncate_fault_cuts_a_non_stream_body(sandbox):
    """The announced Content-Length is not delivered: the client sees a broken body."""
    with pytest.raises(httpx2.RemoteProtocolError):
        post_chat(sandbox.url, chat_body(), {"X-Sandbox-Fault": "truncate"})
    assert sandbox.stats["statuses"] == {"200-cut": 1}


def test_truncate_fault_cuts_a_stream_before_usage(sandbox):
    """A stream stops half-way: some deltas arrive, no usage chunk, no [DONE]."""
    lines: list[str] = []
    with pytest.raises(httpx2.RemoteProtocolError):
        with HTTP.stream(
            "POST",
            sandbox.url + "/openai/v1/chat/completions",
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            headers={**AUTH, "X-Sandbox-Fault": "truncate"},
        ) as r:
            for line in r.iter_lines():
                lines.append(line)
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert len(data) >= 2
    assert all(d["usage"] is None for d in data)
    assert "data: [DONE]" not in lines


def test_malformed_fault_is_invalid_json_with_status_200(sandbox):
    r = post_chat(sandbox.url, chat_body(), {"X-Sandbox-Fault": "malformed"})
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


def test_timeout_fault_never_answers(sandbox):
    """The server holds the request; the client's read timeout fires."""
    with pytest.raises(httpx2.ReadTimeout):
        post_chat(sandbox.url, chat_body(), {"X-Sandbox-Fault": "timeout"}, timeout=0.3)


def test_random_faults_are_reproducible_by_seed():
    """The same seed draws the same faults in the same order."""

    def run() -> list[int]:
        with SandboxServer(faults="500=0.3,503=0.2", seed=42) as url:
            return [post_chat(url, chat_body()).status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert {500, 503} <= set(first) and 200 in first


# --- stats and controls --------------------------------------------------------------------


def test_stats_count_routes_and_keys_by_hint_never_the_key(sandbox):
    """Counters per route and per key hint; credentials masked in the recent log."""
    post_chat(sandbox.url, chat_body())
    post_chat(sandbox.url, chat_body(), {"Authorization": "Bearer sk-revoked-key-0000"})
    HTTP.get(sandbox.url + "/openai/v1/models", headers=AUTH)
    stats = sandbox.stats
    assert stats["requests"] == 3
    assert stats["routes"] == {"/openai/v1/chat/completions": 2, "/openai/v1/models": 1}
    assert stats["keys"] == {"…1234": 2, "…0000": 1}
    assert stats["statuses"] == {"200": 2, "401": 1}
    assert stats["recent"][0]["headers"]["authorization"] == "Bearer …1234"
    assert stats["recent"][0]["json"]["model"] == "gpt-4o-mini"
    served = HTTP.get(sandbox.url + "/_sandbox/stats").json()
    assert KEY not in json.dumps(served) and KEY not in json.dumps(stats)
    assert served["requests"] == 3 and served["sandbox"] is True


def test_control_endpoints_reset_and_set_balance(sandbox):
    post_chat(sandbox.url, chat_body())
    r = HTTP.post(sandbox.url + "/_sandbox/balance", json={"usd": "3.25"})
    assert r.json()["balance_usd"] == "3.25" and sandbox.balance == Decimal("3.25")
    bad = HTTP.post(sandbox.url + "/_sandbox/balance", json={"dollars": 1})
    assert bad.status_code == 400
    r = HTTP.post(sandbox.url + "/_sandbox/reset")
    assert r.json()["reset"] is True
    assert sandbox.stats["requests"] == 0
    assert sandbox.balance == Decimal("25")


def test_start_stop_and_async_serve():
    """serve() runs on the caller's loop; stop() ends it and closes the port."""
    import asyncio

    async def main() -> int:
        server = SandboxServer()
        url = await server.start()
        task = asyncio.create_task(server.serve())
        async with httpx2.AsyncClient() as client:
            r = await client.post(
                url + "/openai/v1/chat/completions", json=chat_body(), headers=AUTH
            )
        server.stop()
        await asyncio.wait_for(task, 5)
        return r.status_code

    assert asyncio.run(main()) == 200


def test_stopped_server_refuses_connections():
    server = SandboxServer()
    url = server.start_in_thread()
    server.stop()
    with pytest.raises(httpx2.ConnectError):
        HTTP.get(url + "/_sandbox/stats")


def test_stop_releases_a_held_timeout_request():
    """stop() closes connections held by the timeout fault instead of waiting 30 s."""
    import threading
    import time

    server = SandboxServer()
    url = server.start_in_thread()
    outcome: list[BaseException] = []

    def held() -> None:
        try:
            post_chat(url, chat_body(), {"X-Sandbox-Fault": "timeout"}, timeout=20)
        except httpx2.HTTPError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=held)
    worker.start()
    for _ in range(200):  # wait until the server holds the request
        if server.stats["statuses"].get("timeout"):
            break
        time.sleep(0.01)
    server.stop()
    worker.join(10)
    assert not worker.is_alive()
    assert outcome and isinstance(outcome[0], httpx2.RemoteProtocolError | httpx2.ReadError)


def test_sandbox_env_fixture_points_settings_at_the_server(sandbox_env):
    """The sandbox_env fixture sets CENCORI_NB_SANDBOX, which settings reads."""
    import os

    from cencori_nb import settings

    assert os.environ["CENCORI_NB_SANDBOX"] == sandbox_env.url
    assert settings.sandbox_url() == sandbox_env.url
