"""Prompts at scale: ``map`` / ``amap`` over many prompts, and the ``.cencori`` pandas accessor.

>>> import cencori_nb, pandas as pd
>>> out = cencori_nb.map(["Say hi", "Say bye"], model="gpt-4o-mini", max_cost_usd=0.10)
>>> df.cencori.prompt("Summarise: {text}", model="gpt-4o-mini")   # one row per df row
>>> df["review"].cencori.prompt("Sentiment of: {}")                 # one row per value

What a batch does, in order:

1. **Estimate** (only when ``max_cost_usd`` is set, or via :func:`estimate`): route resolved
   once; input tokens estimated from the text (:mod:`cencori_nb.tokens`), output tokens =
   ``max_tokens`` or :data:`DEFAULT_OUTPUT_TOKENS`; list price from :mod:`cencori_nb.pricing`;
   managed route × (1 + markup). Above ``max_cost_usd`` → :class:`CostLimitError` before
   anything is sent.
2. **Send** with async concurrency in one event loop, through an
   :class:`~cencori_nb.batch.ratelimit.AdaptiveLimiter` (429 → everyone waits the Retry-After and
   concurrency halves; successes raise it back). ``achat`` is called with ``retries=0``: the
   batch does its own bounded retries so the limiter sees every 429.
3. **Record**: every request is settled in the ledger by the client (success, failure, cache
   hit). Re-running the same batch sends only the rows that are missing (interrupted,
   failed, or not sent): deterministic requests (temperature 0 or unset, cache on) are
   answered by the response cache, each hit recorded as cached; for the others the batch
   keeps a *checkpoint* in the home (``batches/<id>.jsonl``, 0600, one line per finished
   row, keyed by a hash of the prompt and the parameters, written once the row's ledger
   row is committed: like the cache, it never gets ahead of the ledger). The checkpoint is
   deleted when a run ends with every sendable row done; ``resume=False`` ignores it.
4. **Return** a DataFrame in input order (aligned with the input index for a Series or an
   accessor) with columns ``prompt, text, error, input_tokens, output_tokens, cost_usd,
   route, cached, model, provider_cost_usd, credits_charged_usd, request_id, test_mode``.

``cost_usd`` is what the row cost *you*, as the request was settled (the one rule,
:func:`cencori_nb.accounting.cost_of`): the credits charged for a managed request, the
provider's list price plus any BYOK fee for a BYOK request, 0 for a cache hit or a Cencori
test key (``test_mode``). ``provider_cost_usd`` and ``credits_charged_usd`` give both
sides as the ledger has them. Rows restored from a checkpoint are shown like cache hits
(``cached`` True, cost 0: the earlier run paid; ``request_id`` names that request);
``df.attrs["cencori"]`` counts them, with the requests sent and the 429s met.

A failing row gets its message in ``error`` and the batch goes on. Rate limits, timeouts
and 5xx are retried by the one retry policy, :func:`cencori_nb.transport.next_wait`
(``retries`` times for timeouts/5xx; in its pacing form up to
:data:`~cencori_nb.transport.PACED_RATE_LIMIT_RETRIES` times for 429s, each wait shared by
every worker through the limiter); credit, spend-cap and budget errors stop
the batch from starting more rows (``"not sent: …"``), as does actual spend reaching
``max_cost_usd``.

The same prompt twice in a deterministic batch is sent once; the copies wait for it and are
answered by the cache.

**Interrupts.** Pressing *Interrupt* in Jupyter (or Ctrl-C) stops the batch: rows in
flight are cancelled, finished rows are already in the ledger (and in the response cache or
the checkpoint), and
:func:`map` raises :class:`BatchInterrupted` (a ``KeyboardInterrupt``, so the cell or
script does stop) whose ``.partial`` is the DataFrame so far, unfinished rows with error
``"interrupted"``. Running the same call again sends only the missing rows. :func:`amap`
follows asyncio's rules instead: cancelling it cancels the rows in flight and re-raises
``CancelledError`` (the cache and the checkpoint make the re-run cheap all the same).

**Jupyter.** :func:`map` is synchronous and works inside a running kernel loop: the batch
runs on one private event-loop thread (created once per process, so its pooled connections
are reused from call to call), and the calling thread waits. No ``nest_asyncio``.

The package, one concern a module: :mod:`.runner` (``map``/``amap``, one run of a batch),
:mod:`.params` (the prompts and shared parameters), :mod:`.checkpoint`, :mod:`.cost` (the
estimate), :mod:`.templates` (filling a template from rows), :mod:`.accessors` (the pandas
accessors), :mod:`.ratelimit` (the adaptive limiter) and :mod:`.progress` (the displays).
"""

from __future__ import annotations

from .accessors import register_when_pandas_loads
from .cost import DEFAULT_OUTPUT_TOKENS, BatchEstimate, estimate
from .runner import COLUMNS, BatchInterrupted, amap, map
from .templates import fill_template

__all__ = [
    "COLUMNS",
    "DEFAULT_OUTPUT_TOKENS",
    "BatchEstimate",
    "BatchInterrupted",
    "amap",
    "estimate",
    "fill_template",
    "map",
]

register_when_pandas_loads()
