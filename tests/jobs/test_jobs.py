"""cencori_nb.submit / BatchJob end to end against the sandbox's Batch APIs: the real
client-side wire code, the ledger, the wallet and the home's job files."""

from __future__ import annotations

import json
import os
import stat
from decimal import Decimal

import pandas as pd
import pytest

import cencori_nb
from cencori_nb import keys, pricing, settings
from cencori_nb.batch import COLUMNS
from cencori_nb.errors import (
    BatchNotSupportedError,
    BudgetExceededError,
    CostLimitError,
    JobError,
)
from cencori_nb.jobs import BatchJob, load_job
from cencori_nb.jobs.job import EXPIRED_MESSAGE, client_id
from cencori_nb.ledger import default_ledger
from cencori_nb.types import Usage

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "google": "gemini-2.5-flash"}


def _ledger(status: str | None = None) -> list:
    led = default_ledger()
    led.flush()
    return led.rows(status=status)


def _batch_calls(sandbox, verb: str = "") -> list[dict]:
    return [
        r
        for r in sandbox.stats["recent"]
        if ("batches" in r["path"] or "batchGenerateContent" in r["path"])
        and r["method"] == (verb or r["method"])
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_submit_result_records_once_at_batch_price(sbx, provider):
    """A DataFrame + template goes out as provider jobs split to rows_per_job; result() is
    map's shape in input order with the input's index; each sent row is one ledger row at
    half the list price; fetching again records nothing more."""
    df = pd.DataFrame({"text": [f"item {i}" for i in range(5)] + [None]}, index=list("uvwxyz"))
    job = cencori_nb.submit(
        df, "Summarise: {text}", model=MODELS[provider], max_tokens=400, rows_per_job=2
    )
    assert isinstance(job, BatchJob) and job.id.startswith("job_")
    assert len(job.provider_job_ids) == 3  # 5 sendable rows, 2 a job
    out = job.result(timeout=30)
    assert list(out.columns) == list(COLUMNS)
    assert list(out.index) == list("uvwxyz")
    assert out["error"].isna().sum() == 5 and out.loc["z", "error"].startswith("not sent")
    assert out.loc["w", "prompt"] == "Summarise: item 2"
    assert "Summarise: item 2" in out.loc["w", "text"]
    rows = _ledger()
    assert len(rows) == 5 and {r.status for r in rows} == {"ok"}
    assert all("batch price" in (r.price_version or "") for r in rows)
    for r in rows:  # provider_cost_usd is the batch price: half the list price
        listed = pricing.provider_cost(
            provider, r.model, Usage(r.input_tokens, r.output_tokens)
        ).cost_usd
        assert listed is not None and r.provider_cost_usd == listed / 2
    by_rid = {r.client_id: r for r in rows}
    assert out.loc["w", "cost_usd"] == by_rid[client_id(job.id, 1, 2)].cost_usd
    assert job.fetch() == 0 and load_job(job.id).fetch() == 0
    assert len(_ledger()) == 5
    st = job.status()
    assert (st.state, st.rows, st.fetched, st.failed) == ("fetched", 5, 5, 0)
    assert st.cost_usd == sum(r.cost_usd for r in rows)


def test_job_files_are_private_and_written_before_sending(sbx):
    """The job directory is 0700, its files 0600; job.json names the provider ids."""
    job = cencori_nb.submit(["a", "b"], model="gpt-4o-mini", max_tokens=5)
    d = job.directory
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("job.json", "input.jsonl", ".lock"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    record = json.loads((d / "job.json").read_text())
    assert record["parts"][0]["provider_job_id"] == job.provider_job_ids[0]
    job.result(timeout=30)
    assert stat.S_IMODE((d / "results.jsonl").stat().st_mode) == 0o600
    text = b"".join(p.read_bytes() for p in d.iterdir())
    assert b"sk-sandbox-demo" not in text  # the key never reaches the job files


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_expired_and_failed_rows_come_back_as_errors_and_resubmit_only_those(sbx, provider):
    """With row faults on, expired and failed rows are row errors (cost 0, one error row in
    the ledger); resubmit() sends exactly those again and the result then has them all."""
    sbx.batches.configure({"expire": 0.3, "fail": 0.2})
    prompts = [f"q{i}" for i in range(20)] + ["SANDBOX-ERROR: this one is refused"]
    job = cencori_nb.submit(prompts, model=MODELS[provider], max_tokens=20)
    out = job.result(timeout=30)
    bad = out[out["error"].notna()]
    expired = bad[bad["error"] == EXPIRED_MESSAGE]
    assert len(expired) >= 1 and len(bad) > len(expired)
    assert "this one is refused" in bad.loc[20, "error"]
    assert out.loc[out["error"].isna(), "text"].notna().all()
    assert (bad["cost_usd"] == 0).all()
    assert len(_ledger("ok")) == len(out) - len(bad)
    assert len(_ledger("error")) == len(bad)
    sbx.batches.configure({"expire": 0, "fail": 0})
    before = {r.client_id for r in _ledger()}
    job.resubmit()
    assert len(job.provider_job_ids) == 2
    again = job.result(timeout=30)
    assert again["error"].notna().sum() == 1  # the scripted refusal fails again, as live
    assert "this one is refused" in again.loc[20, "error"]
    new = [r for r in _ledger() if r.client_id not in before]
    assert len(new) == len(bad)  # only the failed rows were sent again
    st = job.status()
    assert (st.state, st.fetched, st.done, st.failed, st.expired) == ("fetched", 21, 21, 1, 0)
    assert st.cost_usd == sum(r.cost_usd for r in _ledger("ok"))
    assert list(again.loc[out["error"].isna(), "text"]) == list(
        out.loc[out["error"].isna(), "text"]
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_job_failing_as_a_whole(sbx, provider):
    """A job the provider fails as a whole: every row is an error naming that, nothing
    billed; the status says failed rows."""
    sbx.batches.configure({"job": "fail"})
    job = cencori_nb.submit(["a", "b", "c"], model=MODELS[provider], max_tokens=5)
    out = job.result(timeout=30)
    assert out["error"].notna().all()
    assert len(_ledger("ok")) == 0
    st = job.status()
    assert st.failed == 3 and st.cost_usd == 0


def test_cancel(sbx):
    """cancel(): unfinished rows come back cancelled; nothing billed for them."""
    sbx.batches.configure({"delay_s": 60})
    job = cencori_nb.submit(["a", "b", "c"], model="gpt-4o-mini", max_tokens=5)
    st = job.cancel()
    assert st.state in ("running", "ended", "cancelled")
    out = job.result(timeout=30)
    assert out["error"].str.startswith("cancelled").all()
    assert len(_ledger("ok")) == 0


def test_providers_without_batch_api_and_managed_route_are_refused(sbx):
    """Mistral (no Batch API) and the managed route are refused with the reason, before
    anything is stored or sent."""
    keys.set("mistral", "sandbox-demo-mistral")
    with pytest.raises(BatchNotSupportedError, match="has no Batch API"):
        cencori_nb.submit(["a"], model="mistral-small-latest")
    with pytest.raises(BatchNotSupportedError, match="no batch endpoint"):
        cencori_nb.submit(["a"], model="gpt-4o-mini", route="managed")
    assert cencori_nb.jobs().empty and not _batch_calls(sbx)


def test_estimate_batch_vs_live_vs_managed(sbx):
    """estimate_job: batch = half of live (BYOK, zero fee), managed = live × 1.5."""
    est = cencori_nb.estimate_job(["hello there"] * 10, model="gpt-4o-mini", max_tokens=100)
    assert est.rows == 10 and est.output_tokens == 1000
    assert est.batch_usd == est.live_usd / 2
    assert est.managed_usd == est.live_usd * Decimal("1.5")
    assert est.saving_usd == est.live_usd / 2
    assert "batch ~$" in str(est) and "managed" in str(est)


def test_max_cost_and_hard_cap_refuse_before_sending(sbx):
    """max_cost_usd under the batch estimate, or a hard cap the job's maximum would pass:
    refused, nothing sent, no job stored."""
    with pytest.raises(CostLimitError, match="Nothing was sent"):
        cencori_nb.submit(["x"] * 50, model="gpt-4o-mini", max_tokens=500, max_cost_usd="0.000001")
    settings.update_project("default", hard_cap_usd=Decimal("0.0001"))
    with pytest.raises(BudgetExceededError):
        cencori_nb.submit(["x"] * 50, model="gpt-4o-mini", max_tokens=500)
    assert not _batch_calls(sbx) and cencori_nb.jobs().empty


def test_hard_cap_reservation_outlives_the_process_and_shrinks_on_fetch(sbx):
    """Under a hard cap the job's maximum is reserved at submit, held by the job (pid 0),
    so it does not expire with the kernel; fetching releases it."""
    settings.update_project("default", hard_cap_usd=Decimal("10"))
    sbx.batches.configure({"delay_s": 60})
    job = cencori_nb.submit(["x"] * 4, model="gpt-4o-mini", max_tokens=100)
    led = default_ledger()
    held = led.query("SELECT pid, host, amount_pusd FROM budget_reservations")
    assert len(held) == 1 and held[0][0] == 0 and held[0][1] == f"job:{job.id}"
    assert held[0][2] > 0
    from cencori_nb import accounting

    with led.transaction() as conn:
        accounting._expire_stale(conn)  # what every reserve() runs first
    assert len(led.query("SELECT 1 FROM budget_reservations")) == 1
    sbx.batches.configure({"delay_s": 0})
    job.cancel()
    job.result(timeout=30)
    assert led.query("SELECT COUNT(*) FROM budget_reservations")[0][0] == 0


def test_rotated_key_is_used_for_fetch(sbx):
    """A key rotated between submit and fetch: the results are fetched with the key
    stored now (the sandbox sees its hint)."""
    keys.set("openai", "sk-sandbox-demo-openai-first")
    sbx.batches.configure({"delay_s": 60})
    job = cencori_nb.submit(["a"], model="gpt-4o-mini", max_tokens=5)
    keys.set("openai", "sk-sandbox-demo-openai-later")
    sbx.batches.configure({"delay_s": 0})
    sbx.batches.jobs[job.provider_job_ids[0]].delay_s = 0
    job.result(timeout=30)
    hints = [(r["path"], r["key"]) for r in sbx.stats["recent"] if r["path"].startswith("/openai")]
    create = [k for p, k in hints if p.endswith("/batches")]
    content = [k for p, k in hints if p.endswith("/content")]
    assert create == ["…irst"] and content and set(content) == {"…ater"}


def test_jobs_listing_and_load(sbx):
    """cencori_nb.jobs() lists every job (newest first); load_job picks one up by id;
    unknown or malformed ids are a JobError."""
    a = cencori_nb.submit(["a"], model="gpt-4o-mini", max_tokens=5)
    b = cencori_nb.submit(["b"], model="claude-haiku-4-5", max_tokens=5)
    listed = cencori_nb.jobs()
    assert set(listed["job_id"]) == {a.id, b.id}
    assert load_job(b.id).provider == "anthropic"
    with pytest.raises(JobError, match="No batch job"):
        load_job("job_0000000000000000")
    with pytest.raises(JobError, match="not a job id"):
        load_job("../../etc")
    (a.directory / "job.json").write_text("{not json")
    with pytest.raises(JobError, match="damaged"):
        load_job(a.id)
    assert "unreadable" in set(cencori_nb.jobs()["state"].str[:10])
    os.chmod(a.directory / "job.json", 0o600)


def test_a_stored_key_in_a_prompt_is_refused_before_anything_is_stored(sbx):
    """A prompt holding a stored key is refused (KeyInPromptError) before the job is
    written or anything reaches the provider, as chat() refuses it."""
    from cencori_nb.egress import DEMO_KEYS
    from cencori_nb.errors import KeyInPromptError

    with pytest.raises(KeyInPromptError):
        cencori_nb.submit(["fine", f"leak {DEMO_KEYS['anthropic']} here"], model="gpt-4o-mini")
    assert cencori_nb.jobs().empty and not _batch_calls(sbx)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_row_bodies_are_what_the_live_adapter_sends(sbx, provider):
    """The fast path (a prompt put where the adapter put a marker) gives exactly the body
    the adapter builds, for awkward prompts too (quotes, backslashes, newlines, unicode)."""
    from cencori_nb.jobs.job import body_maker
    from cencori_nb.jobs.wire import api_for
    from cencori_nb.router import explain_route
    from cencori_nb.types import ChatRequest

    decision = explain_route(MODELS[provider], route="byok")
    api = api_for(provider)
    params = {"system": "Be brief.", "temperature": 0.2, "max_tokens": 30}
    make = body_maker(api, decision, params, decision.project)
    for prompt in ['say "hi"', "back\\slash \\u0000", "line\nbreak\ttab", "é ✓ 𝔘", "{}"]:
        live = api.row_body(
            ChatRequest.from_prompt(
                prompt,
                system="Be brief.",
                model=decision.model,
                provider=provider,
                route="byok",
                temperature=0.2,
                max_tokens=30,
                project=decision.project,
            ),
            decision,
        )
        assert make(prompt) == live
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert make(messages)["model" if provider != "google" else "contents"]


def test_map_via_batch_is_submit_and_wait(sbx):
    """map(..., via="batch") sends a provider batch job, waits, and returns map's table
    (same columns, index, dtypes as the live map of the same prompts)."""
    s = pd.Series(["one", "two", None], index=[10, 20, 30])
    out = cencori_nb.map(s, model="gpt-4o-mini", max_tokens=20, via="batch", progress=False)
    live = cencori_nb.map(s, model="gpt-4o-mini", max_tokens=20, progress=False)
    assert list(out.columns) == list(live.columns) and list(out.index) == [10, 20, 30]
    assert list(out.dtypes) == list(live.dtypes)
    assert list(out["text"][:2]) == list(live["text"][:2])
    assert out.loc[30, "error"].startswith("not sent")
    assert len(cencori_nb.jobs()) == 1
    with pytest.raises(cencori_nb.ConfigurationError, match="via must be"):
        cencori_nb.map(s, model="gpt-4o-mini", via="later")


def test_split_respects_request_and_byte_limits():
    """Parts never exceed the provider's requests or bytes per job, keep input order, and
    cover every row once (a row bigger than the byte limit still goes, alone)."""
    from cencori_nb.jobs.job import _split
    from cencori_nb.jobs.wire import LIMITS

    max_rows, max_bytes = LIMITS["openai"]
    positions = list(range(10))
    sizes = dict.fromkeys(positions, max_bytes // 3)
    chunks = list(_split(positions, sizes, "openai", 10**9))
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert all(sum(sizes[p] for p in c) <= max_bytes for c in chunks)
    assert list(_split(positions, dict.fromkeys(positions, 1), "openai", 4)) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    many = list(range(max_rows + 1))
    assert [len(c) for c in _split(many, dict.fromkeys(many, 1), "openai", 10**9)] == [
        max_rows,
        1,
    ]
    huge = {0: 1, 1: max_bytes + 1, 2: 1}
    assert list(_split([0, 1, 2], huge, "openai", 10**9)) == [[0], [1], [2]]


def test_a_gemini_row_blocked_before_the_model_ran_is_paid_and_shown(sbx):
    """One row of a Gemini batch job is a prompt Google blocked (200, promptFeedback,
    no candidates, the prompt's tokens in usageMetadata): the row's error names the block,
    and its ledger row records the billed prompt at the batch price, like any answer; the
    other rows are ordinary answers."""
    job = cencori_nb.submit(
        ["Say hello", "SANDBOX-BLOCK-PROMPT say hello"],
        model="gemini-2.5-flash",
        max_tokens=400,
    )
    out = job.result(timeout=30)
    assert out.loc[0, "error"] is None or pd.isna(out.loc[0, "error"])
    blocked = out.loc[1]
    assert "RefusalError" in blocked["error"] and "PROHIBITED_CONTENT" in blocked["error"]
    assert blocked["text"] == ""
    rows = {r.client_id: r for r in _ledger()}
    row = rows[client_id(job.id, 0, 1)]
    assert row.status == "ok" and row.input_tokens > 0 and row.output_tokens == 0
    listed = pricing.provider_cost("google", row.model, Usage(row.input_tokens, 0)).cost_usd
    assert listed is not None and listed > 0 and row.provider_cost_usd == listed / 2
