"""The sandbox server: lifecycle (thread or caller's loop), the route table, the controls.

HTTP/1.1 itself is in :mod:`.http` (a lean ``asyncio.Protocol``); everything a wire format
decides is in the door modules; latency is an ``asyncio.sleep``, never a blocking call.

Routes::

    /openai/v1/chat/completions, /openai/v1/models          OpenAI
    /<p>/v1/chat/completions, /<p>/v1/models                mistral groq xai deepseek
                                                             together openrouter local
    /anthropic/v1/messages                                   Anthropic
    /google/{v1,v1beta}/models/{m}:generateContent           Gemini
    /google/{v1,v1beta}/models/{m}:streamGenerateContent     (?alt=sse, else a JSON array)
    /api/ai/chat                                             Cencori native
    /v1/chat/completions, /v1/models                         Cencori OpenAI-compatible
    /openai/v1/files…, /openai/v1/batches…                  Batch APIs (batches.py)
    /anthropic/v1/messages/batches…, /google/…:batchGenerateContent, /google/…/batches/…
    GET /_sandbox/stats, GET /_sandbox/config, POST /_sandbox/reset,
    POST /_sandbox/balance {"usd": "…"}, GET|POST /_sandbox/batches {"delay_s", "expire",
    "fail", "job", "limits"}
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from ..redact import CREDENTIAL_HEADERS
from .common import Door, Exchange, dumps, key_hint, new_id
from .faults import FAULTS, FaultPicker, RateLimiter, parse_faults
from .http import HttpError, HttpProtocol, Request, Responder
from .wallet import Wallet

__all__ = ["COMPATIBLE_PROVIDERS", "SandboxServer"]

log = logging.getLogger("cencori_nb.sandbox")

COMPATIBLE_PROVIDERS = ("mistral", "groq", "xai", "deepseek", "together", "openrouter", "local")

RECENT = 100  # requests kept in stats["recent"]

# headers whose values are credentials: masked in stats["recent"] (redact's one list, and
# a cookie, which no client sends a key in but a browser may send a session in)
_SECRET_HEADERS = frozenset(CREDENTIAL_HEADERS) | {"cookie"}


class _Stats:
    """Request counters for tests and ``/_sandbox/stats`` (key hints only, never keys)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.routes: Counter[str] = Counter()
            self.keys: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.streams = 0
            self.recent: deque[tuple[Any, ...]] = deque(maxlen=RECENT)

    def record(self, ex: Exchange, status: str) -> None:
        req = ex.req
        # kept raw on the hot path; masked and decoded only when a snapshot is taken
        entry = (req, ex.route, ex.hint, status, ex.fault, ex.model, ex.stream, ex.request_id)
        with self._lock:
            self.requests += 1
            self.routes[ex.route] += 1
            self.keys[ex.hint] += 1
            self.statuses[status] += 1
            if ex.fault:
                self.faults[ex.fault] += 1
            if ex.stream:
                self.streams += 1
            self.recent.append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap = {
                "requests": self.requests,
                "routes": dict(self.routes),
                "keys": dict(self.keys),
                "statuses": dict(self.statuses),
                "faults": dict(self.faults),
                "streams": self.streams,
            }
            recent = list(self.recent)
        snap["recent"] = [_describe(*entry) for entry in recent]
        return snap


def _describe(
    req: Request,
    route: str,
    hint: str,
    status: str,
    fault: str | None,
    model: str | None,
    stream: bool,
    request_id: str,
) -> dict[str, Any]:
    """One ``stats["recent"]`` entry: what the server received, credentials masked."""
    headers = {k: (_mask(v) if k in _SECRET_HEADERS else v) for k, v in req.headers.items()}
    query = {k: (key_hint(v) if k == "key" else v) for k, v in req.query.items()}
    try:
        body = req.json() if req.body and len(req.body) <= 65536 else None
    except ValueError:
        body = None
    return {
        "method": req.method,
        "path": req.path,
        "route": route,
        "key": hint,
        "status": status,
        "fault": fault,
        "model": model,
        "stream": stream,
        "request_id": request_id,
        "headers": headers,
        "query": query,
        "json": copy.deepcopy(body),
    }


def _mask(value: str) -> str:
    """``Bearer sk-…abcd`` → ``Bearer …abcd``: the scheme stays, the secret does not."""
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic", "token"):
        return f"{scheme} {key_hint(rest.strip())}"
    return key_hint(value)


class SandboxServer:
    """An offline server that speaks OpenAI, Anthropic, Gemini and Cencori wire formats::

        server = SandboxServer(latency_ms=50, rpm=600)
        url = server.start_in_thread()        # e.g. http://127.0.0.1:54321
        openai.OpenAI(base_url=url + "/openai/v1", api_key="sk-anything")
        server.stop()                         # or: with SandboxServer() as url: ...

    ``faults`` is a spec such as ``"429=0.2,timeout=0.05"`` (or a mapping); faults are drawn
    with ``seed``, which also seeds the replies. ``balance`` is the Cencori credit wallet in
    USD. ``rpm`` limits requests per minute per API key (None: unlimited).
    ``gateway_cache`` turns the Cencori doors' exact-match response cache on (the default:
    a repeated non-streamed request is a free ``X-Cencori-Cache: HIT``) or off.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float = 0,
        rpm: int | None = None,
        balance: Decimal | str | int = Decimal("25"),
        faults: str | Mapping[str, float] | None = None,
        seed: int = 0,
        timeout_hold_s: float = 30.0,
        gateway_cache: bool = True,
        batch_delay_s: float | None = None,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        self.host = host
        self.port = port
        self.seed = int(seed)
        self.timeout_hold_s = timeout_hold_s
        self._initial_latency_ms = float(latency_ms)  # what reset() returns to
        self._initial_balance = Decimal(str(balance))
        self.latency_ms = self._initial_latency_ms
        self.limiter = RateLimiter(rpm)
        self.faults = FaultPicker(parse_faults(faults), self.seed)
        self.wallet = Wallet(self._initial_balance)
        from .cencori import GatewayCache

        self.gateway_cache = GatewayCache(gateway_cache)
        self._stats = _Stats()
        self._doors = _build_doors()
        from .batches import DEFAULT_DELAY_S, BatchService

        self.batches = BatchService(
            self, DEFAULT_DELAY_S if batch_delay_s is None else batch_delay_s
        )
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._conns: set[HttpProtocol] = set()
        # requests being handled that are not counted yet (their answer is still to come,
        # e.g. held by latency_ms for a client that has died): see wait_until_answered
        self._uncounted: set[int] = set()
        self.url: str | None = None

    # --- public API ---------------------------------------------------------------------
    @property
    def rpm(self) -> int | None:
        return self.limiter.rpm

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: ``requests``, ``routes``, ``keys`` (hints), ``statuses``, ``faults``,
        ``streams``, ``recent`` (last requests, credential headers masked), balance, and
        ``rpm`` (the per-key limit; clients pace themselves to it)."""
        snap = self._stats.snapshot()
        snap["rpm"] = self.limiter.rpm  # the pace a client should keep (None: unlimited)
        snap["balance_usd"] = str(self.wallet.balance)
        snap["spent_usd"] = str(self.wallet.spent)
        return snap

    @property
    def balance(self) -> Decimal:
        """The sandbox Cencori wallet balance in USD."""
        return self.wallet.balance

    def set_balance(self, usd: Decimal | str | int | float) -> Decimal:
        return self.wallet.set(usd)

    def wait_until_answered(self, timeout: float = 30.0) -> bool:
        """Wait until every request received so far is counted in ``stats`` (answered, or
        given up as a ``timeout`` fault); False if some still are not after ``timeout``.
        Call it before :meth:`reset` so an answer still due to an earlier client (one
        killed mid-request: the answer follows ``latency_ms`` later all the same) is not
        counted after the reset, as if a later client had asked for it."""
        deadline = time.monotonic() + timeout
        while self._uncounted:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def reset(self) -> None:
        """Back to the constructor's state: counters, rate windows, fault RNG, balance,
        latency. Replies need no reset (they depend on the seed only)."""
        self._stats.reset()
        self.limiter.reset()
        self.faults.reset()
        self.wallet = Wallet(self._initial_balance)
        self.gateway_cache.clear()
        self.latency_ms = self._initial_latency_ms
        self.id_pool = None
        self.batches.reset()

    # Chat answers draw their ids from this many values when set (Ollama draws from 999),
    # so tests can meet a provider that repeats ids; None: a fresh random id each time.
    id_pool: int | None = None

    def new_request_id(self) -> str:
        """The id of the next chat answer (``req_…``; doors derive their own forms)."""
        if self.id_pool:
            return f"req_{secrets.randbelow(self.id_pool):024d}"
        return new_id("req_")

    async def start(self) -> str:
        """Bind and start accepting on the running loop; return the base URL."""
        from .wallet import warm_up

        warm_up()  # load the price catalogue before the first request, not during it
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._server = await self._loop.create_server(
            lambda: HttpProtocol(self._dispatch, self._conns), self.host, self.port, backlog=1024
        )
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.port = port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        return self.url

    async def serve(self) -> None:
        """Serve on the running loop until :meth:`stop` (or cancellation)."""
        if self._server is None:
            await self.start()
        assert self._stop_event is not None
        try:
            await self._stop_event.wait()
        finally:
            await self._shutdown()

    def start_in_thread(self) -> str:
        """Run the server on its own event loop in a daemon thread; return the base URL
        once it is listening."""
        if self._thread is not None:
            assert self.url is not None
            return self.url
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._run_threaded(ready, failure))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="cencori-nb-sandbox", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        assert self.url is not None
        return self.url

    async def _run_threaded(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            await self.start()
        except BaseException as exc:  # report bind errors to the caller's thread
            failure.append(exc)
            ready.set()
            return
        ready.set()
        await self.serve()

    def stop(self) -> None:
        """Stop serving and close every connection (from any thread)."""
        loop, event = self._loop, self._stop_event
        if loop is None or event is None:
            return
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> str:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxServer(url={self.url!r}, latency_ms={self.latency_ms}, rpm={self.rpm})"

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [conn.task for conn in self._conns if conn.task is not None]
        for conn in list(self._conns):
            conn.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.batches.close()  # the spooled batch files

    # --- requests -----------------------------------------------------------------------
    async def _dispatch(self, req: Request, resp: Responder) -> None:
        path = req.path
        if path.startswith("/_sandbox"):
            self._control(req, resp)
            return
        if self.batches.handles(path):  # the providers' Batch APIs (sandbox/batches.py)
            await self._guarded(self.batches.dispatch(req, resp), req, resp)
            return
        try:
            route, handler, door = self._route(req)
        except HttpError as exc:
            resp.send(
                exc.status,
                dumps(
                    {"error": {"message": exc.message, "type": "not_found_error"}, "sandbox": True}
                ).encode(),
            )
            return
        header_fault = req.headers.get("x-sandbox-fault")
        fault: str | None
        if header_fault:
            fault = header_fault.strip().lower()
            if fault not in FAULTS:
                resp.send(
                    400,
                    dumps(
                        {
                            "error": {
                                "message": f"X-Sandbox-Fault {header_fault!r} is not one of "
                                f"{', '.join(sorted(FAULTS))}",
                                "type": "invalid_request_error",
                            },
                            "sandbox": True,
                        }
                    ).encode(),
                )
                return
        else:
            fault = self.faults.draw() if handler == "chat" else None
        ex = Exchange(self, req, resp, route, fault)
        self._uncounted.add(id(ex))
        resp.on_head = lambda status: self._record(
            ex, f"{status}-cut" if status == 200 and fault == "truncate" else str(status)
        )
        try:
            if handler == "chat":
                await door.handle_chat(ex)
            elif handler == "metrics":  # Cencori's Metrics API (sandbox/cencori.py)
                door.handle_metrics(ex)
            else:
                await door.handle_models(ex)
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # the client went away mid-answer: nothing left to say
            resp.close()
        except Exception:  # a sandbox bug must not look like a provider answer
            log.exception("sandbox: error handling %s %s", req.method, route)
            if not resp.started:
                resp.send(
                    500,
                    dumps(
                        {"error": {"message": "sandbox internal error", "type": "sandbox_error"}}
                    ).encode(),
                )
            else:
                resp.close()
        finally:
            self._uncounted.discard(id(ex))

    def _record(self, ex: Exchange, status: str) -> None:
        self._stats.record(ex, status)
        self._uncounted.discard(id(ex))

    async def _guarded(self, work: Any, req: Request, resp: Responder) -> None:
        """Run a handler; a sandbox bug answers 500, never something that looks real."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except ConnectionError:
            resp.close()
        except Exception:
            log.exception("sandbox: error handling %s %s", req.method, req.path)
            if not resp.started:
                resp.send(
                    500,
                    dumps(
                        {"error": {"message": "sandbox internal error", "type": "sandbox_error"}}
                    ).encode(),
                )
            else:
                resp.close()

    def record_timeout(self, ex: Exchange) -> None:
        """Count a request the ``timeout`` fault will never answer."""
        self._record(ex, "timeout")

    def _route(self, req: Request) -> tuple[str, str, Door]:
        """``(route label, "chat"|"models", door)``; ``HttpError`` 404/405 otherwise."""
        path, method = req.path, req.method
        first, _, rest = path.lstrip("/").partition("/")
        want = None
        if first in self._doors and first not in ("anthropic", "google", "cencori"):
            if rest == "v1/chat/completions":
                want = ("POST", f"/{first}/v1/chat/completions", "chat", self._doors[first])
            elif rest == "v1/models":
                want = ("GET", f"/{first}/v1/models", "models", self._doors[first])
        elif first == "anthropic" and rest == "v1/messages":
            want = ("POST", "/anthropic/v1/messages", "chat", self._doors["anthropic"])
        elif first == "google":
            version, _, tail = rest.partition("/")
            if version in ("v1", "v1beta") and tail.startswith("models/") and ":" in tail:
                model, _, verb = tail[len("models/") :].rpartition(":")
                if model and verb in ("generateContent", "streamGenerateContent"):
                    want = (
                        "POST",
                        f"/google/{version}/models/{{model}}:{verb}",
                        "chat",
                        self._doors["google"],
                    )
        elif path == "/api/ai/chat":
            want = ("POST", "/api/ai/chat", "chat", self._doors["cencori"])
        elif path == "/v1/chat/completions":
            want = ("POST", "/v1/chat/completions", "chat", self._doors["cencori-v1"])
        elif path == "/v1/models":
            want = ("GET", "/v1/models", "models", self._doors["cencori-v1"])
        elif path in ("/api/v1/metrics", "/v1/metrics"):
            want = ("GET", path, "metrics", self._doors["cencori-v1"])
        if want is None:
            raise HttpError(
                404,
                f"No sandbox route for {method} {path}. Routes: "
                "/openai/v1/chat/completions, /<provider>/v1/chat/completions, "
                "/anthropic/v1/messages, /google/v1beta/models/{model}:"
                "generateContent, /api/ai/chat, /v1/chat/completions, /v1/models, "
                "/api/v1/metrics, "
                "/_sandbox/stats.",
            )
        if method != want[0]:
            raise HttpError(405, f"{method} is not allowed on {want[1]}; use {want[0]}.")
        return want[1], want[2], want[3]

    # --- control endpoints ----------------------------------------------------------------
    def _control(self, req: Request, resp: Responder) -> None:
        path, method = req.path.rstrip("/"), req.method
        if path in ("/_sandbox", "/_sandbox/stats") and method == "GET":
            self._send_control(resp, 200, {"sandbox": True, **self.stats})
        elif path == "/_sandbox/config" and method == "GET":
            # what a client paces itself to (cencori_nb.pacing), and the other knobs
            self._send_control(
                resp,
                200,
                {
                    "sandbox": True,
                    "rpm": self.rpm,
                    "latency_ms": self.latency_ms,
                    "gateway_cache": self.gateway_cache.enabled,
                },
            )
        elif path == "/_sandbox/batches" and method in ("GET", "POST"):
            if method == "POST":
                from .batches import parse_batch_spec

                try:
                    body = req.json() or {}
                    if not isinstance(body, dict):
                        raise ValueError("send a JSON object")
                    spec = ",".join(
                        f"{k}={v}"
                        for k, v in body.items()
                        if k in ("delay_s", "expire", "fail", "job")
                    )
                    settings: dict[str, Any] = parse_batch_spec(spec)
                    if "limits" in body:
                        settings["limits"] = {
                            str(p): (int(v[0]), int(v[1])) for p, v in body["limits"].items()
                        }
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                    self._send_control(resp, 400, {"error": f"batch settings: {exc}"})
                    return
                self.batches.configure(settings)
            self._send_control(resp, 200, {"sandbox": True, **self.batches.config()})
        elif path == "/_sandbox/reset" and method == "POST":
            self.reset()
            self._send_control(
                resp, 200, {"sandbox": True, "reset": True, "balance_usd": str(self.balance)}
            )
        elif path == "/_sandbox/balance" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    body = req.json() or {}
                    self.set_balance(Decimal(str(body["usd"])))
                except (ValueError, KeyError, TypeError, InvalidOperation):
                    self._send_control(resp, 400, {"error": 'send {"usd": "12.50"}'})
                    return
            self._send_control(resp, 200, {"sandbox": True, "balance_usd": str(self.balance)})
        else:
            self._send_control(
                resp,
                404,
                {
                    "error": f"no control endpoint {method} {path}; "
                    "GET /_sandbox/stats, POST /_sandbox/reset, "
                    "POST /_sandbox/balance"
                },
            )

    @staticmethod
    def _send_control(resp: Responder, status: int, obj: Any) -> None:
        resp.send(status, dumps(obj).encode(), [("X-Request-Id", new_id("req_"))])


def _build_doors() -> dict[str, Door]:
    from .anthropic import AnthropicDoor
    from .cencori import CencoriNativeDoor, CencoriOpenAIDoor
    from .google import GoogleDoor
    from .openai import OpenAIDoor

    doors: dict[str, Door] = {"openai": OpenAIDoor("openai")}
    for name in COMPATIBLE_PROVIDERS:
        doors[name] = OpenAIDoor(name)
    doors["anthropic"] = AnthropicDoor()
    doors["google"] = GoogleDoor()
    doors["cencori"] = CencoriNativeDoor()
    doors["cencori-v1"] = CencoriOpenAIDoor()
    return doors
