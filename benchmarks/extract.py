"""Extraction throughput: ``map(..., schema=Invoice)`` into 5 typed columns vs plain ``map``.

Run::

    .venv/bin/python benchmarks/extract.py                # 1,000 rows, 5 rounds (~1 minute)
    .venv/bin/python benchmarks/extract.py --rows 200 --rounds 3

The sandbox runs in its own *process* (``python -m cencori_nb sandbox --latency-ms 50``), as
in ``benchmarks/batch.py``, so the server does not share the client's GIL; everything lives in
a throwaway ``CENCORI_NB_HOME``.

(a) ``--rows`` free-text records through ``map`` at concurrency 64, plain and with
    ``schema=`` (5 fields: a string, a float, an enum, a date, a bool), interleaved round by
    round in alternating order, fresh prompts each round (no cache hits): requests/s and the
    ratio schema / plain per round (goal, issue 15: within 10 %, i.e. ≥ 0.90), and the client
    CPU per row of each (``time.process_time``: this process only).
(b) validation CPU per row, in process and without the network: ``Schema.parse`` (JSON →
    the pydantic model) over the answers of the last round, and ``Schema.frame`` (the typed
    columns) over the parsed values; medians of ``--rounds`` repetitions.
(c) client CPU of one ``chat`` call, plain vs ``schema=``, sequential against a second
    sandbox at 0 ms latency (no concurrency, so far less noise than (a)): blocks of
    ``--calls`` calls interleaved, medians; the difference is what ``schema=`` adds to a
    request (the larger body, the JSON answer, validation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import pydantic  # noqa: E402
from batch import (  # noqa: E402  (benchmarks/batch.py)
    KEY,
    MODEL,
    _setup_env,
    batch_arguments,
    sandbox_process,
)


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"
    GBP = "GBP"


class Invoice(pydantic.BaseModel):
    vendor: str
    total: float
    currency: Currency
    issued: dt.date
    paid: bool


VENDORS = ("ACME Tools Ltd", "Globex Corporation", "Initech", "Soylent Corp", "Stark Industries")


def records(tag: str, rows: int) -> list[str]:
    """Free-text invoices, each different (no cache hits across rounds or contenders)."""
    return [
        f"{tag} #{i}: {VENDORS[i % 5]} billed us {100 + i}.{i % 100:02d} "
        f"{('EUR', 'USD', 'GBP')[i % 3]} on 2025-{1 + i % 12:02d}-{1 + i % 28:02d}, "
        f"{'paid' if i % 2 else 'not paid yet'}."
        for i in range(rows)
    ]


def run(prompts: list[str], concurrency: int, schema: Any) -> tuple[float, float, Any]:
    """(seconds, client CPU µs per row, DataFrame) of one map call."""
    import cencori_nb

    cpu0, t0 = time.process_time(), time.perf_counter()
    df = cencori_nb.map(
        prompts, model=MODEL, concurrency=concurrency, progress=False, schema=schema
    )
    elapsed = time.perf_counter() - t0
    return elapsed, (time.process_time() - cpu0) * 1e6 / len(prompts), df


def part_a(rows: int, concurrency: int, rounds: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"plain": [], "schema": []}
    cpu: dict[str, list[float]] = {"plain": [], "schema": []}
    last: Any = None
    # warm both paths (key store unlock, pooled connections, the schema built once)
    run(records("warm-plain", concurrency), concurrency, None)
    run(records("warm-schema", concurrency), concurrency, Invoice)
    for r in range(rounds):
        order = [("plain", None), ("schema", Invoice)]
        if r % 2:
            order.reverse()
        for name, schema in order:
            elapsed, cpu_us, df = run(records(f"round {r} {name}", rows), concurrency, schema)
            errors = int(df["error"].notna().sum())
            rates[name].append(rows / elapsed)
            cpu[name].append(cpu_us)
            print(
                f"  round {r + 1} {name:6s} {rows / elapsed:7.1f} req/s ({elapsed:5.2f} s, "
                f"{errors} errors)  client CPU {cpu_us:5.0f} µs/row",
                flush=True,
            )
            if name == "schema":
                last = df
    return {"rates": rates, "cpu_us": cpu, "last": last}


def part_b(df: Any, rounds: int) -> dict[str, float]:
    from cencori_nb.schemas import as_schema

    schema = as_schema(Invoice)
    texts = [t for t in df["text"] if isinstance(t, str)]
    parse_us, frame_us = [], []
    for _ in range(max(rounds, 3)):
        t0 = time.process_time()
        values = [schema.parse(t) for t in texts]
        parse_us.append((time.process_time() - t0) * 1e6 / len(texts))
        t0 = time.process_time()
        schema.frame(values)
        frame_us.append((time.process_time() - t0) * 1e6 / len(texts))
    return {
        "rows": len(texts),
        "parse_us": statistics.median(parse_us),
        "frame_us": statistics.median(frame_us),
    }


def part_c(calls: int, rounds: int) -> dict[str, float]:
    import cencori_nb

    per_call: dict[str, list[float]] = {"plain": [], "schema": []}
    with sandbox_process("--latency-ms", "0") as url:
        os.environ["CENCORI_NB_SANDBOX"] = url
        for r in range(max(rounds, 3) * 2):
            name, schema = ("plain", None) if r % 2 == 0 else ("schema", Invoice)
            prompts = records(f"sequential {r} {name}", calls)
            cencori_nb.chat(prompts[0], model=MODEL, schema=schema, cache=False)  # warm
            cpu0 = time.process_time()
            for prompt in prompts:
                cencori_nb.chat(prompt, model=MODEL, schema=schema, cache=False)
            per_call[name].append((time.process_time() - cpu0) * 1e6 / calls)
    return {k: statistics.median(v) for k, v in per_call.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    batch_arguments(ap)
    ap.add_argument("--calls", type=int, default=200, help="calls per block in (c)")
    args = ap.parse_args(argv)
    _setup_env()

    from cencori_nb import keys

    keys.set("openai", KEY)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average before: {load:.2f} on {os.cpu_count()} cores")
    with sandbox_process("--latency-ms", str(args.latency_ms)) as url:
        os.environ["CENCORI_NB_SANDBOX"] = url
        ideal = args.concurrency / (args.latency_ms / 1000.0)
        print(
            f"(a) {args.rows} records into 5 typed columns, {args.latency_ms:g} ms latency, "
            f"concurrency {args.concurrency} (ideal {ideal:,.0f} req/s), {args.rounds} rounds:"
        )
        a = part_a(args.rows, args.concurrency, args.rounds)
    rates, cpu = a["rates"], a["cpu_us"]
    med = {k: statistics.median(v) for k, v in rates.items()}
    per_round = [s / p for s, p in zip(rates["schema"], rates["plain"], strict=True)]
    print("  medians: " + ", ".join(f"{k} {v:.0f}/s" for k, v in med.items()))
    print(
        f"  schema / plain = {med['schema'] / med['plain']:.2f} (per round: "
        + ", ".join(f"{x:.2f}" for x in per_round)
        + f"; median of rounds {statistics.median(per_round):.2f}); goal ≥ 0.90"
    )
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        "  client CPU µs/row (median): "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu_med.items())
        + f"; schema − plain = {cpu_med['schema'] - cpu_med['plain']:.0f} µs"
    )
    b = part_b(a["last"], args.rounds)
    print(
        f"(b) validation CPU over {b['rows']} answers: parse {b['parse_us']:.1f} µs/row, "
        f"typed columns {b['frame_us']:.1f} µs/row"
    )
    c = part_c(args.calls, args.rounds)
    print(
        f"(c) client CPU per sequential chat call: plain {c['plain']:.0f} µs, schema "
        f"{c['schema']:.0f} µs; schema= adds {c['schema'] - c['plain']:.0f} µs"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average after: {load:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
