"""A provider (or something in between) answering a batch fetch badly: garbage lines,
rows that are not ours, repeats, an answer with no usage. Nothing is billed twice or
for a row that is not ours, no traceback; the rows without a usable line are row errors
that resubmit() sends again. The fetch is served by an httpx2.MockTransport injected with
cencori_nb.transport.set_transport (the network seam), after a real submit to the sandbox."""

from __future__ import annotations

import json

import httpx2

import cencori_nb
from cencori_nb import transport
from cencori_nb.ledger import default_ledger


def _completion(text: str) -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _completed_batch(bid: str, lines: list[str], total: int) -> httpx2.MockTransport:
    """OpenAI's answers for batch ``bid`` completed with ``total`` rows whose output file
    holds ``lines`` (as the provider sent them); 404 for anything else."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith(f"/batches/{bid}"):
            return httpx2.Response(
                200,
                json={
                    "id": bid,
                    "object": "batch",
                    "status": "completed",
                    "output_file_id": "file-out",
                    "error_file_id": None,
                    "request_counts": {"total": total, "completed": total, "failed": 0},
                },
            )
        if path.endswith("/files/file-out/content"):
            return httpx2.Response(200, content="\n".join(lines).encode())
        return httpx2.Response(404, json={"error": {"message": "no", "type": "invalid_request"}})

    return httpx2.MockTransport(handler)


def test_garbage_foreign_and_repeated_lines(sbx):
    sbx.batches.configure({"delay_s": 600})
    job = cencori_nb.submit(["a", "b", "c", "d"], model="gpt-4o-mini", max_tokens=5)
    bid = job.provider_job_ids[0]
    lines = [
        json.dumps({"custom_id": "r0", "response": {"status_code": 200, "body": _completion("A")}}),
        "{not json",
        json.dumps(
            {"custom_id": "r0", "response": {"status_code": 200, "body": _completion("A2")}}
        ),
        json.dumps(
            {"custom_id": "r99", "response": {"status_code": 200, "body": _completion("X")}}
        ),
        json.dumps(
            {"custom_id": "evil", "response": {"status_code": 200, "body": _completion("X")}}
        ),
        "[1, 2, 3]",
        json.dumps({"custom_id": "r2", "response": {"status_code": 200, "body": {"nope": 1}}}),
        json.dumps({"custom_id": "r3", "response": None, "error": {"code": "batch_expired"}}),
    ]

    transport.set_transport(_completed_batch(bid, lines, 4))
    try:
        out = job.result(timeout=30, progress=False)
        assert job.fetch() == 0
    finally:
        transport.set_transport(None)
    assert out.loc[0, "text"] == "A"  # the first line for a row wins; the repeat is ignored
    assert out.loc[1, "error"].startswith("missing")  # its only line was garbage
    assert "BadResponseError" in out.loc[2, "error"]  # a 200 body that is not an answer
    assert out.loc[3, "error"].startswith("expired")
    led = default_ledger()
    led.flush()
    ok = led.query("SELECT COUNT(*) FROM requests WHERE status = 'ok'")[0][0]
    assert ok == 1  # only r0 billed, once; r99 / evil are not ours
    st = job.status(refresh=False)
    assert (st.fetched, st.failed) == (4, 3)


def test_a_line_without_usable_usage_is_billed_as_an_estimate(sbx):
    """Three answers in a fetched batch: one with ``prompt_tokens: -100000`` (a usage no
    request has), one with no usage, one with its usage. The first two are recorded alike:
    estimated, with the tokens of their prompt and answer and their batch price above
    zero (as a live reply without usage). Before, the first was priced below zero and
    then, with the usage dropped, both at 0 tokens and $0: a paid answer billed as free."""
    from cencori_nb import pricing
    from cencori_nb.jobs.job import client_id

    sbx.batches.configure({"delay_s": 600})
    job = cencori_nb.submit(["same", "same", "same"], model="gpt-4o-mini", max_tokens=5)
    bid = job.provider_job_ids[0]
    hostile, missing = _completion("Same answer"), _completion("Same answer")
    hostile["usage"] = {"prompt_tokens": -100000, "completion_tokens": 5, "total_tokens": 15}
    del missing["usage"]
    bodies = {"r0": hostile, "r1": missing, "r2": _completion("Same answer")}
    lines = [
        json.dumps({"custom_id": cid, "response": {"status_code": 200, "body": body}})
        for cid, body in bodies.items()
    ]

    transport.set_transport(_completed_batch(bid, lines, 3))
    try:
        out = job.result(timeout=30, progress=False)
    finally:
        transport.set_transport(None)
    assert list(out["error"].isna()) == [True] * 3
    rows = {r.client_id: r for r in default_ledger().rows()}
    assert len(rows) == 3
    r0, r1, r2 = (rows[client_id(job.id, 0, pos)] for pos in range(3))
    assert (r2.estimated, r2.input_tokens, r2.output_tokens) == (False, 10, 5)
    for row in (r0, r1):
        assert row.estimated and row.status == "ok"
        assert (row.input_tokens, row.output_tokens) == (r1.input_tokens, r1.output_tokens)
        assert row.input_tokens > 0 and row.output_tokens > 0
        listed = pricing.estimate_cost("openai", row.model, row.input_tokens, row.output_tokens)
        assert row.provider_cost_usd == pricing.batch_price("openai", listed) > 0
