"""The providers' Batch APIs in the sandbox, judged by the official SDKs, unchanged:
openai files + batches, anthropic messages.batches, google-genai batches."""

from __future__ import annotations

import io
import json
import time

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from cencori_nb.sandbox.batches import parse_batch_spec
from cencori_nb.sandbox.replies import count_tokens

OPENAI_KEY = "sk-sandboxtest-batch-Qx4F"
ANTHROPIC_KEY = "sk-ant-sandboxtest-batch-Qx4F"
GOOGLE_KEY = "AIza-sandboxtest-batch-Qx4F"


def _wait(get, done, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        obj = get()
        if done(obj):
            return obj
        assert time.monotonic() < deadline, f"still not done: {obj}"
        time.sleep(0.05)


@pytest.fixture
def oai(sandbox) -> openai.OpenAI:
    return openai.OpenAI(base_url=sandbox.url + "/openai/v1", api_key=OPENAI_KEY, max_retries=0)


@pytest.fixture
def ant(sandbox) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sandbox.url + "/anthropic", api_key=ANTHROPIC_KEY, max_retries=0
    )


@pytest.fixture
def gem(sandbox) -> genai.Client:
    return genai.Client(
        api_key=GOOGLE_KEY, http_options=gtypes.HttpOptions(base_url=sandbox.url + "/google")
    )


def _openai_file(prompts: list[str], model: str = "gpt-4o-mini") -> bytes:
    lines = [
        json.dumps(
            {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": p}],
                    "max_tokens": 50,
                },
            }
        )
        for i, p in enumerate(prompts)
    ]
    return ("\n".join(lines) + "\n").encode()


# ------------------------------------------------------------------------------- OpenAI
def test_openai_batch_round_trip(oai, sandbox):
    """files.create → batches.create → retrieve until completed → files.content: one output
    line a row, matched on custom_id, each the body chat.completions would have answered."""
    sandbox.batches.configure({"delay_s": 0.3})
    prompts = [f"Summarise item {i}" for i in range(5)] + ["SANDBOX-ERROR: row refused"]
    f = oai.files.create(file=("in.jsonl", io.BytesIO(_openai_file(prompts))), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.id.startswith("file-")
    b = oai.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b.status == "validating" and b.id.startswith("batch_") and b.output_file_id is None
    seen = {b.status}
    b = _wait(
        lambda: oai.batches.retrieve(b.id),
        lambda x: seen.add(x.status) or x.status == "completed",
    )
    assert "in_progress" in seen or "finalizing" in seen
    assert b.request_counts.total == 6
    assert (b.request_counts.completed, b.request_counts.failed) == (5, 1)
    out = [json.loads(line) for line in oai.files.content(b.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in out) == [f"row-{i}" for i in range(5)]
    assert [r["custom_id"] for r in out] != [f"row-{i}" for i in range(5)]  # any order
    live = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompts[2]}],
        max_tokens=50,
    )
    row2 = next(r for r in out if r["custom_id"] == "row-2")
    assert row2["response"]["status_code"] == 200 and row2["error"] is None
    body = row2["response"]["body"]
    assert body["choices"][0]["message"]["content"] == live.choices[0].message.content
    assert body["usage"]["prompt_tokens"] == count_tokens(prompts[2])
    errors = [json.loads(line) for line in oai.files.content(b.error_file_id).text.splitlines()]
    assert len(errors) == 1 and errors[0]["custom_id"] == "row-5"
    assert errors[0]["response"]["status_code"] == 400
    assert "row refused" in errors[0]["response"]["body"]["error"]["message"]
    seen_key = [r for r in sandbox.stats["recent"] if r["path"].endswith("/batches")]
    assert seen_key and seen_key[-1]["headers"]["authorization"] == "Bearer …Qx4F"


def test_openai_faults_expired_failed_rows(oai, sandbox):
    """expire=/fail= fractions: expired rows carry error.code batch_expired, failed ones a
    500 response, all in the error file; the same rows every time (seeded by custom_id)."""
    f = oai.files.create(
        file=("in.jsonl", _openai_file([f"p{i}" for i in range(40)])), purpose="batch"
    )
    results = []
    for _ in range(2):
        b = oai.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"X-Sandbox-Batch": "delay=0,expire=0.25,fail=0.25"},
        )
        b = _wait(lambda b=b: oai.batches.retrieve(b.id), lambda x: x.status == "completed")
        errs = [json.loads(x) for x in oai.files.content(b.error_file_id).text.splitlines()]
        results.append(sorted((e["custom_id"], (e["error"] or {}).get("code")) for e in errs))
        assert b.request_counts.failed == len(errs) > 0
        assert b.request_counts.completed + b.request_counts.failed == 40
    assert results[0] == results[1]
    codes = {code for _, code in results[0]}
    assert codes == {"batch_expired", None}  # None: a failed row has a response instead


def test_openai_job_fails_as_a_whole(oai, sandbox):
    """job=fail: status failed with errors.data; an invalid file fails validation too."""
    f = oai.files.create(file=("in.jsonl", _openai_file(["a", "b"])), purpose="batch")
    b = oai.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers={"X-Sandbox-Batch": "job=fail"},
    )
    assert b.status == "failed" and b.errors.data[0].code == "sandbox_job_failure"
    bad = (
        b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        b"not json\n"
    )
    f2 = oai.files.create(file=("bad.jsonl", bad), purpose="batch")
    b2 = oai.batches.create(
        input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b2.status == "failed"
    assert (b2.errors.data[0].code, b2.errors.data[0].line) == ("invalid_json_line", 2)
    mixed = _openai_file(["a"]) + _openai_file(["b"], model="gpt-4o").replace(b"row-0", b"row-9")
    f3 = oai.files.create(file=("m.jsonl", mixed), purpose="batch")
    b3 = oai.batches.create(
        input_file_id=f3.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b3.status == "failed" and b3.errors.data[0].code == "mixed_models"


def test_openai_cancel_and_limits(oai, sandbox):
    """cancel → cancelling → cancelled, unfinished rows batch_cancelled; a file over the
    per-job request limit fails; bad key and unknown ids answer the provider's errors."""
    f = oai.files.create(file=("in.jsonl", _openai_file(["a", "b", "c"])), purpose="batch")
    b = oai.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers={"X-Sandbox-Batch": "delay=60"},
    )
    c = oai.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled")
    c = _wait(lambda: oai.batches.retrieve(b.id), lambda x: x.status == "cancelled")
    errs = [json.loads(x) for x in oai.files.content(c.error_file_id).text.splitlines()]
    assert {e["error"]["code"] for e in errs} == {"batch_cancelled"} and len(errs) == 3
    with pytest.raises(openai.ConflictError):
        oai.batches.cancel(b.id)
    sandbox.batches.configure({"limits": {"openai": (2, 10**6)}})
    b = oai.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b.status == "failed" and b.errors.data[0].code == "too_many_requests"
    with pytest.raises(openai.NotFoundError):
        oai.batches.retrieve("batch_nope")
    bad = openai.OpenAI(base_url=oai.base_url, api_key="sk-revoked-1234567890", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.batches.retrieve(b.id)


# ---------------------------------------------------------------------------- Anthropic
def test_anthropic_batch_round_trip(ant, sandbox):
    """messages.batches.create/retrieve/results: processing_status in_progress → ended,
    request_counts, results typed succeeded / errored / expired."""
    reqs = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 60,
                "messages": [{"role": "user", "content": f"Question {i}"}],
            },
        }
        for i in range(30)
    ]
    reqs[3]["params"]["messages"][0]["content"] = "SANDBOX-ERROR: no such thing"
    b = ant.messages.batches.create(
        requests=reqs, extra_headers={"X-Sandbox-Batch": "delay=0.2,expire=0.2"}
    )
    assert b.type == "message_batch" and b.processing_status == "in_progress"
    assert b.request_counts.processing == 30 and b.results_url is None
    b = _wait(lambda: ant.messages.batches.retrieve(b.id), lambda x: x.processing_status == "ended")
    assert b.results_url.endswith(f"/v1/messages/batches/{b.id}/results")
    counts = b.request_counts
    assert counts.processing == 0 and counts.errored >= 1 and counts.expired >= 1
    assert counts.succeeded + counts.errored + counts.expired == 30
    results = {r.custom_id: r.result for r in ant.messages.batches.results(b.id)}
    assert len(results) == 30
    assert results["r3"].type == "errored"
    assert results["r3"].error.error.type == "invalid_request_error"
    assert "no such thing" in results["r3"].error.error.message
    ok = [r for r in results.values() if r.type == "succeeded"]
    assert len(ok) == counts.succeeded
    live = ant.messages.create(
        model="claude-haiku-4-5",
        max_tokens=60,
        messages=[{"role": "user", "content": "Question 0"}],
    )
    if results["r0"].type == "succeeded":
        assert results["r0"].message.content[0].text == live.content[0].text
    assert sum(r.type == "expired" for r in results.values()) == counts.expired


def test_anthropic_cancel_and_errors(ant, sandbox):
    """cancel → canceling → ended with canceled rows; results before the end is an error;
    a duplicate custom_id is refused at create."""
    req = {
        "custom_id": "a",
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        },
    }
    b = ant.messages.batches.create(requests=[req], extra_headers={"X-Sandbox-Batch": "delay=60"})
    with pytest.raises(anthropic.AnthropicError):
        ant.messages.batches.results(b.id)
    c = ant.messages.batches.cancel(b.id)
    assert c.processing_status in ("canceling", "ended") and c.cancel_initiated_at is not None
    c = _wait(lambda: ant.messages.batches.retrieve(b.id), lambda x: x.processing_status == "ended")
    assert c.request_counts.canceled == 1
    assert [r.result.type for r in ant.messages.batches.results(b.id)] == ["canceled"]
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.batches.create(requests=[req, req])
    f = ant.messages.batches.create(requests=[req], extra_headers={"X-Sandbox-Batch": "job=fail"})
    f = _wait(lambda: ant.messages.batches.retrieve(f.id), lambda x: x.processing_status == "ended")
    assert f.request_counts.errored == 1


# ------------------------------------------------------------------------------- Gemini
def test_gemini_batch_round_trip(gem, sandbox):
    """google-genai batches.create (inlined requests) → get until JOB_STATE_SUCCEEDED →
    dest.inlined_responses in input order, each a GenerateContentResponse."""
    sandbox.batches.configure({"delay_s": 0.2})
    src = [
        {"contents": [{"role": "user", "parts": [{"text": f"Tell me about {i}"}]}]}
        for i in range(4)
    ]
    src.append({"contents": [{"role": "user", "parts": [{"text": "SANDBOX-ERROR: nope"}]}]})
    job = gem.batches.create(model="gemini-2.5-flash", src=src, config={"display_name": "t"})
    assert job.name.startswith("batches/") and job.state.name in (
        "JOB_STATE_PENDING",
        "JOB_STATE_RUNNING",
    )
    job = _wait(lambda: gem.batches.get(name=job.name), lambda j: j.done)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    responses = job.dest.inlined_responses
    assert len(responses) == 5
    live = gem.models.generate_content(model="gemini-2.5-flash", contents="Tell me about 2")
    assert responses[2].response.text == live.text
    assert responses[2].response.usage_metadata.prompt_token_count == count_tokens(
        "Tell me about 2"
    )
    assert responses[4].response is None and "nope" in responses[4].error.message


def test_gemini_cancel_and_failed_job(gem, sandbox):
    """batches.cancel → JOB_STATE_CANCELLED; job=fail → JOB_STATE_FAILED."""
    src = [{"contents": [{"role": "user", "parts": [{"text": "x"}]}]}]
    job = gem.batches.create(
        model="gemini-2.5-flash",
        src=src,
        config={"http_options": {"headers": {"X-Sandbox-Batch": "delay=60"}}},
    )
    gem.batches.cancel(name=job.name)
    job = _wait(lambda: gem.batches.get(name=job.name), lambda j: j.done)
    assert job.state.name == "JOB_STATE_CANCELLED"
    failed = gem.batches.create(
        model="gemini-2.5-flash",
        src=src,
        config={"http_options": {"headers": {"X-Sandbox-Batch": "job=fail"}}},
    )
    failed = gem.batches.get(name=failed.name)
    assert failed.state.name == "JOB_STATE_FAILED"


# ------------------------------------------------------------------------------ controls
def test_batch_controls(sandbox):
    """POST /_sandbox/batches sets delay and faults; bad settings are a 400 naming them;
    reset() returns to the constructor's delay."""
    http = httpx2.Client(timeout=5)
    r = http.post(sandbox.url + "/_sandbox/batches", json={"delay_s": 0, "expire": 0.5})
    assert r.status_code == 200 and r.json()["expire"] == 0.5
    r = http.post(sandbox.url + "/_sandbox/batches", json={"fail": 2})
    assert r.status_code == 400 and "fail" in r.json()["error"]
    sandbox.reset()
    assert sandbox.batches.config()["expire"] == 0.0
    http.close()
    with pytest.raises(ValueError, match="unknown batch setting"):
        parse_batch_spec("speed=3")
    with pytest.raises(ValueError, match="more than 1"):
        parse_batch_spec("expire=0.6,fail=0.6")
