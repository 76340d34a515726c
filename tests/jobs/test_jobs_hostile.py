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
                    "request_counts": {"total": 4, "completed": 4, "failed": 0},
                },
            )
        if path.endswith("/files/file-out/content"):
            return httpx2.Response(200, content="\n".join(lines).encode())
        return httpx2.Response(404, json={"error": {"message": "no", "type": "invalid_request"}})

    transport.set_transport(httpx2.MockTransport(handler))
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
