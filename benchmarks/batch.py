"""Batch throughput: ``cencori_nb.map`` vs ``openai.AsyncOpenAI`` + semaphore vs raw httpx2.

Run::

    .venv/bin/python benchmarks/batch.py --skip-rpm              # (a), (f), (c) (~3 minutes)
    .venv/bin/python benchmarks/batch.py                         # + (b), the rate-limited run
    .venv/bin/python benchmarks/batch.py --profile --skip-rpm    # + where map's time goes

The sandbox runs in a separate *process* (``python -m cencori_nb sandbox``), so the server
does not share the client's GIL or CPU account. Everything lives in a throwaway
``CENCORI_NB_HOME``.

(a) warm: ``--rows`` prompts (1,000) at ``--latency-ms`` (50 ms) sandbox latency,
    concurrency 64, ``--rounds`` rounds (5) with the contenders interleaved in a rotating
    order in this one process, each warmed once before the first round and each round with
    fresh prompts (no cache hits): requests/s, the client process's CPU per request (every
    thread; ``map`` ends with its ledger flush so the background writer's commits count),
    and the ratios map / httpx2 and map / AsyncOpenAI per round and on the medians. The
    ideal is concurrency / latency = 1,280 requests/s; the setup's real ceiling is the fourth
    contender, bare asyncio sockets (`run_sockets`), and map and httpx2 are read against it.
(f) first call in a fresh process: each round starts one process per contender (map, raw
    httpx2, and map given a pandas column), interleaved, that imports its library, then
    times its first batch of ``--rows`` prompts (connections opened on the way; for map
    also the key store unlock, the ledger, pandas, aiohttp and its other lazy imports).
    Three ratios: (1) the issue's, each batch timed after its library's import (map's
    library is lazy, so its imports fall inside its clock, httpx2's outside); (2) from the
    spawn of the process to the end of its batch, so both pay the interpreter and every
    import; (3) ``map-df``: the prompts come as a pandas column, pandas imported before the
    clock as a notebook that built the frame has, against the same httpx2 runs. The price
    table on disk (``prices.json`` in the home, see cencori_nb/pricing.py) is built by the
    first process that prices anything after an install or upgrade of genai-prices, in a
    user's home as here: with ``--only-first`` that is round 1's map, and its line says so.
(b) a rate-limited run: a second sandbox with ``--rpm`` (sliding 60-second window per key),
    ``--rpm-rows`` prompts through ``map`` on the managed route (so the wallet is debited):
    achieved rate over allowed rate, failed rows, duplicate debits per request id, and
    requests the sandbox answered 200 more than once for the same prompt.
(c) the last (a) round of ``map`` run again: every row from the response cache.

All figures are from one run on whatever machine runs it; on a shared machine they are noisy
(we print the load and the spread across rounds). Compare the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "sk-bench-" + "x" * 32
CENCORI_KEY = "csk_bench_" + "y" * 32
MODEL = "gpt-4o-mini"


def _byte_compile() -> None:
    """Compile cencori_nb's modules to bytecode (``__pycache__``), as ``pip install`` does
    and as a first import does unless PYTHONDONTWRITEBYTECODE is set (it is in some
    sandboxes). Without it every fresh process of (f) compiles ~25k lines of source before
    its first map, 0.1-0.2 s of CPU a user never pays, while httpx2's installed modules
    are compiled already."""
    import compileall

    compileall.compile_dir(ROOT / "cencori_nb", quiet=1)


def _setup_env() -> None:
    home = tempfile.mkdtemp(prefix="cencori-bench-batch-")
    os.environ["CENCORI_NB_HOME"] = os.path.join(home, "home")
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    for name in ("CENCORI_NB_PASSPHRASE", "CENCORI_NB_PROJECT", "OPENAI_API_KEY"):
        os.environ.pop(name, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sandbox_process(*args: str) -> Iterator[str]:
    """``python -m cencori_nb sandbox`` in its own process; yields the base URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "CENCORI_NB_SANDBOX"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cencori_nb", "sandbox", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"sandbox did not start: {err}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def sandbox_stats(url: str) -> dict[str, Any]:
    import httpx2

    return httpx2.get(url + "/_sandbox/stats", timeout=10).json()


def sandbox_reset(url: str) -> None:
    import httpx2

    httpx2.post(url + "/_sandbox/reset", timeout=10)


# ------------------------------------------------------------------------------ contenders
def run_map(prompts: list[str], concurrency: int, **kw: Any) -> tuple[float, Any]:
    """One ``map``, timed until its ledger rows are committed (the writer's work counts)."""
    import cencori_nb
    from cencori_nb.ledger import default_ledger

    t0 = time.perf_counter()
    df = cencori_nb.map(prompts, model=MODEL, concurrency=concurrency, progress=False, **kw)
    default_ledger().flush()
    return time.perf_counter() - t0, df


def run_openai(
    url: str, prompts: list[str], concurrency: int, *, warm: bool = True
) -> tuple[float, int]:
    import openai

    async def main() -> tuple[float, int]:
        client = openai.AsyncOpenAI(base_url=url + "/openai/v1", api_key=KEY, max_retries=0)
        sem = asyncio.Semaphore(concurrency)
        errors = 0

        async def one(p: str) -> None:
            nonlocal errors
            async with sem:
                try:
                    r = await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": p}]
                    )
                    _ = r.choices[0].message.content
                except openai.OpenAIError:
                    errors += 1

        if warm:
            await asyncio.gather(*(one(f"warm {i}") for i in range(concurrency)))
        errors = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        elapsed = time.perf_counter() - t0
        await client.close()
        return elapsed, errors

    return asyncio.run(main())


def run_httpx2(
    url: str, prompts: list[str], concurrency: int, *, warm: bool = True
) -> tuple[float, int]:
    import httpx2

    async def main() -> tuple[float, int]:
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx2.AsyncClient(limits=limits, timeout=60) as client:
            sem = asyncio.Semaphore(concurrency)
            errors = 0
            endpoint = url + "/openai/v1/chat/completions"
            headers = {"Authorization": f"Bearer {KEY}"}

            async def one(p: str) -> None:
                nonlocal errors
                async with sem:
                    r = await client.post(
                        endpoint,
                        headers=headers,
                        json={"model": MODEL, "messages": [{"role": "user", "content": p}]},
                    )
                    if r.status_code != 200:
                        errors += 1
                        return
                    _ = r.json()["choices"][0]["message"]["content"]

            if warm:
                await asyncio.gather(*(one(f"warm {i}") for i in range(concurrency)))
            errors = 0
            t0 = time.perf_counter()
            await asyncio.gather(*(one(p) for p in prompts))
            return time.perf_counter() - t0, errors

    return asyncio.run(main())


def run_sockets(url: str, prompts: list[str], concurrency: int) -> tuple[float, int]:
    """The setup's ceiling, not a client anyone should use: ``concurrency`` workers, each
    with one keep-alive connection made before the clock starts, writing the request's
    bytes and reading ``Content-Length`` bytes back with asyncio streams, then taking the
    text out with ``json.loads``. No pool, no TLS, no header parsing beyond the length:
    what the sandbox and the loop allow, against which map and httpx2 are read."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def main() -> tuple[float, int]:
        conns = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
        errors = 0
        todo = iter(prompts)

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal errors
            for p in todo:
                body = json.dumps(
                    {"model": MODEL, "messages": [{"role": "user", "content": p}]}
                ).encode()
                writer.write(
                    b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                    b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s"
                    % (parts.netloc.encode(), KEY.encode(), len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                answer = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                    continue
                _ = json.loads(answer)["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(r, w) for r, w in conns))
        elapsed = time.perf_counter() - t0
        for _, w in conns:
            w.close()
        return elapsed, errors

    return asyncio.run(main())


# ------------------------------------------------------------------------------ parts
def part_a(
    url: str, rows: int, concurrency: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[str]]:
    rates: dict[str, list[float]] = {"map": [], "openai": [], "httpx2": [], "sockets": []}
    # CPU time of this (client) process per request: the sandbox runs in another process, so
    # this is what each client costs, and it is far steadier than wall time on a busy box.
    cpu_us: dict[str, list[float]] = {"map": [], "openai": [], "httpx2": [], "sockets": []}
    last_map_prompts: list[str] = []
    contenders: list[tuple[str, Callable[[list[str]], tuple[float, int]]]] = [
        ("map", lambda ps: _map_contender(ps, concurrency)),
        ("openai", lambda ps: run_openai(url, ps, concurrency)),
        ("httpx2", lambda ps: run_httpx2(url, ps, concurrency)),
        ("sockets", lambda ps: run_sockets(url, ps, concurrency)),
    ]
    # warm the map path (key store unlock, pooled connections, price tables) once
    _map_contender([f"warm map {i}" for i in range(concurrency)], concurrency)
    for r in range(rounds):
        order = contenders[r % 4 :] + contenders[: r % 4]
        for name, fn in order:
            prompts = [f"Round {r} {name}: summarise item {i} in one line." for i in range(rows)]
            cpu0 = time.process_time()
            elapsed, errors = fn(prompts)
            cpu = (time.process_time() - cpu0) * 1e6 / rows
            rate = rows / elapsed
            rates[name].append(rate)
            cpu_us[name].append(cpu)
            print(
                f"  round {r + 1} {name:7s} {rate:8.1f} req/s  ({elapsed:5.2f} s, "
                f"{errors} errors)  client CPU {cpu:6.0f} µs/request",
                flush=True,
            )
            if name == "map":
                last_map_prompts = prompts
    return rates, cpu_us, last_map_prompts


def _map_contender(prompts: list[str], concurrency: int) -> tuple[float, int]:
    elapsed, df = run_map(prompts, concurrency)
    return elapsed, int(df["error"].notna().sum())


def part_f(
    url: str, rows: int, concurrency: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """The first batch in a fresh process, per contender, interleaved over ``rounds``:
    requests/s, client CPU µs/request and requests/s from the process's spawn, per round."""
    rates: dict[str, list[float]] = {"map": [], "httpx2": [], "map-df": []}
    cpu_us: dict[str, list[float]] = {"map": [], "httpx2": [], "map-df": []}
    spawned: dict[str, list[float]] = {"map": [], "httpx2": [], "map-df": []}
    names = list(rates)
    for r in range(rounds):
        order = names[r % 3 :] + names[: r % 3]
        for name in order:
            t_spawn = time.time()  # the child's end is on the same clock
            out = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--first",
                    name,
                    "--url",
                    url,
                    "--rows",
                    str(rows),
                    "--concurrency",
                    str(concurrency),
                    "--tag",
                    f"first {r}",
                    "--spawned",
                    repr(t_spawn),
                ],
                cwd=ROOT,
                env={**os.environ, "CENCORI_NB_SANDBOX": url},
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if out.returncode != 0 or out.stderr.strip():
                raise RuntimeError(f"first-call run of {name} failed:\n{out.stderr[-2000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            rates[name].append(rows / got["elapsed"])
            cpu_us[name].append(got["cpu_us"])
            spawned[name].append(rows / got["since_spawn"])
            print(
                f"  round {r + 1} {name:7s} {rows / got['elapsed']:8.1f} req/s  "
                f"({got['elapsed']:5.2f} s, {got['since_spawn']:5.2f} s from spawn, "
                f"{got['errors']} errors)  client CPU "
                f"{got['cpu_us']:6.0f} µs/request (fresh process"
                + ("" if name == "httpx2" or got["table"] else "; built the price table")
                + ")",
                flush=True,
            )
    return rates, cpu_us, spawned


def first_call(name: str, url: str, rows: int, concurrency: int, tag: str, spawned: float) -> int:
    """In a fresh process: import the contender's library, then time its first batch."""
    prompts: Any = [f"{tag} {name}: summarise item {i} in one line." for i in range(rows)]
    table = False
    if name.startswith("map"):
        if name == "map-df":  # a notebook that built its frame has pandas imported already
            import pandas as pd

            prompts = pd.Series(prompts, name="prompt")
        import cencori_nb  # noqa: F401  (what a script imports; map's lazy imports count)

        # the price table a previous process left (pricing.TABLE_NAME, checked below without
        # importing pricing before the clock starts); the first process builds it
        table = (Path(os.environ["CENCORI_NB_HOME"]) / "prices.json").is_file()

        cpu0 = time.process_time()
        elapsed, df = run_map(prompts, concurrency)
        errors = int(df["error"].notna().sum())
        from cencori_nb import pricing

        assert pricing.TABLE_NAME == "prices.json"
    else:
        import httpx2  # noqa: F401

        cpu0 = time.process_time()
        elapsed, errors = run_httpx2(url, prompts, concurrency, warm=False)
    cpu_us = (time.process_time() - cpu0) * 1e6 / rows
    since_spawn = time.time() - spawned
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "errors": errors,
                "cpu_us": cpu_us,
                "table": table,
                "since_spawn": since_spawn,
            }
        )
    )
    return 0


def part_b(rpm: int, rows: int, concurrency: int, latency_ms: float) -> dict[str, Any]:
    import cencori_nb
    from cencori_nb import wallet

    with sandbox_process(
        "--latency-ms", str(latency_ms), "--rpm", str(rpm), "--balance", "1000"
    ) as url:
        os.environ["CENCORI_NB_SANDBOX"] = url
        wallet.set_balance(1000)
        prompts = [f"Rate-limited row {i}: one line please." for i in range(rows)]
        t0 = time.perf_counter()
        df = cencori_nb.map(
            prompts, model=MODEL, route="managed", concurrency=concurrency, progress=False
        )
        elapsed = time.perf_counter() - t0
        stats = sandbox_stats(url)
    debits = Counter(t.request_id for t in wallet.transactions(as_frame=False) if t.kind == "usage")
    statuses = {str(k): v for k, v in stats.get("statuses", {}).items()}
    # Sliding 60 s window: the first `rpm` go at once, then `rpm` more per 60 s. The best a
    # client can do for rows > rpm is finish after ceil(rows / rpm - 1) windows.
    windows = max(0, -(-rows // rpm) - 1)
    ideal_s = windows * 60.0
    after_first = rows - rpm
    steady = (after_first / elapsed) / (rpm / 60.0) if after_first > 0 else float("nan")
    return {
        "rows": rows,
        "rpm": rpm,
        "elapsed_s": elapsed,
        "ideal_s": ideal_s,
        "achieved_over_allowed": steady,
        "failed_rows": int(df["error"].notna().sum()),
        "duplicate_debits": sum(1 for n in debits.values() if n > 1),
        "debited_requests": len(debits),
        "ok_at_sandbox": statuses.get("200", 0),
        "rate_limited_at_sandbox": statuses.get("429", 0),
        "limiter_429s": df.attrs["cencori"]["rate_limited"],
    }


def part_c(prompts: list[str], concurrency: int, url: str) -> dict[str, Any]:
    before = sandbox_stats(url)["requests"]
    times = []
    for _ in range(3):
        elapsed, df = run_map(prompts, concurrency)
        times.append(elapsed)
        assert bool(df["cached"].all()), "a cached re-run sent something"
    return {"rows": len(prompts), "times_s": times, "sent": sandbox_stats(url)["requests"] - before}


def profile_map(url: str, rows: int, concurrency: int) -> None:
    """amap on this thread under cProfile: time by module (tottime), top functions."""
    import cProfile
    import pstats

    import cencori_nb

    prompts = [f"Profile: summarise item {i}." for i in range(rows)]
    prof = cProfile.Profile()

    async def go() -> None:
        await cencori_nb.amap(prompts, model=MODEL, concurrency=concurrency, progress=False)

    t0 = time.perf_counter()
    prof.enable()
    asyncio.run(go())
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    by_module: Counter[str] = Counter()
    for (filename, _line, fn), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        by_module[_bucket(filename, fn)] += tt
    total = sum(by_module.values())
    print(
        f"\nprofile of amap({rows} rows) on the main thread: wall {wall:.2f} s under "
        f"cProfile (profiling slows it), CPU by module (own time):"
    )
    for mod, tt in by_module.most_common(18):
        print(
            f"  {mod:40s} {tt:6.2f} s  {100 * tt / total:5.1f} %  "
            f"{1e6 * tt / rows:7.1f} µs/row (profiled)"
        )
    st.sort_stats("cumulative").print_stats(r"cencori_nb", 25)


def _bucket(filename: str, fn: str = "") -> str:
    path = filename.replace("\\", "/")
    if path.startswith("~"):  # a C function: name it by what it belongs to
        for tag in ("sqlite3", "socket", "select", "epoll", "json", "hashlib", "sha256"):
            if tag in fn:
                return f"C: {tag}"
        return "C: other builtins"
    if "/cencori_nb/" in path:
        return "cencori_nb." + path.split("/cencori_nb/", 1)[1].removesuffix(".py").replace(
            "/", "."
        )
    for lib in (
        "httpx2",
        "httpcore2",
        "h11",
        "anyio",
        "pandas",
        "sqlite3",
        "asyncio",
        "json",
        "genai_prices",
        "pydantic",
        "ssl",
        "selectors",
        "socket",
    ):
        if f"/{lib}/" in path or path.endswith(f"/{lib}.py"):
            return lib
    if path.startswith("<"):
        return "frozen stdlib (os, importlib…)"
    return "other"


def batch_arguments(ap: argparse.ArgumentParser) -> None:
    """The batch set-up every map benchmark shares (benchmarks/extract.py, transports.py)."""
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--rounds", type=int, default=5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    batch_arguments(ap)
    ap.add_argument("--skip-first", action="store_true", help="skip (f), the fresh processes")
    ap.add_argument(
        "--only-first", action="store_true", help="run only (f), the fresh processes (no rpm)"
    )
    ap.add_argument("--first", choices=["map", "httpx2", "map-df"], help=argparse.SUPPRESS)
    ap.add_argument("--spawned", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="first", help=argparse.SUPPRESS)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--rpm-rows", type=int, default=1200)
    ap.add_argument("--skip-rpm", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    if args.first:  # a child of part_f: the home and the keys are the parent's
        return first_call(args.first, args.url, args.rows, args.concurrency, args.tag, args.spawned)
    _byte_compile()
    _setup_env()

    from cencori_nb import keys

    keys.set("openai", KEY)
    keys.set_cencori_key(CENCORI_KEY)
    results: dict[str, Any] = {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average before: {load:.2f} on {os.cpu_count()} cores")
    with sandbox_process("--latency-ms", str(args.latency_ms)) as url:
        os.environ["CENCORI_NB_SANDBOX"] = url
        ideal = args.concurrency / (args.latency_ms / 1000.0)
        if args.only_first:
            f = _report_f(url, args)
            results["f"] = f
            return _finish(results, args)
        print(
            f"(a) {args.rows} prompts, {args.latency_ms:g} ms latency, concurrency "
            f"{args.concurrency} (ideal {ideal:,.0f} req/s), {args.rounds} rounds:"
        )
        rates, cpu_us, last = part_a(url, args.rows, args.concurrency, args.rounds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu_us.items()}
        print("  medians: " + ", ".join(f"{k} {v:.0f}/s" for k, v in med.items()))
        print(
            "  spread (min–max req/s): "
            + ", ".join(f"{k} {min(v):.0f}–{max(v):.0f}" for k, v in rates.items())
        )
        print(
            "  client CPU µs/request (median): "
            + ", ".join(f"{k} {v:.0f}" for k, v in cpu_med.items())
            + f"; map − httpx2 = {cpu_med['map'] - cpu_med['httpx2']:.0f} µs"
        )
        print(
            f"  map / httpx2 = {med['map'] / med['httpx2']:.2f}  (per round: "
            + ", ".join(f"{m / h:.2f}" for m, h in zip(rates["map"], rates["httpx2"], strict=True))
            + ")"
        )
        print(
            f"  map / openai = {med['map'] / med['openai']:.2f}  (per round: "
            + ", ".join(f"{m / o:.2f}" for m, o in zip(rates["map"], rates["openai"], strict=True))
            + ")"
        )
        print(f"  map / ideal  = {med['map'] / ideal:.2f}")
        print(
            f"  the setup's ceiling (bare asyncio sockets, run_sockets): {med['sockets']:.0f}/s; "
            f"map / ceiling = {med['map'] / med['sockets']:.2f}, "
            f"httpx2 / ceiling = {med['httpx2'] / med['sockets']:.2f}"
        )
        print(
            f"  map CPU / httpx2 CPU = {cpu_med['map'] / cpu_med['httpx2']:.2f}  (per round: "
            + ", ".join(
                f"{m / h:.2f}" for m, h in zip(cpu_us["map"], cpu_us["httpx2"], strict=True)
            )
            + ")"
        )
        results["a"] = {"rates": rates, "medians": med, "ideal": ideal, "cpu_us": cpu_us}
        if not args.skip_first:
            results["f"] = _report_f(url, args)

        c = part_c(last, args.concurrency, url)
        print(
            f"(c) cached re-run of {c['rows']} rows: "
            + ", ".join(f"{t * 1000:.0f} ms" for t in c["times_s"])
            + f"; requests sent: {c['sent']}"
        )
        results["c"] = c
        if args.profile:
            profile_map(url, args.rows, args.concurrency)
    if not args.skip_rpm:
        print(f"(b) rate limit {args.rpm} rpm, {args.rpm_rows} rows, managed route …", flush=True)
        b = part_b(args.rpm, args.rpm_rows, args.concurrency, args.latency_ms)
        print(
            f"  {b['elapsed_s']:.1f} s (best possible ≈ {b['ideal_s']:.0f} s); achieved / "
            f"allowed after the first window = {b['achieved_over_allowed']:.3f}; failed "
            f"rows {b['failed_rows']}; duplicate debits {b['duplicate_debits']} "
            f"(of {b['debited_requests']} debited); 200s at the sandbox {b['ok_at_sandbox']}"
            f", 429s {b['rate_limited_at_sandbox']} (limiter saw {b['limiter_429s']})"
        )
        results["b"] = b
    return _finish(results, args)


def _report_f(url: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"(f) the first batch of {args.rows} prompts in a fresh process:")
    f, cpu, spawned = part_f(url, args.rows, args.concurrency, args.rounds)
    fmed = {k: statistics.median(v) for k, v in f.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    smed = {k: statistics.median(v) for k, v in spawned.items()}

    def _ratio(label: str, table: dict[str, list[float]], med: dict[str, float], a: str) -> None:
        print(
            f"  {label} = {med[a] / med['httpx2']:.2f} on the medians (per round: "
            + ", ".join(f"{m / h:.2f}" for m, h in zip(table[a], table["httpx2"], strict=True))
            + ")"
        )

    _ratio("(1) first map / first httpx2, each after its import", f, fmed, "map")
    _ratio("(2) the same from the process's spawn", spawned, smed, "map")
    _ratio("(3) first map of a pandas column / first httpx2", f, fmed, "map-df")
    # CPU is the steadier figure on a shared machine (the client is CPU-bound at this
    # concurrency): the rate ratio cannot beat the inverse of this one for long.
    print(
        f"  client CPU per request, first map / first httpx2 = {cmed['map'] / cmed['httpx2']:.2f}"
        " on the medians (per round: "
        + ", ".join(f"{m / h:.2f}" for m, h in zip(cpu["map"], cpu["httpx2"], strict=True))
        + ")"
    )
    return {
        "rates": f,
        "medians": fmed,
        "cpu_us": cpu,
        "cpu_medians": cmed,
        "from_spawn": spawned,
        "from_spawn_medians": smed,
    }


def _finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average after: {load:.2f}")
    if args.json:
        print(json.dumps(results, default=str, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
