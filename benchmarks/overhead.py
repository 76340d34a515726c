"""Per-call client overhead of cencori_nb against raw httpx2 and the openai SDK (issue 14.6).

Run::

    .venv/bin/python benchmarks/overhead.py [--rounds 25] [--calls 40] [--profile]

The sandbox runs in **its own process** (``python -m cencori_nb sandbox``, zero latency):
a sandbox in a thread of this process would add its CPU to every contender and hide the
client's cost. What is measured is the client side plus loopback HTTP.

Each round runs a block of ``--calls`` calls of each contender, in a rotating order so no
contender always goes first, and records per call:

- **CPU**: ``time.process_time()`` (``CLOCK_PROCESS_CPUTIME_ID``: every thread of this
  process, so the ledger's background writer is counted; a self-check at start proves it);
- **wall**: ``time.perf_counter()`` over the calls: what a caller waits for.

A cencori_nb block ends with ``Ledger.flush()``: inside the CPU span, so the writer's
commits of that block's rows are charged to it, never to the next contender's block; after
the calls' wall span, since no caller waits for a flush after its calls (the background
writer commits while the caller does something else), and the block's rows are committed
before the next contender starts all the same. The wall time with the flush is printed
beside it ("wall+flush"); until 2026-12-02 it was the only wall figure.

Contenders (all get the same answer; asserted):

- ``cencori_nb.chat(prompt, model="gpt-4o-mini", cache=False)``: routing, budget check,
  request building, the pooled client with its retry wrapper, parsing, pricing, the ledger
  row (journal line, queued row, the writer's commit);
- a raw ``httpx2.Client.post`` of the same JSON body with the same key, then ``.json()``
  and the text taken out: the floor any client pays;
- the ``openai`` SDK's ``chat.completions.create`` (``max_retries=0``).

Then the same for a 20-chunk stream (``max_tokens=20``: the sandbox sends one token per
chunk, plus the usage chunk): ``cencori_nb.stream`` vs raw ``httpx2`` SSE with
``json.loads`` per event vs the openai SDK with ``stream=True``.

Printed: medians over rounds of µs per call (CPU and wall) and the median of the per-round
ratios to raw httpx2 (with their range), for wall also with the flush. Goals (issue 14.6):
CPU ≤ 1.25×, wall ≤ 1.15×.
Everything lives in a throwaway ``CENCORI_NB_HOME``; nothing outside it is written.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "sk-bench-" + "x" * 32
MODEL = "gpt-4o-mini"
PROMPT = "Summarise the benefits of keeping your own provider keys in one sentence."
GOAL_CPU, GOAL_WALL = 1.25, 1.15


def _setup_env() -> None:
    home = tempfile.mkdtemp(prefix="cencori-bench-")
    os.environ["CENCORI_NB_HOME"] = os.path.join(home, "home")
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    for name in ("CENCORI_NB_PASSPHRASE", "CENCORI_NB_PROJECT", "OPENAI_API_KEY"):
        os.environ.pop(name, None)


def check_process_clock() -> None:
    """Fail unless ``time.process_time`` counts CPU burnt by another thread of this process
    (the ledger writer's work must be charged to cencori_nb, not lost)."""

    def burn() -> None:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    start = time.process_time()
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    if time.process_time() - start < 0.045:
        raise SystemExit("time.process_time() does not count other threads here")


def sandbox_process() -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``cencori-nb sandbox`` in its own process (no GIL or CPU shared with us)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cencori_nb", "sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"http://127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the sandbox process did not start")


# One block's per-call figures: (CPU µs, wall µs of the calls, wall µs with the settle step).
Sample = tuple[float, float, float]


def block(fn: Callable[[], object], calls: int, settle: Callable[[], None]) -> Sample:
    """Per call of ``calls`` calls of ``fn``: CPU with ``settle()`` included (the ledger
    writer's commits of the block's rows are charged to the block), the wall time of the
    calls themselves (what a caller waits for: nobody flushes the ledger after each call,
    and the flush still ends the block, so the writer's work never spills into the next
    contender's), and the wall time with the flush, shown beside it."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    wall1 = time.perf_counter()
    settle()
    cpu = time.process_time() - cpu0
    wall2 = time.perf_counter()
    return cpu / calls * 1e6, (wall1 - wall0) / calls * 1e6, (wall2 - wall0) / calls * 1e6


def interleaved(
    group: dict[str, Callable[[], object]],
    rounds: int,
    calls: int,
    settle: dict[str, Callable[[], None]],
) -> dict[str, list[Sample]]:
    """Per contender, one :data:`Sample` per round; rotating order each round."""
    names = list(group)
    nothing: Callable[[], None] = lambda: None  # noqa: E731
    for name in names:  # warm-up: pools, imports, caches, the writer thread
        block(group[name], max(20, calls // 5), settle.get(name, nothing))
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(block(group[name], calls, settle.get(name, nothing)))
    return samples


def summary(samples: dict[str, list[Sample]], baseline: str) -> list[str]:
    base = samples[baseline]
    lines = [
        f"  {'contender':<24} {'CPU µs':>8} {'wall µs':>8} "
        f"{'CPU vs raw (range)':>22} {'wall vs raw (range)':>22} {'wall+flush vs raw':>22}"
    ]
    for name, values in samples.items():
        cpu_r = [v[0] / b[0] for v, b in zip(values, base, strict=True)]
        wall_r = [v[1] / b[1] for v, b in zip(values, base, strict=True)]
        flushed_r = [v[2] / b[2] for v, b in zip(values, base, strict=True)]
        lines.append(
            f"  {name:<24} {statistics.median(v[0] for v in values):8.0f} "
            f"{statistics.median(v[1] for v in values):8.0f} "
            f"{_ratio(cpu_r):>22} {_ratio(wall_r):>22} {_ratio(flushed_r):>22}"
        )
    return lines


def _ratio(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def verdict(samples: dict[str, list[Sample]], ours: str, baseline: str) -> str:
    base = samples[baseline]
    pairs = list(zip(samples[ours], base, strict=True))
    cpu = statistics.median(v[0] / b[0] for v, b in pairs)
    wall = statistics.median(v[1] / b[1] for v, b in pairs)
    flushed = statistics.median(v[2] / b[2] for v, b in pairs)
    ok = cpu <= GOAL_CPU and wall <= GOAL_WALL
    return (
        f"  goal CPU <= {GOAL_CPU}x, wall <= {GOAL_WALL}x: {ours} {cpu:.2f}x / {wall:.2f}x "
        + ("met" if ok else "NOT met")
        + f" (wall with the end-of-block flush {flushed:.2f}x)"
    )


def run(rounds: int, calls: int, profile: bool) -> str:
    check_process_clock()
    _setup_env()
    from cencori_nb import keys

    url, server = sandbox_process()
    try:
        os.environ["CENCORI_NB_SANDBOX"] = url
        keys.set("openai", KEY)
        return _measure(url, rounds, calls, profile)
    finally:
        server.terminate()
        server.wait()


def _measure(url: str, rounds: int, calls: int, profile: bool) -> str:
    import httpx2 as hx
    import openai as oa

    import cencori_nb as nb
    from cencori_nb.ledger import default_ledger

    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    stream_body = {
        **body,
        "max_completion_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    endpoint = f"{url}/openai/v1/chat/completions"
    raw = hx.Client(headers={"authorization": f"Bearer {KEY}"})
    sdk = oa.OpenAI(api_key=KEY, base_url=f"{url}/openai/v1", max_retries=0)

    def nb_call() -> str:
        return nb.chat(PROMPT, model=MODEL, cache=False).text

    def raw_call() -> str:
        r = raw.post(endpoint, json=body)
        return str(r.json()["choices"][0]["message"]["content"])

    def sdk_call() -> str:
        r = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
        return r.choices[0].message.content or ""

    def nb_stream() -> str:
        with nb.stream(PROMPT, model=MODEL, max_tokens=20, cache=False) as s:
            return "".join(s)

    def raw_stream() -> str:
        parts = []
        with raw.stream("POST", endpoint, json=stream_body) as r:
            # Read to the end (no break at [DONE]): a response closed early loses its
            # keep-alive connection, which would make the baseline look slower than it is.
            for event in hx.EventSource(r):
                if event.data == "[DONE]":
                    continue
                chunk = json.loads(event.data)
                if chunk["choices"]:
                    parts.append(chunk["choices"][0]["delta"].get("content") or "")
        return "".join(parts)

    def sdk_stream() -> str:
        parts = []
        for chunk in sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            max_completion_tokens=20,
            stream_options={"include_usage": True},
        ):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        return "".join(parts)

    # Same answer from all three (a sanity check that they measure the same thing).
    assert nb_call() == raw_call() == sdk_call()
    assert nb_stream() == raw_stream() == sdk_stream()
    chunks = sum(1 for _ in nb.stream(PROMPT, model=MODEL, max_tokens=20, cache=False))

    flush = default_ledger().flush
    out = [
        f"sandbox in its own process, latency 0; {rounds} interleaved rounds of {calls} calls "
        "per contender; CPU = all threads of this process (process_time)"
    ]
    groups = (
        ("calls", {"raw httpx2": raw_call, "cencori_nb.chat": nb_call, "openai SDK": sdk_call}),
        (
            f"streams ({chunks} text chunks each)",
            {
                "raw httpx2 SSE": raw_stream,
                "cencori_nb.stream": nb_stream,
                "openai SDK stream": sdk_stream,
            },
        ),
    )
    for title, group in groups:
        ours = next(n for n in group if n.startswith("cencori_nb"))
        samples = interleaved(group, rounds, calls, {ours: flush})
        out.append(f"{title}:")
        out += summary(samples, next(iter(group)))
        out.append(verdict(samples, ours, next(iter(group))))
    contenders = (raw_call, nb_call, raw_stream, nb_stream)
    out += _no_network(raw, contenders, endpoint, rounds, calls, flush)
    threads = sorted(t.name for t in threading.enumerate())
    out.append(f"threads in this process at the end: {', '.join(threads)}")
    out += _cache_hits(rounds * 20)
    out += _breakdown(rounds * 20)
    if profile:
        import cProfile
        import io
        import pstats

        for name, fn in (("cencori_nb.chat", nb_call), ("cencori_nb.stream", nb_stream)):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                fn()
            flush()
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
            out.append(f"\nprofile of {name}, main thread (tottime):\n" + buf.getvalue())
    return "\n".join(out)


def _no_network(
    raw_client: Any,
    contenders: tuple[Callable[[], str], ...],
    endpoint: str,
    rounds: int,
    calls: int,
    flush: Callable[[], None],
) -> list[str]:
    """The same contenders with the network taken out: both clients get the sandbox's
    recorded answers (status, headers, body bytes; a stream one event per chunk) at the
    level they send on: the raw client from an ``httpx2.MockTransport``, cencori_nb's
    direct sender from a replaying stand-in for its httpcore2 pool. What is left is each
    client's own CPU, free of loopback and of the sandbox's scheduling (on a loaded machine
    the steadier reading of the bookkeeping's cost in µs)."""
    import httpx2

    from cencori_nb import transport
    from cencori_nb.transport.direct import DirectSender

    raw_call, nb_call, raw_stream, nb_stream = contenders
    recorded: dict[bool, tuple[int, list[tuple[str, str]], bytes]] = {}
    with httpx2.Client() as probe:
        for streamed in (False, True):
            answer = probe.post(
                endpoint,
                headers={"authorization": f"Bearer {KEY}"},
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": PROMPT}],
                    **(
                        {
                            "stream": True,
                            "max_completion_tokens": 20,
                            "stream_options": {"include_usage": True},
                        }
                        if streamed
                        else {}
                    ),
                },
            )
            headers = [(k, v) for k, v in answer.headers.items() if k.lower() != "content-length"]
            recorded[streamed] = (answer.status_code, headers, answer.content)

    def chunks(streamed: bool, content: bytes) -> list[bytes]:
        # a stream arrives one event per chunk, as the sandbox (and a provider) sends it
        if not streamed:
            return [content]
        return [part + b"\n\n" for part in content.split(b"\n\n") if part]

    class Replay(httpx2.SyncByteStream):
        def __init__(self, parts: list[bytes]) -> None:
            self.parts = parts

        def __iter__(self) -> Any:
            yield from self.parts

    def replay(request: httpx2.Request) -> httpx2.Response:
        streamed = b'"stream":true' in request.content
        status, headers, content = recorded[streamed]
        return httpx2.Response(status, headers=headers, stream=Replay(chunks(streamed, content)))

    class ReplayPool:
        """In place of the direct sender's httpcore2 pool: the same recorded answers, so
        cencori_nb's own send path (transport/direct.py) is measured, not httpx2.Client."""

        def handle_request(self, request: Any) -> Any:
            import httpcore2

            streamed = b'"stream":true' in b"".join(request.stream)
            status, headers, content = recorded[streamed]
            return httpcore2.Response(
                status,
                headers=[(k.encode(), v.encode()) for k, v in headers],
                content=chunks(streamed, content),
            )

        def close(self) -> None:
            return None

    mock = httpx2.MockTransport(replay)
    saved = raw_client._transport  # the raw contenders' client: the mock for a while
    raw_client._transport = mock
    sender = transport.pool.get_sender()
    direct = isinstance(sender, DirectSender)
    if direct:
        saved_pool, sender._pool = sender._pool, ReplayPool()  # noqa: SLF001
    else:  # a proxy in the environment: cencori_nb sends through httpx2.Client
        transport.set_transport(mock)
    try:
        out = []
        for title, group in (
            ("calls, no network", {"raw httpx2": raw_call, "cencori_nb.chat": nb_call}),
            (
                "streams, no network",
                {"raw httpx2 SSE": raw_stream, "cencori_nb.stream": nb_stream},
            ),
        ):
            ours = next(n for n in group if n.startswith("cencori_nb"))
            samples = interleaved(group, rounds, calls, {ours: flush})
            base = next(iter(group))
            extra = statistics.median(
                v[0] - b[0] for v, b in zip(samples[ours], samples[base], strict=True)
            )
            out.append(f"{title} (the sandbox's answers replayed below each client):")
            out += summary(samples, base)
            out.append(f"  {ours} spends {extra:.0f} µs more client CPU per call (median)")
        return out
    finally:
        if direct:
            sender._pool = saved_pool  # noqa: SLF001
        else:
            transport.set_transport(None)
        raw_client._transport = saved


def _cache_hits(n: int) -> list[str]:
    """A cache hit through the whole chat (route, lookup, 'cached' ledger row) and the bare
    lookup; nothing is sent, so there is no baseline to interleave with."""
    import cencori_nb
    from cencori_nb import cache, router
    from cencori_nb.types import ChatRequest

    cencori_nb.chat(PROMPT, model=MODEL)  # fill the cache
    hit_request = ChatRequest.from_prompt(PROMPT, model=MODEL)
    hit_key = cache.cache_key(router.resolve(hit_request), hit_request)
    lines = []
    for label, fn in (
        ("cencori_nb.chat cache hit", lambda: cencori_nb.chat(PROMPT, model=MODEL)),
        ("cache.lookup alone", lambda: cache.lookup(hit_key)),
    ):
        assert getattr(fn(), "cached", False)
        times = sorted(_timeit(fn) for _ in range(n))
        lines.append(
            f"{label}: median {statistics.median(times):.0f} µs wall, "
            f"p90 {times[int(len(times) * 0.9) - 1]:.0f} µs"
        )
    return lines


def _timeit(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def _breakdown(n: int) -> list[str]:
    """Median wall cost of each step of one chat call, measured alone on this thread."""
    import uuid

    from cencori_nb import accounting, client, router, transport
    from cencori_nb.providers import get_provider
    from cencori_nb.types import ChatRequest

    request = ChatRequest.from_prompt(PROMPT, model=MODEL, cache=False)
    decision = router.resolve(request)
    adapter = get_provider(decision.adapter)
    response = transport.send(
        adapter.build_request(
            request, model=decision.model, api_key=decision.credential, base_url=decision.base_url
        )
    )
    result = adapter.parse_response(response)

    def settle() -> object:
        completion = client._completion(decision, request, result, latency_ms=1.0)
        completion.request_id = uuid.uuid4().hex  # a new ledger row each time
        return accounting.settle(completion)

    steps = {
        "router.resolve": lambda: router.resolve(request),
        "adapter.build_request": lambda: adapter.build_request(
            request, model=decision.model, api_key=decision.credential, base_url=decision.base_url
        ),
        "adapter.parse_response": lambda: adapter.parse_response(response),
        "accounting.settle (caller)": settle,
    }
    lines = ["per-step cost of one cencori_nb.chat, each measured alone (wall, this thread):"]
    for name, fn in steps.items():
        for _ in range(20):
            fn()
        times = [_timeit(fn) for _ in range(n)]
        lines.append(f"  {name:<28} median {statistics.median(times):7.1f} µs")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Many short rounds: on a shared machine the load moves within seconds, and contenders
    # measured in the same few hundred milliseconds see the same load.
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds (>= 5)")
    parser.add_argument("--calls", type=int, default=40, help="calls per contender per round")
    parser.add_argument("--profile", action="store_true", help="cProfile chat and stream")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (medians of at least 5 rounds)")
    print(run(args.rounds, args.calls, args.profile))


if __name__ == "__main__":
    main()
