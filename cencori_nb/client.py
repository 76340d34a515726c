"""chat, stream, achat, astream: one request from prompt to recorded Completion.

The flow of every call::

    ChatRequest → router.resolve → cache lookup (deterministic requests only)
      → accounting.reserve (hard cap: hold the estimated maximum cost)
      → pacing (managed route) → adapter.build_request → transport.send (retries)
      → adapter.parse_response / stream parser → Completion
      → accounting.settle (price, charge, ledger row, reservation released) → cache store

A reservation is released by the settle or failure record that ends its request, and in
any case when the call leaves (an exception, Ctrl-C, a stream dropped unread), so none
outlives its request in a live process.

Failures are recorded with ``accounting.record_failure`` (route and credential actually
used) and then raised. A BYOK failure falls back to the managed route only when the router
attached a ``fallback`` (the project allows it and a Cencori key exists) and the error is a
rate limit, a timeout or an outage — never after 401/403 (an invalid BYOK key does not
silently spend credits). Each attempt gets its own ledger row. That rule lives in one
failure step (``_failed``) shared by chat, achat, stream and astream, so the sync and
async faces differ only in how they send (tests/test_async_parity.py holds them equal).

Streams, and what a cut costs (the rule this module implements):

- The text deltas are yielded as they arrive; ``.completion`` is set once the stream ends.
- The provider's terminal event seen (``parser.complete()``) → the stream *completed*. If usage
  never arrived, tokens are estimated (``tokens.estimate_*``) and ``estimated=True``; no
  error is raised, the completion is settled and cached.
- The stream ended or broke before the terminal event → it was *cut*. If any text arrived,
  the request is settled as ``interrupted`` with estimated tokens (the provider has billed
  it, so the spend is recorded) and then :class:`~cencori_nb.errors.BadResponseError`
  ("stream was cut…") is raised with the partial completion as ``err.completion``. If
  nothing arrived, the failure is recorded and the transport's error is raised. A cut
  stream is never cached.
- An error event inside a 200 stream is handled like a cut, but the provider's own error is
  raised (with ``err.completion`` when text had arrived).
- The consumer stopping early (``close()``, leaving the ``with`` block, ``break`` then
  garbage collection, Ctrl-C, a cancelled task) is not an error of ours: the request is
  settled as ``interrupted`` with estimated tokens, also when no text had arrived (a
  provider may bill the prompt). So is a non-streamed request stopped while waiting.

Nothing paid for unseen: before anything is sent the ledger is open and has no rows of this
process waiting (``Ledger.check``), and each attempt gets its ``client_id`` and a line in
the ledger's in-flight journal (``Ledger.begin``), so even a process killed mid-request
(SIGKILL, a crashed kernel) has that request recorded, as ``interrupted``, at the next
start.

Per-call overhead is kept small on purpose: settings and the key store are re-read only when
their file changes, looked at (``stat``) at most once a second (:mod:`cencori_nb.state`:
another process's change may be noticed up to a second late, never later than the retry
after a 401 or a "not configured" error), the key store is unlocked once per process, the
JSON body is built once by the adapter, and nothing is logged on the success path.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict

from . import accounting, cache, pacing, router, transport
from .errors import (
    AuthenticationError,
    BadResponseError,
    CencoriError,
    ConfigurationError,
    KeyAsNameError,
    KeyInPromptError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    RefusalError,
    SchemaMismatchError,
)
from .ledger import Ledger, LedgerRow, default_ledger, new_client_id
from .options import ChatOptions
from .providers import get_provider
from .redact import (
    StreamRedactor,
    forget_response_credentials,
    holds_secret,
    looks_like_key,
    refuse_key_in_prompt,
    registered_secrets,
    remove_stored_keys,
)
from .settings import Settings, current_member, load_settings
from .state import on_reset, recheck
from .tokens import estimate_messages_tokens, estimate_tokens
from .types import ChatRequest, Completion, Message

if TYPE_CHECKING:
    import httpx2

    from .accounting import Reservation
    from .providers.base import Provider, ProviderResult, StreamParser
    from .router import Decision

__all__ = ["AsyncChatStream", "ChatStream", "achat", "astream", "chat", "stream"]

_log = logging.getLogger("cencori_nb.client")
_perf = time.perf_counter
_FALLBACK_ERRORS = (RateLimitError, ProviderTimeoutError, ProviderUnavailableError)


# --------------------------------------------------------------------------- shared steps


def _resolve(request: ChatRequest, settings: Settings) -> Decision:
    """Route the request, refusing it first if it holds one of the stored keys.

    In a message, the provider would receive the key and its reply could repeat it into
    outputs, the cache and the ledger; as the model, project or provider name it would reach
    an error message, the ledger, the cache key and the settings. ``%%cencori`` refuses such
    prompts too; doing it here covers every face (CLI, batch, Python). A refused key is
    also removed from IPython's history when running in IPython.
    """
    _refuse_invalid_text(request)
    try:
        _refuse_key_as_name(request)  # the keys registered so far
        try:
            decision = router.resolve(request, settings)
        except CencoriError:
            _refuse_key_as_name(request)  # routing opened the store: before its message shows
            raise
        # Routing opened the store, which registered every key with cencori_nb.redact; the
        # project may come from CENCORI_NB_PROJECT (%cencori use) rather than the request.
        _refuse_key_as_name(request, project=decision.project)
        for message in request.messages:
            refuse_key_in_prompt(message.content, shapes=False)
        if request.schema is not None:  # sent with the prompt: the same rule
            request.schema.refuse_stored_keys()
    except KeyInPromptError:
        from .ipython_hygiene import forget_refused_input

        forget_refused_input()
        raise
    return decision


def _ledger_ready() -> Ledger:
    """The ledger, known writable before anything that can cost money is sent: opened and
    migrated (a damaged file raises :class:`~cencori_nb.errors.LedgerError`), with no rows
    of this process waiting that it could not commit (``Ledger.check``)."""
    led = default_ledger()
    led.check()
    return led


def _refuse_invalid_text(request: ChatRequest) -> None:
    """A lone surrogate (``"\\ud800"``, e.g. from a bad decode) is not text: refuse it here
    with one line instead of a UnicodeEncodeError deep in the cache or the transport."""
    texts = [m.content for m in request.messages]
    texts += [v for v in (request.model, request.provider, request.project) if v]
    for text in texts:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigurationError(
                    f"Not sent: the prompt (or a name) holds a lone surrogate at position "
                    f"{exc.start}, which is not valid UTF-8 text (bytes that were not UTF-8, "
                    "decoded with surrogateescape).",
                    code="invalid_text",
                    hint="Decode the text properly (errors='replace') or remove the character.",
                ) from None


# Names found not to be a key, with the set of registered keys they were checked against:
# the same model and project names come with every request, and the check runs twice per
# request (before and after routing); a name is checked again once a key is registered.
_clean_names: dict[str, frozenset[str]] = {}
on_reset("client.clean_names", _clean_names.clear, env=())


def _refuse_key_as_name(request: ChatRequest, project: str | None = None) -> None:
    registered = registered_secrets()
    for what, value in (
        ("model", request.model),
        ("provider", request.provider),
        ("project", request.project),
        ("project", project),
    ):
        if not value or _clean_names.get(value) is registered:
            continue
        if not (holds_secret(value) or looks_like_key(value)):
            if len(_clean_names) >= 256:
                _clean_names.clear()
            _clean_names[value] = registered
            continue
        raise KeyAsNameError(
            f"Not sent: the {what} name is one of your API keys (or shaped like one). It "
            "would be written to the ledger, the cache and error messages.",
            hint=f"Give a {what} name (e.g. "
            + {"model": "'gpt-4o-mini'", "provider": "'openai'", "project": "'default'"}[what]
            + ").",
        )


def _cache_hit(request: ChatRequest, decision: Decision) -> tuple[str | None, Completion | None]:
    """(cache key or None, recorded hit or None)."""
    if not cache.cacheable(request):
        return None, None
    start = _perf()
    key = cache.cache_key(decision, request)
    entry = cache.fetch(key)
    if entry is None:
        return key, None
    paid = entry.completion
    if paid.client_id and not default_ledger().has_row(paid.client_id):
        # cached but never recorded (a crash before its row committed, written by an older
        # version): record the request that paid for this answer, once, as it was
        accounting.record_recovered(paid, ts_ms=entry.created_ms)
    hit = cache.as_hit(entry)
    hit.request_id = uuid.uuid4().hex
    hit.project = decision.project
    hit.route = decision.route
    hit.credential_source = decision.credential_source
    hit.model_requested = request.model
    hit.latency_ms = (_perf() - start) * 1000.0
    return key, accounting.record_cached(hit)


def _test_mode(decision: Decision) -> bool:
    """A Cencori test key (``csk_test_…``) on the managed route: free, never debited."""
    return decision.route == "managed" and accounting.is_test_key(decision.credential.reveal())


class _ReserveArgs(TypedDict):
    """The keyword arguments of accounting.reserve / areserve after the project."""

    estimate: Decimal | None
    model: str
    provider: str
    output_tokens: int
    output_assumed: bool
    test_mode: bool


def _reserve_args(
    request: ChatRequest, decision: Decision, settings: Settings
) -> _ReserveArgs | None:
    """Arguments for accounting.reserve; None when the project has no budget (no estimate)."""
    if not decision.budgeted and not accounting.team_budgeted(decision.project):
        return None
    estimate, out, assumed = accounting.estimate_for(
        decision.provider,
        decision.model,
        decision.route,
        _prompt_tokens(request, decision),
        request.max_tokens,
        settings=settings,
    )
    return {
        "estimate": estimate,
        "model": decision.model,
        "provider": decision.provider,
        "output_tokens": out,
        "output_assumed": assumed,
        "test_mode": _test_mode(decision),
    }


# (messages, their text's estimate, whether they hold images): the estimate is asked for
# up to four times per request (the context check, the cost confirmation, the budget
# reservation, the in-flight note) and counts every word of the prompt; one entry, by
# identity, since a request's messages tuple is built once and never changes.
_last_estimate: tuple[object, int, bool] = ((), 0, False)


def _prompt_tokens(request: ChatRequest, decision: Decision, model: str | None = None) -> int:
    """The prompt's estimated input tokens: its text, plus its images by the formula of
    the provider that will read them (:func:`cencori_nb.images.image_tokens`); ``model``:
    the one that answered, when known (a gateway may have upgraded it)."""
    global _last_estimate
    messages, tokens, images = _last_estimate
    if messages is not request.messages:
        tokens = estimate_messages_tokens(m.content for m in request.messages)
        images = bool(request.images)
        _last_estimate = (request.messages, tokens, images)
    return tokens + _image_tokens(request, decision, model) if images else tokens


def _image_tokens(request: ChatRequest, decision: Decision, model: str | None = None) -> int:
    known = _last_estimate
    if known[0] is request.messages and not known[2]:
        return 0  # a text-only prompt, seen by _prompt_tokens
    parts = request.images
    if not parts:
        return 0
    from .images import parts_tokens

    return parts_tokens(parts, decision.provider, model or decision.model)


def _check_images(request: ChatRequest, decision: Decision) -> None:
    """Refuse images the routed model or provider cannot take, before anything is sent
    (:func:`cencori_nb.images.check_request`)."""
    if not request.images:
        return
    from .images import check_request

    check_request(request, provider=decision.provider, model=decision.model, route=decision.route)


def _confirm(
    request: ChatRequest,
    decision: Decision,
    reservation: Reservation | None,
    settings: Settings,
) -> None:
    """Refuse a request above the cost the caller accepted (after the hard cap has had its
    say: a capped request is refused, not offered); the reservation goes with it."""
    try:
        accounting.confirm_cost(
            decision.provider,
            decision.model,
            decision.route,
            _prompt_tokens(request, decision),
            request.max_tokens,
            request.max_cost_usd,
            free=_test_mode(decision),
            settings=settings,
        )
    except BaseException:
        _release(reservation)
        raise


def _reserve(request: ChatRequest, decision: Decision, settings: Settings) -> Reservation | None:
    """Hold the request's estimated maximum cost against a hard cap (may wait; may refuse),
    then check it against the cost the caller accepted."""
    args = _reserve_args(request, decision, settings)
    reservation = None if args is None else _caught_up(accounting.reserve(decision.project, **args))
    _confirm(request, decision, reservation, settings)
    return reservation


async def _areserve(
    request: ChatRequest, decision: Decision, settings: Settings
) -> Reservation | None:
    args = _reserve_args(request, decision, settings)
    reservation = (
        None if args is None else _caught_up(await accounting.areserve(decision.project, **args))
    )
    _confirm(request, decision, reservation, settings)
    return reservation


def _caught_up(reservation: Reservation | None) -> Reservation | None:
    """Under a budget, no request is sent while the ledger is behind: every row queued so
    far must be committed (the spend the reservation was checked against is all in)."""
    led = default_ledger()
    try:
        led.flush()
        led.check()
    except BaseException:
        _release(reservation)
        raise
    return reservation


def _release(reservation: Reservation | None) -> None:
    if reservation is not None:
        reservation.release()


def _fallback(decision: Decision, err: CencoriError) -> Decision | None:
    """The decision to try after ``err``, if ``decision`` has one and ``err`` allows it."""
    return decision.fallback if isinstance(err, _FALLBACK_ERRORS) else None


def _failed(
    decision: Decision,
    err: CencoriError,
    request: ChatRequest,
    reservation: Reservation | None,
    started: float,
    client_id: str,
    ledger: Ledger | None = None,
) -> Decision:
    """The one failure step of chat, achat, stream and astream: an attempt sent on
    ``decision`` failed with ``err``. Records it (its own ledger row; the row releases the
    attempt's reservation), then returns the decision to try next (the managed fallback),
    or re-raises ``err`` when there is none.

    A plain function so sync and async cannot drift: they differ only in the send and in
    reserving for the next attempt (``_reserve`` may wait in a thread, ``_areserve`` on the
    loop), which the caller does with the decision returned here.
    """
    _record_failure(decision, request, err, started, reservation, client_id, ledger)
    if isinstance(err, AuthenticationError):
        # The key may have been replaced by another process less than a second ago (the
        # one-second rule): the next call, a retry, reads the key store afresh.
        recheck()
    fallback = _fallback(decision, err)
    if fallback is None:
        raise err
    return fallback


def _record_failure(
    decision: Decision,
    request: ChatRequest,
    err: CencoriError,
    started: float,
    reservation: Reservation | None = None,
    client_id: str | None = None,
    ledger: Ledger | None = None,
) -> None:
    accounting.record_failure(
        client_id=client_id,
        request_id=getattr(err, "request_id", None) or uuid.uuid4().hex,
        project=decision.project,
        provider=decision.provider,
        model=request.model or decision.model,
        route=decision.route,
        credential_source=decision.credential_source,
        error=err,
        latency_ms=(_perf() - started) * 1000.0,
        test_mode=_test_mode(decision),
        reservation=reservation,
        ledger=ledger,
    )


def _begin(decision: Decision, request: ChatRequest, settings: Settings) -> tuple[str, Ledger]:
    """A fresh client id for one attempt, noted in the ledger's in-flight journal before
    the request is sent: if this process dies before the attempt's row is committed, the
    next start records it as ``interrupted`` (estimated) instead of losing it.

    Returns the id and that ledger: the attempt's row goes there however it ends, even if
    ``CENCORI_NB_HOME`` or the ledger URL changes while it is in flight (else the old
    home's journal would also record it, as interrupted: twice, in two ledgers)."""
    client_id = new_client_id()
    led = default_ledger()
    led.begin(
        LedgerRow(
            client_id=client_id,
            request_id="",
            project=decision.project,
            provider=decision.provider,
            route=decision.route,
            status="interrupted",
            model_requested=request.model,
            model=decision.model,
            credential_source=decision.credential_source,
            error_code="process_ended",
            input_tokens=_prompt_tokens(request, decision),
            estimated=True,
            cost_usd=None,
            test_mode=_test_mode(decision),
            member=current_member(settings),
        )
    )
    return client_id, led


def _record_interrupted(
    decision: Decision,
    request: ChatRequest,
    started: float,
    client_id: str,
    reservation: Reservation | None,
    ledger: Ledger | None = None,
) -> None:
    """The caller stopped a sent request before its answer (Ctrl-C, a cancelled task): the
    provider may bill the prompt, so it is recorded as ``interrupted`` with estimated
    tokens. Never raises: the interrupt itself is what propagates."""
    completion = Completion(
        text="",
        model=decision.model,
        provider=decision.provider,
        route=decision.route,
        input_tokens=_prompt_tokens(request, decision),
        latency_ms=(_perf() - started) * 1000.0,
        estimated=True,
        model_requested=request.model,
        credential_source=decision.credential_source,
        project=decision.project,
        test_mode=_test_mode(decision),
        client_id=client_id,
        interrupted=True,
    )
    try:
        accounting.settle(completion, reservation=reservation, ledger=ledger)
    except Exception:  # noqa: BLE001 - the journal still holds it for the next start
        _log.warning("cencori_nb: could not record the interrupted request %s", client_id)


def _completion(
    decision: Decision,
    request: ChatRequest,
    result: ProviderResult,
    *,
    text: str | None = None,
    latency_ms: float,
    ttft_ms: float | None = None,
    complete: bool = True,
    client_id: str = "",
) -> Completion:
    """Our Completion from the adapter's result; estimates tokens when usage is missing."""
    # A reply that echoes a stored key (a hostile endpoint on a custom base_url) must not
    # carry it into the cache, a batch checkpoint, a DataFrame or a display.
    text = remove_stored_keys(result.text if text is None else text)
    # and from the model and id it chose to send, which the ledger keeps
    model = result.model and remove_stored_keys(result.model)
    request_id = result.request_id and remove_stored_keys(result.request_id)
    usage = result.usage
    estimated = usage is None or not complete
    if usage is None:
        input_tokens = _prompt_tokens(request, decision, model)
        output_tokens = estimate_tokens(text)
        cache_read = cache_write = cache_write_1h = thinking = 0
    else:
        input_tokens = usage.input_tokens or (
            _prompt_tokens(request, decision, model) if not complete else 0
        )
        output_tokens = (
            usage.output_tokens if complete else max(usage.output_tokens, estimate_tokens(text))
        )
        cache_read, cache_write = usage.cache_read_tokens, usage.cache_write_tokens
        cache_write_1h = usage.cache_write_1h_tokens
        thinking = usage.thinking_tokens
    provider = decision.provider
    if decision.route == "managed" and result.served_by:
        provider = result.served_by
    return Completion(
        text=text,
        model=model or decision.model,
        provider=provider,
        route=decision.route,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        thinking_tokens=thinking,
        request_id=request_id or uuid.uuid4().hex,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        finish_reason=result.finish_reason,
        estimated=estimated,
        model_requested=request.model,
        credential_source=decision.credential_source,
        project=decision.project,
        gateway_cost_usd=result.gateway_cost_usd,
        test_mode=_test_mode(decision),
        client_id=client_id,
        interrupted=not complete,
        gateway_cache=result.gateway_cache,
        model_original=result.model_original,
        image_tokens=min(
            input_tokens,
            (usage.image_tokens if usage is not None else 0)
            or _image_tokens(request, decision, model),
        ),
    )


def _http_request(adapter: Provider, request: ChatRequest, decision: Decision) -> httpx2.Request:
    return adapter.build_request(
        request, model=decision.model, api_key=decision.credential, base_url=decision.base_url
    )


# --------------------------------------------------------------------------- chat / achat


def chat(
    prompt_or_messages: str | list[Any],
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "auto",
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
    cache: bool = True,
    retries: int | None = None,
    max_cost_usd: Decimal | float | str | None = None,
    schema: Any = None,
) -> Completion:
    """Send one prompt (or a list of ``{"role", "content"}`` messages); return the Completion.

    ``route`` is ``auto`` (BYOK when an enabled key exists, else managed), ``byok`` or
    ``managed``. A deterministic request (temperature 0 or unset) is answered from the
    response cache when possible (``cache=False`` to skip). ``retries`` bounds the transport's
    retries (default 3).

    Before sending, a prompt larger than the model's context window is refused
    (:class:`~cencori_nb.errors.RequestTooLargeError`), and so is a request whose estimated
    maximum cost is above ``max_cost_usd`` (default: the ``confirm_above_usd`` setting,
    $0.10): :class:`~cencori_nb.errors.CostConfirmationError` names the estimate; pass a
    higher ``max_cost_usd`` to send it. Raises a :class:`~cencori_nb.errors.CencoriError`.

    ``schema`` (a pydantic model, a dataclass, a ``TypedDict`` or a JSON Schema dict) asks
    for JSON of that shape, in the provider's own structured-output form; the answer is
    validated and ``Completion.parsed`` holds it (a model or dataclass instance, or a dict).
    An answer that does not match is retried once with the validation error (a second paid
    request, its own ledger row; ``Completion.earlier_cost_usd`` says what the first cost),
    then raises :class:`~cencori_nb.errors.SchemaMismatchError`; a refusal raises
    :class:`~cencori_nb.errors.RefusalError`. Both carry the recorded answer as
    ``.completion``.
    """
    options = ChatOptions.from_arguments(
        model=model,
        provider=provider,
        route=route,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        project=project,
        cache=cache,
        retries=retries,
        max_cost_usd=max_cost_usd,
        schema=schema,
    )
    request = options.request(prompt_or_messages)
    return _chat_structured(request, options.retries)


def _prepare(request: ChatRequest) -> tuple[Decision, str | None, Completion | None, Settings]:
    """Route and look in the cache: (decision, cache key, cached answer, settings); on a
    miss, refuse a prompt larger than the model's context window. The budget reservation
    and the cost confirmation follow (sync or async), only on a miss.

    The settings are read once here and are the request's for every later step (the cost
    confirmation, the reservation, the in-flight note, settling): one view of them per
    request, the one its route was decided under; a change counts from the next call."""
    settings = load_settings()
    decision = _resolve(request, settings)
    _check_images(request, decision)
    _ledger_ready()
    key, hit = _cache_hit(request, decision)
    if hit is None:
        accounting.check_context(
            decision.provider, decision.model, _prompt_tokens(request, decision)
        )
    return decision, key, hit, settings


def _finish(
    decision: Decision,
    request: ChatRequest,
    result: ProviderResult,
    started: float,
    key: str | None,
    reservation: Reservation | None = None,
    client_id: str = "",
    ledger: Ledger | None = None,
    settings: Settings | None = None,
) -> Completion:
    """Turn a parsed answer into a settled Completion and cache it (sync and async alike)."""
    completion = _completion(
        decision, request, result, latency_ms=(_perf() - started) * 1000.0, client_id=client_id
    )
    completion = accounting.settle(
        completion, reservation=reservation, ledger=ledger, settings=settings
    )
    _raise_billed_error(result.error, completion)
    _read_structured(request, completion, result.refusal)  # raises before caching
    if key is not None:
        cache.store_after_commit(key, completion, ledger)
    return completion


def _raise_billed_error(err: CencoriError | None, completion: Completion) -> None:
    """A billed non-answer (:attr:`ProviderResult.error`, e.g. a Gemini prompt blocked
    before the model ran): raised once its usage is recorded, with the completion on it."""
    if err is not None:
        err.completion = completion
        raise err


# --------------------------------------------------------------------------- schema=


_CUT = frozenset({"length", "max_tokens", "MAX_TOKENS", "model_context_window_exceeded"})
# Anthropic's stop when the conversation filled the model's context window (the SDK's
# StopReason): a retry, longer by the cut answer and the fix, would be cut again (and paid).
_CONTEXT_CUT = "model_context_window_exceeded"


def _read_structured(request: ChatRequest, completion: Completion, refusal: str | None) -> None:
    """A ``schema=`` answer: set ``completion.parsed``, or raise :class:`RefusalError` /
    :class:`SchemaMismatchError` carrying the settled (paid, recorded) completion."""
    schema = request.schema
    if schema is None:
        return
    if refusal is not None:
        said = " ".join(remove_stored_keys(refusal).split())[:200]
        raise RefusalError(
            f"{completion.provider} refused to answer with {schema.name}"
            + (f': "{said}"' if said else " (it gave no reason)")
            + ".",
            hint="The request was paid and recorded; rephrase the prompt or use another model.",
            provider=completion.provider,
            request_id=completion.request_id,
            refusal=said,
            completion=completion,
        )
    try:
        completion.parsed = schema.parse(completion.text)
    except SchemaMismatchError as err:
        err.completion = completion
        err.provider = completion.provider
        err.request_id = completion.request_id
        if completion.finish_reason == _CONTEXT_CUT:
            err.hint = (
                "The answer was cut where the model's context window ends: shorten the "
                "prompt or use a model with a longer context."
            )
        elif completion.finish_reason in _CUT:
            err.hint = (
                f"The answer was cut at max_tokens ({request.max_tokens or 'the default'}): "
                "raise max_tokens."
            )
        raise


def _structured_hit(request: ChatRequest, hit: Completion | None) -> Completion | None:
    """A cached answer, parsed for ``schema=`` (None when it no longer matches: ask again)."""
    if hit is None or request.schema is None:
        return hit
    try:
        hit.parsed = request.schema.parse(hit.text)
    except SchemaMismatchError:
        return None
    return hit


def _retry_request(request: ChatRequest, err: SchemaMismatchError) -> ChatRequest | None:
    """The one retry of a non-matching answer: the conversation, the answer, and the
    validation error (None when retrying cannot help: the answer was cut at max_tokens)."""
    first = err.completion
    if first is None or first.finish_reason in _CUT:
        return None
    import dataclasses

    fix = (
        f"That answer does not match the required JSON schema: {err.errors}. "
        "Reply again with only the corrected JSON object."
    )
    return dataclasses.replace(
        request,
        messages=(*request.messages, Message("assistant", first.text), Message("user", fix)),
    )


def _after_retry(first: Completion, second: Completion) -> Completion:
    second.earlier_cost_usd = first.earlier_cost_usd + (first.cost_usd or Decimal(0))
    return second


def _retry_failed(first: Completion, err: CencoriError) -> None:
    if err.completion is not None:
        _after_retry(first, err.completion)
    if isinstance(err, SchemaMismatchError):
        err.attempts = 2
        err.hint = "It was retried once with the validation error. " + (err.hint or "")


def _chat_structured(request: ChatRequest, retries: int | None) -> Completion:
    """:func:`_chat`, and for ``schema=`` one retry of an answer that did not match."""
    try:
        return _chat(request, retries)
    except SchemaMismatchError as err:
        retry = _retry_request(request, err)
        if retry is None or err.completion is None:
            raise
        first = err.completion
    try:
        return _after_retry(first, _chat(retry, retries))
    except CencoriError as err2:
        _retry_failed(first, err2)
        raise


async def _achat_structured(request: ChatRequest, retries: int | None) -> Completion:
    """The async twin of :func:`_chat_structured`."""
    try:
        return await _achat(request, retries)
    except SchemaMismatchError as err:
        retry = _retry_request(request, err)
        if retry is None or err.completion is None:
            raise
        first = err.completion
    try:
        return _after_retry(first, await _achat(retry, retries))
    except CencoriError as err2:
        _retry_failed(first, err2)
        raise


def _chat(request: ChatRequest, retries: int | None) -> Completion:
    decision, key, hit, settings = _prepare(request)
    hit = _structured_hit(request, hit)
    if hit is not None:
        return hit
    reservation = _reserve(request, decision, settings)
    try:
        while True:
            adapter = get_provider(decision.adapter)
            pacing.pace(decision)
            started = _perf()
            client_id, led = _begin(decision, request, settings)
            try:
                response = transport.send(
                    _http_request(adapter, request, decision),
                    retries=retries,
                    map_error=adapter.map_error,
                    provider=decision.provider,
                )
                result = adapter.parse_response(response)
            except CencoriError as err:
                decision = _failed(decision, err, request, reservation, started, client_id, led)
                reservation = _reserve(request, decision, settings)
                continue
            except BaseException:  # Ctrl-C while waiting: the request was sent
                _record_interrupted(decision, request, started, client_id, reservation, led)
                raise
            return _finish(
                decision, request, result, started, key, reservation, client_id, led, settings
            )
    finally:
        _release(reservation)


async def achat(
    prompt_or_messages: str | list[Any],
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "auto",
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
    cache: bool = True,
    retries: int | None = None,
    max_cost_usd: Decimal | float | str | None = None,
    schema: Any = None,
) -> Completion:
    """The async twin of :func:`chat` (on the running loop's shared connection pool)."""
    options = ChatOptions.from_arguments(
        model=model,
        provider=provider,
        route=route,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        project=project,
        cache=cache,
        retries=retries,
        max_cost_usd=max_cost_usd,
        schema=schema,
    )
    request = options.request(prompt_or_messages)
    return await _achat_structured(request, options.retries)


async def _achat(request: ChatRequest, retries: int | None) -> Completion:
    decision, key, hit, settings = _prepare(request)
    hit = _structured_hit(request, hit)
    if hit is not None:
        return hit
    reservation = await _areserve(request, decision, settings)
    try:
        while True:
            adapter = get_provider(decision.adapter)
            await pacing.apace(decision)
            started = _perf()
            client_id, led = _begin(decision, request, settings)
            try:
                response = await transport.asend(
                    _http_request(adapter, request, decision),
                    retries=retries,
                    map_error=adapter.map_error,
                    provider=decision.provider,
                )
                result = adapter.parse_response(response)
            except CencoriError as err:
                decision = _failed(decision, err, request, reservation, started, client_id, led)
                reservation = await _areserve(request, decision, settings)
                continue
            except BaseException:  # Ctrl-C or a cancelled task (map): the request was sent
                _record_interrupted(decision, request, started, client_id, reservation, led)
                raise
            return _finish(
                decision, request, result, started, key, reservation, client_id, led, settings
            )
    finally:
        _release(reservation)


# --------------------------------------------------------------------------- streams


class _StreamState:
    """What a stream (sync or async) accumulates, and how it ends."""

    def __init__(self, request: ChatRequest, decision: Decision, settings: Settings) -> None:
        self.request = request
        self.decision = decision
        self.settings = settings  # the request's view of them (see _prepare)
        self.key: str | None = None
        self.adapter: Provider | None = None
        self.response: httpx2.Response | None = None
        self.parser: StreamParser | None = None
        self.parts: list[str] = []
        self.started = 0.0
        self.first: float | None = None
        self.finished = False
        self.completion: Completion | None = None
        self.event_error: CencoriError | None = None  # an error event inside the stream
        self.reservation: Reservation | None = None  # held against a hard cap until settled
        self.client_id = ""  # the attempt sent (its ledger row)
        self.ledger: Ledger | None = None  # where it began (its journal): its row goes there

    def failed(self, err: CencoriError) -> Decision:
        """The attempt just sent failed with ``err``: recorded; the decision to try next
        (:func:`_failed`, the one failure step)."""
        return _failed(
            self.decision,
            err,
            self.request,
            self.reservation,
            self.started,
            self.client_id,
            self.ledger,
        )

    def record_failure(self, err: CencoriError) -> None:
        """The attempt's row for ``err`` (nothing of its answer arrived)."""
        _record_failure(
            self.decision,
            self.request,
            err,
            self.started,
            self.reservation,
            self.client_id,
            self.ledger,
        )

    def interrupted(self) -> None:
        """Ctrl-C or a cancelled task before the first byte: the request was sent, so it
        is recorded as interrupted (:func:`_record_interrupted`)."""
        self.finished = True
        _record_interrupted(
            self.decision,
            self.request,
            self.started,
            self.client_id,
            self.reservation,
            self.ledger,
        )

    def feed(self, event: httpx2.ServerSentEvent) -> str | None:
        try:
            assert self.parser is not None  # set by the send before any event
            delta = self.parser.feed(event)
        except CencoriError as err:
            self.event_error = err
            raise
        if delta:
            if self.first is None:
                self.first = _perf()
            self.parts.append(delta)
        return delta

    def _settle(self, *, complete: bool) -> Completion:
        assert self.parser is not None
        now = _perf()
        ttft = None if self.first is None else (self.first - self.started) * 1000.0
        completion = _completion(
            self.decision,
            self.request,
            self.parser.result(),
            text="".join(self.parts),
            latency_ms=(now - self.started) * 1000.0,
            ttft_ms=ttft,
            complete=complete,
            client_id=self.client_id,
        )
        completion = accounting.settle(
            completion, reservation=self.reservation, ledger=self.ledger, settings=self.settings
        )
        self.completion = completion
        return completion

    def _finish(self) -> None:
        self.finished = True
        # the stream object outlives the call (a notebook holds it): its request was sent,
        # its key is not kept in clear there
        forget_response_credentials(self.response)

    def end(self) -> None:
        """The server closed the stream: completed or cut (see the module docstring)."""
        self._finish()
        complete = bool(self.parser is not None and self.parser.complete())
        if not complete and not self.parts:
            err = BadResponseError(
                f"The stream from {self.decision.provider} ended before any text or its final "
                "event arrived.",
                provider=self.decision.provider,
                hint="Try again; use stream=False if this keeps happening.",
            )
            self.record_failure(err)
            raise err
        completion = self._settle(complete=complete)
        if not complete:
            raise BadResponseError(
                f"The stream from {self.decision.provider} was cut before it finished: "
                f"{len(completion.text)} characters arrived. They were recorded with estimated "
                "tokens; the partial completion is on this error as .completion.",
                provider=self.decision.provider,
                completion=completion,
                hint="Try again; use stream=False if this keeps happening.",
            )
        assert self.parser is not None
        _raise_billed_error(self.parser.result().error, completion)
        _read_structured(self.request, completion, self.parser.result().refusal)
        if self.key is not None:
            cache.store_after_commit(self.key, completion, self.ledger)

    def broke(self, err: CencoriError) -> CencoriError:
        """The stream failed mid-way with ``err``; return the error to raise."""
        self._finish()
        if not self.parts:
            self.record_failure(err)
            return err
        completion = self._settle(complete=False)
        if err is self.event_error:  # the provider said why: keep its error
            err.completion = completion
            return err
        return BadResponseError(
            f"The stream from {self.decision.provider} was cut before it finished "
            f"({err.code}): {len(completion.text)} characters arrived. They were recorded with "
            "estimated tokens; the partial completion is on this error as .completion.",
            provider=self.decision.provider,
            completion=completion,
            cause_code=err.code,
            hint="Try again; use stream=False if this keeps happening.",
        )

    def abandon(self) -> None:
        """The consumer stopped early (closed it, Ctrl-C, a cancelled task): the request is
        recorded as ``interrupted`` with what arrived (estimated tokens), even if nothing
        did. Never raises: an interrupt being handled must stay the error that propagates."""
        if self.finished or self.parser is None:
            _release(self.reservation)
            return
        self._finish()
        try:
            self._settle(complete=False)
        except Exception:  # noqa: BLE001 - the journal still holds it for the next start
            _log.warning("cencori_nb: could not record the interrupted stream %s", self.client_id)


def _open_stream(state: _StreamState, retries: int | None) -> None:
    """Send the streaming request (with retries and fallback) and set up the parser."""
    while True:
        decision = state.decision
        adapter = get_provider(decision.adapter)
        pacing.pace(decision)
        state.started = _perf()
        state.client_id, state.ledger = _begin(decision, state.request, state.settings)
        try:
            response = transport.send(
                _http_request(adapter, state.request, decision),
                stream=True,
                retries=retries,
                map_error=adapter.map_error,
                provider=decision.provider,
            )
        except CencoriError as err:
            state.decision = state.failed(err)
            state.reservation = _reserve(state.request, state.decision, state.settings)
            continue
        except BaseException:  # Ctrl-C before the first byte: the request was sent
            state.interrupted()
            raise
        state.adapter, state.response = adapter, response
        state.parser = adapter.stream_parser(response)
        return


async def _aopen_stream(state: _StreamState, retries: int | None) -> None:
    while True:
        decision = state.decision
        adapter = get_provider(decision.adapter)
        await pacing.apace(decision)
        state.started = _perf()
        state.client_id, state.ledger = _begin(decision, state.request, state.settings)
        try:
            response = await transport.asend(
                _http_request(adapter, state.request, decision),
                stream=True,
                retries=retries,
                map_error=adapter.map_error,
                provider=decision.provider,
            )
        except CencoriError as err:
            state.decision = state.failed(err)
            state.reservation = await _areserve(state.request, state.decision, state.settings)
            continue
        except BaseException:  # Ctrl-C or cancelled before the first byte
            state.interrupted()
            raise
        state.adapter, state.response = adapter, response
        state.parser = adapter.stream_parser(response)
        return


class ChatStream:
    """Text deltas of one streamed answer; ``.completion`` once the stream has ended.

    The request is sent when the stream is created (so a missing key or a 401 raises at
    once). Iterate it, or use it as a context manager that closes the connection::

        with cencori_nb.stream("Tell me a story") as s:
            for delta in s:
                print(delta, end="")
        s.completion.footer()
    """

    def __init__(self, request: ChatRequest, retries: int | None = None) -> None:
        decision, key, hit, settings = _prepare(request)  # the same first steps as chat()
        hit = _structured_hit(request, hit)
        self._state = _StreamState(request, decision, settings)
        self._state.key = key
        if hit is not None:
            self._state.finished = True
            self._state.completion = hit
            self._iter: Iterator[str] = iter([hit.text] if hit.text else [])
            return
        self._state.reservation = _reserve(request, decision, settings)
        try:
            _open_stream(self._state, retries)
        except BaseException:
            _release(self._state.reservation)
            raise
        self._iter = self._deltas()

    @property
    def completion(self) -> Completion | None:
        """The final Completion (None until the stream has been consumed)."""
        return self._state.completion

    @property
    def decision(self) -> Decision:
        return self._state.decision

    @property
    def text(self) -> str:
        """The text received so far."""
        if self._state.completion is not None and self._state.completion.cached:
            return self._state.completion.text
        return remove_stored_keys("".join(self._state.parts))

    def _deltas(self) -> Iterator[str]:
        state = self._state
        response = state.response
        assert response is not None
        shown = StreamRedactor()  # a stored key the reply echoes, even split over deltas
        try:
            for event in transport.iter_sse(response, provider=state.decision.provider):
                delta = shown.feed(state.feed(event) or "")
                if delta:
                    yield delta
            rest = shown.close()
            if rest:
                yield rest
        except CencoriError as err:
            response.close()
            failure = state.broke(err)
            rest = shown.close()  # what had arrived is shown before the error
            if rest:
                yield rest
            raise failure from err
        except BaseException:  # closed early (GeneratorExit), Ctrl-C mid-stream
            state.abandon()  # recorded as interrupted; the reservation is released
            response.close()
            raise
        response.close()
        state.end()

    def __iter__(self) -> Iterator[str]:
        # the deltas themselves: a for loop then resumes the generator directly, without a
        # __next__ call per delta; next(stream) works too
        return self._iter

    def __next__(self) -> str:
        return next(self._iter)

    def close(self) -> None:
        """Stop reading and release the connection (a partial answer is settled as such)."""
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()
        state = self._state
        if state.response is not None and not state.response.is_closed:
            state.response.close()
        state.abandon()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a stream dropped unread must not hold a pooled connection
        state = getattr(self, "_state", None)
        if state is not None and state.response is not None and not state.response.is_closed:
            state.response.close()
        if state is not None:
            with contextlib.suppress(Exception):  # sent, never read: still recorded
                state.abandon()
            _release(state.reservation)

    def __repr__(self) -> str:
        status = "done" if self._state.finished else "open"
        return f"<ChatStream {self._state.decision.provider}/{self._state.decision.model} {status}>"


def stream(
    prompt_or_messages: str | list[Any],
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "auto",
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
    cache: bool = True,
    retries: int | None = None,
    max_cost_usd: Decimal | float | str | None = None,
    schema: Any = None,
) -> ChatStream:
    """Stream one answer: iterate the returned :class:`ChatStream` for text deltas, then read
    ``.completion``. Same arguments as :func:`chat`. A cut stream raises
    :class:`~cencori_nb.errors.BadResponseError` after settling what arrived.

    With ``schema``, the JSON streams as it is written and ``.completion.parsed`` is set at
    the end; an answer that does not match raises
    :class:`~cencori_nb.errors.SchemaMismatchError` when the stream ends (it is not retried:
    its text was already shown; :func:`chat` retries once)."""
    options = ChatOptions.from_arguments(
        model=model,
        provider=provider,
        route=route,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        project=project,
        cache=cache,
        retries=retries,
        max_cost_usd=max_cost_usd,
        schema=schema,
    )
    request = options.request(prompt_or_messages, stream=True)
    return ChatStream(request, options.retries)


class AsyncChatStream:
    """The async twin of :class:`ChatStream`: ``async for delta in astream(...)``.

    The request is sent on the first iteration (constructors cannot await).
    ``async with`` closes the connection.
    """

    def __init__(self, request: ChatRequest, retries: int | None = None) -> None:
        self._request = request
        self._retries = retries
        self._state: _StreamState | None = None
        self._agen: AsyncGenerator[str, None] = self._deltas()

    @property
    def completion(self) -> Completion | None:
        return None if self._state is None else self._state.completion

    async def _deltas(self) -> AsyncGenerator[str, None]:
        request = self._request
        decision, key, hit, settings = _prepare(request)  # the same first steps as achat()
        hit = _structured_hit(request, hit)
        state = self._state = _StreamState(request, decision, settings)
        state.key = key
        if hit is not None:
            state.finished = True
            state.completion = hit
            if hit.text:
                yield hit.text
            return
        state.reservation = await _areserve(request, decision, settings)
        try:
            await _aopen_stream(state, self._retries)
        except BaseException:
            _release(state.reservation)
            raise
        response = state.response
        assert response is not None
        shown = StreamRedactor()  # a stored key the reply echoes, even split over deltas
        try:
            async for event in transport.aiter_sse(response, provider=state.decision.provider):
                delta = shown.feed(state.feed(event) or "")
                if delta:
                    yield delta
            rest = shown.close()
            if rest:
                yield rest
        except CencoriError as err:
            await response.aclose()
            failure = state.broke(err)
            rest = shown.close()  # what had arrived is shown before the error
            if rest:
                yield rest
            raise failure from err
        except BaseException:  # closed early, Ctrl-C, a cancelled task
            state.abandon()  # first: recorded even if closing the response is cancelled
            await response.aclose()
            raise
        await response.aclose()
        state.end()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._agen  # as ChatStream.__iter__: no __anext__ call per delta

    async def __anext__(self) -> str:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        await self._agen.aclose()
        state = self._state
        if state is not None:
            if state.response is not None and not state.response.is_closed:
                await state.response.aclose()
            state.abandon()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def astream(
    prompt_or_messages: str | list[Any],
    *,
    model: str | None = None,
    provider: str | None = None,
    route: str = "auto",
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    project: str | None = None,
    cache: bool = True,
    retries: int | None = None,
    max_cost_usd: Decimal | float | str | None = None,
    schema: Any = None,
) -> AsyncChatStream:
    """Async streaming: ``async for delta in astream(...)``; then ``.completion``."""
    options = ChatOptions.from_arguments(
        model=model,
        provider=provider,
        route=route,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        project=project,
        cache=cache,
        retries=retries,
        max_cost_usd=max_cost_usd,
        schema=schema,
    )
    request = options.request(prompt_or_messages, stream=True)
    return AsyncChatStream(request, options.retries)
