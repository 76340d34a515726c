"""Which transport should carry ``map``? Raw clients, then ``map`` over two transports.

Run::

    .venv/bin/python benchmarks/transports.py [--rounds 5] [--rows 1000]
    .venv/bin/pip install pyreqwest   # optional: adds the Rust (reqwest/hyper) contenders

Issue 14.6 asks to "measure and choose" the batch loop's transport. ``map`` sends over
aiohttp (cencori_nb/transport/aio.py) since the second pass; this script keeps the choice
honest by measuring it against the candidates in one process, interleaved round by round,
against the sandbox in its own process (50 ms latency, concurrency 64, as benchmarks/batch.py):

(r) raw clients, each sending ``--rows`` chat requests and reading the text: httpx2's
    ``AsyncClient``, aiohttp's ``ClientSession``, pyreqwest's ``Client`` (when installed),
    and bare asyncio sockets (the setup's ceiling, benchmarks/batch.py's ``run_sockets``);
(m) ``cencori_nb.map`` over its aiohttp transport, and (when pyreqwest is installed) over
    ``_ReqwestTransport`` below: a prototype for this measurement only, swapped in for the
    batch loop's transport. It sends the request's headers and body and reads the body; it
    has none of aio.py's guarantees (proxies, TLS trust store, timeouts, error mapping,
    streaming), and reqwest adds ``Accept`` and ``User-Agent`` headers of its own.

Printed: requests/s and client CPU per request (every thread of this process, so reqwest's
own Tokio threads count) per round, medians, and per-round ratios to raw httpx2 and, for
map, reqwest / aiohttp. Everything lives in a throwaway ``CENCORI_NB_HOME``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import batch as B  # noqa: E402  (benchmarks/batch.py: the sandbox process and the contenders)


def _have_pyreqwest() -> bool:
    try:
        import pyreqwest  # noqa: F401
    except ImportError:
        return False
    return True


def _body(prompt: str) -> bytes:
    return json.dumps(
        {"model": B.MODEL, "messages": [{"role": "user", "content": prompt}]}
    ).encode()


ENDPOINT = "/openai/v1/chat/completions"


async def _timed(post: Callable[[bytes], Awaitable[bytes]], prompts: list[str], c: int) -> float:
    """``c`` requests in flight at most: a warm-up of ``c`` (connections opened), then the
    prompts, timed; each answer's text is taken out of its JSON."""
    sem = asyncio.Semaphore(c)

    async def one(p: str) -> None:
        async with sem:
            _ = json.loads(await post(_body(p)))["choices"][0]["message"]["content"]

    await asyncio.gather(*(one(f"warm {i}") for i in range(c)))
    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - t0


def run_aiohttp(url: str, prompts: list[str], concurrency: int) -> float:
    import aiohttp

    async def main() -> float:
        connector = aiohttp.TCPConnector(limit=concurrency)
        headers = {"Authorization": f"Bearer {B.KEY}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(body: bytes) -> bytes:
                async with session.post(url + ENDPOINT, data=body, headers=headers) as r:
                    assert r.status == 200, r.status
                    return await r.read()

            return await _timed(post, prompts, concurrency)

    return asyncio.run(main())


def run_pyreqwest(url: str, prompts: list[str], concurrency: int) -> float:
    from pyreqwest.client import ClientBuilder

    async def main() -> float:
        client = ClientBuilder().max_connections(concurrency).build()
        async with client:

            async def post(body: bytes) -> bytes:
                request = (
                    client.post(url + ENDPOINT)
                    .header("Authorization", f"Bearer {B.KEY}")
                    .header("Content-Type", "application/json")
                    .body_bytes(body)
                    .build()
                )
                r = await request.send()
                assert r.status == 200, r.status
                return bytes(await r.bytes())

            return await _timed(post, prompts, concurrency)

    return asyncio.run(main())


class _ReqwestTransport:
    """A prototype ``httpx2.AsyncBaseTransport`` over pyreqwest, for this measurement only
    (see the module docstring for what it lacks)."""

    def __init__(self, max_connections: int) -> None:
        self._max = max_connections
        self._client: Any = None

    async def handle_async_request(self, request: Any) -> Any:
        import httpx2
        from pyreqwest.client import ClientBuilder

        if self._client is None:
            self._client = (
                ClientBuilder()
                .max_connections(self._max)
                .follow_redirects(False)
                .gzip(False)
                .brotli(False)
                .deflate(False)
                .zstd(False)
                .build()
            )
        body = await request.aread()
        builder = self._client.request(request.method, str(request.url))
        for name, value in request.headers.raw:
            builder = builder.header(name.decode("latin-1"), value.decode("latin-1"))
        if body:
            builder = builder.body_bytes(body)
        response = await builder.build().send()
        return httpx2.Response(
            response.status,
            headers=list(response.headers.items()),
            content=bytes(await response.bytes()),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def _map_over(kind: str) -> None:
    """Make the batch loop's next transport aiohttp's (the product's) or the prototype's;
    a fresh batch loop picks it up."""
    from cencori_nb.batch import runner
    from cencori_nb.transport import pool

    if not hasattr(pool, "_bench_aiohttp"):
        pool._bench_aiohttp = pool._aiohttp_transport  # type: ignore[attr-defined]
    if kind == "aiohttp":
        pool._aiohttp_transport = pool._bench_aiohttp  # type: ignore[attr-defined]
    else:
        pool._aiohttp_transport = lambda: _ReqwestTransport(pool.MAX_CONNECTIONS)
    runner._stop_batch_loop()  # the next map starts a loop with a new client


def _run_map(kind: str, prompts: list[str], concurrency: int) -> float:
    _map_over(kind)
    B.run_map([f"warm {kind} {p}" for p in prompts[:concurrency]], concurrency)  # connections
    elapsed, df = B.run_map(prompts, concurrency)
    assert df["error"].isna().all(), df["error"].dropna().head()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    B.batch_arguments(ap)
    args = ap.parse_args(argv)
    B._byte_compile()
    B._setup_env()
    from cencori_nb import keys

    keys.set("openai", B.KEY)
    rq = _have_pyreqwest()
    if not rq:
        print("pyreqwest is not installed: its contenders are left out (pip install pyreqwest)")
    n, c = args.rows, args.concurrency
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} on {os.cpu_count()} cores")
    with B.sandbox_process("--latency-ms", str(args.latency_ms)) as url:
        os.environ["CENCORI_NB_SANDBOX"] = url
        contenders: dict[str, Callable[[list[str]], float]] = {
            "raw httpx2": lambda ps: B.run_httpx2(url, ps, c)[0],
            "raw aiohttp": lambda ps: run_aiohttp(url, ps, c),
            "raw sockets": lambda ps: B.run_sockets(url, ps, c)[0],
            "map/aiohttp": lambda ps: _run_map("aiohttp", ps, c),
        }
        if rq:
            contenders["raw pyreqwest"] = lambda ps: run_pyreqwest(url, ps, c)
            contenders["map/reqwest"] = lambda ps: _run_map("reqwest", ps, c)
        names = list(contenders)
        rates: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                prompts = [f"Round {r} {name}: summarise item {i}." for i in range(n)]
                cpu0 = time.process_time()
                elapsed = contenders[name](prompts)
                # map's CPU includes its warm-up batch (64 rows): charged per row of the run
                cpu_us = (time.process_time() - cpu0) * 1e6 / n
                rates[name].append(n / elapsed)
                cpu[name].append(cpu_us)
                print(
                    f"  round {r + 1} {name:14s} {n / elapsed:7.0f} req/s  "
                    f"client CPU {cpu_us:5.0f} µs/request",
                    flush=True,
                )
        _map_over("aiohttp")
    print("medians (req/s, client CPU µs/request; per-round ratio to raw httpx2):")
    for name in names:
        ratios = ", ".join(
            f"{a / b:.2f}" for a, b in zip(rates[name], rates["raw httpx2"], strict=True)
        )
        print(
            f"  {name:14s} {statistics.median(rates[name]):7.0f}/s  "
            f"{statistics.median(cpu[name]):5.0f} µs  ({ratios})"
        )
    if rq:
        per_round = [a / b for a, b in zip(rates["map/reqwest"], rates["map/aiohttp"], strict=True)]
        print(
            "  map over reqwest / map over aiohttp: "
            + ", ".join(f"{x:.2f}" for x in per_round)
            + f" (median {statistics.median(per_round):.2f})"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
