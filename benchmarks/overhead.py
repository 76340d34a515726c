"""Per-call overhead of cencori_nb against raw httpx2 and the openai SDK (sandbox, 0 latency).

Run::

    .venv/bin/python benchmarks/overhead.py [--rounds 300] [--profile]

A :class:`~cencori_nb.sandbox.server.SandboxServer` runs in a thread with zero latency, so
what is measured is the client side plus loopback HTTP. Each round runs, in a rotating
order so no contender always goes first:

- ``cencori_nb.chat(prompt, model="gpt-4o-mini", cache=False)`` — routing, budget check,
  request building, the shared pooled client with its retry wrapper, parsing, pricing, the
  ledger row and the wallet check;
- a raw ``httpx2.Client.post`` of the same JSON body with the same key, then ``.json()``
  and the text taken out — the floor any client must pay;
- the ``openai`` SDK's ``chat.completions.create``.

Then the same for consuming a 20-chunk stream (``max_tokens=20``: the sandbox sends one token
per chunk, plus the usage chunk): ``cencori_nb.stream`` vs raw ``httpx2`` SSE parsing with
``json.loads`` per event vs the openai SDK with ``stream=True``.

It prints per-call medians (and p90) and ratios to raw httpx2, measured in this one run.
Absolute numbers depend on the machine (a shared 2-core box here); compare the ratios.
Everything lives in a throwaway ``CENCORI_NB_HOME``; nothing outside it is written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "sk-bench-" + "x" * 32
MODEL = "gpt-4o-mini"
PROMPT = "Summarise the benefits of keeping your own provider keys in one sentence."


def _setup_env() -> None:
    home = tempfile.mkdtemp(prefix="cencori-bench-")
    os.environ["CENCORI_NB_HOME"] = os.path.join(home, "home")
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    for name in ("CENCORI_NB_PASSPHRASE", "CENCORI_NB_PROJECT", "OPENAI_API_KEY"):
        os.environ.pop(name, None)


def _timeit(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def _summary(samples: dict[str, list[float]], baseline: str) -> list[str]:
    base = statistics.median(samples[baseline])
    lines = [f"  {'contender':<22} {'median ms':>10} {'p90 ms':>9} {'vs raw':>8}"]
    for name, values in samples.items():
        values = sorted(values)
        med = statistics.median(values)
        p90 = values[int(len(values) * 0.9) - 1]
        lines.append(f"  {name:<22} {med:>10.3f} {p90:>9.3f} {med / base:>7.2f}x")
    return lines


def _sandbox_process() -> tuple[str, object]:
    """Start ``cencori-nb sandbox`` in its own process (no GIL shared with the clients)."""
    import socket
    import subprocess

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


def run(
    rounds: int, profile: bool, separate_process: bool = False, diagnose_settle: bool = False
) -> str:
    _setup_env()
    import httpx2
    import openai

    import cencori_nb
    from cencori_nb import keys
    from cencori_nb.sandbox.server import SandboxServer

    server: object
    if separate_process:
        url, server = _sandbox_process()
    else:
        server = SandboxServer(latency_ms=0)
        url = server.start_in_thread()
    os.environ["CENCORI_NB_SANDBOX"] = url
    keys.set("openai", KEY)

    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    stream_body = {
        **body,
        "max_completion_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    endpoint = f"{url}/openai/v1/chat/completions"
    raw = httpx2.Client(headers={"authorization": f"Bearer {KEY}"})
    sdk = openai.OpenAI(api_key=KEY, base_url=f"{url}/openai/v1", max_retries=0)

    def nb_call() -> str:
        return cencori_nb.chat(PROMPT, model=MODEL, cache=False).text

    def raw_call() -> str:
        r = raw.post(endpoint, json=body)
        return str(r.json()["choices"][0]["message"]["content"])

    def sdk_call() -> str:
        r = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
        return r.choices[0].message.content or ""

    def nb_stream() -> str:
        with cencori_nb.stream(PROMPT, model=MODEL, max_tokens=20, cache=False) as s:
            return "".join(s)

    def raw_stream() -> str:
        parts = []
        with raw.stream("POST", endpoint, json=stream_body) as r:
            # Read to the end (no break at [DONE]): a response closed early loses its
            # keep-alive connection, which would make the baseline look slower than it is.
            for event in httpx2.EventSource(r):
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
    chunks = sum(1 for _ in cencori_nb.stream(PROMPT, model=MODEL, max_tokens=20, cache=False))

    calls = {"raw httpx2": raw_call, "cencori_nb.chat": nb_call, "openai SDK": sdk_call}
    if diagnose_settle:
        from cencori_nb import accounting

        real_settle = accounting.settle

        def nb_call_unsettled() -> str:
            # Diagnostic only: the same call with the ledger/wallet write skipped, to show
            # what settling costs in context (it is not a way to use the library).
            accounting.settle = lambda completion: completion  # type: ignore[assignment]
            try:
                return nb_call()
            finally:
                accounting.settle = real_settle

        calls["chat without settle"] = nb_call_unsettled
    streams = {
        "raw httpx2 SSE": raw_stream,
        "cencori_nb.stream": nb_stream,
        "openai SDK stream": sdk_stream,
    }
    out: list[str] = []
    for title, group in (("calls", calls), ("streams", streams)):
        names = list(group)
        for _ in range(max(20, rounds // 10)):  # warm-up: pools, imports, caches
            for fn in group.values():
                fn()
        samples: dict[str, list[float]] = {n: [] for n in names}
        for i in range(rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                samples[name].append(_timeit(group[name]))
        out.append(
            f"{title} ({rounds} interleaved rounds"
            + (f", {chunks} text chunks per stream" if title == "streams" else "")
            + "):"
        )
        out += _summary(samples, names[0])
    # Cache hits: the whole cencori_nb.chat (route, lookup, 'cached' ledger row) and the bare
    # lookup; nothing is sent, so there is no baseline to interleave with.
    from cencori_nb import cache, router
    from cencori_nb.types import ChatRequest

    cencori_nb.chat(PROMPT, model=MODEL)  # fill the cache
    hit_request = ChatRequest.from_prompt(PROMPT, model=MODEL)
    hit_key = cache.cache_key(router.resolve(hit_request), hit_request)
    for label, fn in (
        ("cencori_nb.chat cache hit", lambda: cencori_nb.chat(PROMPT, model=MODEL)),
        ("cache.lookup alone", lambda: cache.lookup(hit_key)),
    ):
        assert getattr(fn(), "cached", False)
        times = sorted(_timeit(fn) for _ in range(rounds))
        out.append(
            f"{label}: median {statistics.median(times) * 1000:.0f} us, "
            f"p90 {times[int(len(times) * 0.9) - 1] * 1000:.0f} us"
        )
    out += _breakdown(rounds)
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(rounds):
            nb_call()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(35)
        out.append("\nprofile of cencori_nb.chat (cumulative):\n" + buf.getvalue())
    if separate_process:
        server.terminate()  # type: ignore[attr-defined]
        server.wait()  # type: ignore[attr-defined]
    else:
        server.stop()  # type: ignore[attr-defined]
    where = "a separate process" if separate_process else "a thread of this process"
    return f"sandbox in {where}, latency 0\n" + "\n".join(out)


def _breakdown(rounds: int) -> list[str]:
    """Median cost of each step of one chat call, measured alone (no network for most)."""
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
        "budget check": lambda: client._check_budget(request, decision),
        "adapter.build_request": lambda: adapter.build_request(
            request, model=decision.model, api_key=decision.credential, base_url=decision.base_url
        ),
        "adapter.parse_response": lambda: adapter.parse_response(response),
        "accounting.settle": settle,
    }
    lines = ["per-step cost of one cencori_nb.chat, each measured alone:"]
    for name, fn in steps.items():
        for _ in range(20):
            fn()
        times = [_timeit(fn) for _ in range(rounds)]
        lines.append(f"  {name:<24} median {statistics.median(times) * 1000:7.1f} us")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="cProfile cencori_nb.chat")
    parser.add_argument(
        "--sandbox-process",
        action="store_true",
        help="run the sandbox in its own process instead of a thread (the "
        "clients then do not share the GIL with the server)",
    )
    parser.add_argument(
        "--diagnose-settle",
        action="store_true",
        help="add a diagnostic contender: chat with accounting.settle skipped",
    )
    args = parser.parse_args()
    print(run(args.rounds, args.profile, args.sandbox_process, args.diagnose_settle))


if __name__ == "__main__":
    main()
